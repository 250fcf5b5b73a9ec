"""Training and inference speed of DiffMedDINOv3 against MONAI's SwinUNETR-2D and the BraTS SegResNet bundle.

    python scripts/benchmark.py                      # auto device: real sizes on a GPU, ~3 min sizes on a CPU
    python scripts/benchmark.py --device cuda --compile True --output benchmark_gpu.json
    python scripts/benchmark.py --device cpu --student tiny --teacher_arch tiny --image_size 64 \
        --volume_shape "[64,64,8]"

Prints a table (measured figures, arithmetic floors, ratios) and writes JSON; see docs/benchmarks.md.
The DINOv3 teacher is randomly initialised: only its speed matters here.
"""

import logging

import fire

from diffmed_monai.benchmark import run_benchmark

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("diffmed_monai.teacher").setLevel(logging.ERROR)  # the random-teacher warning is in the table
    fire.Fire(run_benchmark, serialize=lambda result: None)  # the table is printed; the dict goes to JSON

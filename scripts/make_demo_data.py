"""Generate synthetic multi-modal brain-tumour cases (BraTS 2021 layout) and their datalist.

    python scripts/make_demo_data.py --output_dir demo_data --num_cases 8 [--shape 96,96,64] [--overwrite]
    python scripts/make_demo_data.py --output_dir hard_data --num_cases 12 --difficulty hard   # 240x240x155, 1 mm

``--difficulty hard``: the phantoms hard enough to separate models (docs/distillation.md, "Hard phantoms").
"""

import logging

import fire

from diffmed_monai.data import make_demo_data

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire(make_demo_data)

"""Generate synthetic multi-modal brain-tumour cases (BraTS 2021 layout) and their datalist.

    python scripts/make_demo_data.py --output_dir demo_data --num_cases 8 [--shape 96,96,64] [--overwrite]
"""

import fire

from diffmed_monai.data.cli import make_demo_data

if __name__ == "__main__":
    fire.Fire(make_demo_data)

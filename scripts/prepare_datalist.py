"""Write a bundle datalist from a dataset's official layout; logs every skipped case and why.

    python scripts/prepare_datalist.py brats --root /data/BraTS2021 --output datalist.json --val_fraction 0.2 --seed 0
    python scripts/prepare_datalist.py fets --root /data/FeTS2022
    python scripts/prepare_datalist.py brats2023 --root /data/BraTS2023-GLI --output /data/BraTS2023-GLI/datalist.json
    python scripts/prepare_datalist.py isles22 --root /data/ISLES-2022 --modalities dwi,adc
    python scripts/prepare_datalist.py amos --root /data/amos22 --modalities mri
    python scripts/prepare_datalist.py folder --root /data/to_segment --modalities t1,t1ce,t2,flair
"""

import logging

import fire

from diffmed_monai.data import prepare_datalist

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire(prepare_datalist)

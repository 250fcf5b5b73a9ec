"""Write a bundle datalist from a dataset's official folder layout.

    python scripts/prepare_datalist.py brats --root /data/BraTS2021 --output /data/BraTS2021/datalist.json
    python scripts/prepare_datalist.py isles22 --root /data/ISLES2022 --modalities "['dwi','adc']"
    python scripts/prepare_datalist.py amos --root /data/amos22 --modalities "['mri']"
"""

import fire

from diffmed_monai.data.cli import prepare_datalist

if __name__ == "__main__":
    fire.Fire(prepare_datalist)

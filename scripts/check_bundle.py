#!/usr/bin/env python
"""The Model Zoo's checks that its ci/verify_bundle.py does not run, on a bundle folder or a packed zip; exit 1 if
one fails.

    python scripts/check_bundle.py --bundle_dir dist/diffmed_dinov3_brats_segmentation_v0.1.0.zip --resolve True
    python scripts/check_bundle.py --bundle_dir bundle

Prints a PASS / WARN / FAIL / SKIP table: JSON format (the pre-commit hook), logging.conf, large_files.yml, file
sizes, self-contained configs and the Model Zoo code format of scripts/ (packed bundles), and, with ``--resolve``,
that every pin has a wheel for the Model Zoo CI's Python. The zoo's own ci/verify_bundle.py and the bundle's unit
test: ``scripts/zoo_verify.py``. See :func:`bundle_tools.check_bundle`.
"""

from __future__ import annotations

import functools
import sys

import fire

from diffmed_monai.utils import parse_flags

from bundle_tools import check_bundle


@functools.wraps(check_bundle)
def main(*args, **kwargs) -> None:
    report = check_bundle(*args, **kwargs)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    fire.Fire(parse_flags(main))

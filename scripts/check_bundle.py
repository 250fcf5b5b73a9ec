#!/usr/bin/env python
"""Check the MONAI bundle the way the MONAI Model Zoo CI does, offline; exit 1 if any check fails.

    python scripts/check_bundle.py --bundle_dir bundle                       # full-size network, demo data
    python scripts/check_bundle.py --bundle_dir bundle --presets bundle/configs/presets/tiny.json
    python scripts/check_bundle.py --bundle_dir bundle --properties False --verify_net False --export False

Prints a PASS / WARN / FAIL / SKIP table: necessary and preferred files, large_files.yml, file sizes, version and
changelog, framework and package versions, metadata against the shipped JSON schema, 4-space JSON, logging.conf,
train and inference workflow properties, verify_net_in_out, and ckpt_export with tracing when models/model.pt
exists. See :func:`bundle_tools.check_bundle`.
"""

from __future__ import annotations

import functools
import sys

import fire

from bundle_tools import check_bundle


@functools.wraps(check_bundle)
def main(*args, **kwargs) -> None:
    report = check_bundle(*args, **kwargs)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    fire.Fire(main)

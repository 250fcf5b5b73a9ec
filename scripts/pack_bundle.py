#!/usr/bin/env python
"""Zip the MONAI bundle in the Model Zoo layout.

    python scripts/pack_bundle.py --bundle_dir bundle --output_dir dist [--include_weights False]

Writes ``<output_dir>/<name>_v<version>.zip`` with a single top folder ``<name>/`` (configs/, docs/, LICENSE,
large_files.yml and, when present and ``--include_weights``, models/model.pt and models/model.ts), prints its
path and size. Files over 25 MB are refused unless large_files.yml lists them.
See :func:`bundle_tools.pack_bundle`.
"""

from __future__ import annotations

import functools

import fire

from bundle_tools import pack_bundle


@functools.wraps(pack_bundle)
def main(*args, **kwargs) -> None:
    pack_bundle(*args, **kwargs)  # prints the zip path and size itself


if __name__ == "__main__":
    fire.Fire(main)

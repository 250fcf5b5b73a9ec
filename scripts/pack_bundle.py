#!/usr/bin/env python
"""Zip the MONAI bundle in the Model Zoo layout, self-contained.

    python scripts/pack_bundle.py --bundle_dir bundle --output_dir dist
    python scripts/pack_bundle.py --weights runs/brats/models/model.pt --presets brats \
        [--weights_url https://host/path/model.pt]

Writes ``<output_dir>/<name>_v<version>.zip`` with a single top folder ``<name>/``: configs/ (presets included),
docs/, scripts/ (the runtime code copied from the diffmed_monai package, formatted and checked with the Model Zoo's
isort, black and flake8 settings), LICENSE, large_files.yml and, when present or given with ``--weights``,
models/model.pt (its SHA-256 recorded in large_files.yml; ``--weights_url`` adds the entry). Files over 25 MB are
refused unless large_files.yml lists them. Prints the zip's path and size. See :func:`bundle_tools.pack_bundle`.
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

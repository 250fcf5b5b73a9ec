"""``reuse_freed_memory``: a freed large block is reused by the next allocation instead of page-faulted back in."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from diffmed_monai.engines import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "1" else None
faults = []
for _ in range(5):  # 256 MB allocated, written and freed, like a step's activations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64, 1024, 1024)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(reuse: bool) -> dict:
    command = [sys.executable, "-c", PROBE, "1" if reuse else "0"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    default, reused = _probe(False), _probe(True)
    pages = 256 * 2**20 // 4096
    assert min(default["faults"][1:]) > pages // 2  # glibc unmaps the freed block: every round faults it back in
    assert reused["applied"] is True
    assert max(reused["faults"][-2:]) < pages // 20  # the first rounds fault it in, later ones reuse it

"""The bundle configs read like a Model Zoo bundle's: short ``$`` expressions, one ``$import diffmed_monai``; and the
package functions the configs name instead of long expressions."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_importing_the_package_is_cheap_and_reaches_every_subpackage():
    """``$import diffmed_monai`` is the configs' one import: the subpackages load on first use, and the bare import
    pulls in neither torch nor MONAI (the command line and the bundle tools import it too)."""
    code = ("import sys, diffmed_monai as d; heavy = sorted({'torch', 'monai'} & set(sys.modules)); "
            "print(heavy, d.utils.as_bool('no', 'k'), d.metrics.segmentation_metrics.__module__, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "diffmed_monai.metrics.segmentation", "True"]
    import diffmed_monai

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffmed_monai.nope  # noqa: B018
    assert {"data", "engines", "metrics", "networks", "transforms", "utils"} <= set(dir(diffmed_monai))

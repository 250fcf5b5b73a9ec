# Copyright (c) diffmed-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Model Zoo unit test of the diffmed_dinov3_brats_segmentation bundle (``ci/unit_tests/test_<bundle>.py``).

Trains one epoch, evaluates and segments with the bundle's tiny preset on synthetic BraTS-layout cases, on the CPU,
from the Model Zoo root (``bundle_root`` is ``models/<bundle>``; ``BUNDLE_ROOT`` in the environment overrides it).
Runs with ``python ci/unit_tests/runner.py --b diffmed_dinov3_brats_segmentation`` or ``python -m unittest``.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow

BUNDLE_ROOT = os.environ.get("BUNDLE_ROOT", "models/diffmed_dinov3_brats_segmentation")
MODALITIES = ["t1", "t1ce", "t2", "flair"]
# test settings over the tiny preset (configs/presets/tiny.json: tiny network, random tiny teacher, 2 mm, 96 x 96)
OVERRIDE = {"epochs": 1, "val_interval": 1, "num_workers": 0, "preprocess_workers": 0, "device": "$torch.device('cpu')"}


def test_order(test_name1, test_name2):
    def get_order(name):
        if "train" in name:
            return 1
        if "eval" in name:
            return 2
        if "infer" in name:
            return 3
        return 4

    return get_order(test_name1) - get_order(test_name2)


def _case(root, case_id, rng):
    """A synthetic head phantom: four modalities zero outside an ellipsoid, a tumour with BraTS labels 1, 2, 4."""
    shape = (48, 48, 24)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    centre = rng.uniform(-0.25, 0.25, size=3).reshape(3, 1, 1, 1)
    dist = np.sqrt(((grid - centre) ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[(dist < 0.45) & brain] = 2
    label[dist < 0.3] = 4
    label[dist < 0.15] = 1
    folder = os.path.join(root, case_id)
    os.makedirs(folder)
    files = []
    for i, mod in enumerate(MODALITIES):
        image = (brain * (1.0 + 0.2 * i) + 0.8 * (label > 0) * (i + 1) + rng.normal(0, 0.1, shape)) * brain
        path = os.path.join(folder, f"{case_id}_{mod}.nii.gz")
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), path)
        files.append(os.path.relpath(path, root))
    seg = os.path.join(folder, f"{case_id}_seg.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), seg)
    return {"image": files, "label": os.path.relpath(seg, root)}


class TestDiffMedDINOv3Bundle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if BUNDLE_ROOT not in sys.path:  # the bundle's scripts/ (as the Model Zoo's verify_bundle.py does)
            sys.path = [BUNDLE_ROOT] + sys.path
        cls.work = tempfile.mkdtemp()
        cls.dataset_dir = os.path.join(cls.work, "data")
        rng = np.random.default_rng(0)
        cases = [_case(cls.dataset_dir, f"BraTS2021_{i:05d}", rng) for i in range(4)]
        datalist = {"training": cases[:3], "validation": cases[3:], "testing": cases[3:]}
        with open(os.path.join(cls.dataset_dir, "datalist.json"), "w") as f:
            json.dump(datalist, f)
        cls.run_dir = os.path.join(cls.work, "run")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work)

    def _workflow(self, workflow_type, configs, **override):
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[os.path.join(BUNDLE_ROOT, "configs", c) for c in configs + ["presets/tiny.json"]],
            logging_file=os.path.join(BUNDLE_ROOT, "configs/logging.conf"),
            meta_file=os.path.join(BUNDLE_ROOT, "configs/metadata.json"),
            bundle_root=self.run_dir,  # what the runs write (models/, eval/, store/, predictions/) goes there
            dataset_dir=self.dataset_dir,
            **{**OVERRIDE, **override},
        )

    def _check(self, workflow):
        workflow.initialize()
        missing = workflow.check_properties()
        self.assertFalse(missing, f"missing properties: {missing}")
        workflow.run()
        workflow.finalize()

    def test_train_config(self):
        trainer = self._workflow("train", ["train.json"])
        self._check(trainer)
        self.assertEqual(trainer.trainer.state.epoch, 1)
        self.assertTrue(os.path.isfile(os.path.join(self.run_dir, "models", "model.pt")))

    def test_eval_config(self):
        # evaluate.json overrides train.json, thus the "train" workflow type; it loads the trained models/model.pt
        validator = self._workflow("train", ["train.json", "evaluate.json"])
        self._check(validator)
        self.assertTrue(os.path.isfile(os.path.join(self.run_dir, "eval", "metrics.csv")))

    def test_infer_config(self):
        inferrer = self._workflow("infer", ["inference.json"], datalist=os.path.join(self.dataset_dir, "datalist.json"))
        self._check(inferrer)
        seg = os.path.join(self.run_dir, "predictions", "BraTS2021_00003_seg.nii.gz")
        self.assertEqual(nib.load(seg).shape, (48, 48, 24))


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)

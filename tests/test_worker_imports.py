"""What a trial's worker imports: digits is read without scikit-learn (whose import pulls in scipy.stats
and joblib, seconds of every trial's start-up), and reads the same numbers as scikit-learn does."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch


def test_digits_without_sklearn_reads_what_sklearn_reads():
    from sklearn.datasets import load_digits as sk_load_digits

    from dpnp_ray.data import load_dataset
    from dpnp_ray.data_files import _digits_table

    bunch = sk_load_digits()
    table = _digits_table()
    np.testing.assert_array_equal(table[:, :-1].reshape(-1, 8, 8), bunch.images)
    np.testing.assert_array_equal(table[:, -1].astype(np.int64), bunch.target)
    data = load_dataset("digits")
    images = torch.cat([data.train.images, data.val.images, data.test.images])
    assert images.shape[1:] == (1, 8, 8) and len(images) == len(bunch.target) == 1797
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0  # pixels k / 16


def test_loading_digits_imports_no_sklearn():
    code = ("import sys; from dpnp_ray.data import load_dataset; load_dataset('digits'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

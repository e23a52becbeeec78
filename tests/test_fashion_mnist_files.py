"""The real Fashion-MNIST files (Debian's `dataset-fashion-mnist`, which .ci/run installs): all 70,000
images read as the released data set, and a tiny trial trains on them end to end (no Ray)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from dpnp_ray.data import FASHION_MNIST, FASHION_MNIST_FILES, FASHION_MNIST_SYSTEM_DIR, load_dataset, \
    load_fashion_mnist

from .support import REPO

installed = all((FASHION_MNIST_SYSTEM_DIR / f"{stem}.gz").is_file()
                for pair in FASHION_MNIST_FILES.values() for stem in pair)
pytestmark = pytest.mark.skipif(not installed, reason=f"no Fashion-MNIST files in {FASHION_MNIST_SYSTEM_DIR} "
                                "(apt-get install dataset-fashion-mnist; .ci/run does)")

# sha256 of the decoded uint8 arrays (images N x 28 x 28 row-major, labels N), from the files of Debian's
# dataset-fashion-mnist 0.0~git20200523.55506a9-1. Debian recompresses the release, so the .gz files' md5
# differ from torchvision's list; the decoded bytes are what a loader must reproduce.
SHA256 = {
    "train": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
              "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
    "test": ("c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
             "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    # an empty data_root: the loader falls back to the system files
    return load_fashion_mnist(tmp_path_factory.mktemp("empty_root"), download=False)


def test_all_70000_images_are_the_released_ones(splits):
    for part, split in zip(("train", "test"), splits):
        n = 60_000 if part == "train" else 10_000
        assert split.images.shape == (n, 1, 28, 28) and split.images.dtype == torch.uint8
        assert torch.bincount(split.labels, minlength=10).tolist() == [n // 10] * 10  # exactly balanced
        image_sha, label_sha = SHA256[part]
        assert hashlib.sha256(split.images.numpy().tobytes()).hexdigest() == image_sha
        assert hashlib.sha256(split.labels.numpy().astype("uint8").tobytes()).hexdigest() == label_sha


def test_normalisation_constants_are_the_training_set_statistics(splits):
    """mean/std of the 60,000 training images in [0, 1] (the widely used 0.2860 / 0.3530), to the 4 digits kept."""
    x = splits[0].images.double() / 255
    assert x.mean().item() == pytest.approx(FASHION_MNIST.mean[0], abs=5e-5)
    assert x.std().item() == pytest.approx(FASHION_MNIST.std[0], abs=5e-5)


def test_a_training_subset_keeps_val_and_the_whole_test_split(tmp_path):
    data = load_dataset("fashion_mnist", str(tmp_path), val_fraction=0.02, split_seed=0, train_subset=4000)
    assert (len(data.train), len(data.val), len(data.test)) == (4000, 1200, 10_000)
    assert torch.bincount(data.train.labels, minlength=10).tolist() == [400] * 10


def test_a_tiny_trial_trains_and_evaluates_on_the_real_files(tmp_path):
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "dpnp_ray", "dataset=fashion_mnist", f"data_root={tmp_path / 'none'}",
         "train_subset=200", "val_fraction=0.01", "epochs=1", "batch_size=50", "train_attack_steps=1",
         "val_attack_steps=1", "eval_suite=basic", "eval_n=100", "eval_attack_steps=2", "device=cpu",
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(n=100)" in proc.stdout
    model = json.loads((out / "model.json").read_text())
    assert model["config"]["dataset"] == "fashion_mnist" and model["config"]["train_subset"] == 200
    assert model["config"]["eps"] == pytest.approx(0.1)  # the data set's threat model


@pytest.mark.parametrize("script", ["ablation.py", "search.py"])
def test_both_study_scripts_plan_a_fashion_mnist_study_from_the_real_files(tmp_path, script):
    """--dataset fashion_mnist through a study script's preflight and plan (which loads the data), offline."""
    from .support import run_script

    proc = run_script(script, "--dataset", "fashion_mnist", "--storage", str(tmp_path), "--dry-run",
                      "--set", "train_subset=500", "val_fraction=0.02", *(["--trials", "2"] if script == "search.py"
                                                                           else ["--variants", "full", "--seeds", "0"]))
    assert "splits: train 500, val 1200, test 10000 (loaded)" in proc.stdout
    assert not (tmp_path / "ablation").exists() and not (tmp_path / "search").exists()  # a plan trains nothing

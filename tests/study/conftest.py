"""Fixtures of the study tests: the study scripts as modules, loaded once per test module."""

import pytest

from ..support.studies import load_script


@pytest.fixture(scope="module")
def ablation():
    return load_script("ablation")


@pytest.fixture(scope="module")
def search():
    return load_script("search")

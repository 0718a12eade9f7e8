"""Shared pytest setup: isolated NANOCHAT_BASE_DIR per test, quiet threads, W&B offline, repo paths."""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ["PYTHONUNBUFFERED"] = "1"


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """A fresh, empty NANOCHAT_BASE_DIR for one test (also exported to child processes)."""
    d = tmp_path / "nanochat_base"
    d.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(d))
    return d


@pytest.fixture
def python_exe():
    return sys.executable

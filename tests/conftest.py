"""Shared pytest setup: isolated NANOCHAT_BASE_DIR per test, quiet threads, W&B offline, repo paths."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ["PYTHONUNBUFFERED"] = "1"
# no test reads the developer's ~/.config/nanotui/config.toml or posts to their notify URL
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="nanotui-test-xdg-")
for _var in ("NANOTUI_NOTIFY_URL", "NANOTUI_PROFILE", "WANDB_RUN", "WANDB_ENTITY", "WANDB_PROJECT"):
    os.environ.pop(_var, None)


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


@pytest.fixture
def user_config(tmp_path, monkeypatch):
    """Write `text` as the user's nanotui config file (a private XDG_CONFIG_HOME, exported to children)."""
    xdg = tmp_path / "xdg_config"
    (xdg / "nanotui").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))

    def write(text):
        path = xdg / "nanotui" / "config.toml"
        path.write_text(text)
        return path
    return write

"""GPU tests: the corpus and tokenizer are built once per session (or taken from GPU_CHECK_BASE, which
bench/gpu_check.sh fills), and every test has its own time limit that does not count that build."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_helpers import build_base  # noqa: E402


@pytest.fixture(scope="session")
def gpu_base(tmp_path_factory):
    """Demo corpus + a 65,536-token tokenizer (the d20 vocabulary), built on the device machine once."""
    given = os.environ.get("GPU_CHECK_BASE")
    base = Path(given) if given else tmp_path_factory.mktemp("gpu_base")
    base.mkdir(parents=True, exist_ok=True)
    return build_base(base)

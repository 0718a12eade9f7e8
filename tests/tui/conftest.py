"""TUI tests run their async Pilot cases on asyncio through anyio's pytest plugin."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def anyio_backend():
    return "asyncio"

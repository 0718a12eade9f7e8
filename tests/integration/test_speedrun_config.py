"""speedrun.sh takes the W&B run name from the user's nanotui config file when WANDB_RUN is not set."""
import os
import sys
from pathlib import Path

from test_speedrun_sh import run_speedrun


def _runs(calls):
    return {c[1]: [a for a in c if a.startswith("--run=")] for c in calls
            if len(c) > 1 and c[1] in ("nanochat.scripts.base_train", "nanochat.scripts.mid_train",
                                       "nanochat.scripts.chat_sft")}


def test_config_file_names_the_run_and_wandb_run_overrides(tmp_path, user_config):
    user_config('wandb_run = "djhenny-nanochat-speedrun-4090"\n')
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"   # `nanotui` of this checkout
    (tmp_path / "a").mkdir()
    got = _runs(run_speedrun(tmp_path / "a", PATH=path))
    assert got and all(v == ["--run=djhenny-nanochat-speedrun-4090"] for v in got.values()), got
    (tmp_path / "b").mkdir()
    got = _runs(run_speedrun(tmp_path / "b", PATH=path, WANDB_RUN="x"))
    assert got and all(v == ["--run=x"] for v in got.values()), got

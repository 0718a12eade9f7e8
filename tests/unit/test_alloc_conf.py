"""The CUDA allocator setting reaches every stage that touches CUDA: compute_init sets it first, under the name the
installed torch reads (PYTORCH_ALLOC_CONF from 2.9, PYTORCH_CUDA_ALLOC_CONF before), keeping a user's value."""
import importlib

import pytest
import torch

from nanochat import common
from nanochat.common import ALLOC_CONF_DEFAULT, allocator_env_name, configure_allocator

STAGES = ["base_train", "mid_train", "chat_sft", "base_eval", "chat_eval", "chat_cli"]


def test_name_follows_the_torch_version():
    assert allocator_env_name("2.4.1+cu121") == "PYTORCH_CUDA_ALLOC_CONF"
    assert allocator_env_name("2.8.0") == "PYTORCH_CUDA_ALLOC_CONF"
    assert allocator_env_name("2.9.0+cu128") == "PYTORCH_ALLOC_CONF"
    assert allocator_env_name("2.13.0+cpu") == "PYTORCH_ALLOC_CONF"
    assert allocator_env_name("3.0.0a0") == "PYTORCH_ALLOC_CONF"


def test_default_user_value_and_the_old_name():
    env = {}
    assert configure_allocator(env, "2.9.1") == "PYTORCH_ALLOC_CONF" and env == {"PYTORCH_ALLOC_CONF": ALLOC_CONF_DEFAULT}
    env = {}
    configure_allocator(env, "2.8.0")
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": ALLOC_CONF_DEFAULT}
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}   # set for an old torch, now running a new one
    configure_allocator(env, "2.10.0")
    assert env["PYTORCH_ALLOC_CONF"] == "max_split_size_mb:128"
    env = {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}   # the user's choice wins
    configure_allocator(env, "2.9.0")
    assert env == {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}


class _Reached(Exception):
    pass


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_entry_point_applies_it(stage, monkeypatch):
    """Run each stage's main() up to compute_init's process-group step (stopped there): the variable is set."""
    for name in common.ALLOC_CONF_NAMES:
        monkeypatch.delenv(name, raising=False)

    def stop():
        raise _Reached

    monkeypatch.setattr(common, "_torchrun_env", stop)
    mod = importlib.import_module(f"nanochat.scripts.{stage}")
    with pytest.raises(_Reached):
        mod.main(["--device_type=cpu"])
    import os
    assert os.environ.get(allocator_env_name(torch.__version__)) == ALLOC_CONF_DEFAULT

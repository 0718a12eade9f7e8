"""bf16 autocast in base_eval, chat_eval and chat_cli on CUDA (as upstream), emulated on the CPU: the scripts' autocast
helper is swapped for a CPU bf16 autocast and every model forward must run inside it."""
import os
import warnings
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.checkpoint import save_checkpoint
from nanochat.common import eval_autocast
from nanochat.gpt import GPT

from pipeline_fixtures import TEXTS, make_base_checkpoint


def test_eval_autocast_is_bf16_on_cuda_and_nothing_elsewhere():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA, torch warns that this autocast will be disabled
        ctx = eval_autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.amp.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    with eval_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.fixture
def recorded_forwards(monkeypatch):
    """Every GPT.forward call appends whether CPU autocast (bf16) was on."""
    seen = []
    forward = GPT.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(GPT, "forward", recording)
    return seen


def _cuda_like(monkeypatch, module):
    monkeypatch.setattr(module, "eval_autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))


@pytest.fixture
def checkpoints(base_dir):
    """A base checkpoint, the same weights as an SFT checkpoint, and two tiny data shards (train + validation)."""
    tok, config = make_base_checkpoint(base_dir)
    model = GPT(config)
    model.init_weights()
    save_checkpoint(os.path.join(base_dir, "chatsft_checkpoints", "demo"), 0, model.state_dict(), None,
                    {"model_config": asdict(config), "stage": "sft"}, quiet=True)
    data = base_dir / "base_data"
    data.mkdir()
    for index in (0, 1822):
        pq.write_table(pa.table({"text": list(TEXTS) * 20}), data / f"shard_{index:05d}.parquet")
    return base_dir


def test_chat_cli_generates_under_bf16_autocast(checkpoints, recorded_forwards, monkeypatch, capsys):
    from nanochat.scripts import chat_cli
    _cuda_like(monkeypatch, chat_cli)
    assert chat_cli.main(["-p", "hello", "--model_tag=demo", "--max_tokens=3", "--device_type=cpu"]) == 0
    assert recorded_forwards and all(recorded_forwards)


def test_chat_eval_scores_under_bf16_autocast(checkpoints, recorded_forwards, monkeypatch):
    from nanochat.scripts import chat_eval
    _cuda_like(monkeypatch, chat_eval)
    assert chat_eval.main(["-i", "sft", "--model_tag=demo", "--demo", "--max_problems=2", "--max_new_tokens=3",
                           "-a", "SpellingBee|DemoFirstLetter", "--device_type=cpu"]) == 0
    assert len(recorded_forwards) > 2 and all(recorded_forwards)


def test_base_eval_bpb_and_samples_under_bf16_autocast(checkpoints, recorded_forwards, monkeypatch):
    from nanochat.scripts import base_eval
    _cuda_like(monkeypatch, base_eval)
    assert base_eval.main(["--model_tag=demo", "--demo", "--eval_tokens=256", "--device_batch_size=2",
                           "--device_type=cpu"]) == 0
    assert len(recorded_forwards) > 2 and all(recorded_forwards)

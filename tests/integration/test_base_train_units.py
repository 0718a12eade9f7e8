"""Pieces of the training loop in isolation: flag parsing, batch math, OOM detection, loop state, bpb budget."""
import math

import pytest
import torch

from nanochat.common import UsageError
from nanochat.loss_eval import eval_sequences, evaluate_bpb, evaluate_bpb_budget
from nanochat.trainer import (FaultInjector, FlagParser, LoopState, add_training_flags, capture_rng,
                              compute_grad_accum, is_oom_error, restore_rng, valid_device_batch_sizes)


def parser():
    return add_training_flags(FlagParser())


@pytest.mark.parametrize("argv", [
    ["--device_batch_size=4", "--resume_from_step=latest"],
    ["--device-batch-size", "4", "--resume-from-step", "latest"],
    ["--device_batch_size", "4", "--resume_from_step", "latest"],
    ["--", "--device-batch-size=4", "--resume_from_step=latest"],
])
def test_flag_spellings(argv):
    args = parser().parse_args(argv)
    assert args.device_batch_size == 4 and args.resume_from_step == "latest"


@pytest.mark.parametrize("argv, fragment", [
    (["--device_batch"], "unrecognized arguments"),          # no abbreviations
    (["--bogus=1"], "unrecognized arguments: --bogus=1"),
    (["--save_every=-5"], "must be >= 1"),
    (["--resume_from_step=-3"], "not a step number"),
    (["--grad_clip=nan"], "not a finite number"),
])
def test_bad_flags_raise_usage_error(argv, fragment):
    with pytest.raises(UsageError, match=fragment):
        parser().parse_args(argv)


def test_resume_flag_values():
    assert parser().parse_args([]).resume_from_step is None
    assert parser().parse_args(["--resume_from_step=-1"]).resume_from_step is None
    assert parser().parse_args(["--resume_from_step=12"]).resume_from_step == "12"


def test_grad_accum_and_valid_batch_sizes():
    assert compute_grad_accum(524288, 4, 1024, 1) == 128
    assert compute_grad_accum(524288, 32, 2048, 8) == 1
    assert valid_device_batch_sizes(8192, 256, 1) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(UsageError, match=r"valid device batch sizes: 1, 2, 4, 8, 16, 32$"):
        compute_grad_accum(8192, 3, 256, 1)
    with pytest.raises(UsageError, match=r"x 2 ranks.*valid device batch sizes: 1, 2, 4, 8, 16$"):
        compute_grad_accum(8192, 32, 256, 2)
    with pytest.raises(UsageError, match=r"no device batch size works.*multiple of max_seq_len = 1024"):
        compute_grad_accum(700, 1, 1024, 1)
    with pytest.raises(UsageError, match="positive integer"):
        compute_grad_accum(8192, 0, 256, 1)


def test_oom_detection_and_fault_injection(monkeypatch):
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom_error(RuntimeError("CUDA error: out of memory"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_FROM_STEP", "5")
    fault = FaultInjector()
    fault.check(2, 10)
    fault.check(4, 4)
    with pytest.raises(torch.OutOfMemoryError):
        fault.check(4, 5)
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "two")
    with pytest.raises(UsageError):
        FaultInjector()


def test_loop_state_and_rng_roundtrip():
    state = LoopState(smooth_train_loss=3.5, total_training_time=12.0)
    data = state.to_json()
    assert data["min_val_bpb"] is None  # JSON has no infinity
    assert LoopState.from_json(data) == state
    saved = capture_rng(torch.device("cpu"))
    a = torch.rand(3)
    restore_rng(saved, torch.device("cpu"))
    assert torch.equal(torch.rand(3), a)


class _UnigramModel:
    """A fixed 'model' whose per-token loss depends only on the target (so bpb is easy to check)."""

    def __call__(self, x, y, loss_reduction="none"):
        return (y.float() % 7 + 1).reshape(-1)


def test_bpb_budget_is_independent_of_batch_size():
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 50, (64 * 9 + 1,), generator=g)
    token_bytes = torch.randint(0, 4, (50,), generator=g)

    def make_batches(B, T=9):
        def gen():
            pos = 0
            while True:
                chunk = stream[pos:pos + B * T + 1]
                yield chunk[:-1].view(B, T), chunk[1:].view(B, T)
                pos += B * T
        return gen

    results = {B: evaluate_bpb_budget(_UnigramModel(), make_batches(B), eval_tokens=45 * 9, batch_size=B,
                                      seq_len=9, token_bytes=token_bytes) for B in (1, 2, 4, 7)}
    assert eval_sequences(45 * 9, 9) == 45
    x, y = stream[:45 * 9], stream[1:45 * 9 + 1]
    nbytes = token_bytes[y]
    expected = ((y.float() % 7 + 1) * (nbytes > 0)).sum().item() / (math.log(2) * nbytes.sum().item())
    for B, value in results.items():
        assert value == pytest.approx(expected, rel=1e-12), B
    # ignored targets (-1) do not count
    y_masked = torch.full((1, 9), -1)
    assert evaluate_bpb(_UnigramModel(), iter([(y_masked, y_masked)]), 1, token_bytes) == float("inf")

"""nanochat/batch_probe.py on CPU: candidates, flags, measured rows against an emulated device budget, the fault
injector's OOMs, the eval batch decision, and that the probe leaves model, optimizers and RNG as it found them."""
from types import SimpleNamespace

import pytest
import torch

from nanochat import batch_probe as bp
from nanochat.common import UsageError
from nanochat.gpt import GPT, config_for_depth
from nanochat.trainer import FlagParser, add_training_flags, device_batch_size_flag

T, V = 32, 256


def tiny():
    torch.manual_seed(0)
    model = GPT(config_for_depth(1, vocab_size=V, sequence_len=T))
    model.init_weights()
    return model, model.setup_optimizers()


def probe_for(model, optimizers, per_rank=8):
    return bp.DeviceBatchProbe(model, optimizers, torch.device("cpu"), T, V, per_rank,
                               accum_for=lambda b: per_rank // b)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (bp.HEADROOM_ENV, bp.MAX_ENV, bp.FAKE_MEMORY_ENV, "NANOCHAT_FAULT_OOM_ABOVE_BS"):
        monkeypatch.delenv(name, raising=False)


def test_candidates_and_flag():
    assert bp.probe_candidates(32) == [32, 16, 8, 4, 2, 1]
    assert bp.probe_candidates(24) == [8, 4, 2, 1]
    assert bp.probe_candidates(32, limit=8) == [8, 4, 2, 1]
    assert device_batch_size_flag("auto") == "auto" and device_batch_size_flag(" AUTO ") == "auto"
    assert device_batch_size_flag("4") == 4
    args = add_training_flags(FlagParser()).parse_args(["--device_batch_size=auto"])
    assert args.device_batch_size == "auto"
    with pytest.raises(UsageError):
        add_training_flags(FlagParser()).parse_args(["--device_batch_size=0"])


def test_bad_env_values_are_usage_errors(monkeypatch):
    monkeypatch.setenv(bp.HEADROOM_ENV, "1.5")
    with pytest.raises(UsageError, match="fraction"):
        bp.headroom()
    monkeypatch.setenv(bp.HEADROOM_ENV, "0.2")
    assert bp.headroom() == 0.2
    monkeypatch.setenv(bp.FAKE_MEMORY_ENV, "lots")
    with pytest.raises(UsageError, match="positive"):
        bp.device_capacity(torch.device("cpu"))
    monkeypatch.setenv(bp.FAKE_MEMORY_ENV, "3.5")
    assert bp.device_capacity(torch.device("cpu"))[0] == int(3.5 * 2**20)


def test_measured_rows_and_choice_under_an_emulated_budget(capsys):
    model, opts = tiny()
    probe = probe_for(model, opts)
    chosen, _, _, _, _ = probe.run(capacity=(1, "test"), headroom_frac=0.0)   # nothing fits: measure every row
    assert chosen is None
    peaks = {r["device_bs"]: r["peak_gib"] * bp.GIB for r in probe.rows}
    assert list(peaks) == [8, 4, 2, 1] and all(r["outcome"] == "too big" for r in probe.rows)
    assert peaks[8] > peaks[4] > peaks[2] > peaks[1] > 0
    # state (weights + grads + AdamW/Muon) is paid once, activations per row: peak(8) - peak(4) = 2 (peak(2) - peak(1))
    assert peaks[8] - peaks[4] == pytest.approx(4 * (peaks[2] - peaks[1]), rel=0.05)
    # a budget between the B=4 and B=8 peaks (with 10 % headroom) picks 4
    capacity = int((peaks[4] + peaks[8]) / 2 / 0.9)
    model2, opts2 = tiny()
    probe2 = probe_for(model2, opts2)
    capsys.readouterr()
    chosen, eval_bs, cap, limit, _ = probe2.run(capacity=(capacity, "test"), headroom_frac=0.1)
    assert (chosen, eval_bs) == (4, 4) and limit == int(capacity * 0.9)
    assert [(r["device_bs"], r["outcome"]) for r in probe2.rows] == [(8, "too big"), (4, "fits")]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Device batch probe: device_batch_size=8 peak=") and out[0].endswith("-> too big")
    assert out[-1].startswith("Device batch size auto: 4 (headroom 10%, limit ")


def test_probe_runs_through_a_compiled_module(capsys):
    """The trainer hands the probe torch.compile(model): an OptimizedModule, whose truth value raises TypeError (it
    forwards len() to a GPT). Seen on an H200: `forward or model` failed the whole --device_batch_size=auto stage."""
    model, opts = tiny()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    with pytest.raises(TypeError):
        bool(compiled)
    probe = bp.DeviceBatchProbe(model, opts, torch.device("cpu"), T, V, 8, accum_for=lambda b: 8 // b,
                                forward=compiled)
    assert probe.forward is compiled
    chosen, *_ = probe.run(capacity=(64 * bp.GIB, "test"), headroom_frac=0.1)
    assert chosen == 8 and [r["outcome"] for r in probe.rows] == ["fits"]


def test_fault_injector_ooms_are_skipped(monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    model, opts = tiny()
    probe = probe_for(model, opts)
    chosen, *_ = probe.run(capacity=(64 * bp.GIB, "test"), headroom_frac=0.1)
    assert chosen == 2
    assert [(r["device_bs"], r["outcome"], r["peak_gib"]) for r in probe.rows][:2] == [(8, "OOM", None),
                                                                                        (4, "OOM", None)]
    assert "Device batch probe: device_batch_size=8 peak=n/a reserved=n/a limit=" in capsys.readouterr().out


def test_probe_leaves_model_optimizers_and_rng_as_found():
    model, opts = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    probe_for(model, opts).run(capacity=(64 * bp.GIB, "test"), headroom_frac=0.1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(o.state) == 0 for o in opts) and all(p.grad is None for p in model.parameters())
    assert [[g["lr"] for g in o.param_groups] for o in opts] == lrs
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_eval_batch_is_halved_when_validation_needs_more(monkeypatch, capsys):
    model, opts = tiny()
    probe = probe_for(model, opts)
    limit_bytes = 10 * bp.GIB
    # validation at 8 or 4 rows needs more than the limit, at 2 it fits (the CPU meter cannot show this: mocked)
    monkeypatch.setattr(probe, "_eval_peak", lambda b, meter, gen: {8: 30, 4: 12, 2: 5, 1: 3}[b] * bp.GIB)
    chosen, eval_bs, *_ = probe.run(capacity=(limit_bytes, "test"), headroom_frac=0.0)
    assert (chosen, eval_bs) == (8, 2)
    out = capsys.readouterr().out
    assert "Eval batch size auto: 2 (validation at device_batch_size=8 needs 30.00GiB)" in out


def test_resolve_sets_args_and_passes_integers_through(monkeypatch):
    model, opts = tiny()
    args = SimpleNamespace(device_batch_size=4, total_batch_size=256, max_seq_len=T)
    assert bp.resolve_device_batch_size(args, model, opts, torch.device("cpu"), vocab_size=V) == 4
    assert args.eval_batch_size is None
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "1")
    monkeypatch.setenv(bp.MAX_ENV, "4")
    args = SimpleNamespace(device_batch_size="auto", total_batch_size=256, max_seq_len=T)
    assert bp.resolve_device_batch_size(args, model, opts, torch.device("cpu"), vocab_size=V) == 1
    assert args.device_batch_size == 1 and [r["device_bs"] for r in args.device_batch_probe] == [4, 2, 1]
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "0")
    args = SimpleNamespace(device_batch_size="auto", total_batch_size=256, max_seq_len=T)
    with pytest.raises(torch.OutOfMemoryError):
        bp.resolve_device_batch_size(args, model, opts, torch.device("cpu"), vocab_size=V)
    args = SimpleNamespace(device_batch_size="auto", total_batch_size=100, max_seq_len=T)
    with pytest.raises(UsageError, match="not a multiple"):
        bp.resolve_device_batch_size(args, model, opts, torch.device("cpu"), vocab_size=V)

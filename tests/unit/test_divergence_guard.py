"""The trainer's divergence guard: verdicts, the NaN/spike fault injectors, a diverged step is never applied
(exit 5, one trailer line), the data skip list (format, resume rule, loader fallback) and skipping cures a fault."""
import json
import math
from pathlib import Path

import pytest
import torch

from nanochat.common import UsageError
from nanochat.training.dataskip import effective_skips, format_data_skip, parse_data_skip, skip_micro_batches
from nanochat.training.guard import EXIT_DIVERGED, DivergenceGuard, divergence_line

from test_speed import RandomLoader, make_trainer  # noqa: E402  (tests/unit is on sys.path under pytest)


# ---- verdicts ----------------------------------------------------------------------------------------------------

def test_verdicts_nonfinite_spike_warmup_window_and_off():
    g = DivergenceGuard(True, rtol=2.0, window=3, warmup=5)
    assert g.verdict(0, float("nan"), 1.0, [])[0] == "nonfinite"
    assert g.verdict(0, 3.0, float("inf"), [])[0] == "nonfinite"
    assert g.verdict(9, 3.0, None, [1.0, 1.0, 1.0]) == ("spike", "loss 3.000000 > 2 x median 1.000000 of the last 3 "
                                                                 "steps")
    assert g.verdict(9, 1.9, 1.0, [1.0, 1.0, 1.0]) is None
    assert g.verdict(4, 3.0, 1.0, [1.0, 1.0, 1.0]) is None          # warm-up
    assert g.verdict(9, 3.0, 1.0, [1.0, 1.0]) is None               # window not full yet
    assert g.remember([1.0, 2.0, 3.0], 4.0) == [2.0, 3.0, 4.0]
    off = DivergenceGuard(False)
    assert off.verdict(9, float("nan"), float("nan"), []) is None
    no_spikes = DivergenceGuard(True, rtol=0.0, window=3, warmup=0)
    assert no_spikes.verdict(9, 100.0, 1.0, [1.0] * 3) is None and no_spikes.remember([], 1.0) == []
    assert no_spikes.verdict(9, float("nan"), 1.0, []) is not None


def test_divergence_line_names_the_onset_step_and_the_kept_checkpoint():
    assert divergence_line(50, "nonfinite", "loss nan", 40) == \
        "Divergence: non-finite loss at step 50 (loss nan); update not applied; last checkpoint: step 000040"
    assert divergence_line(3, "spike", "x", None).endswith("last checkpoint: none")


# ---- the skip list -----------------------------------------------------------------------------------------------

def test_data_skip_format_and_the_resume_rule():
    assert parse_data_skip("40:16, 60:5") == {40: 16, 60: 5} and parse_data_skip("") == {}
    assert parse_data_skip("40:1,40:2") == {40: 3}
    assert format_data_skip({60: 5, 40: 16}) == "40:16,60:5"
    for bad in ("40", "a:b", "40:0", "-1:3"):
        with pytest.raises(UsageError, match="STEP:COUNT"):
            parse_data_skip(bad)
    # resuming from step 60: the checkpoint's applied history before 60, the flag from 60 on
    assert effective_skips({40: 99, 60: 2, 70: 1}, {"40": 16, "20": 1}, 60) == {20: 1, 40: 16, 60: 2, 70: 1}


def test_skip_micro_batches_reads_through_a_loader_without_skip_batches():
    loader = RandomLoader(2, 4)
    skip_micro_batches(loader, 5)
    assert loader.pos == 5
    skip_micro_batches(loader, 0)
    assert loader.pos == 5


# ---- the trainer -------------------------------------------------------------------------------------------------

def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_nan_fault_ends_the_stage_with_exit_5_and_the_update_is_not_applied(base_dir, monkeypatch, capsys):
    ref = make_trainer(["--num_iterations=3"])
    assert ref.run() == 0                                   # the weights after steps 0..2
    monkeypatch.setenv("NANOCHAT_FAULT_NAN_AT_STEP", "3")
    t = make_trainer(["--num_iterations=6"])
    assert t.run() == EXIT_DIVERGED
    out = capsys.readouterr().out
    assert "Divergence: non-finite loss at step 3 (loss nan); update not applied; last checkpoint: none" in out
    got, want = weights(t), weights(ref)
    assert all(torch.isfinite(v).all() for v in got.values())
    assert all(torch.equal(got[k], want[k]) for k in want)  # step 3 never touched the weights


def test_without_the_guard_the_nan_update_is_applied(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_NAN_AT_STEP", "1")
    t = make_trainer(["--num_iterations=3", "--divergence_guard=0"])
    assert t.run() == 0
    assert not all(torch.isfinite(v).all() for v in weights(t).values())


def test_spike_fault_is_a_spike_after_the_warm_up(base_dir, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_FAULT_SPIKE_AT_STEP", "4")
    t = make_trainer(["--num_iterations=8", "--spike_window=3", "--spike_warmup=3"])
    assert t.run() == EXIT_DIVERGED
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Divergence:")]
    assert len(line) == 1 and line[0].startswith("Divergence: loss spike at step 4 (loss ")
    assert len(t.state.recent_losses) == 3 and all(math.isfinite(x) for x in t.state.recent_losses)
    monkeypatch.setenv("NANOCHAT_FAULT_SPIKE_AT_STEP", "2")        # inside the warm-up: not a verdict
    assert make_trainer(["--num_iterations=4", "--spike_window=3", "--spike_warmup=3"]).run() == 0


def test_skipping_the_faulty_data_cures_the_run_and_shifts_the_data_steps(base_dir, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_FAULT_NAN_AT_STEP", "3")
    t = make_trainer(["--num_iterations=6", "--data_skip=2:2"])    # step 2 first discards the data of steps 2, 3
    assert t.run() == 0
    assert "Data skip: step 2 discards the data of 2 steps (4 micro-batches)" in capsys.readouterr().out
    accum = t.grad_accum_steps
    assert accum == 2 and t.loader.pos == (6 + 2) * accum and t.state.data_steps_skipped == 2
    assert all(torch.isfinite(v).all() for v in weights(t).values())


def saving_trainer(flags, tag):
    from dataclasses import asdict

    from nanochat.optim import get_lr_multiplier
    from nanochat.trainer import FlagParser, Trainer, add_training_flags
    from test_speed import CFG, tiny_model
    args = add_training_flags(FlagParser()).parse_args(
        ["--device_batch_size=2", "--max_seq_len=16", "--total_batch_size=64", "--eval_every=-1", "--save_every=2",
         "--num_iterations=6", f"--model_tag={tag}", "--keep_last=0", *flags])
    model = tiny_model()
    return Trainer(args=args, stage="base", model_tag=tag, model=model, optimizers=model.setup_optimizers(),
                   device="cpu", make_train_loader=lambda state: RandomLoader(2, 16, state), num_iterations=6,
                   lr_multiplier=lambda s: get_lr_multiplier(s, 6), meta={"model_config": asdict(CFG)})


def test_checkpoints_around_a_data_skip_resume_bitwise(base_dir, monkeypatch):
    """Checkpoint 2 holds the position before step 2's skip (a resume from it skips again), checkpoint 4 the one
    after it (a resume from it does not): both end bitwise equal to the uninterrupted run with the same list."""
    ref = saving_trainer(["--data_skip=2:1"], "ref")
    assert ref.run() == 0
    want = weights(ref)
    for tag, onset in (("from2", 3), ("from4", 4)):  # the fault hits the data step that step `onset` consumes
        monkeypatch.setenv("NANOCHAT_FAULT_NAN_AT_STEP", str(onset + 1))
        first = saving_trainer(["--data_skip=2:1"], tag)
        assert first.run() == EXIT_DIVERGED and first.last_saved_step == (2 if onset == 3 else 4)
        saved = sorted(p.name for p in Path(first.ckpt_dir).glob("meta_*.json"))
        assert saved == [f"meta_{s:06d}.json" for s in range(2, first.last_saved_step + 1, 2)]  # nothing new
        meta = json.loads((Path(first.ckpt_dir) / saved[-1]).read_text())
        assert meta["reason"] == "periodic" and meta["data_skip"] == ({} if onset == 3 else {"2": 1})
        monkeypatch.delenv("NANOCHAT_FAULT_NAN_AT_STEP")
        again = saving_trainer(["--data_skip=2:1", "--resume_from_step=latest"], tag)
        assert again.run() == 0 and again.start_step == first.last_saved_step
        got = weights(again)
        assert all(torch.equal(got[k], want[k]) for k in want), tag
        assert again.state.data_steps_skipped == 1 and again.loader.pos == ref.loader.pos

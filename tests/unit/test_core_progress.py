"""ETA: warm-up and eval pauses excluded, re-anchored after restarts, whole-pipeline estimate."""
import pytest

from nanotui.core.events import CheckpointSaved, Config, Step, ValBpb, ValLoss
from nanotui.core.plan import build_plan
from nanotui.core.progress import PipelineProgress, StageProgress


def step(i, total=100, dt_ms=None, kind="base"):
    return Step(kind, i, total, 3.0, 1.0, dt_ms)


def test_warmup_steps_are_excluded():
    p = StageProgress("base_train", warmup_steps=3)
    for i, dt in enumerate([60000, 9000, 5000] + [1000] * 10):    # compile, then steady 1 s/step
        p.observe(step(i, dt_ms=dt), t=float(i))
    assert p.sec_per_step == pytest.approx(1.0)
    assert p.step == 12 and p.remaining_steps == 87 and p.fraction == pytest.approx(0.13)
    assert p.eta_s() == pytest.approx(87.0)
    assert p.eta_s(now=12 + 10.0) == pytest.approx(77.0)          # counts down between step lines
    assert p.eta_s(now=12 + 1000.0) == 0.0


def test_no_estimate_before_steady_steps():
    p = StageProgress(warmup_steps=3)
    for i in range(3):
        p.observe(step(i, dt_ms=1000), t=float(i))
    assert p.sec_per_step is None and p.eta_s() is None


def test_eval_pauses_are_excluded_from_wall_clock_rate():
    """SFT lines have no dt: the rate comes from arrival times, minus gaps that contained an eval."""
    p = StageProgress("chat_sft", total=200, warmup_steps=1)
    t = 0.0
    for i in range(40):
        if i in (10, 20, 30):
            t += 0.1
            p.observe(ValLoss(i, 1.0), t)
            t += 60.0                                                # a minute of evaluation
        if i == 25:
            p.observe(CheckpointSaved(25, "/x"), t)
            t += 30.0
        t += 0.5
        p.observe(step(i, total=200, kind="sft"), t)
    assert p.sec_per_step == pytest.approx(0.5)
    assert p.eta_s() == pytest.approx((200 - 1 - 39) * 0.5)


def test_restart_reanchors_and_keeps_history():
    p = StageProgress("base_train", total=200, warmup_steps=2, min_samples=3)
    for i in range(50):
        p.observe(step(i, total=200, dt_ms=1000), t=float(i))
    assert p.sec_per_step == pytest.approx(1.0)
    # OOM fallback: resumed from the checkpoint at step 40, half the batch -> 2 s/step
    t = 100.0
    p.observe(step(41, total=200, dt_ms=30000), t)                 # warm-up again after the restart
    assert p.restarts == 1 and p.step == 41 and p.fraction == pytest.approx(42 / 200)
    assert p.sec_per_step == pytest.approx(1.0)                    # old rate until the new one is known
    assert p.eta_s() == pytest.approx(158.0)
    for i in range(42, 47):
        t += 2.0
        p.observe(step(i, total=200, dt_ms=2000), t)
    assert p.sec_per_step == pytest.approx(2.0)
    assert p.eta_s() == pytest.approx((200 - 1 - 46) * 2.0)
    assert len(p.history) == 50 + 6 and p.history[50] == (100.0, 41)


def test_explicit_restart_when_steps_do_not_go_back():
    p = StageProgress(warmup_steps=1, min_samples=1)
    for i in range(10):
        p.observe(step(i), t=float(i))
    p.mark_restart(50.0)                                            # resumed at the emergency checkpoint
    p.observe(step(10), t=200.0)                                    # no 190 s sample across the restart
    p.observe(step(11), t=200.5)
    p.observe(step(12), t=201.0)
    assert p.sec_per_step == pytest.approx(0.5)


def test_total_from_config_and_tokens_per_sec():
    p = StageProgress(warmup_steps=0)
    p.observe(Config("num_iterations", 21400), 0.0)
    p.observe(Config("total_batch_size", {"total_batch_size": 524288, "grad_accum": 128}), 0.0)
    p.observe(Step("base", 0, None, 3.0, 1.0, 500.0), 1.0)
    assert p.total == 21400 and p.tokens_per_sec == pytest.approx(1048576.0)
    p.observe(ValBpb(0, 1.0), 2.0)                                  # harmless for dt-based samples
    assert p.remaining_steps == 21399


def test_pipeline_estimate_scales_unstarted_stages():
    plan = build_plan("cpu-demo", {}, "python")
    pp = PipelineProgress(plan.stages, hints={"base_eval": 30.0}, warmup_steps=1)
    for name in ("data", "tok_train"):
        pp.mark_done(name)
    pp.start_stage("base_train", 0.0)
    for i in range(100):
        pp.observe("base_train", Step("base", i, 200, 3.0, 1.0, 250.0), float(i))
    est = {e.name: e for e in pp.estimate().stages}
    assert est["data"].basis == "done" and est["data"].eta_s == 0.0
    assert est["base_train"].basis == "measured" and est["base_train"].eta_s == pytest.approx(100 * 0.25)
    assert est["base_eval"].basis == "hint" and est["base_eval"].eta_s == 30.0
    # mid_train: 100 iterations x 8192 tokens at base_train's 0.25 s / 8192 tokens
    assert est["mid_train"].basis == "scaled" and est["mid_train"].eta_s == pytest.approx(25.0)
    assert est["chat_sft"].basis == "unknown"                        # SFT batch is in examples: no token rate
    whole = pp.estimate()
    assert whole.total_s is None and "chat_sft" in whole.unknown and "report" in whole.unknown
    assert whole.known_s == pytest.approx(100 * 0.25 + 30.0 + 25.0)
    pp.finish_stage("base_train", 100.0)
    assert pp.stage_estimate("base_train").eta_s == 0.0


def test_pipeline_restart_of_a_stage():
    pp = PipelineProgress([{"name": "base_train", "trains": True, "num_iterations": 100,
                            "total_batch_size": 1000}], warmup_steps=0)
    pp.start_stage("base_train", 0.0)
    for i in range(10):
        pp.observe("base_train", Step("base", i, 100, 3.0, 1.0, 1000.0), float(i))
    pp.finish_stage("base_train", 10.0, ok=False)
    pp.start_stage("base_train", 20.0)
    assert pp.progress["base_train"].restarts == 1
    assert pp.estimate().total_s == pytest.approx(90.0)             # re-anchored at step 9, old rate kept


def test_resumed_line_and_supervisor_restart_count_once():
    from nanotui.core.events import ResumedFrom
    p = StageProgress(warmup_steps=0, min_samples=1)
    p.mark_restart(0.0)                                             # nothing to restart yet
    for i in range(5):
        p.observe(step(i, dt_ms=1000), float(i))
    p.mark_restart(10.0)                                            # the supervisor restarts the stage
    p.observe(ResumedFrom(4), 11.0)                                 # and the trainer says so
    assert p.restarts == 1
    p.observe(step(5, dt_ms=3000), 12.0)
    assert p.restarts == 1 and p.sec_per_step == pytest.approx(3.0)


def test_progress_over_our_fallback_log():
    """Our OOM-fallback log, replayed with wall-clock = cumulative dt: one restart, rate of the new batch."""
    from pathlib import Path
    from nanotui.core.logparse import parse_text
    text = (Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "ours-base_train-oom-fallback.log").read_text()
    p = StageProgress("base_train")
    t = 0.0
    for ev in parse_text(text, kind="base"):
        if isinstance(ev, Step):
            t += ev.dt_ms / 1000
        p.observe(ev, t)
    assert p.restarts == 1 and p.total == 200 and p.step == 51
    assert p.sec_per_step == pytest.approx(0.201, abs=0.01)          # B=2 segment, not B=8's 0.182
    assert len(p.history) == 52

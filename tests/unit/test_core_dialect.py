"""Flag dialects without upstream: parsing sources written here, rewriting argv, plans, the OOM consent rule."""
import textwrap

import pytest

from nanotui.core import oom
from nanotui.core.dialect import Dialect, parse_source, restart_argv, scratch_note, script_of, total_batch
from nanotui.core.plan import plan_for_command

# Stand-ins with the same shapes as upstream's parsers (written for this test, not copied)
ARGPARSE_BASE = textwrap.dedent("""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--device-batch-size", type=int, default=16)
    parser.add_argument("--total-batch-size", type=int, default=-1, help="-1 = auto")
    parser.add_argument("--eval-tokens", type=int, default=10*1024)
    parser.add_argument("--save-every", type=int, default=-1)
    parser.add_argument("--resume-from-step", type=int, default=-1)
    parser.add_argument("--model-tag", type=str, default=None)
    args = parser.parse_args()
""")
ARGPARSE_SFT = textwrap.dedent("""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-tag", type=str, default=None)
    parser.add_argument("--device-batch-size", type=int, default=None)
    parser.add_argument("--total-batch-size", type=int, default=None)
""")
CONFIGURATOR_BASE = textwrap.dedent("""
    import os
    run = "dummy"
    depth = 12
    max_seq_len = 1024
    device_batch_size = 16
    total_batch_size = 4*1024
    model_tag = ""
    config_keys = [k for k,v in globals().items() if not k.startswith('_')]
    exec(open(os.path.join('nanochat', 'configurator.py')).read())
    late_global = 3
""")
CONFIGURATOR_SFT = CONFIGURATOR_BASE.replace('run = "dummy"', 'run = "dummy"\nsource = "mid"')


def test_2026_argparse_dialect_is_read_from_the_parser():
    d = parse_source(ARGPARSE_BASE, "base_train")
    assert (d.version, d.style, d.resume) == ("2026", "argparse", "step")
    assert d.spelling("device_batch_size") == "--device-batch-size" and d.spelling("--save-every") == "--save-every"
    assert d.defaults["eval_tokens"] == 10240 and d.defaults["total_batch_size"] == -1 and d.can_resume


def test_configurator_dialect_takes_the_globals_before_the_exec_line():
    d = parse_source(CONFIGURATOR_BASE, "base_train")
    assert (d.version, d.style, d.resume) == ("2025-11", "configurator", None)
    assert d.spelling("device-batch-size") == "--device_batch_size" and d.defaults["total_batch_size"] == 4096
    assert "late_global" not in d.flags and not d.has("save_every") and not d.can_resume


def test_unreadable_source_is_unknown_not_an_error():
    assert parse_source("def broken(:\n", "base_train").version == "unknown"
    assert parse_source("print('no flags')\n", "base_train").version == "unknown"


def test_2026_restart_uses_dashes_and_an_integer_step():
    d = parse_source(ARGPARSE_BASE, "base_train")
    argv = ["python", "-m", "scripts.base_train", "--depth=4", "--device-batch-size=8"]
    out = restart_argv(argv, d, device_bs=4, resume_step=20, save_every=10)
    assert out == ["python", "-m", "scripts.base_train", "--depth=4", "--device-batch-size=4",
                   "--resume-from-step=20", "--save-every=10"]
    assert not any("_" in a.split("=")[0] for a in out[3:])       # never the rejected underscore spellings
    # a second restart replaces the resume point; "no committed step" drops it; the user's save flag is kept
    again = restart_argv(out, d, device_bs=2, resume_step=None)
    assert "--device-batch-size=2" in again and not any(a.startswith("--resume") for a in again)
    mine = restart_argv(argv + ["--save-every", "7"], d, save_every=10)
    assert mine[-2:] == ["--save-every", "7"]


def test_torchrun_separator_keeps_flags_after_it():
    d = parse_source(ARGPARSE_BASE, "base_train")
    argv = ["torchrun", "--standalone", "--nproc_per_node=8", "-m", "scripts.base_train", "--", "--depth=24"]
    out = restart_argv(argv, d, device_bs=8, resume_step=40)
    assert out[:7] == argv and out[7:] == ["--device-batch-size=8", "--resume-from-step=40"]


def test_configurator_restart_never_adds_resume_and_uses_key_equals_value():
    d = parse_source(CONFIGURATOR_BASE, "base_train")
    argv = ["python", "-m", "scripts.base_train", "--device_batch_size=16", "--depth=4"]
    out = restart_argv(argv, d, device_bs=8, resume_step=30, save_every=10)
    assert out == ["python", "-m", "scripts.base_train", "--depth=4", "--device_batch_size=8"]


def test_plan_totals_and_sources_follow_the_dialect(tmp_path):
    base = parse_source(ARGPARSE_BASE, "base_train")
    st = plan_for_command(["python", "-m", "scripts.base_train", "--depth=4"], str(tmp_path), dialect=base).stages[0]
    assert st.total_batch_size is None             # -1: upstream computes it (not 524,288)
    assert (st.device_bs, st.seq_len, st.ckpt_subdir) == (16, 1024, "base_checkpoints/d4")
    fixed = plan_for_command(["python", "-m", "scripts.base_train", "--total-batch-size=8192"], None, dialect=base)
    assert fixed.stages[0].total_batch_size == 8192 and fixed.stages[0].ckpt_subdir == "base_checkpoints/d12"
    # 2026 SFT: no mid stage, it loads the largest base model and saves under its tag; batch inherited
    (tmp_path / "base_checkpoints" / "d6").mkdir(parents=True)
    (tmp_path / "mid_checkpoints" / "d2").mkdir(parents=True)
    sft = plan_for_command(["python", "-m", "scripts.chat_sft"], str(tmp_path),
                           dialect=parse_source(ARGPARSE_SFT, "chat_sft")).stages[0]
    assert (sft.ckpt_subdir, sft.total_batch_size, sft.device_bs) == ("chatsft_checkpoints/d6", None, None)
    old = plan_for_command(["python", "-m", "scripts.chat_sft"], str(tmp_path),
                           dialect=parse_source(CONFIGURATOR_SFT, "chat_sft")).stages[0]
    assert old.ckpt_subdir == "chatsft_checkpoints/d2"   # 2025-11 SFT: from mid by default
    # without a dialect (ours / unknown) the plan is what it always was
    ours = plan_for_command(["python", "-m", "scripts.base_train"], None).stages[0]
    assert ours.total_batch_size == 524288


def test_total_batch_and_script_names():
    d = parse_source(ARGPARSE_BASE, "base_train")
    assert total_batch(["--total-batch-size=-1"], d) is None and total_batch(["--total_batch_size=512"], d) == 512
    assert script_of("scripts.chat_sft") == "chat_sft" and script_of("nanochat/scripts/base_train.py") == "base_train"
    assert script_of("scripts.base_eval") is None and script_of("torch.distributed.run") is None


def test_dialect_round_trips_through_json():
    d = parse_source(ARGPARSE_BASE, "base_train")
    assert Dialect.from_dict(d.to_dict()) == d


# ---------------------------------------------------------------- the OOM policy's consent rule
def _oom(can_resume=True, note=""):
    return oom.OomDetected("base_train", 37, 8, 30, now=100.0, total_batch_size=8 * 256, seq_len=256,
                           can_resume=can_resume, note=note)


@pytest.mark.parametrize("grace", [0.0, 60.0])
def test_no_resume_waits_for_consent_whatever_the_grace(grace):
    note = scratch_note("base_train", parse_source(CONFIGURATOR_BASE, "base_train"), 37)
    state, actions = oom.decide(oom.OomState(grace=grace), _oom(False, note))
    assert state.phase == "waiting" and state.pending.deadline is None and state.pending.scratch
    assert any(isinstance(a, oom.Wait) and a.deadline is None for a in actions)
    msg = next(a.message for a in actions if isinstance(a, oom.Notify))
    assert "step 0" in msg and "37 steps done so far are lost" in msg
    assert oom.decide(state, oom.GraceTick(10_000.0))[1] == []            # never taken automatically
    state, actions = oom.decide(state, oom.UserFallback(4))              # the dialog's choice
    restart = next(a for a in actions if isinstance(a, oom.Restart))
    assert restart == oom.Restart(4, None)                                # from step 0, not "latest"
    text = next(a.message for a in actions if isinstance(a, oom.Notify))
    assert "from step 0" in text and "checkpoint" not in text


def test_grace_given_up_front_consents_to_a_restart_from_zero():
    state, actions = oom.decide(oom.OomState(grace=0.0, scratch_consent=True), _oom(False, "progress is lost"))
    assert oom.Restart(4, None) in actions
    state, actions = oom.decide(oom.OomState(grace=30.0, scratch_consent=True), _oom(False, "x"))
    assert state.pending.deadline == 130.0
    # set_grace while asked counts as consent too
    state, _ = oom.decide(oom.OomState(grace=60.0), _oom(False, "x"))
    state, actions = oom.decide(state, oom.SetGrace(0, now=101.0))
    assert oom.Restart(4, None) in actions


def test_resumable_scripts_keep_the_automatic_fallback():
    state, actions = oom.decide(oom.OomState(grace=0.0), _oom(True))
    assert oom.Restart(4, "latest") in actions and not state.pending.scratch

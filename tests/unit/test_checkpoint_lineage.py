"""Run lineage of checkpoints: run id in metas, strict `latest`, moving other runs' steps aside, retention per run,
loading this run's model, and the one-trainer-per-directory lock."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nanochat import checkpoint as ck
from nanochat.common import UsageError


def _save(d, step, run_id=None, keep_last=0, val_bpb=None):
    meta = {} if run_id is None else {"run_id": run_id}
    if val_bpb is not None:
        meta["val_bpb"] = val_bpb
    g = torch.Generator().manual_seed(step)
    ck.save_checkpoint(str(d), step, {"w": torch.randn(4, 4, generator=g)}, [{"state": {}, "param_groups": []}],
                       meta, keep_last=keep_last, quiet=True)


def _names(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture
def tagdir(tmp_path):
    d = tmp_path / "base_checkpoints" / "demo"
    d.mkdir(parents=True)
    return d


# ---------------------------------------------------------------------------------------------------------------------
# deciding where a stage starts

def test_latest_with_run_id_ignores_other_runs_and_starts_fresh(tagdir):
    for s in (20, 40, 60):
        _save(tagdir, s, "A")
    plan = ck.plan_resume(str(tagdir), "latest", "B")
    assert plan.step is None and plan.run_id == "B"
    assert plan.aside == [("A", [20, 40, 60], False)]


def test_latest_with_run_id_picks_own_newest_even_if_another_run_is_newer(tagdir):
    _save(tagdir, 10, "B")
    _save(tagdir, 20, "B")
    _save(tagdir, 60, "A")
    plan = ck.plan_resume(str(tagdir), "latest", "B")
    assert (plan.step, plan.run_id) == (20, "B")
    assert plan.aside == [("A", [60], False)]


def test_latest_without_run_id_continues_the_newest_lineage(tagdir):
    _save(tagdir, 10, "A")
    _save(tagdir, 30, "B")
    plan = ck.plan_resume(str(tagdir), "latest", None)
    assert (plan.step, plan.run_id, plan.continued) == (30, "B", True)
    assert plan.aside == [("A", [10], False)]


def test_fresh_start_without_run_id_gets_a_new_one_and_sets_everything_aside(tagdir):
    _save(tagdir, 10, "A")
    plan = ck.plan_resume(str(tagdir), None, None)
    assert plan.step is None and plan.run_id not in ("A", None)
    assert plan.aside == [("A", [10], False)]
    assert ck.plan_resume(str(tagdir), None, None).run_id != plan.run_id


def test_fresh_start_of_the_same_run_id_abandons_its_old_steps(tagdir):
    _save(tagdir, 10, "A")
    plan = ck.plan_resume(str(tagdir), None, "A")
    assert plan.aside == [("A", [10], True)]


def test_named_step_of_another_run_is_refused_with_the_way_to_do_it(tagdir):
    _save(tagdir, 10, "A")
    with pytest.raises(UsageError, match=r"step 10 .* belongs to run A, not to this run B; continue that run with "
                                         r"--run_id=A"):
        ck.plan_resume(str(tagdir), "10", "B")
    plan = ck.plan_resume(str(tagdir), "10", None)  # standalone: continue A on purpose
    assert (plan.step, plan.run_id) == (10, "A")


def test_resume_to_an_older_step_abandons_later_own_steps(tagdir):
    for s in (10, 20, 30):
        _save(tagdir, s, "A")
    plan = ck.plan_resume(str(tagdir), "10", "A")
    assert plan.step == 10 and plan.aside == [("A", [20, 30], True)]


def test_legacy_steps_without_run_id(tagdir):
    _save(tagdir, 5)             # upstream / older version: no run id
    plan = ck.plan_resume(str(tagdir), "latest", "B")
    assert plan.step is None and plan.aside == [(None, [5], False)]
    plan = ck.plan_resume(str(tagdir), "latest", None)   # standalone adopts it under a new id
    assert plan.step == 5 and plan.run_id and plan.aside == []


def test_bad_run_id_is_a_usage_error(monkeypatch):
    with pytest.raises(UsageError, match="run id"):
        ck.check_run_id("../x")
    monkeypatch.setenv("NANOCHAT_RUN_ID", "a b")
    with pytest.raises(UsageError, match="NANOCHAT_RUN_ID"):
        ck.run_id_from(None)
    assert ck.run_id_from("flag-wins") == "flag-wins"
    monkeypatch.setenv("NANOCHAT_RUN_ID", "20261201-220000-cpu-demo")
    assert ck.run_id_from(None) == "20261201-220000-cpu-demo"


# ---------------------------------------------------------------------------------------------------------------------
# moving aside: nothing deleted, upstream layout, one line each

def test_apply_plan_moves_other_runs_into_a_sibling_readable_directory(tagdir, capsys):
    for s in (20, 40, 60):
        _save(tagdir, s, "A")
    (tagdir / "meta_000099.json").write_text("garbage")   # not attributable: stays
    before = {n: (tagdir / n).read_bytes() for n in _names(tagdir)}
    plan = ck.plan_resume(str(tagdir), "latest", "B")
    (dest,) = ck.apply_plan(str(tagdir), plan)
    assert dest == str(tagdir.parent / "demo.run-A")
    assert _names(tagdir) == ["meta_000099.json"]
    assert ck.list_valid_steps(dest) == [20, 40, 60]
    assert {n: open(os.path.join(dest, n), "rb").read() for n in _names(dest)} == \
        {n: b for n, b in before.items() if n != "meta_000099.json"}
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"Checkpoints moved aside: steps 20..60 (3) of run A (not this run B) -> {dest}; use them with "
                   f"--model_tag=demo.run-A"]


def test_aside_directory_name_collision_never_overwrites(tagdir):
    _save(tagdir, 10, "A")
    ck.apply_plan(str(tagdir), ck.plan_resume(str(tagdir), None, "B"))
    _save(tagdir, 10, "A")  # the same step number of A again (e.g. A restarted elsewhere and copied back)
    (dest,) = ck.apply_plan(str(tagdir), ck.plan_resume(str(tagdir), None, "B"), quiet=True)
    assert dest == str(tagdir.parent / "demo.run-A.2")
    assert ck.list_valid_steps(str(tagdir.parent / "demo.run-A")) == [10]
    assert ck.list_valid_steps(dest) == [10]


def test_find_largest_model_ignores_directories_set_aside(tagdir, tmp_path, monkeypatch):
    _save(tagdir, 10, "A")
    ck.apply_plan(str(tagdir), ck.plan_resume(str(tagdir), None, "B"), quiet=True)
    os.utime(tagdir.parent / "demo.run-A", (2e9, 2e9))  # newest mtime
    assert ck.find_largest_model(str(tagdir.parent)) == "demo"
    assert ck.check_model_tag("demo.run-A") == "demo.run-A"  # and usable on purpose


# ---------------------------------------------------------------------------------------------------------------------
# retention and loading per run

def test_retention_with_run_id_never_touches_other_runs_or_metas_without_run_id(tagdir):
    _save(tagdir, 1)                 # no run id
    for s in (2, 3, 4):
        _save(tagdir, s, "A")
    for s in (5, 6, 7, 8):
        _save(tagdir, s, "B", keep_last=2)
    assert ck.list_valid_steps(str(tagdir)) == [1, 2, 3, 4, 7, 8]


def test_retention_keeps_the_best_of_own_run_only(tagdir):
    _save(tagdir, 1, "A", val_bpb=0.1)   # another run's better bpb does not protect anything of B
    for s, bpb in ((2, 0.9), (3, 1.0), (4, 1.1), (5, 1.2)):
        _save(tagdir, s, "B", keep_last=2, val_bpb=bpb)
    assert ck.list_valid_steps(str(tagdir)) == [1, 2, 4, 5]


def test_load_model_with_run_id_refuses_other_runs_checkpoint_naming_the_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    d = tmp_path / "base_checkpoints" / "demo"
    _save(d, 60, "A")
    with pytest.raises(UsageError) as exc:
        ck.load_model("base", "cpu", model_tag="demo", run_id="B",
                      purpose_flags=("--source_run_id", "--source_step"))
    assert str(exc.value) == (f"no base checkpoint of run B in {d}; it holds run A (newest: step 60); to use that one "
                              f"on purpose pass --source_run_id=A or --source_step=60")
    assert ck.latest_step_of_run(str(d), "A") == 60 and ck.latest_step_of_run(str(d), None) == 60


def test_latest_step_of_run_picks_own_lineage(tagdir):
    _save(tagdir, 10, "B")
    _save(tagdir, 60, "A")
    assert ck.latest_step_of_run(str(tagdir), "B") == 10
    assert ck.latest_step_of_run(str(tagdir), "C") is None


# ---------------------------------------------------------------------------------------------------------------------
# the directory lock

def test_lock_refuses_a_second_holder_naming_it(tagdir):
    first = ck.CheckpointLock(str(tagdir), "run-A").acquire()
    try:
        with pytest.raises(UsageError, match=rf"in use by another trainer \(run run-A, pid {os.getpid()} on "):
            ck.CheckpointLock(str(tagdir), "run-B").acquire()
        assert ck.CheckpointLock.is_locked(str(tagdir))
        assert ck.CheckpointLock.holder(str(tagdir))["run_id"] == "run-A"
    finally:
        first.release()
    assert not ck.CheckpointLock.is_locked(str(tagdir))


def test_lock_of_another_process_is_refused_and_a_dead_holders_lock_is_taken_over(tagdir):
    code = ("import sys, time; from nanochat import checkpoint as ck; "
            f"ck.CheckpointLock({str(tagdir)!r}, 'other').acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"run other, pid {proc.pid}"):
            ck.CheckpointLock(str(tagdir), "mine").acquire()
    finally:
        proc.kill()
        proc.wait()
    # the holder died (SIGKILL): its lock file is still there, naming a dead pid, but no longer held
    assert json.loads((tagdir / ".lock").read_text())["pid"] == proc.pid
    lock = ck.CheckpointLock(str(tagdir), "mine").acquire()
    try:
        assert ck.CheckpointLock.holder(str(tagdir))["pid"] == os.getpid()
        assert ck.CheckpointLock.holder(str(tagdir))["run_id"] == "mine"
    finally:
        lock.release()


def test_moved_aside_dirs_finds_this_runs_checkpoints_put_aside_by_another_run(tagdir):
    _save(tagdir, 10, "B")
    ck.apply_plan(str(tagdir), ck.plan_resume(str(tagdir), None, "standalone"), quiet=True)  # another run's start
    assert ck.latest_step_of_run(str(tagdir), "B") is None
    assert ck.moved_aside_dirs(str(tagdir), "B") == [str(tagdir.parent / "demo.run-B")]
    assert ck.moved_aside_dirs(str(tagdir), "C") == []

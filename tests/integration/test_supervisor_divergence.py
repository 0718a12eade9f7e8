"""Supervisor divergence rollback with the fake trainer (fast): exit 5 -> rollback to the newest checkpoint before
the onset with a data skip, recorded in state.json and events; the limit stops; a stop while a rollback waits or
runs resumes with the same skip list; `nanotui status` lists rollbacks."""
import json
import time

from supervisor_helpers import cli, launch, wait_for  # noqa: E402 (puts tests/fixtures on sys.path)

from fake_trainer import fake_plan, fake_stage  # noqa: E402
from nanotui.core.resumable import interrupted
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor


def types_of(rd):
    return [e["type"] for e in rd.read_events()]


def started(rd, attempt):
    return next(e for e in rd.read_events() if e["type"] == "stage_started" and e["attempt"] == attempt)


def diverging_stage(nan_at=12, **kw):
    stage = fake_stage(num_iterations=20, save_every=5, **kw)
    stage["env"] = {"NANOCHAT_FAULT_NAN_AT_STEP": str(nan_at)}
    return stage


def test_divergence_rolls_back_skips_the_window_and_finishes(base_dir):
    rd, sup = launch(base_dir, [diverging_stage(step_time=0.01)], grace=0)
    assert sup.wait(60) == 0
    st = rd.read_state()
    assert st["phase"] == "done" and st["stages"][0]["attempts"] == 2
    assert st["rollbacks"] == [{"stage": "base_train", "onset": 12, "kind": "nonfinite", "from_step": 10,
                                "skips": "10:13", "t": st["rollbacks"][0]["t"]}]
    assert st["data_skips"] == {"base_train": {"10": 13}}
    evs = rd.read_events()
    div = next(e for e in evs if e["type"] == "divergence")
    assert (div["step"], div["cause"], div["ckpt_step"], div["exit_code"]) == (12, "nonfinite", 10, 5)
    rb = next(e for e in evs if e["type"] == "rollback")
    assert (rb["from_step"], rb["skips"], rb["rollbacks"]) == (10, "10:13", 1)
    t = types_of(rd)
    assert t.index("divergence") < t.index("rollback") < t.index("stage_done")
    argv = started(rd, 2)["argv"]
    assert "--resume_from_step=10" in argv and "--data_skip=10:13" in argv
    log2 = rd.list_logs()[1].read_text()
    assert "Resuming optimization from step 10" in log2 and "Data skip: step 10 discards the data of 13 steps" in log2
    out = cli("status", rd.run_id).stdout
    assert "rollback 1 base_train: non-finite loss at step 12 -> checkpoint step 10, data skipped 10:13" in out
    assert json.loads(cli("status", "--json", rd.run_id).stdout)["rollbacks"][0]["skips"] == "10:13"


def test_rollback_limit_stops_with_a_reason(base_dir):
    plan = fake_plan(base_dir, [diverging_stage(step_time=0.01)], grace=0)
    plan["max_rollbacks"] = 0
    rd = RunDir.create(base_dir, plan)
    assert spawn_supervisor(rd).wait(60) == 0
    st = rd.read_state()
    assert st["phase"] == "stopped" and "after 0 rollback(s) of this stage (limit 0)" in st["reason"]
    assert st["rollbacks"] == [] and types_of(rd)[-2:] == ["divergence", "stopped"]
    # a policy stop, not an interrupted run: a boot-time `resume --all-unfinished` leaves it alone
    assert st["stop_cause"] == "divergence"
    assert interrupted(st, supervisor_alive=False, stage_alive=False) is None


def test_stop_while_the_rollback_waits_then_while_it_runs_resumes_exactly(base_dir):
    rd, sup = launch(base_dir, [diverging_stage(step_time=0.15)], grace=30)
    wait_for(lambda: "divergence" in types_of(rd), timeout=60, what="the divergence")
    wait_for(lambda: rd.read_state()["phase"] == "waiting", what="the rollback's grace period")
    assert "rolling back to step 10" in rd.read_state()["reason"]
    assert cli("stop", rd.run_id).returncode == 0
    assert sup.wait(30) == 0
    st = rd.read_state()
    assert st["phase"] == "stopped" and st["rollbacks"] == []          # stopped before the rollback happened
    # resumed: diverges again at 12 (from checkpoint 10, no skip yet), rolls back at once this time
    assert cli("resume", "--grace", "0", rd.run_id).returncode == 0
    wait_for(lambda: "rollback" in types_of(rd), timeout=60, what="the rollback")
    wait_for(lambda: "Data skip" in rd.list_logs()[-1].read_text(), timeout=30, what="the rolled-back attempt")
    time.sleep(0.5)
    assert cli("stop", rd.run_id).returncode == 0                    # SIGTERM to the rolled-back attempt
    wait_for(lambda: not rd.supervisor_alive() and rd.read_state()["phase"] == "stopped", timeout=30,
             what="stopped")
    stopped_log = rd.list_logs()[-1].read_text()
    assert "Stopped on request (SIGTERM)" in stopped_log
    assert rd.read_state()["data_skips"] == {"base_train": {"10": 13}}
    assert cli("resume", rd.run_id).returncode == 0
    wait_for(lambda: rd.read_state()["phase"] == "done" and not rd.supervisor_alive(), timeout=60, what="done")
    last = rd.read_events()
    final = [e for e in last if e["type"] == "stage_started"][-1]
    assert "--data_skip=10:13" in final["argv"] and "--resume_from_step=latest" in final["argv"]
    assert len(rd.read_state()["rollbacks"]) == 1
    assert "Divergence" not in rd.list_logs()[-1].read_text()


def test_exit_5_without_the_divergence_line_is_a_crash(base_dir):
    """Only our trainer's trailer makes exit 5 a divergence (an upstream script may exit 5 for its own reasons)."""
    rd, sup = launch(base_dir, [fake_stage(num_iterations=3, step_time=0.01, exit_code=5)], grace=0)
    assert sup.wait(60) == 1
    st = rd.read_state()
    assert st["phase"] == "failed" and "exited with code 5" in st["reason"] and st["rollbacks"] == []
    assert "divergence" not in types_of(rd) and "crashed" in types_of(rd)

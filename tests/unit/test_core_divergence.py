"""The supervisor's divergence branch, pure: rollback target and skip list arithmetic, decide() with grace, retry,
stop and the rollback limit, the run state's rollbacks/skip list round-trip, the trailer's parse, status lines."""
import pytest

from nanotui.core import oom as policy
from nanotui.core.divergence import (format_rollbacks, format_skips, parse_skips, rollback_target,
                                     skips_after_rollback, skips_from_json)
from nanotui.core.events import Divergence
from nanotui.core.logparse import parse_line
from nanotui.core.runstate import RunState, StateError, make_event


def test_rollback_target_is_the_newest_checkpoint_strictly_before_the_onset():
    assert rollback_target([20, 40, 60], 50) == 40
    assert rollback_target([20, 40, 50], 50) == 40          # the onset's own checkpoint is not "before" it
    assert rollback_target([60], 50) is None and rollback_target([], 5) is None


def test_skip_list_grows_at_the_target_and_drops_abandoned_entries():
    assert skips_after_rollback({}, 40, 50, 10) == {40: 21}           # data of steps 40..60
    assert skips_after_rollback({40: 21}, 40, 45, 10) == {40: 21 + 16}  # again from 40: counts add up
    assert skips_after_rollback({40: 21, 60: 3}, 40, 62, 0) == {40: 21 + 23}  # 60's entry was abandoned
    assert skips_after_rollback({}, None, 7, 10) == {0: 18}           # no checkpoint: from the start
    assert format_skips({60: 3, 40: 21}) == "40:21,60:3"
    assert skips_from_json({"40": 21, "x": 1, "5": 0, "6": True}) == {40: 21}
    assert parse_skips("40:21, 60:3,bad,7:0") == {40: 21, 60: 3} and parse_skips(None) == {}


def detected(**kw):
    args = dict(stage="base_train", step=50, kind="nonfinite", ckpt_steps=(20, 40), rollbacks=0, skips=(),
                now=100.0)
    args.update(kw)
    return policy.DivergenceDetected(**args)


def test_decide_waits_the_grace_period_then_rolls_back():
    st, actions = policy.decide(policy.OomState(grace=60.0), detected())
    assert st.phase == "waiting" and isinstance(st.pending, policy.PendingDivergence)
    assert [type(a) for a in actions] == [policy.Notify, policy.Wait] and actions[1].deadline == 160.0
    assert actions[0].kind == "divergence" and "rollback 1/3 to step 40 in 60s" in actions[0].message
    assert policy.decide(st, policy.GraceTick(159.0)) == (st, [])
    st2, actions = policy.decide(st, policy.GraceTick(160.0))
    rb = actions[0]
    assert st2.phase == "restarting" and isinstance(rb, policy.Rollback)
    assert (rb.from_step, rb.skips, rb.onset, rb.kind) == (40, ((40, 21),), 50, "nonfinite")
    assert actions[1].kind == "rollback" and "skipping 21 steps of data" in actions[1].message


def test_decide_grace_zero_acts_at_once_and_off_waits_for_a_command():
    st, actions = policy.decide(policy.OomState(grace=0.0), detected(kind="spike"))
    assert st.phase == "restarting" and [type(a) for a in actions] == [policy.Notify, policy.Rollback, policy.Notify]
    st, actions = policy.decide(policy.OomState(grace="off"), detected())
    assert actions[-1] == policy.Wait(None)
    assert policy.decide(st, policy.GraceTick(10**9)) == (st, [])
    assert isinstance(policy.decide(st, policy.UserFallback(4))[1][0], policy.Reject)
    st2, actions = policy.decide(st, policy.UserRetry())
    assert isinstance(actions[0], policy.Rollback) and "requested by the user" in actions[0].why
    st3, actions = policy.decide(st, policy.SetGrace(0, now=100.0))
    assert isinstance(actions[0], policy.Rollback)
    stopped, actions = policy.decide(st, policy.UserStop("stop"))
    assert stopped.phase == "stopped" and "base_train: stop" in actions[1].message


def test_decide_stops_and_notifies_after_the_rollback_limit():
    st, actions = policy.decide(policy.OomState(grace=0.0), detected(rollbacks=3))
    assert st.phase == "stopped" and isinstance(actions[0], policy.Stop)
    assert actions[1].kind == "stopped" and "after 3 rollback(s)" in actions[1].message
    st, actions = policy.decide(policy.OomState(grace=0.0), detected(rollbacks=1, max_rollbacks=2))
    assert isinstance(actions[1], policy.Rollback)


def test_run_state_keeps_rollbacks_and_skip_lists():
    st = RunState.initial("r1", [{"name": "base_train"}])
    st.rollbacks.append({"stage": "base_train", "onset": 50, "kind": "nonfinite", "from_step": 40,
                         "skips": "40:21", "t": 1.0})
    st.data_skips["base_train"] = {"40": 21}
    again = RunState.from_json(st.to_json())
    assert again.rollbacks == st.rollbacks and again.data_skips == {"base_train": {"40": 21}}
    with pytest.raises(StateError, match="data_skips"):
        RunState.from_json(dict(st.to_json(), data_skips={"base_train": 3}))
    make_event("divergence", stage="base_train", step=50, cause="nonfinite", detail="loss nan", ckpt_step=40,
               exit_code=5, rollbacks=0)
    make_event("rollback", stage="base_train", from_step=40, onset=50, cause="spike", skips="40:21", rollbacks=1,
               why="x")


def test_trailer_parses_and_status_lines():
    ev = parse_line("Divergence: loss spike at step 50 (loss 61.2 > 2 x median 6.1 of the last 20 steps); update "
                    "not applied; last checkpoint: step 000040")
    assert ev == Divergence(50, "spike", "loss 61.2 > 2 x median 6.1 of the last 20 steps", 40)
    assert format_rollbacks([{"stage": "base_train", "onset": 50, "kind": "nonfinite", "from_step": 40,
                              "skips": "40:21"}]) == \
        ["rollback 1 base_train: non-finite loss at step 50 -> checkpoint step 40, data skipped 40:21"]

"""OOM policy: the fallback ladder and decide(state, event) -> actions, table-driven."""
import pytest

from nanotui.core.oom import (GraceTick, Notify, OomDetected, OomState, Reject, Restart, Resumed, SetGrace, Stop,
                              UserFallback, UserRetry, UserStop, Wait, decide, fallback_ladder, parse_grace)


@pytest.mark.parametrize("bs, total, seq, world, ladder", [
    (4, 524288, 1024, 1, [2, 1]),
    (16, 524288, 1024, 1, [8, 4, 2, 1]),
    (32, 524288, 2048, 8, [16, 8, 4, 2, 1]),
    (8, 8192, 256, 1, [4, 2, 1]),
    (8, 8192, 2048, 2, [2, 1]),        # 8192/(2048*2)=2 sequences per rank: 4 no longer divides
    (1, 524288, 1024, 1, []),
    (3, 524288, 1024, 1, [2, 1]),
    (6, 6 * 1024, 1024, 1, [2, 1]),    # 4 does not divide 6
    (4, 1000, 1024, 1, []),            # total not a multiple of T: nothing fits
    (8, None, 1, 1, [4, 2, 1]),        # unknown total: plain halving
])
def test_fallback_ladder(bs, total, seq, world, ladder):
    assert fallback_ladder(bs, total, seq, world) == ladder


def oom(bs=4, now=100.0, ckpt=120, step=123):
    return OomDetected("base_train", step, bs, ckpt, now, 524288, 1024, 1)


def test_grace_period_then_automatic_fallback():
    st, actions = decide(OomState(grace=60), oom())
    assert st.phase == "waiting" and st.pending.ladder == (2, 1)
    assert actions[-1] == Wait(160.0) and isinstance(actions[0], Notify) and actions[0].kind == "oom"
    st, actions = decide(st, GraceTick(159.9))
    assert actions == [] and st.phase == "waiting"
    st, actions = decide(st, GraceTick(160.0))
    assert actions[0] == Restart(2, "latest") and actions[1].kind == "fallback"
    assert "checkpoint step 120" in actions[1].message and st.phase == "restarting"
    st, actions = decide(st, Resumed(2))
    assert st.phase == "idle" and st.pending is None and actions == []
    assert st.history == (("base_train", 123, 4),)


def test_grace_zero_acts_at_once():
    st, actions = decide(OomState(grace=0), oom(bs=16))
    assert Restart(8, "latest") in actions and st.phase == "restarting"


def test_grace_off_waits_for_a_command():
    st, actions = decide(OomState(grace="off"), oom())
    assert Wait(None) in actions
    st, actions = decide(st, GraceTick(10_000_000.0))
    assert actions == [] and st.phase == "waiting"
    st, actions = decide(st, UserFallback(1))
    assert actions[0] == Restart(1, "latest")


def test_oom_at_batch_one_stops_with_reason():
    st, actions = decide(OomState(), oom(bs=1))
    assert st.phase == "stopped" and isinstance(actions[0], Stop)
    assert "device_batch_size=1" in actions[0].reason and "max_seq_len" in actions[0].reason


def test_oom_without_batch_size_stops():
    st, actions = decide(OomState(), OomDetected("base_eval", None, None, None, 0.0))
    assert st.phase == "stopped" and "no device batch size" in actions[0].reason


@pytest.mark.parametrize("event, expected", [
    (UserFallback(3), Reject),           # not a rung
    (UserFallback(4), Reject),           # the batch that just failed
    (UserFallback(8), Reject),           # larger
    (UserFallback(1), Restart),
    (UserRetry(), Restart),
    (UserStop(), Stop),
])
def test_user_choices_while_waiting(event, expected):
    st, _ = decide(OomState(grace=60), oom())
    st2, actions = decide(st, event)
    assert isinstance(actions[0], expected)
    if expected is Reject:
        assert st2 == st and "ladder [2, 1]" in actions[0].reason
    if isinstance(event, UserRetry):
        assert actions[0] == Restart(4, "latest") and actions[1].kind == "retry"


def test_commands_without_pending_oom_are_rejected():
    for ev in (UserFallback(2), UserRetry()):
        st, actions = decide(OomState(), ev)
        assert st == OomState() and isinstance(actions[0], Reject)


def test_set_grace_while_waiting_recomputes_deadline():
    st, _ = decide(OomState(grace=60), oom(now=100.0))
    st, actions = decide(st, SetGrace("off", 110.0))
    assert actions == [Wait(None)] and st.pending.deadline is None
    st, actions = decide(st, SetGrace(5, 110.0))             # 100 + 5 already passed: act now
    assert actions[0] == Restart(2, "latest")


def test_repeated_ooms_walk_down_the_ladder():
    st = OomState(grace=0)
    for bs, expect in ((16, 8), (8, 4), (4, 2), (2, 1)):
        st, actions = decide(st, oom(bs=bs))
        assert actions[1] == Restart(expect, "latest")
        st, _ = decide(st, Resumed(expect))
    st, actions = decide(st, oom(bs=1))
    assert isinstance(actions[0], Stop) and len(st.history) == 5


@pytest.mark.parametrize("value, expected", [("60", 60.0), (0, 0.0), ("off", "off"), ("OFF", "off"),
                                             ("2.5s", 2.5), (30, 30.0)])
def test_parse_grace(value, expected):
    assert parse_grace(value) == expected


@pytest.mark.parametrize("value", ["soon", -1, "-5", True, None])
def test_parse_grace_rejects(value):
    with pytest.raises(ValueError, match="grace must be"):
        parse_grace(value)

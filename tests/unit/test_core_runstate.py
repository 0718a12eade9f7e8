"""core.runstate: the typed run state round-trips through JSON, wrong shapes are one-line StateErrors; events vocabulary."""
import json

import pytest

from nanotui.core.runstate import (EVENT_FIELDS, CheckpointRef, PendingOomRecord, RunState, StageRecord, StateError,
                                   ckpt_family, log_kind, make_event)

STAGES = [{"name": "base_train", "device_bs": 8}, {"name": "mid_train", "device_bs": 8}]


def test_initial_round_trip_and_extension_fields_survive():
    st = RunState.initial("r1", STAGES)
    st.last_checkpoint = CheckpointRef("base_train", 25, "/x")
    st.pending_oom = PendingOomRecord("base_train", 26, 8, [4, 2, 1], None)
    st.carried_bs["1024"] = 2
    obj = json.loads(json.dumps(st.to_json()))
    obj["probe"] = {"device_bs_plan": [8, 4]}  # a later field (e.g. a VRAM planner's) that this reader does not know
    back = RunState.from_json(obj, n_stages=2)
    assert back.last_checkpoint == st.last_checkpoint and back.pending_oom == st.pending_oom
    assert back.stages == [StageRecord("base_train", device_bs=8), StageRecord("mid_train", device_bs=8)]
    assert back.carried_bs == {"1024": 2} and back.to_json()["probe"] == {"device_bs_plan": [8, 4]}
    assert RunState.from_json(back.to_json(), 2).to_json() == back.to_json()


@pytest.mark.parametrize("obj,words", [
    ({}, "empty object"),
    ("x", "str"),
    ({"phase": "sleeping"}, "phase"),
    ({"stage_index": "2"}, "stage_index"),
    ({"stage_index": True}, "stage_index"),
    ({"stage_index": -1}, ">= 0"),
    ({"stage_index": 2, "phase": "running"}, "past the plan"),
    ({"stages": "abc"}, "stages"),
    ({"stages": [{"name": "a", "state": "zombie"}]}, "state"),
    ({"stages": [{"state": "done"}]}, "name"),
    ({"pending_oom": {"ladder": "4,2"}}, "ladder"),
    ({"last_checkpoint": {"stage": "x"}}, "last_checkpoint"),
    ({"grace": "soon"}, "grace"),
    ({"stages": [{"name": "a"}], "phase": "running"}, "records"),
])
def test_wrong_shapes_are_state_errors(obj, words):
    with pytest.raises(StateError, match=words):
        RunState.from_json(obj, n_stages=2)


def test_finished_run_may_point_past_the_last_stage():
    assert RunState.from_json({"phase": "done", "stage_index": 2}, n_stages=2).stage_index == 2


def test_event_vocabulary_is_checked():
    assert make_event("fallback", stage="b", from_bs=8, to_bs=4, step="latest", why="oom policy")["type"] == "fallback"
    with pytest.raises(ValueError, match="resume"):
        make_event("fallback", stage="b", resume="latest")  # one spelling for a restart point: `step`
    with pytest.raises(ValueError, match="unknown event kind"):
        make_event("phase_changed")
    assert all(isinstance(v, tuple) for v in EVENT_FIELDS.values())
    # resumed and fallback/retry name their restart point the same way
    assert "step" in EVENT_FIELDS["resumed"] and "step" in EVENT_FIELDS["fallback"] and "step" in EVENT_FIELDS["retry"]


def test_stage_name_maps():
    assert (ckpt_family("base_train"), ckpt_family("chat_sft"), ckpt_family("data")) == ("base", "chatsft", None)
    assert (log_kind("mid_train"), log_kind("chat_sft")) == ("mid", "sft")

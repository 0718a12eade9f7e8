"""Events are frozen and slotted; the fast Step constructor yields a real, equal, frozen Step."""
import dataclasses

import pytest

from nanotui.core import events
from nanotui.core.events import Step, ValBpb, new_step


def test_events_are_frozen_and_slotted():
    for name in events.__all__:
        cls = getattr(events, name)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            assert cls.__dataclass_params__.frozen, name
            assert "__slots__" in cls.__dict__, name
    with pytest.raises(dataclasses.FrozenInstanceError):
        ValBpb(1, 2.0).bpb = 3.0


def test_fast_step_matches_dataclass_layout():
    assert events._StepBuilder.__slots__ == Step.__slots__ == tuple(f.name for f in dataclasses.fields(Step))
    args = ("base", 1, 10, 2.5, 1.0, 100.0, 5.0, 40.0, 0.1, 0.5, 1, True, None, 10.0, 5.0)
    fast, slow = new_step(*args), Step(*args)
    assert type(fast) is Step and fast == slow and hash(fast) == hash(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.loss = 0.0

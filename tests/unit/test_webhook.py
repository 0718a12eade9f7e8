"""Pushed notifications: which events post, their one-line text, and a real POST to local endpoints on 127.0.0.1
(a working one, one that refuses connections and one that never answers: neither blocks the caller)."""
import time

from http_sinks import Hanging, Sink, refusing_url
from nanotui.core.notify import PUSH_KINDS, push_text
from nanotui.runtime.webhook import RunNotifier, Webhook


def test_push_kinds_by_event_kind():
    rid = "20261204-150000-4090"
    assert push_text({"type": "done", "message": "run x finished all 10 stages"}, rid) == \
        f"nanotui {rid}: done: run x finished all 10 stages"
    assert push_text({"type": "crashed", "stage": "base_train", "message": "base_train: exited with code 1"},
                     rid).startswith(f"nanotui {rid}: crashed: base_train")
    assert "OOM fallback" in push_text({"type": "fallback", "stage": "base_train", "from_bs": 4, "to_bs": 2}, rid)
    assert "4 -> 2" in push_text({"type": "fallback", "stage": "base_train", "from_bs": 4, "to_bs": 2}, rid)
    assert "disk full" in push_text({"type": "disk_full", "message": "disk full: cannot write state.json"}, rid)
    # the divergence guard's rollback event (its kind, whatever its fields): posted by kind alone
    text = push_text({"type": "rollback", "stage": "base_train", "to_step": 1500}, rid)
    assert text == f"nanotui {rid}: divergence rollback: base_train: rolled back to step 1500"
    assert push_text({"type": "rollback", "message": "loss spiked; back to step 1500"}, rid).endswith(
        "loss spiked; back to step 1500")
    for quiet in ("checkpoint", "stage_started", "waiting", "oom", "resumed", "command", "divergence"):
        assert push_text({"type": quiet, "stage": "base_train"}, rid) is None, quiet
    assert {"done", "crashed", "fallback", "disk_full", "rollback"} <= set(PUSH_KINDS)


def test_one_post_per_crash_and_one_line():
    crashed = {"type": "crashed", "stage": "base_train", "message": "base_train: exited with code 1"}
    failed = {"type": "failed", "stage": "base_train", "message": "base_train: exited with code 1"}
    assert push_text(failed, "r", previous=crashed) is None
    assert push_text(failed, "r") is not None              # a stage that could not start: failed alone
    evil = push_text({"type": "crashed", "message": "boom\nstep 00001/00010 | loss: 1\x1b]9;x\x07"}, "r")
    assert "\n" not in evil and "\x1b" not in evil and "\x07" not in evil


def test_posts_reach_a_local_server_in_order():
    with Sink() as sink:
        hook = Webhook(sink.url, timeout=2)
        note = RunNotifier("run-1", hook)
        for ev in ({"type": "stage_started", "stage": "base_train"},
                   {"type": "fallback", "stage": "base_train", "from_bs": 4, "to_bs": 2, "message": "to 2"},
                   {"type": "done", "message": "all done"}):
            note(ev)
        assert note.close()
        assert sink.bodies() == ["nanotui run-1: OOM fallback: to 2", "nanotui run-1: done: all done"]
        path, headers, _ = sink.posts[0]
        assert path == "/nanotui-test" and headers["Content-Type"].startswith("text/plain")
        assert hook.sent == 2 and hook.failed == 0


def test_refusing_endpoint_is_noted_not_raised(capsys):
    import io
    log = io.StringIO()
    hook = Webhook(refusing_url(), timeout=2, log=log)
    t0 = time.monotonic()
    assert hook.submit("nanotui r: done: x")
    assert time.monotonic() - t0 < 0.05            # submit never waits for the network
    assert hook.close(wait=5)
    assert hook.failed == 1 and hook.sent == 0
    assert "could not post" in log.getvalue() and "refused" in log.getvalue().lower()


def test_hanging_endpoint_never_blocks_the_caller():
    import io
    with Hanging() as stuck:
        hook = Webhook(stuck.url, timeout=0.5, log=io.StringIO())
        t0 = time.monotonic()
        for i in range(200):   # more than the queue holds: the rest are dropped, nothing waits
            hook.submit(f"event {i}")
        assert time.monotonic() - t0 < 0.1
        t0 = time.monotonic()
        drained = hook.close(wait=1.0)
        assert time.monotonic() - t0 < 1.5           # close is bounded even with posts stuck in the queue
        assert not drained and hook.dropped > 0 and hook.sent == 0

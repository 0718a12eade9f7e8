"""The supervisor's writer of state.json and events.jsonl: checks the event vocabulary; a full disk is reported, never fatal."""
from __future__ import annotations

import errno
import os
import sys
import threading
import time
from typing import Callable, Optional

from nanotui.core.runstate import DISK_FULL, RunState, make_event
from nanotui.runtime.rundir import RunDir, write_all

RESERVE_NAME, RESERVE_BYTES = ".disk_reserve", 16 * 1024
DISK_RECHECK_S = 5.0    # while the disk is full: how often to try to take the reserve back


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class Recorder:
    """Saves `state` and appends events for one run. On ENOSPC (or any write error) it sets `state.problem`, gives up
    a small reserve file in the run dir so that state.json can still say so, notifies (`disk_full`), and keeps
    going; when the reserve can be written again the problem is cleared (`disk_ok`)."""

    def __init__(self, rd: RunDir, state: RunState, lock: threading.RLock,
                 broadcast: Optional[Callable[[dict], None]] = None,
                 on_event: Optional[Callable[[dict], None]] = None):
        self.rd, self.state, self.lock = rd, state, lock
        self.broadcast = broadcast
        self.on_event = on_event   # e.g. runtime/webhook.RunNotifier: sees every event recorded, must not block
        self.lost_events = 0
        self._last_write = 0.0
        self._trouble: str | None = None   # which file could not be written
        self._checked = 0.0

    # ---- the reserve ----------------------------------------------------------------------------
    def make_reserve(self) -> bool:
        path = self.rd.path / RESERVE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, b"\0" * RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            try:
                path.unlink()
            except OSError:
                pass
            return False

    def _release_reserve(self) -> None:
        try:
            (self.rd.path / RESERVE_NAME).unlink()
        except OSError:
            pass

    # ---- trouble and recovery -------------------------------------------------------------------
    def _write_failed(self, where: str, e: OSError) -> None:
        if self._trouble is not None:
            return
        self._trouble, self._checked = where, time.monotonic()
        what = DISK_FULL if is_disk_full(e) else "write error"
        self.state.problem = f"{what}: cannot write {where} ({e.strerror or e}); the stage goes on, free some space"
        print(f"warning: {self.state.problem}", file=sys.stderr, flush=True)
        if self.broadcast:
            self.broadcast({"notify": "disk_full", "message": f"run {self.rd.run_id}: {self.state.problem}"})
        self._release_reserve()
        self.event("disk_full", where=where, error=str(e), message=self.state.problem)
        self.save()

    def _recovered(self) -> None:
        where, self._trouble = self._trouble, None
        self.state.problem = None
        self.event("disk_ok", where=where, message=f"disk space is back ({self.lost_events} event(s) were lost)")
        self.save()

    # ---- writing --------------------------------------------------------------------------------
    def save(self, force: bool = True) -> None:
        """Write state.json (at most every 0.5 s unless `force`)."""
        now = time.time()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        with self.lock:
            try:
                self.rd.write_state(self.state)
            except OSError as e:
                self._write_failed("state.json", e)
                return
        if self._trouble is not None and time.monotonic() - self._checked > DISK_RECHECK_S:
            self._checked = time.monotonic()
            if self.make_reserve():
                self._recovered()

    def event(self, type: str, notify: str | None = None, message: str | None = None, **fields) -> dict:
        """Append an event (kind and fields checked against core.runstate.EVENT_FIELDS); with `notify`, also
        broadcast it to subscribers."""
        make_event(type, **fields)  # one vocabulary: an unknown kind or field is a bug, caught by the tests
        try:
            ev = self.rd.append_event(type, **({"message": message} if message else {}), **fields)
        except OSError as e:
            self.lost_events += 1
            ev = {"t": round(time.time(), 3), "type": type, **fields}
            self._write_failed("events.jsonl", e)
        if notify and self.broadcast:
            self.broadcast({"notify": notify, "message": message or type, "event": ev})
        if self.on_event is not None:
            try:
                self.on_event(ev if "message" in ev or not message else dict(ev, message=message))
            except Exception as e:  # a notifier bug must never take the supervisor down
                print(f"warning: event hook failed: {e}", file=sys.stderr, flush=True)
        return ev

"""Run events as plain-text POSTs to the user's notify_url, from a background thread: a bad endpoint never stalls a run."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import urllib.request
from typing import Callable, Mapping, Optional

from nanotui.core.notify import push_text

DEFAULT_TIMEOUT_S = 5.0        # connect and each read of one POST (env NANOTUI_NOTIFY_TIMEOUT)
MAX_QUEUED = 64                # posts waiting behind a slow endpoint; more are dropped (and counted)


def _timeout(env: Mapping[str, str]) -> float:
    try:
        t = float(env.get("NANOTUI_NOTIFY_TIMEOUT", DEFAULT_TIMEOUT_S))
        return t if 0 < t < 3600 else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def post_text(url: str, text: str, timeout: float, title: str = "nanotui") -> int:
    """One POST of `text` (UTF-8 text/plain; ntfy reads the body as the message and `Title` as its title).
    Returns the HTTP status; raises OSError/urllib errors on failure."""
    req = urllib.request.Request(url, data=text.encode("utf-8"), method="POST",
                                 headers={"Content-Type": "text/plain; charset=utf-8", "Title": title,
                                          "User-Agent": "nanotui"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (the user's own URL)
        resp.read(4096)
        return resp.status


class Webhook:
    """Posts texts in order from one daemon thread. `submit` never blocks; `close(wait)` gives the queue at most
    `wait` seconds to drain (the supervisor calls it on exit so that `done` still goes out)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S,
                 post: Callable[[str, str, float], int] | None = None, log=None):
        self.url, self.timeout = url, timeout
        self._post = post or post_text
        self._log = log if log is not None else sys.stderr
        self._q: queue.Queue = queue.Queue(MAX_QUEUED)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: Optional[str] = None
        self._thread = threading.Thread(target=self._loop, name="notify-url", daemon=True)
        self._thread.start()

    def submit(self, text: str) -> bool:
        try:
            self._q.put_nowait(text)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _loop(self) -> None:
        while True:
            text = self._q.get()
            if text is None:
                return
            try:
                self._post(self.url, text, self.timeout)
                self.sent += 1
            except Exception as e:  # refused, timed out, 4xx/5xx, bad DNS: noted, never raised
                self.failed += 1
                self.last_error = " ".join(str(e).split())[:200] or type(e).__name__
                try:
                    print(f"notify_url: could not post ({self.last_error}): {text[:120]}", file=self._log,
                          flush=True)
                except (OSError, ValueError):
                    pass

    def close(self, wait: float | None = None) -> bool:
        """Stop after the queued posts; True when they all went out within `wait` seconds."""
        wait = self.timeout + 1.0 if wait is None else wait
        deadline = time.monotonic() + wait
        while True:
            try:
                self._q.put(None, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()


class RunNotifier:
    """The Recorder's event hook: turns the run's events into posts (core.notify.PUSH_KINDS)."""

    def __init__(self, run_id: str, hook: Webhook):
        self.run_id, self.hook = run_id, hook
        self._previous: Optional[Mapping] = None

    def __call__(self, ev: Mapping) -> None:
        text = push_text(ev, self.run_id, self._previous)
        if text is not None:
            self._previous = ev
            self.hook.submit(text)

    def close(self) -> bool:
        return self.hook.close()


def for_run(run_id: str, plan: Mapping, env: Optional[Mapping[str, str]] = None) -> Optional[RunNotifier]:
    """A notifier for the run when a notify URL is set (run.json, NANOTUI_NOTIFY_URL or the config file)."""
    from nanotui.runtime.settings import notify_url
    env = os.environ if env is None else env
    url, source = notify_url(plan, env)
    if not url:
        if source not in ("default", "flag (off)"):
            print(f"notify_url: off ({source})", file=sys.stderr, flush=True)
        return None
    print(f"notify_url: posting run events (from {source})", file=sys.stderr, flush=True)
    return RunNotifier(run_id, Webhook(url, _timeout(env)))

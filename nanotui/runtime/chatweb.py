"""The dashboard's chat backend: a `nanochat.scripts.chat_web` child process on a free local port, and a
streaming client of its /chat/completions API (so nanotui itself never imports torch)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

READY = "chat_web: serving "


class ChatError(Exception):
    """The chat server could not start, or refused / failed a request: one line to show."""


class ChatWebProcess:
    """Start chat_web for the SFT model of `run_id` in `base_dir` (device: "cpu" while a run trains, else auto),
    talk to it, stop it. Its output goes to `log_path`."""

    def __init__(self, base_dir: Path, run_id: str | None, log_path: Path, device_type: str | None = None,
                 python: str | None = None, source: str = "sft", extra_args: tuple = ()):
        self.base_dir, self.run_id, self.log_path = Path(base_dir), run_id, Path(log_path)
        self.device_type, self.source = device_type, source
        self.python = python or sys.executable
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.host, self.port = "127.0.0.1", 0
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def argv(self) -> list[str]:
        argv = [self.python, "-m", "nanochat.scripts.chat_web", "--host", "127.0.0.1", "--port", "0",
                "-i", self.source, "--exit_with_parent"]
        if self.run_id:
            argv += ["--run_id", self.run_id]
        if self.device_type:
            argv += ["--device_type", self.device_type]
        return argv + list(self.extra_args)

    def start(self, timeout: float = 600.0, cancelled: threading.Event | None = None) -> str:
        """Spawn the server and wait until it serves; returns its URL. ChatError with its last error line."""
        env = dict(os.environ, NANOCHAT_BASE_DIR=str(self.base_dir), PYTHONUNBUFFERED="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cancelled is not None and cancelled.is_set():
                self.close()
                raise ChatError("cancelled")
            lines = self._log_lines()
            for line in lines:
                if line.startswith(READY):
                    self.url = line[len(READY):].split()[0]
                    hostport = self.url.split("//", 1)[1].rstrip("/")
                    self.host, self.port = hostport.rsplit(":", 1)[0], int(hostport.rsplit(":", 1)[1])
                    return self.url
            if self.proc.poll() is not None:
                errors = [s for s in lines if s.startswith("error:")] or lines[-1:] or ["(no output)"]
                raise ChatError(f"chat_web exited ({self.proc.returncode}): {errors[-1]}")
            time.sleep(0.1)
        self.close()
        raise ChatError(f"chat_web did not start within {timeout:.0f}s; see {self.log_path}")

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def stream(self, messages: list[dict], **params) -> Iterator[str]:
        """Yield the reply's text pieces as they arrive; ends early after interrupt(). ChatError for a refused
        request or a failed generation."""
        if self.url is None:
            raise ChatError("the chat server is not running")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        stop = self._stop = threading.Event()
        self._conn = conn
        body = json.dumps({"messages": messages, **{k: v for k, v in params.items() if v is not None}})
        try:
            try:
                conn.request("POST", "/chat/completions", body=body.encode("utf-8"),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
            except OSError as exc:
                raise ChatError(f"cannot reach chat_web at {self.url}: {exc}") from None
            if resp.status != 200:
                try:
                    detail = json.loads(resp.read()).get("detail")
                except (ValueError, AttributeError, OSError):
                    detail = None
                raise ChatError(f"chat_web refused ({resp.status}): {detail or resp.reason}")
            while not stop.is_set():
                try:
                    raw = resp.readline()
                except (OSError, ValueError, http.client.HTTPException):
                    if stop.is_set():
                        return
                    raise ChatError("the connection to chat_web broke mid-reply") from None
                if not raw:
                    if stop.is_set():
                        return
                    raise ChatError("chat_web ended the reply without its done marker")
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if "token" in event:
                    yield event["token"]
                if event.get("error"):
                    raise ChatError(f"generation failed: {event['error']}")
                if event.get("done"):
                    return
        finally:
            self._conn = None
            conn.close()

    def interrupt(self) -> None:
        """Stop the reply being streamed now (from any thread): the connection closes and the server's worker is
        free for the next request at once."""
        self._stop.set()
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self, wait: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `wait` seconds)."""
        proc, self.proc, self.url = self.proc, None, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except OSError:
            pass

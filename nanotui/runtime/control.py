"""Control channel: owner-only Unix socket in the run dir, newline-delimited JSON, peer uid checked (SO_PEERCRED)."""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

COMMANDS = ("status", "stop", "fallback", "retry", "resume", "set_grace", "subscribe")
MAX_LINE = 1 << 20


class ControlError(OSError):
    """No supervisor is listening, or it broke the connection."""


def check_peer(uid: int, owner_uid: int | None = None) -> str | None:
    """None when a peer with `uid` may talk to us (same uid as the owner), else the refusal message."""
    owner = os.geteuid() if owner_uid is None else owner_uid
    if uid == owner:
        return None
    return f"permission denied: uid {uid} is not the run owner (uid {owner})"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


@contextmanager
def _short_path(path: Path):
    """AF_UNIX paths are limited to ~107 bytes; reach deep run dirs through /proc/self/fd/<dirfd>/name."""
    path = Path(path)
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dfd}/{path.name}"
    finally:
        os.close(dfd)


def _send(sock: socket.socket, obj: dict) -> None:
    sock.sendall((json.dumps(obj, default=str) + "\n").encode())


class ControlServer:
    """Listens on `socket_path`; calls `handler(request) -> reply` per request, one thread per client.

    `subscribe` requests are answered `{"ok": true}` and the connection then receives every `broadcast()`."""

    def __init__(self, socket_path: Path, handler: Callable[[dict], dict], owner_uid: int | None = None):
        self.socket_path = Path(socket_path)
        self.handler = handler
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self._subs: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self, mode: int = 0o600) -> "ControlServer":
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with _short_path(self.socket_path) as p:
                s.bind(p)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, mode)
        s.listen(16)
        s.settimeout(0.2)
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self._sock:
            self._sock.close()
        with self._lock:
            for s in self._subs:
                try:
                    s.close()
                except OSError:
                    pass
            self._subs.clear()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def broadcast(self, msg: dict) -> int:
        """Send `msg` to every subscriber; drops the dead ones. Returns how many received it."""
        data = (json.dumps(msg, default=str) + "\n").encode()
        sent = 0
        with self._lock:
            alive = []
            for s in self._subs:
                try:
                    s.sendall(data)
                    alive.append(s)
                    sent += 1
                except OSError:
                    try:
                        s.close()
                    except OSError:
                        pass
            self._subs = alive
        return sent

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="control-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        try:
            refusal = check_peer(peer_uid(conn), self.owner_uid)
        except OSError as e:
            refusal = f"cannot verify peer credentials: {e}"
        if refusal:
            try:
                _send(conn, {"ok": False, "error": refusal})
            finally:
                conn.close()
            return
        buf = b""
        try:
            while not self._stop.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE:
                    _send(conn, {"ok": False, "error": "request too long"})
                    break
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    if not raw.strip():
                        continue
                    try:
                        req = json.loads(raw)
                        if not isinstance(req, dict):
                            raise ValueError("request must be a JSON object")
                    except ValueError as e:
                        _send(conn, {"ok": False, "error": f"bad request: {e}"})
                        continue
                    if req.get("cmd") == "subscribe":
                        _send(conn, {"ok": True, "subscribed": True})
                        with self._lock:
                            self._subs.append(conn)
                        self._drain_until_closed(conn)
                        return
                    try:
                        reply = self.handler(req)
                    except Exception as e:  # a handler bug must not kill the server
                        reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
                    _send(conn, reply)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._subs:
                    self._subs.remove(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _drain_until_closed(self, conn: socket.socket) -> None:
        """A subscriber only listens; we block here until it hangs up so the thread can clean up."""
        try:
            while not self._stop.is_set():
                if not conn.recv(4096):
                    break
        except OSError:
            pass


class ControlClient:
    """Talks to the supervisor of one run: `request(cmd, **args) -> reply dict`, `subscribe() -> iterator`."""

    def __init__(self, run_dir, timeout: float = 10.0):
        path = getattr(run_dir, "path", run_dir)
        self.socket_path = Path(path) / "control.sock"
        self.timeout = timeout

    def available(self) -> bool:
        try:
            with self._connect(timeout=1.0):
                return True
        except ControlError:
            return False

    def _connect(self, timeout: float | None = None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout if timeout is None else timeout)
        try:
            with _short_path(self.socket_path) as p:
                s.connect(p)
        except FileNotFoundError:
            s.close()
            raise ControlError(f"no supervisor is running for this run ({self.socket_path.parent.name})")
        except OSError as e:
            s.close()
            raise ControlError(f"cannot reach the supervisor: {e.strerror or e}") from None
        return s

    def request(self, cmd: str, **args) -> dict:
        """Send one command and return the reply. Raises ControlError if no supervisor answers."""
        s = self._connect()
        try:
            _send(s, {"cmd": cmd, **args})
            line = _readline(s)
        except OSError as e:
            raise ControlError(f"supervisor connection failed: {e}") from None
        finally:
            s.close()
        if line is None:
            raise ControlError("the supervisor closed the connection without a reply")
        return json.loads(line)

    def subscribe(self, timeout: float | None = None) -> Iterator[dict]:
        """Yield `{"notify": kind, "message": ...}` dicts until the supervisor goes away.

        With `timeout`, yields `{}` whenever nothing arrived for that long (lets callers poll other things)."""
        s = self._connect()
        try:
            _send(s, {"cmd": "subscribe"})
            s.settimeout(self.timeout)
            first = _readline(s)
            if first is None:
                raise ControlError("the supervisor closed the connection")
            reply = json.loads(first)
            if not reply.get("ok"):
                raise ControlError(reply.get("error", "subscribe refused"))
            s.settimeout(timeout)
            buf = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    yield {}
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    try:
                        yield json.loads(raw)
                    except ValueError:
                        continue
        finally:
            s.close()


def _readline(s: socket.socket) -> bytes | None:
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None if not buf else buf
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ControlError("reply too long")
    return buf.split(b"\n", 1)[0]

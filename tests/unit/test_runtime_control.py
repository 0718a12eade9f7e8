"""Control socket: owner-only permissions, peer uid check, several clients, subscribe broadcasts."""
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from nanotui.runtime.control import ControlClient, ControlError, ControlServer, check_peer
from nanotui.runtime.rundir import RunDir

OTHER_USER = "nanotui_peer"


def _server(rd):
    calls = []

    def handler(req):
        calls.append(req)
        return {"ok": True, "echo": req}
    return ControlServer(rd.socket_path, handler).start(), calls


def test_socket_mode_and_requests(base_dir):
    rd = RunDir.create(base_dir, {"profile": "x", "stages": []})
    srv, calls = _server(rd)
    try:
        assert stat.S_IMODE(rd.socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(rd.path.stat().st_mode) == 0o700
        replies = []
        threads = [threading.Thread(target=lambda i=i: replies.append(ControlClient(rd).request("status", n=i)))
                   for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(r["echo"]["n"] for r in replies) == list(range(8))
        # subscribers get broadcasts
        got = []
        sub = ControlClient(rd).subscribe()
        t = threading.Thread(target=lambda: got.append(next(sub)))
        t.start()
        for _ in range(50):
            if srv.subscriber_count:
                break
            time.sleep(0.02)
        assert srv.broadcast({"notify": "oom", "message": "boom"}) == 1
        t.join(5)
        assert got == [{"notify": "oom", "message": "boom"}]
    finally:
        srv.close()
    with pytest.raises(ControlError):
        ControlClient(rd).request("status")


def test_long_run_dir_path_still_binds(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    srv = ControlServer(deep / "control.sock", lambda r: {"ok": True}).start()
    try:
        assert ControlClient(deep).request("status") == {"ok": True}
    finally:
        srv.close()


def test_check_peer():
    me = os.geteuid()
    assert check_peer(me) is None
    msg = check_peer(me + 1)
    assert msg and "permission denied" in msg
    assert check_peer(1234, owner_uid=1234) is None


def _other_uid():
    if os.geteuid() != 0 or not shutil.which("useradd"):
        return None
    try:
        return pwd.getpwnam(OTHER_USER).pw_uid
    except KeyError:
        pass
    r = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       capture_output=True)
    if r.returncode != 0:
        return None
    return pwd.getpwnam(OTHER_USER).pw_uid


def _interpreter_for(uid):
    """A stdlib Python the other user may execute (our venv may live under a private home)."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            if subprocess.run([exe, "-c", "pass"], user=uid, capture_output=True, timeout=30).returncode == 0:
                return exe
        except (OSError, subprocess.SubprocessError):
            continue
    return None


@pytest.fixture
def shared_tmp():
    import tempfile
    d = tempfile.mkdtemp(prefix="nanotui-peer-", dir="/tmp")  # pytest's tmp root is private to us
    os.chmod(d, 0o755)
    yield __import__("pathlib").Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_other_uid_is_refused(shared_tmp):
    tmp_path = shared_tmp
    uid = _other_uid()
    if uid is None:
        pytest.skip("cannot create a second user here (check_peer is tested directly)")
    exe = _interpreter_for(uid)
    if exe is None:
        pytest.skip("no Python the second user may run")
    client_code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); "
                   "s.connect(sys.argv[1]); print(s.recv(4096).decode())")  # refused peers get the error unasked
    # 1) the real layout: a 0700 run dir keeps the other user from even reaching the socket
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    srv = ControlServer(private / "control.sock", lambda r: {"ok": True}).start()
    try:
        r = subprocess.run([exe, "-c", client_code, str(private / "control.sock")], user=uid,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "Permission denied" in r.stderr
    finally:
        srv.close()
    # 2) even with a world-writable socket, the server refuses the other uid via SO_PEERCRED
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    os.chmod(public, 0o755)
    seen = []
    srv = ControlServer(public / "control.sock", lambda r: seen.append(r) or {"ok": True}).start(mode=0o666)
    try:
        r = subprocess.run([exe, "-c", client_code, str(public / "control.sock")], user=uid,
                           capture_output=True, text=True, timeout=30)
        reply = json.loads(r.stdout.strip().splitlines()[0])
        assert reply["ok"] is False and "permission denied" in reply["error"] and str(uid) in reply["error"]
        assert seen == []  # the handler never ran
        assert ControlClient(public).request("status") == {"ok": True}  # the owner still gets in
    finally:
        srv.close()

"""The HumanEval sandbox: runs benign code, and refuses outside writes, runaway time, memory and the network
(the adversarial suite is tests/unit/test_sandbox_attacks.py)."""
import socket
import threading
import time

from nanochat.execution import execute_code


def test_runs_code_and_reports_failures():
    ok = execute_code("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('fine')")
    assert ok.success and ok.stdout.strip() == "fine"
    bad = execute_code("assert 1 == 2, 'wrong answer'")
    assert not bad.success and "wrong answer" in bad.error


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    for code in (f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
                 f"import os; os.remove({str(target)!r})",
                 f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                 f"import os; fd = os.open({str(target)!r}, os.O_WRONLY | os.O_TRUNC)"):
        res = execute_code(code)
        assert not res.success, code
    # a subprocess runs, but inside the sandbox: its /tmp is private
    res = execute_code(f"import subprocess; subprocess.run(['touch', {str(tmp_path / 'escaped')!r}], check=True)")
    assert not res.success
    assert target.read_text() == "keep me"
    assert not (tmp_path / "new.txt").exists() and not (tmp_path / "escaped").exists()
    # ...while its own temporary directory is writable, and HOME points there
    res = execute_code("import os\nopen('a.txt','w').write('hi')\nassert open('a.txt').read() == 'hi'\n"
                       "assert os.environ['HOME'] == os.getcwd()")
    assert res.success, res.stderr


def test_time_limit_kills():
    t0 = time.time()
    res = execute_code("while True:\n    pass", timeout=1.0)
    assert res.timeout and not res.success
    assert time.time() - t0 < 5


def test_memory_limit():
    res = execute_code("x = bytearray(2 * 1024**3)", max_memory_bytes=256 * 1024**2)
    assert not res.success and res.memory_exceeded


def test_network_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True).start()
    res = execute_code(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                       "s.sendall(b'leak')")
    assert not res.success
    time.sleep(0.2)
    server.close()
    assert accepted in ([], [None])


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None

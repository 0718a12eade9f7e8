"""The HumanEval sandbox: runs benign code, and refuses outside writes, runaway time, memory and the network
(the adversarial suite is tests/unit/test_sandbox_attacks.py)."""
import socket
import threading
import time

from nanochat.execution import execute_code
from sandbox_helpers import needs_sandbox

pytestmark = needs_sandbox  # without bubblewrap execute_code refuses (tests/unit/test_sandbox_refusal.py)


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


BENIGN = '''
import bisect, collections, datetime, decimal, fractions, functools, hashlib, heapq, itertools, json, math, random
import re, string, time
from typing import List, Optional

def sort_third(l: List[int]) -> List[int]:
    thirds = sorted(l[::3])
    return [thirds[i // 3] if i % 3 == 0 else x for i, x in enumerate(l)]

assert sort_third([5, 6, 3, 4, 8, 9, 2]) == [2, 6, 3, 4, 8, 9, 5]
assert collections.Counter("hello")["l"] == 2 and heapq.nsmallest(2, [5, 1, 3]) == [1, 3]
assert hashlib.md5(b"abc").hexdigest() == "900150983cd24fb0d6963f7d28e17f72"
assert fractions.Fraction(1, 3) + fractions.Fraction(1, 6) == fractions.Fraction(1, 2)
assert str(decimal.Decimal("0.1") + decimal.Decimal("0.2")) == "0.3" and math.isclose(math.pi, 3.14159, rel_tol=1e-5)
assert bisect.bisect([1, 2, 4], 3) == 2 and list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]
assert re.findall(r"\\d+", "a1b22") == ["1", "22"] and string.ascii_lowercase[:3] == "abc"
assert json.loads(json.dumps({"a": [1]})) == {"a": [1]} and functools.reduce(lambda a, b: a * b, [1, 2, 3]) == 6
assert datetime.date(2024, 2, 29).weekday() == 3 and time.localtime().tm_year >= 2024
random.seed(0); assert 0 <= random.random() < 1
print("all good")
'''


def test_benign_stdlib_programs_pass():
    """HumanEval solutions use the standard library freely: it all works inside (no /etc, no network needed)."""
    res = execute_code(BENIGN)
    assert res.success and res.stdout.strip() == "all good", res.stderr

"""Benchmark: median wall time of one sandboxed execution (bubblewrap + seccomp + rlimits, execute_code) next to a bare
`python -I -S -c` subprocess running the same HumanEval-style program, interleaved in one run."""
import os
import statistics
import subprocess
import sys
import time

from nanochat import execution

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
TARGET_MS = 50
PROGRAM = '''
from typing import List

def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False

def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True

check(has_close_elements)
print("ok")
'''


def bare() -> float:
    t0 = time.perf_counter()
    out = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", PROGRAM], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    return time.perf_counter() - t0


def sandboxed() -> float:
    t0 = time.perf_counter()
    res = execution.execute_code(PROGRAM)
    assert res.success and res.stdout.strip() == "ok", res.stderr
    return time.perf_counter() - t0


def main() -> int:
    problem = execution.sandbox_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"sandbox: {execution.sandbox_description()}; {'root -> nobody' if os.geteuid() == 0 else 'user'}")
    bare(), sandboxed()  # warm the page cache and the seccomp program
    times = {"bare": [], "sandboxed": []}
    for _ in range(RUNS):  # interleaved, so load changes hit both alike
        times["bare"].append(bare())
        times["sandboxed"].append(sandboxed())
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    low = {k: min(v) * 1000 for k, v in times.items()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine inflates both columns)")
    for k, v in times.items():
        print(f"{k:>9}: {RUNS} runs, median {med[k]:.1f} ms (min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f})")
    print(f"sandbox overhead: +{med['sandboxed'] - med['bare']:.1f} ms per execution "
          f"(median {med['sandboxed']:.1f} ms vs {med['bare']:.1f} ms bare, "
          f"ratio {med['sandboxed'] / med['bare']:.2f}x; "
          f"fastest runs +{low['sandboxed'] - low['bare']:.1f} ms)")
    met = med["sandboxed"] - med["bare"] < TARGET_MS
    print(f"target: under {TARGET_MS} ms overhead per execution: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exit-code wrapper for one stage attempt: runs the command, then atomically writes its exit status to a file.

Usage: python stagewrap.py EXIT_FILE -- CMD...  (stdlib only; started as a file path so it needs no PYTHONPATH).
The wrapper leads the stage's process group. It ignores-by-handler TERM/INT/HUP (the child still gets them from
the group signal, and handlers — unlike SIG_IGN — are not inherited across exec), waits for the child and writes
`{"exit_code": N, "signal": S|null, "pid": child_pid, "ended": t}`. A supervisor that was killed meanwhile can
still learn how the attempt ended by reading this file."""
import json
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: stagewrap.py EXIT_FILE -- CMD...", file=sys.stderr)
        return 2
    exit_file, cmd = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(cmd)
    except OSError as e:
        print(f"error: cannot start {cmd[0]}: {e}", flush=True)
        rc, sig, pid = 127, None, None
    else:
        pid = child.pid
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
        sig = -rc if rc < 0 else None
        if rc < 0:
            rc = 128 - rc
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as f:
        json.dump({"exit_code": rc, "signal": sig, "pid": pid, "ended": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, exit_file)
    return rc if rc < 256 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

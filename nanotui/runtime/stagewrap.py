"""Exit-code wrapper for one stage attempt: runs the command, then atomically writes its exit status to a file.

Usage: python stagewrap.py EXIT_FILE -- CMD...  (stdlib only; started as a file path so it needs no PYTHONPATH).
The wrapper leads the stage's process group. It ignores-by-handler TERM/INT/HUP (the child still gets them from
the group signal, and handlers — unlike SIG_IGN — are not inherited across exec) but notes each one in
`EXIT_FILE.signals` (one name per line): a supervisor that is itself being terminated (logout: the whole session
gets SIGTERM) sees that the stage already got its SIGTERM and does not send a second one. It waits for the child and writes
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

    def note(signum, frame):
        try:
            fd = os.open(f"{exit_file}.signals", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, f"{signal.Signals(signum).name}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, note)
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
    try:
        with open(tmp, "w") as f:
            json.dump({"exit_code": rc, "signal": sig, "pid": pid, "ended": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, exit_file)
    except OSError as e:  # e.g. a full disk: the supervisor then reports the attempt as ended without an exit code
        try:
            os.unlink(tmp)
        except OSError:
            pass
        try:
            print(f"error: cannot record the exit code {rc} in {exit_file}: {e}", flush=True)
        except OSError:
            pass
    return rc if rc < 256 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

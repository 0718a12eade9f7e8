"""One training stage per checkpoint directory: an exclusive flock on `<ckpt_dir>/.lock` naming its holder."""
import errno
import fcntl
import json
import os
import socket
import time

from nanochat.common import UsageError

LOCK_NAME = ".lock"              # flock held by the training stage that owns the directory


# ---------------------------------------------------------------------------------------------------------------------
# one training stage per checkpoint directory

class CheckpointLock:
    """An exclusive flock on `<ckpt_dir>/.lock`, holding `{pid, run_id, host, started}` as JSON, for a training
    stage's lifetime. A second trainer gets UsageError naming the holder; a lock file left by a dead process is
    not held (the kernel drops a flock with its process) and is simply taken over."""

    def __init__(self, ckpt_dir: str, run_id=None):
        self.path = os.path.join(ckpt_dir, LOCK_NAME)
        self.run_id = run_id
        self.fd = None
        self.started = None

    @staticmethod
    def holder(ckpt_dir: str) -> dict:
        """The lock file's JSON (may describe a dead process: check with `is_locked`)."""
        try:
            with open(os.path.join(ckpt_dir, LOCK_NAME), "r", encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def is_locked(ckpt_dir: str) -> bool:
        try:
            fd = os.open(os.path.join(ckpt_dir, LOCK_NAME), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def acquire(self):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            info = self.holder(directory)
            who = f"run {info.get('run_id') or '(no run id)'}, pid {info.get('pid', '?')}"
            if info.get("host"):
                who += f" on {info['host']}"
            raise UsageError(f"checkpoint directory {directory} is in use by another trainer ({who}); stop that "
                             f"run first or train under another --model_tag")
        self.fd = fd
        self.started = time.time()
        self.update(self.run_id)
        return self

    def update(self, run_id):
        """Rewrite the lock's JSON (e.g. once the run id is known). Best effort: a full disk does not lose the lock."""
        self.run_id = run_id
        if self.fd is None:
            return
        payload = json.dumps({"pid": os.getpid(), "run_id": run_id, "host": socket.gethostname(),
                              "started": self.started}).encode("utf-8")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, payload + b"\n", 0)
        except OSError:
            pass

    def release(self):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

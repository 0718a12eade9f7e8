"""SIGTERM/SIGINT handling: the first signal asks the loop to stop at a step boundary (with a checkpoint)."""
import os
import signal


class Stopped(Exception):
    """Raised out of the loop when a stop was requested; the trainer writes the stop checkpoint."""


class StopSignals:
    """SIGTERM/SIGINT set a flag the loop polls (the stop checkpoint follows); further ones are logged on stderr
    and ignored, so a logout's SIGTERM to the process group plus the supervisor's own cannot kill the checkpoint
    (only SIGKILL can). Once a stop was requested the handler stays installed until the process exits."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            return
        try:  # os.write, not print: a handler may run in the middle of a print to the same stream
            os.write(2, f"Ignoring {name}: already stopping on {self.received} (writing the stop checkpoint; only "
                        f"SIGKILL ends it sooner)\n".encode())
        except OSError:
            pass

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        if self.received is None:  # after a stop, keep ignoring repeats until the process is gone
            for sig, prev in self._previous.items():
                signal.signal(sig, prev)
        self._previous = {}
        return False

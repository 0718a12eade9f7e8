"""Test helper run under tmux: the dashboard on a recorded run whose chat backend streams a reply full of terminal
control characters (what an untrained model's byte tokens can produce). argv: base_dir run_dir."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nanotui.tui.app import NanotuiApp  # noqa: E402
from tui_helpers import FakeActions, FakeControl  # noqa: E402

# ESC c (full reset), ESC [2J (clear), SO (switch to the line-drawing set), an 8-bit CSI, BEL, backspaces
HOSTILE_REPLY = ["It is ", "\x1bc", "forty", "\x1b[2J", " two", "\x0e", " (sure)", "\x9b2J", "\x07\x08\x08", " end."]


class HostileBackend:
    def __init__(self):
        self.stopped = threading.Event()

    def start(self, cancelled):
        return "http://127.0.0.1:1/"

    def stream(self, messages):
        yield from HOSTILE_REPLY

    def interrupt(self):
        pass

    def close(self):
        pass


class App(NanotuiApp):
    CSS_PATH = str(Path(sys.modules[NanotuiApp.__module__].__file__).with_name("app.tcss"))

    def chat_backend(self, live):
        return HostileBackend()


if __name__ == "__main__":
    App(run_dir=Path(sys.argv[2]), base_dir=Path(sys.argv[1]), control=FakeControl(), actions=FakeActions()).run()

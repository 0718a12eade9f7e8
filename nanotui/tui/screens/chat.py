"""Chat with the run's SFT model: a chat_web child process streams replies; Esc stops a reply, then goes back."""
from __future__ import annotations

import threading

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from nanotui.core.chatfmt import segments
from nanotui.core.termtext import displayable

STYLE = {"calc": "bold black on yellow", "result": "bold black on green"}
LABEL = {"calc": " calc ", "result": " = "}


def reply_text(reply: str) -> Text:
    """The assistant's text with the calculator's calls and results as labelled chips. Control characters the model
    produced (ESC, SO, C1...) are drawn as U+FFFD: reaching the terminal, they would clear or reset it."""
    out = Text()
    for kind, part in segments(displayable(reply)):
        if kind == "text":
            out.append(part)
        else:
            out.append(LABEL[kind], style="reverse " + STYLE[kind])
            out.append(f"{part} ", style=STYLE[kind])
    return out


class ChatScreen(Screen):
    """`backend` has start(cancelled=Event) -> url, stream(messages) -> iterator of text, interrupt(), close()
    (nanotui.runtime.chatweb.ChatWebProcess; tests may pass another)."""

    BINDINGS = [
        Binding("escape", "stop_or_back", "Stop reply / Back"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("f1", "app.help", "Help", show=False),
    ]

    def __init__(self, backend, title: str):
        super().__init__()
        self.backend = backend
        self.title_text = title
        self.messages: list[dict] = []
        self.ready = False
        self.streaming = False
        self.reply = ""
        self.replies_done = 0
        self._bubble: Static | None = None
        self._cancel_start = threading.Event()
        self._epoch = 0  # bumped by a new chat: a reply still finishing belongs to the old conversation

    def compose(self) -> ComposeResult:
        yield Static(f" [b]Chat[/] with {self.title_text}", id="chat-title")
        yield Static("starting the model (chat_web)…", id="chat-status")
        yield VerticalScroll(id="chat-log")
        yield Input(placeholder="Message the model; Enter sends, Esc stops a reply or goes back", id="chat-input",
                    disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._start, thread=True, group="chat-start", name="chat-start", exit_on_error=False)

    def _call(self, fn, *args) -> None:
        """Run fn(*args) on the app's loop from a worker thread; nothing once the screen has gone."""
        if self._cancel_start.is_set():
            return
        try:
            self.app.call_from_thread(fn, *args)
        except RuntimeError:  # the app is shutting down
            pass

    def _start(self) -> None:
        try:
            url = self.backend.start(cancelled=self._cancel_start)
        except Exception as exc:  # ChatError and anything unexpected: shown, never a crash of the dashboard
            self._call(self._status, f"[red]chat unavailable:[/] {str(exc).replace('[', chr(92) + '[')}")
            return
        self._call(self._ready, url)

    def _ready(self, url: str) -> None:
        if not self.is_attached:
            return
        self.ready = True
        self._status(f"ready · also in a browser on this machine: {url}")
        field = self.query_one("#chat-input", Input)
        field.disabled = False
        field.focus()

    def _status(self, text: str) -> None:
        if self.is_attached:
            self.query_one("#chat-status", Static).update(text)

    def _add(self, role: str, content: Text | str) -> Static:
        bubble = Static(content, classes=f"chat-msg chat-{role}")
        log = self.query_one("#chat-log", VerticalScroll)
        log.mount(bubble)
        log.scroll_end(animate=False)
        return bubble

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text or self.streaming or not self.ready:
            return
        event.input.value = ""
        self.messages.append({"role": "user", "content": text})
        self._add("user", Text(text))
        self.reply = ""
        self._bubble = self._add("assistant", Text("…", style="dim"))
        self.streaming = True
        self._status("replying · Esc stops")
        epoch = self._epoch
        self.run_worker(lambda: self._stream(epoch), thread=True, group="chat-stream", name="chat-stream",
                        exit_on_error=False)

    def _stream(self, epoch: int) -> None:
        error = None
        try:
            for piece in self.backend.stream(list(self.messages)):
                self._call(self._piece, piece)
        except Exception as exc:
            error = str(exc)
        self._call(self._finished, error, epoch)

    def _piece(self, piece: str) -> None:
        if not self.streaming or not self.is_attached:
            return
        self.reply += piece
        if self._bubble is not None:
            self._bubble.update(reply_text(self.reply))
            self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    def _finished(self, error: str | None, epoch: int) -> None:
        stopped = not self.streaming  # action_stop_or_back cleared it
        self.streaming = False
        self.replies_done += 1
        if epoch != self._epoch or not self.is_attached:
            self._status("ready")
            return
        if self.reply:
            self.messages.append({"role": "assistant", "content": self.reply})
        elif self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()
        error = displayable(error) if error else error
        if self._bubble is not None:
            shown = reply_text(self.reply)
            if stopped:
                shown.append(" (stopped)", style="dim")
            if error:
                shown.append(("\n" if self.reply else "") + error, style="red")
            self._bubble.update(shown if shown.plain else Text("(no reply)", style="dim"))
        self._status("[red]" + error.replace("[", r"\[") + "[/]" if error else "ready")

    def action_stop_or_back(self) -> None:
        if self.streaming:
            self.streaming = False
            self.backend.interrupt()
            return
        self.app.pop_screen()

    def action_new_chat(self) -> None:
        if self.streaming:
            self.streaming = False
            self.backend.interrupt()
        self._epoch += 1
        self.messages = []
        self._bubble = None
        self.query_one("#chat-log", VerticalScroll).remove_children()

    def on_unmount(self) -> None:
        self._cancel_start.set()
        if self.streaming:
            self.backend.interrupt()
        threading.Thread(target=self.backend.close, name="chat-close").start()  # the app waits for it at exit

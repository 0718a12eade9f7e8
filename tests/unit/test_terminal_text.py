"""Untrusted text reaching a terminal: model replies and log lines keep their words and lose every character a
terminal would act on; a sampled reply is printed in whole characters."""
from __future__ import annotations

import pytest

from nanochat.common import terminal_text
from nanochat.tokenizer import TextStream
from nanotui.core.logparse import clean_line, parse_line
from nanotui.core.termtext import displayable, has_controls

HOSTILE = ["\x1bc", "\x1b[2J", "\x1b]52;c;aGk=\x07", "\x0e", "\x9b2J", "\x9d0;t\x9c", "\x07", "\x08", "\x7f", "\x00"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_displayable_leaves_no_control_character(bad):
    shown = displayable(f"a{bad}b")
    assert not has_controls(shown) and shown.startswith("a\ufffd") and shown.endswith("b")
    assert displayable(f"a{bad}b", "").startswith("a") and not has_controls(displayable(f"a{bad}b", ""))


def test_displayable_keeps_text_newlines_tabs_and_unicode():
    text = "line one\n\tindented · ünïcødé 日本 🙂"
    assert displayable(text) == text and terminal_text(text) == text


@pytest.mark.parametrize("bad", HOSTILE)
def test_log_lines_lose_escapes_but_keep_their_words(bad):
    line = clean_line(f"step 00010/00100 (10.00%) | loss: 3.5{bad} | lrm: 1.00 | dt: 100.00ms")
    assert not has_controls(line) and line.startswith("step 00010/00100") and line.endswith("dt: 100.00ms")


def test_short_escapes_are_removed_whole():
    assert clean_line("a\x1bcb") == "ab"           # ESC c: full reset
    assert clean_line("a\x1b7b\x1b8c") == "abc"     # save / restore cursor
    assert clean_line("\x1b(0qq\x1b(B") == "qq"     # line-drawing set on and off
    assert clean_line("\x1b[1;32mok\x1b[0m") == "ok"


def test_a_step_line_with_a_stray_escape_still_parses():
    ev = parse_line("\x1bcstep 00010/00100 (10.00%) | loss: 3.500000 | lrm: 1.00 | dt: 100.00ms | tok/sec: 1,000")
    assert ev is not None and type(ev).__name__ == "Step" and ev.step == 10


@pytest.mark.parametrize("bad", HOSTILE)
def test_terminal_text_replaces_controls(bad):
    assert not has_controls(terminal_text(f"x{bad}y"))


class ByteTokenizer:
    """Each token id is one byte, as the byte fallback of a BPE vocabulary is."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def stream(data: bytes) -> list[str]:
    s = TextStream(ByteTokenizer())
    return [s.push(b) for b in data]


def test_a_character_split_over_tokens_comes_out_whole():
    pieces = stream("é🙂".encode())
    assert pieces == ["", "é", "", "", "", "🙂"]


def test_bytes_that_never_make_a_character_still_come_out():
    pieces = stream(b"\xff\xfe\xfd\xfcok")
    assert "".join(pieces) == "\ufffd" * 4 + "ok" and pieces[-2:] == ["o", "k"]

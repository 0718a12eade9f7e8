"""Untrusted text (model replies, log lines) made safe to draw: no character a terminal would act on survives."""
from __future__ import annotations

import re

__all__ = ["displayable", "has_controls"]

# C0 except tab and newline, DEL, and C1 (0x9b is an 8-bit CSI, 0x9d an 8-bit OSC). A bare ESC reaching the
# terminal can clear or reset it (ESC c), move the cursor, retitle the window or, with OSC 52, write the clipboard.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def has_controls(text: str) -> bool:
    """True when `text` holds a character a terminal would act on instead of drawing."""
    return _CONTROL_RE.search(text) is not None


def displayable(text: str, replacement: str = "\ufffd") -> str:
    """`text` with every terminal control character (C0 but tab and newline, DEL, C1) replaced by `replacement`
    (U+FFFD by default, so the reader sees that something was there; "" drops them)."""
    if text.isprintable():  # the common case, checked in C: no control character at all
        return text
    return _CONTROL_RE.sub(replacement, text)

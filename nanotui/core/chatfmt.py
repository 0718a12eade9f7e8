"""Split a chat reply into text and calculator segments: the tool markers the model streams become labelled parts."""
from __future__ import annotations

import re

__all__ = ["segments"]

_OPEN = {"<|python_start|>": "calc", "<|output_start|>": "result"}
_CLOSE = {"<|python_start|>": "<|python_end|>", "<|output_start|>": "<|output_end|>"}
_MARKER = re.compile(r"(<\|python_start\|>|<\|python_end\|>|<\|output_start\|>|<\|output_end\|>)")


def segments(text: str) -> list[tuple[str, str]]:
    """[(kind, text)] with kind "text", "calc" (the expression the model asked for) or "result" (what the tool
    answered); an unclosed call (still streaming) runs to the end; stray closing markers are dropped."""
    out: list[tuple[str, str]] = []
    kind, opened = "text", None
    for part in _MARKER.split(text):
        if part in _OPEN:
            kind, opened = _OPEN[part], part
            out.append((kind, ""))
        elif opened and part == _CLOSE[opened]:
            kind, opened = "text", None
        elif part in _CLOSE.values():
            continue
        elif part:
            if out and out[-1][0] == kind and (kind == "text" or opened):
                out[-1] = (kind, out[-1][1] + part)
            else:
                out.append((kind, part))
    return out

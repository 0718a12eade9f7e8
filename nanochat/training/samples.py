"""Model samples as one printable log line."""

_UNPRINTABLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable_sample(text: str) -> str:
    """A model sample as ONE log line: backslash, newlines, carriage returns, escape sequences and every other
    control or line/paragraph-separator character are escaped, so a sample can never fake a log line."""
    import unicodedata
    out = []
    for ch in text:
        if ch in _UNPRINTABLE:
            out.append(_UNPRINTABLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)

"""Log tailing: follow a growing file in chunks, keep partial lines, reopen on truncation or rotation; read the end fast."""
from __future__ import annotations

import os
from pathlib import Path

CHUNK = 1 << 16
MAX_PARTIAL = 1 << 16  # an unterminated line (a `\r` progress bar) keeps only its last 64 KiB


class LogTailer:
    """Follows `path` from `offset`. `read_lines()` returns the complete new lines (without '\\n').

    A trailing partial line is kept until its newline arrives, capped at its last `max_partial` bytes (a `\r`
    progress bar never ends its line; what a terminal shows of it is at its end). If the file shrinks (truncated) or its inode
    changes (rotated/replaced), it starts over from the beginning of the new file. A missing file is not an error."""

    def __init__(self, path: Path | str, offset: int = 0, chunk_size: int = CHUNK, encoding: str = "utf-8",
                 max_partial: int = MAX_PARTIAL):
        self.path = Path(path)
        self.max_partial = max_partial
        self.offset = offset
        self.chunk_size = chunk_size
        self.encoding = encoding
        self._f = None
        self._inode = None
        self._partial = b""

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _open(self) -> bool:
        try:
            self._f = open(self.path, "rb")
        except FileNotFoundError:
            return False
        self._inode = os.fstat(self._f.fileno()).st_ino
        self._f.seek(self.offset)
        return True

    def _check_replaced(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # deleted: keep reading what we have open until a new file appears
        if st.st_ino != self._inode:
            # Rotated: finish the old file first, then switch to the new one from its start.
            rest = self._f.read()
            self._partial = (self._partial + rest)[-self.max_partial:]
            self.close()
            self.offset = 0
            self._open()
        elif st.st_size < self.offset:
            self._partial = b""
            self.offset = 0
            self._f.seek(0)

    def read_chunks(self, max_bytes: int | None = None) -> bytes:
        """Raw new bytes (complete lines only), at most about `max_bytes` per call."""
        if self._f is None and not self._open():
            return b""
        self._check_replaced()
        if self._f is None:
            return b""
        limit = max_bytes if max_bytes is not None else 1 << 62
        got = []
        n = 0
        while n < limit:
            data = self._f.read(min(self.chunk_size, limit - n))
            if not data:
                break
            got.append(data)
            n += len(data)
            self.offset += len(data)
        buf = self._partial + b"".join(got)
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._partial = buf[-self.max_partial:] if len(buf) > self.max_partial else buf
            return b""
        self._partial = buf[cut + 1:]
        if len(self._partial) > self.max_partial:
            self._partial = self._partial[-self.max_partial:]
        return buf[:cut + 1]

    def read_lines(self, max_bytes: int | None = None) -> list[str]:
        data = self.read_chunks(max_bytes)
        if not data:
            return []
        return data.decode(self.encoding, "replace").split("\n")[:-1]

    def flush_partial(self) -> list[str]:
        """The unterminated last line, if any (call when the writer is known to be finished)."""
        self.read_chunks()
        rest, self._partial = self._partial, b""
        return [rest.decode(self.encoding, "replace")] if rest else []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_tail(path: Path | str, max_bytes: int = 1 << 20) -> tuple[list[str], int]:
    """The last complete lines within `max_bytes` of the end, and the file size (to continue tailing from).

    The first line is dropped when the window starts mid-line."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n")
    data = data[: end + 1] if end >= 0 else b""
    lines = data.decode("utf-8", "replace").split("\n")[:-1]
    if start > 0 and lines:
        lines = lines[1:]
    return lines, start + len(data)

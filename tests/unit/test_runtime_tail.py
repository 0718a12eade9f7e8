"""Log tailer: partial lines, chunking, truncation, rotation; read_tail from the end."""
import os

from nanotui.runtime.tail import LogTailer, read_tail


def test_partial_lines_are_held(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes(b"")
    t = LogTailer(p, chunk_size=4)
    with open(p, "ab") as f:
        f.write(b"step 1\nste")
        f.flush()
        assert t.read_lines() == ["step 1"]
        f.write(b"p 2\n\rredraw\n")
        f.flush()
        assert t.read_lines() == ["step 2", "\rredraw"]
        f.write(b"no newline")
    assert t.read_lines() == []
    assert t.flush_partial() == ["no newline"]


def test_missing_file_then_created(tmp_path):
    p = tmp_path / "late.log"
    t = LogTailer(p)
    assert t.read_lines() == []
    p.write_text("a\n")
    assert t.read_lines() == ["a"]


def test_truncation_restarts_from_zero(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("one\ntwo\nthree\n")
    t = LogTailer(p)
    assert t.read_lines() == ["one", "two", "three"]
    with open(p, "w") as f:
        f.write("new\n")
    assert t.read_lines() == ["new"]


def test_rotation_finishes_old_then_follows_new(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("a\n")
    t = LogTailer(p)
    assert t.read_lines() == ["a"]
    with open(p, "a") as f:
        f.write("b\n")
    os.rename(p, tmp_path / "x.log.1")
    p.write_text("c\n")
    assert t.read_lines() == ["b", "c"]


def test_read_tail_from_end(tmp_path):
    p = tmp_path / "big.log"
    with open(p, "w") as f:
        for i in range(10000):
            f.write(f"line {i}\n")
        f.write("partial")
    lines, offset = read_tail(p, 100)
    assert lines[-1] == "line 9999" and len(lines) < 20
    assert all(l.startswith("line ") for l in lines)  # no cut first line
    t = LogTailer(p, offset=offset)
    with open(p, "a") as f:
        f.write(" done\n")
    assert t.read_lines() == ["partial done"]
    assert read_tail(tmp_path / "none.log") == ([], 0)


def test_unterminated_line_is_capped(tmp_path):
    """A `\\r` progress bar that never ends its line must not grow the tailer's buffer without limit."""
    p = tmp_path / "bar.log"
    t = LogTailer(p)
    with open(p, "ab") as f:
        f.write(b"first\n")
        for i in range(4000):  # 240 KB without a newline
            f.write(f"\r{i:06d} [{'#' * 50}]".encode())
        f.flush()
        assert t.read_lines() == ["first"]
        assert len(t._partial) <= 1 << 16
        f.write(b" done\n")
    (line,) = t.read_lines()
    assert len(line) <= (1 << 16) + 6 and line.endswith("003999 [" + "#" * 50 + "] done")

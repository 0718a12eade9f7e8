"""Offline demo corpus (schema, row groups, pinned validation shard, idempotence) and shard listing helpers."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset
from nanochat.common import UsageError


@pytest.fixture
def small_demo(monkeypatch):
    """Shards of 400 documents, so that a ~0.8 MB corpus still spans several train shards (the row groups of
    1024 documents are checked on a bigger file in test_shards_are_written_in_row_groups_of_1024)."""
    monkeypatch.setattr(dataset, "DOCS_PER_TRAIN_SHARD", 400)


def test_demo_corpus_schema_row_groups_and_val_shard(tmp_path, small_demo):
    data_dir = str(tmp_path / "base_data")
    summary = dataset.build_demo_corpus(data_dir, max_mb=0.8, workers=2)
    assert summary["reused"] is False
    assert summary["text_bytes"] >= 800_000
    shards = sorted(os.listdir(data_dir))
    assert "demo_corpus.json" in shards and dataset.shard_name(dataset.VAL_SHARD_INDEX) in shards
    assert not [n for n in shards if ".tmp" in n]

    train = dataset.list_train_shards(data_dir)
    assert len(train) >= 2 and all(dataset.shard_index(p) < dataset.VAL_SHARD_INDEX for p in train)
    assert [dataset.shard_index(p) for p in train] == list(range(len(train)))

    seen = set()
    for path in train + [dataset.val_shard_path(data_dir)]:
        pf = pq.ParquetFile(path)
        assert pf.schema_arrow.names == ["text"] and pf.schema_arrow.field("text").type == pa.string()
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        assert sizes == [400] or path in (train[-1], dataset.val_shard_path(data_dir)) and sizes[0] <= 400
        texts = pf.read().column("text").to_pylist()
        assert all(len(t) >= dataset.MIN_DOC_CHARS for t in texts)
        assert not seen & set(texts)          # deduplicated, and validation disjoint from training
        seen |= set(texts)
    assert len(seen) == summary["docs"]
    english = sum(" the " in t for t in seen) / len(seen)
    assert english > 0.5                      # real English prose, not code


def test_shards_are_written_in_row_groups_of_1024(tmp_path):
    path = str(tmp_path / "shard_00000.parquet")
    dataset._write_parquet([f"document {i}" for i in range(2500)], path)
    pf = pq.ParquetFile(path)
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [1024, 1024, 452]
    assert os.listdir(tmp_path) == ["shard_00000.parquet"] and dataset.is_complete_parquet(path)


def test_demo_corpus_is_deterministic_idempotent_and_force_rebuilds(tmp_path, small_demo):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first = dataset.build_demo_corpus(a, max_mb=0.3, workers=2)
    dataset.build_demo_corpus(b, max_mb=0.3, workers=1)
    for name in first["shards"]:
        assert pq.read_table(os.path.join(a, name)).equals(pq.read_table(os.path.join(b, name)))

    mtime = os.path.getmtime(os.path.join(a, "shard_00000.parquet"))
    again = dataset.build_demo_corpus(a, max_mb=0.3)
    assert again["reused"] is True and os.path.getmtime(os.path.join(a, "shard_00000.parquet")) == mtime

    # a missing shard makes the corpus incomplete: it is rebuilt rather than reused
    os.remove(os.path.join(a, "shard_00000.parquet"))
    assert dataset.build_demo_corpus(a, max_mb=0.3)["reused"] is False
    assert dataset.build_demo_corpus(a, max_mb=0.3, force=True)["reused"] is False
    with open(os.path.join(a, "demo_corpus.json")) as f:
        assert json.load(f)["shards"] == first["shards"]


def test_demo_refuses_to_overwrite_downloaded_shards(tmp_path):
    data_dir = tmp_path / "base_data"
    data_dir.mkdir()
    pq.write_table(pa.table({"text": ["real fineweb text " * 20]}), data_dir / "shard_00000.parquet")
    with pytest.raises(UsageError, match="NANOCHAT_BASE_DIR"):
        dataset.build_demo_corpus(str(data_dir), max_mb=0.1, force=True)
    assert pq.read_table(data_dir / "shard_00000.parquet").num_rows == 1    # nothing deleted


def test_demo_cli_summary_and_second_run_skips(base_dir):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), NANOCHAT_DEMO_MAX_MB="0.2")
    cmd = [sys.executable, "-m", "nanochat.dataset", "--demo"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Demo corpus built" in first.stdout and "docs" in first.stdout and "MB" in first.stdout
    assert os.path.isfile(base_dir / "base_data" / "shard_01822.parquet")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "already built" in second.stdout


def test_docstring_extraction_regex_matches_ast():
    source = '''"""Module docstring that is long enough to matter for the demo corpus. ''' + "x " * 120 + '''"""
import os


def documented(a,
               b: dict[str, int]) -> int:  # a comment
    """Function docstring with an escaped \\""" quote and more text. ''' + "y " * 120 + '''"""
    return {"key": """not a docstring: follows a dict key colon but is a value"""}


class Thing:
    r\'\'\'Raw docstring in single quotes. ''' + "z " * 120 + '''\'\'\'
'''
    by_regex = dataset._docstrings_by_regex(source)
    assert by_regex[0].startswith("Module docstring")
    assert any(d.startswith('Function docstring with an escaped """ quote') for d in by_regex)
    by_ast = dataset._docstrings_by_ast(source)
    assert [d for d in by_ast if len(d) >= 200] == [d for d in by_regex if len(d) >= 200]


def test_split_long_documents():
    text = "\n\n".join(f"paragraph {i} " + "word " * 300 for i in range(30))
    pieces = dataset._split_long(text)
    assert len(pieces) > 1 and all(len(p) <= dataset.MAX_DOC_CHARS for p in pieces)
    assert "".join(p.replace("\n\n", "") for p in pieces) == text.replace("\n\n", "")


def test_require_shards_names_the_fix(tmp_path):
    with pytest.raises(UsageError, match=r"nanochat.dataset -n 8.*--demo"):
        dataset.require_shards("train", str(tmp_path))
    with pytest.raises(UsageError, match="validation shard"):
        dataset.require_shards("val", str(tmp_path))
    (tmp_path / "shard_00003.parquet.tmp-123").write_text("partial")
    (tmp_path / "notes.parquet").write_text("x")
    assert dataset.list_train_shards(str(tmp_path)) == []

"""DataLoader: exact token stream (BOS per doc, rank-strided row groups), batch-size invariance, exact resume from
a JSON state (also at a smaller B and across epochs), lanes reproducing a multi-rank run, val split, errors."""
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.common import UsageError
from nanochat.dataloader import DataLoader, merge_states
from nanochat.tokenizer import Tokenizer

ROWS_PER_GROUP = 16
WORDS = "alpha beta gamma delta river city school energy water model token light data value year".split()


def _docs(n, seed):
    rng = random.Random(seed)
    return [f"doc{seed}-{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 train shards (with 3, 2 and 3 row groups of 16 docs) + the validation shard, and a 512-token tokenizer."""
    data_dir = tmp_path_factory.mktemp("base_data")
    for index, n_docs in ((0, 48), (1, 32), (2, 40)):
        pq.write_table(pa.table({"text": _docs(n_docs, index)}), data_dir / f"shard_{index:05d}.parquet",
                       row_group_size=ROWS_PER_GROUP)
    pq.write_table(pa.table({"text": _docs(40, 99)}), data_dir / "shard_01822.parquet", row_group_size=ROWS_PER_GROUP)
    tokenizer = Tokenizer.train_from_iterator(iter(_docs(200, 7)), 512)
    return tokenizer, str(data_dir)


def _expected_stream(tokenizer, data_dir, shard_numbers, lane, world_size, n_tokens):
    """The token stream a lane should produce, computed independently of the loader."""
    groups = []
    for number in shard_numbers:
        pf = pq.ParquetFile(f"{data_dir}/shard_{number:05d}.parquet")
        groups += [pf.read_row_group(rg).column("text").to_pylist() for rg in range(pf.num_row_groups)]
    stream, g = [], lane
    while len(stream) < n_tokens:
        for text in groups[g]:
            stream += [tokenizer.get_bos_token_id()] + tokenizer.encode(text)
        g += world_size
        if g >= len(groups):
            g = lane
    return stream[:n_tokens]


def _flat(batches):
    return torch.cat([x.reshape(-1) for x, _ in batches])


def _take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_follow_the_expected_token_stream(corpus):
    tok, data_dir = corpus
    B, T, n = 2, 32, 12
    loader = DataLoader(tok, B, T, "train", data_dir=data_dir)
    batches = _take(loader, n)
    expected = torch.tensor(_expected_stream(tok, data_dir, [0, 1, 2], 0, 1, n * B * T + 1))
    for i, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
        chunk = expected[i * B * T: (i + 1) * B * T + 1]
        assert torch.equal(x.reshape(-1), chunk[:-1]) and torch.equal(y.reshape(-1), chunk[1:])
    assert batches[0][0][0, 0].item() == tok.get_bos_token_id()        # every document starts with BOS
    assert int((torch.cat([x.reshape(-1) for x, _ in batches]) == tok.get_bos_token_id()).sum()) > 5


def test_one_batch_of_4_equals_2_of_2_and_4_of_1(corpus):
    tok, data_dir = corpus
    T = 48
    ref = _take(DataLoader(tok, 4, T, data_dir=data_dir), 6)
    for B in (2, 1):
        small = _take(DataLoader(tok, B, T, data_dir=data_dir), 6 * 4 // B)
        assert torch.equal(_flat(ref), _flat(small))
        assert torch.equal(torch.cat([y.reshape(-1) for _, y in ref]), torch.cat([y.reshape(-1) for _, y in small]))


def test_resume_from_json_state_same_and_smaller_batch(corpus):
    tok, data_dir = corpus
    B, T = 4, 40
    loader = DataLoader(tok, B, T, data_dir=data_dir)
    _take(loader, 5)
    state = json.loads(json.dumps(loader.state_dict()))
    following = _take(loader, 6)

    _assert_same(following, _take(DataLoader(tok, B, T, data_dir=data_dir, state=state), 6))
    half = _take(DataLoader(tok, B // 2, T, data_dir=data_dir, state=state), 12)
    assert torch.equal(_flat(following), _flat(half))
    # and a resumed loader's own state resumes again
    resumed = DataLoader(tok, 1, T, data_dir=data_dir, state=state)
    _take(resumed, 8)
    second = resumed.state_dict()
    assert torch.equal(_flat(_take(DataLoader(tok, B, T, data_dir=data_dir, state=second), 4)), _flat(following[2:]))


def test_epochs_wrap_and_resume_across_the_wrap(corpus):
    tok, data_dir = corpus
    loader = DataLoader(tok, 4, 64, data_dir=data_dir)
    epochs = []
    for _ in range(60):
        loader.next_batch()
        epochs.append(loader.epoch)
    assert epochs[0] == 0 and max(epochs) >= 1 and epochs == sorted(epochs)
    state = loader.state_dict()
    assert state["lanes"]["0"]["epoch"] >= 1
    _assert_same(_take(loader, 3), _take(DataLoader(tok, 4, 64, data_dir=data_dir, state=state), 3))


def test_ranks_read_disjoint_strided_row_groups(corpus):
    tok, data_dir = corpus
    B, T, n = 2, 32, 4
    streams = []
    for rank in range(2):
        loader = DataLoader(tok, B, T, rank=rank, world_size=2, data_dir=data_dir)
        got = _flat(_take(loader, n))
        expected = _expected_stream(tok, data_dir, [0, 1, 2], rank, 2, n * B * T)
        assert got.tolist() == expected
        streams.append(got)
    assert not torch.equal(streams[0], streams[1])
    # the documents each rank saw (identified by their unique prefix) do not overlap
    docs = [set(re.findall(r"doc\d+-\d+", tok.decode(s.tolist()))) for s in streams]
    assert docs[0] and docs[1] and not docs[0] & docs[1]


def test_lanes_reproduce_a_two_rank_run_and_merged_states_resume_it(corpus):
    tok, data_dir = corpus
    B, T = 2, 24
    ranks = [DataLoader(tok, B, T, rank=r, world_size=2, data_dir=data_dir) for r in range(2)]
    single = DataLoader(tok, B, T, world_size=2, lanes=[0, 1], data_dir=data_dir)
    for _ in range(3):                     # micro-batch i of the single process = rank i % 2
        for r in range(2):
            _assert_same([ranks[r].next_batch()], [single.next_batch()])
    merged = json.loads(json.dumps(merge_states([ranks[0].state_dict(), ranks[1].state_dict()])))
    assert merged == single.state_dict()
    resumed_single = DataLoader(tok, B, T, world_size=2, lanes=[0, 1], data_dir=data_dir, state=merged)
    resumed_rank1 = DataLoader(tok, B, T, rank=1, world_size=2, data_dir=data_dir, state=merged)
    resumed_single.next_batch()
    _assert_same([resumed_single.next_batch()], [resumed_rank1.next_batch()])


def test_val_split_reads_only_the_validation_shard(corpus):
    tok, data_dir = corpus
    loader = DataLoader(tok, 2, 32, "val", data_dir=data_dir)
    got = _flat(_take(loader, 3)).tolist()
    assert got == _expected_stream(tok, data_dir, [1822], 0, 1, len(got))
    assert "doc99-" in tok.decode(got) and "doc0-" not in tok.decode(got)
    # more ranks than validation row groups: evaluation still gets data (repeating row groups)
    assert DataLoader(tok, 1, 16, "val", rank=5, world_size=6, data_dir=data_dir).next_batch()[0].shape == (1, 16)


def test_errors_are_usage_errors_with_the_fix(corpus, tmp_path):
    tok, data_dir = corpus
    with pytest.raises(UsageError, match="nanochat.dataset"):
        DataLoader(tok, 2, 16, data_dir=str(tmp_path))
    with pytest.raises(UsageError, match="positive integer"):
        DataLoader(tok, 0, 16, data_dir=data_dir)
    with pytest.raises(UsageError, match="fewer than the 64 ranks"):
        DataLoader(tok, 1, 16, rank=0, world_size=64, data_dir=data_dir)
    state = DataLoader(tok, 2, 16, data_dir=data_dir).state_dict()
    with pytest.raises(UsageError, match="same number of ranks"):
        DataLoader(tok, 2, 16, rank=0, world_size=2, data_dir=data_dir, state=state)
    bad = json.loads(json.dumps(state))
    bad["lanes"]["0"]["shard"] = 7
    with pytest.raises(UsageError, match="not in the data on disk"):
        DataLoader(tok, 2, 16, data_dir=data_dir, state=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_equal_cpu_batches(corpus):
    tok, data_dir = corpus
    cpu = _take(DataLoader(tok, 4, 64, data_dir=data_dir), 5)
    gpu = _take(DataLoader(tok, 4, 64, device="cuda", data_dir=data_dir), 5)
    assert all(x.is_cuda and y.is_cuda for x, y in gpu)
    _assert_same(cpu, [(x.cpu(), y.cpu()) for x, y in gpu])


def test_skip_batches_lands_where_reading_them_would_also_with_lanes(corpus):
    """A rollback's data skip: skip_batches(n) leaves the position (and the next batch) of n next_batch() calls."""
    tok, data_dir = corpus
    for lanes in (None, [0, 1]):
        world = 2 if lanes else 1
        read = DataLoader(tok, 2, 24, world_size=world, lanes=lanes, data_dir=data_dir)
        skipped = DataLoader(tok, 2, 24, world_size=world, lanes=lanes, data_dir=data_dir)
        _take(read, 7)
        skipped.skip_batches(7)
        assert skipped.state_dict() == read.state_dict()
        _assert_same([skipped.next_batch()], [read.next_batch()])

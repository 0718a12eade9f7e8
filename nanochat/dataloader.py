"""Streaming, tokenizing, rank-strided pretraining data loader whose exact position is a small JSON dict.

Each lane (normally: the rank) reads the row groups r, r+W, r+2W, ... of the concatenated shards (W = world size),
tokenizes a row group at a time with <|bos|> before every document, and serves one contiguous token stream: a
micro-batch takes exactly B*T tokens and peeks one more for the last target. So B=4 yields the same tokens as two
micro-batches of B=2, and a position saved at one B resumes exactly at another.
"""
import itertools

import torch

from nanochat.common import UsageError
from nanochat.dataset import get_data_dir, require_shards, shard_index

STATE_VERSION = 1


class _RowGroupIndex:
    """The ordered list of (shard number, path, row group) over all shards of a split."""

    def __init__(self, paths):
        import pyarrow.parquet as pq

        self.entries = []
        for path in paths:
            try:
                count = pq.ParquetFile(path).metadata.num_row_groups
            except Exception as exc:
                raise UsageError(f"cannot read shard {path} ({' '.join(str(exc).split())}); delete it and download "
                                 f"it again with python -m nanochat.dataset -n N")
            number = shard_index(path)
            self.entries.extend((number, path, rg) for rg in range(count))
        self._position = {(number, rg): g for g, (number, _, rg) in enumerate(self.entries)}

    def __len__(self):
        return len(self.entries)

    def find(self, shard_number: int, row_group: int):
        return self._position.get((shard_number, row_group))


class _Lane:
    """One virtual rank's token stream: row groups lane, lane+W, ... of the index, looping over epochs."""

    def __init__(self, lane, world_size, index, tokenizer, num_threads, wrap_small):
        self.lane, self.world_size, self.index = lane, world_size, index
        self.tokenizer, self.num_threads = tokenizer, num_threads
        self.bos = tokenizer.get_bos_token_id()
        self.first = lane % len(index) if wrap_small else lane
        self.epoch = 0
        self.next_g = self.first              # next row group (global index) to tokenize
        self.segments = []                    # buffered tokens: [epoch, g, offset_in_row_group, tensor]
        self.buffered = 0
        self._parquet = {}

    # position ------------------------------------------------------------------------------------------------------
    def position(self) -> dict:
        if self.segments:
            epoch, g, offset, _ = self.segments[0]
        else:
            epoch, g, offset = self.epoch, self.next_g, 0
        number, _, rg = self.index.entries[g]
        return {"epoch": epoch, "shard": number, "row_group": rg, "offset": offset}

    def restore(self, pos: dict):
        g = self.index.find(int(pos["shard"]), int(pos["row_group"]))
        if g is None:
            raise UsageError(f"the saved data-loader position (shard {pos['shard']}, row group {pos['row_group']}) "
                             f"is not in the data on disk; restore the shards the run was started with")
        if (g - self.first) % self.world_size != 0:
            raise UsageError(f"the saved data-loader position does not belong to rank {self.lane} of "
                             f"{self.world_size}; resume with the same number of ranks")
        self.epoch, self.next_g = int(pos["epoch"]), g
        self.segments, self.buffered = [], 0
        offset = int(pos["offset"])
        if offset:
            self._fill(offset + 1)
            self._advance(offset)

    # streaming -----------------------------------------------------------------------------------------------------
    def _read_row_group(self, g):
        import pyarrow.parquet as pq

        _, path, rg = self.index.entries[g]
        pf = self._parquet.get(path)
        if pf is None:
            self._parquet = {path: pq.ParquetFile(path)}   # keep one shard open at a time
            pf = self._parquet[path]
        texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
        ids = self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.num_threads)
        return torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)

    def _fill(self, needed):
        while self.buffered < needed:
            tokens = self._read_row_group(self.next_g)
            if len(tokens):
                self.segments.append([self.epoch, self.next_g, 0, tokens])
                self.buffered += len(tokens)
            self.next_g += self.world_size
            if self.next_g >= len(self.index):
                self.epoch += 1
                self.next_g = self.first

    def _advance(self, n):
        self.buffered -= n
        while n:
            seg = self.segments[0]
            available = len(seg[3])
            if n >= available:
                self.segments.pop(0)
                n -= available
            else:
                seg[2] += n
                seg[3] = seg[3][n:]
                n = 0

    def skip(self, consume, peek=1):
        """Use up `consume` tokens exactly as take() would, without building the tensor."""
        self._fill(consume + peek)
        self._advance(consume)

    def take(self, consume, peek=1):
        """The next consume+peek tokens; only `consume` of them are used up."""
        self._fill(consume + peek)
        out, need = [], consume + peek
        for _, _, _, tokens in self.segments:
            part = tokens[:need]
            out.append(part)
            need -= len(part)
            if not need:
                break
        result = torch.cat(out) if len(out) > 1 else out[0].clone()
        self._advance(consume)
        return result


class DataLoader:
    """Pretraining batches (x, y) of shape [B, T]; y is x shifted by one token. See the module docstring.

    lanes: the virtual ranks this process reads, round-robin per micro-batch (micro-batch i uses lanes[i % n]);
    default [rank]. A single process with lanes=[0..W-1] reproduces the token order of a W-rank run.
    state: a dict from state_dict() (or merge_states() of several ranks) to resume from.
    """

    def __init__(self, tokenizer, B, T, split="train", device="cpu", rank=0, world_size=1, lanes=None, state=None,
                 data_dir=None, num_threads=4):
        for name, value in (("B", B), ("T", T), ("world_size", world_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"data loader {name} must be a positive integer, got {value!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.tokenizer, self.B, self.T, self.split = tokenizer, B, T, split
        self.device = torch.device(device)
        self.world_size = world_size
        self.lane_ids = list(lanes) if lanes is not None else [rank]
        if not self.lane_ids or any(not 0 <= lane < world_size for lane in self.lane_ids):
            raise ValueError(f"lanes must be rank ids in [0, {world_size}), got {self.lane_ids}")
        self.data_dir = data_dir or get_data_dir()
        self.index = _RowGroupIndex(require_shards(split, self.data_dir))
        if len(self.index) == 0:
            raise UsageError(f"the {split} shards in {self.data_dir} hold no row groups; rebuild the data")
        if split == "train" and len(self.index) < world_size:
            raise UsageError(f"the training data has {len(self.index)} row groups, fewer than the {world_size} "
                             f"ranks; download more shards (python -m nanochat.dataset -n N)")
        wrap_small = split == "val"    # evaluation may repeat row groups across ranks when the val shard is small
        self.lanes = [_Lane(lane, world_size, self.index, tokenizer, num_threads, wrap_small) for lane in self.lane_ids]
        self.micro_step = 0
        self.last_lane = self.lanes[0]
        if state is not None:
            self.load_state_dict(state)

    @property
    def epoch(self) -> int:
        """Epoch of the lane that served the last batch (0 during the first pass over the data)."""
        return self.last_lane.epoch if not self.last_lane.segments else self.last_lane.segments[0][0]

    def next_batch(self):
        lane = self.lanes[self.micro_step % len(self.lanes)]
        self.micro_step += 1
        self.last_lane = lane
        tokens = lane.take(self.B * self.T, 1)
        if self.device.type == "cuda":
            tokens = tokens.pin_memory()
            x = tokens[:-1].view(self.B, self.T).to(self.device, non_blocking=True)
            y = tokens[1:].view(self.B, self.T).to(self.device, non_blocking=True)
            return x, y
        x = tokens[:-1].view(self.B, self.T)
        y = tokens[1:].clone().view(self.B, self.T)
        return x.to(self.device), y.to(self.device)

    def skip_batches(self, count):
        """Advance the position exactly as `count` next_batch() calls would (a rollback's data skip), without
        building or moving tensors."""
        for _ in range(count):
            lane = self.lanes[self.micro_step % len(self.lanes)]
            self.micro_step += 1
            self.last_lane = lane
            lane.skip(self.B * self.T, 1)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Exact position, JSON-serialisable: per lane {epoch, shard, row_group, offset} of the next token."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "world_size": self.world_size,
            "next_lane": self.micro_step % len(self.lanes),
            "lanes": {str(lane.lane): lane.position() for lane in self.lanes},
        }

    def load_state_dict(self, state: dict):
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "lanes" not in state:
            raise UsageError("the saved data-loader position has an unknown format; start the run afresh")
        if state.get("split", self.split) != self.split:
            raise ValueError(f"state is for split {state.get('split')!r}, loader is {self.split!r}")
        if int(state.get("world_size", self.world_size)) != self.world_size:
            raise UsageError(f"the data-loader position was saved by a run with {state['world_size']} rank(s); "
                             f"resume with the same number of ranks (this one has {self.world_size})")
        for lane in self.lanes:
            pos = state["lanes"].get(str(lane.lane))
            if pos is None:
                raise UsageError(f"the saved data-loader position has no entry for rank {lane.lane}")
            lane.restore(pos)
        next_lane = int(state.get("next_lane", 0))
        self.micro_step = next_lane if len(state["lanes"]) == len(self.lanes) else 0
        self.last_lane = self.lanes[self.micro_step % len(self.lanes)]


def merge_states(states) -> dict:
    """Combine the state_dict()s of all ranks (e.g. gathered with all_gather_object) into one dict that every
    rank, or a single process with lanes=[0..W-1], can resume from."""
    states = list(states)
    if not states:
        raise ValueError("merge_states needs at least one state")
    merged = dict(states[0])
    merged["lanes"] = {}
    for state in states:
        if state["world_size"] != merged["world_size"] or state["split"] != merged["split"]:
            raise ValueError("cannot merge data-loader states of different runs")
        merged["lanes"].update(state["lanes"])
    return merged

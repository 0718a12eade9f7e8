"""Resumable batch loaders over conversation datasets: packed token rows for midtraining, padded and masked
conversation batches for SFT. Both resume exactly from `state_dict()` at any device batch size."""
from __future__ import annotations

import torch

from nanochat.common import UsageError


def _conversation_index(k: int, rank: int, world_size: int, n: int) -> tuple[int, int]:
    """The k-th conversation this rank reads: (dataset index, epoch). Ranks interleave: r, r+W, r+2W, ..."""
    flat = rank + k * world_size
    return flat % n, flat // n


class PackedConversationLoader:
    """Midtraining batches: rendered conversations concatenated into one token stream, cut into B×T rows (plus one
    peeked token for the last target), exactly like pretraining. All tokens are trained on (as upstream).
    State = (k-th conversation of this rank, tokens of it already consumed)."""

    def __init__(self, tokenizer, dataset, B, T, device, rank=0, world_size=1, state=None, max_conv_tokens=None):
        if len(dataset) == 0:
            raise UsageError("the midtraining mixture is empty")
        self.tokenizer, self.dataset, self.B, self.T = tokenizer, dataset, B, T
        self.device, self.rank, self.world_size = device, rank, world_size
        self.max_conv_tokens = max_conv_tokens or 10 * T
        self.conv = int(state["conv"]) if state else 0
        self.offset = int(state["offset"]) if state else 0
        self._cache = {}

    def _ids(self, k):
        if k not in self._cache:
            index, _ = _conversation_index(k, self.rank, self.world_size, len(self.dataset))
            ids, _ = self.tokenizer.render_conversation(self.dataset[index], max_tokens=self.max_conv_tokens)
            self._cache = {kk: v for kk, v in self._cache.items() if kk >= self.conv}
            self._cache[k] = ids
        return self._cache[k]

    @property
    def epoch(self) -> int:
        return _conversation_index(self.conv, self.rank, self.world_size, len(self.dataset))[1]

    def state_dict(self) -> dict:
        return {"conv": self.conv, "offset": self.offset, "epoch": self.epoch}

    def _take(self, conv, offset, n):
        out = []
        while len(out) < n:
            ids = self._ids(conv)
            chunk = ids[offset:offset + n - len(out)]
            out.extend(chunk)
            offset += len(chunk)
            if offset >= len(ids):
                conv, offset = conv + 1, 0
        return out, conv, offset

    def next_batch(self):
        n = self.B * self.T
        tokens, conv, offset = self._take(self.conv, self.offset, n)
        peek, _, _ = self._take(conv, offset, 1)
        self.conv, self.offset = conv, offset
        buf = torch.tensor(tokens + peek, dtype=torch.long)
        x, y = buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __iter__(self):
        while True:
            yield self.next_batch()


def check_sft_batch(examples_per_step: int, device_batch_size: int, world_size: int = 1) -> int:
    """Gradient accumulation steps of SFT; UsageError naming the valid device batch sizes when B does not divide."""
    per_micro = device_batch_size * world_size
    if examples_per_step % per_micro == 0:
        return examples_per_step // per_micro
    per_rank = examples_per_step // world_size if examples_per_step % world_size == 0 else 0
    valid = [b for b in range(1, per_rank + 1) if per_rank % b == 0]
    ranks = f" x {world_size} ranks" if world_size > 1 else ""
    hint = f"valid device batch sizes: {', '.join(map(str, valid))}" if valid else \
        f"make --target_examples_per_step a multiple of {world_size}"
    raise UsageError(f"--device_batch_size={device_batch_size}{ranks} does not divide --target_examples_per_step="
                     f"{examples_per_step}; {hint}")


class SFTLoader:
    """SFT micro-batches of B conversations, padded to the longest; targets are -1 except on assistant tokens.

    Each batch is (x, y, row_weight). The weights reproduce upstream's loss at the device batch size the run was
    configured with, `group_size` (G): there each micro-batch of G conversations weighs the same — its mean target
    loss divided by the step's number of micro-batches — however many targets it holds. Here the conversations of
    a step are cut into those same groups of G (consecutive on a rank, as the data order makes them), and row i
    gets 1 / (valid targets of its group × groups per rank per step); summing row_weight × the row's summed token
    loss over the step then gives exactly the configured run's objective at any device batch B (after an OOM
    fallback to B=2 a G=4 run keeps its gradient). A group with no target adds nothing. G is kept in the loader
    state, so a resumed run weights as the run that wrote the checkpoint did.
    State = conversations of this rank already yielded, and G."""

    def __init__(self, tokenizer, dataset, B, accum, device, max_seq_len=2048, rank=0, world_size=1, state=None,
                 group_size=None):
        if len(dataset) == 0:
            raise UsageError("the SFT mixture is empty")
        self.tokenizer, self.dataset, self.B, self.accum = tokenizer, dataset, B, accum
        self.device, self.max_seq_len, self.rank, self.world_size = device, max_seq_len, rank, world_size
        self.pad_id = tokenizer.encode_special("<|assistant_end|>")
        self.next_example = int(state["example"]) if state else 0
        self.group_size = int((state or {}).get("group") or group_size or B)
        per_step = B * accum
        if per_step % self.group_size:
            raise UsageError(f"--device_batch_size={B} x {accum} micro-batches = {per_step} conversations per rank "
                             f"per step cannot be cut into the run's loss groups of {self.group_size}; use a device "
                             f"batch size that divides {self.group_size} (or a multiple of it)")
        self.groups_per_step = per_step // self.group_size
        self.queue = []

    def state_dict(self) -> dict:
        return {"example": self.next_example - self.B * len(self.queue), "group": self.group_size}

    def _collate(self, first):
        rows = []
        for k in range(first, first + self.B):
            index, _ = _conversation_index(k, self.rank, self.world_size, len(self.dataset))
            rows.append(self.tokenizer.render_conversation(self.dataset[index], max_tokens=self.max_seq_len + 1))
        width = max(len(ids) for ids, _ in rows) - 1
        x = torch.full((self.B, width), self.pad_id, dtype=torch.long)
        y = torch.full((self.B, width), -1, dtype=torch.long)
        for i, (ids, mask) in enumerate(rows):
            n = len(ids) - 1
            ids_t = torch.tensor(ids, dtype=torch.long)
            x[i, :n] = ids_t[:-1]
            targets = ids_t[1:].clone()
            targets[torch.tensor(mask[1:], dtype=torch.bool).logical_not()] = -1
            y[i, :n] = targets
        return x, y

    def _prefetch_step(self):
        batches = []
        for _ in range(self.accum):
            batches.append(self._collate(self.next_example))
            self.next_example += self.B
        counts = torch.cat([(y >= 0).sum(1) for _, y in batches]).double()  # valid targets per row of the step
        per_group = counts.view(self.groups_per_step, self.group_size).sum(1)
        weights = torch.where(per_group > 0, 1.0 / (per_group.clamp(min=1) * self.groups_per_step), 0.0)
        row_weights = weights.repeat_interleave(self.group_size).float().view(self.accum, self.B)
        self.queue = [(x, y, w) for (x, y), w in zip(batches, row_weights)]

    def next_batch(self):
        if not self.queue:
            self._prefetch_step()
        x, y, w = self.queue.pop(0)
        return (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                w.to(self.device, non_blocking=True))

    def __iter__(self):
        while True:
            yield self.next_batch()

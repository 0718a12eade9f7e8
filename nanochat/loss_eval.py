"""Bits per byte on held-out data: a tokenizer-independent loss over a fixed token budget, same at any device batch."""
import math

import torch
import torch.distributed as dist


def eval_sequences(eval_tokens: int, seq_len: int, world_size: int = 1) -> int:
    """Sequences each rank evaluates for a budget of `eval_tokens` (independent of the device batch size)."""
    return max(1, eval_tokens // (seq_len * world_size))


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes, num_sequences=None):
    """Bits per byte of `model` over `steps` batches (x, y) from the iterator `batches`.

    The summed cross-entropy (nats) of every target with a byte length > 0 is divided by ln 2 times the total bytes
    of those targets; special tokens (0 bytes) and ignored targets (-1) do not count. When `num_sequences` is
    given, only that many rows are used in total (the last batch is trimmed), so a fixed budget read in chunks of
    any batch size covers exactly the same sequences. Sums are all-reduced across ranks.
    """
    device = token_bytes.device
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.float64, device=device)
    rows_left = num_sequences
    for _ in range(steps):
        if rows_left is not None and rows_left <= 0:
            break
        x, y = next(batches)
        if rows_left is not None:
            if x.size(0) > rows_left:
                x, y = x[:rows_left], y[:rows_left]
            rows_left -= x.size(0)
        loss = model(x, y, loss_reduction="none").reshape(-1).double()
        targets = y.reshape(-1)
        valid = targets >= 0
        nbytes = torch.where(valid, token_bytes[targets.clamp(min=0)], torch.zeros_like(targets))
        counted = nbytes > 0
        total_nats += torch.where(counted, loss, torch.zeros_like(loss)).sum()
        total_bytes += nbytes.sum().double()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = torch.stack([total_nats, total_bytes])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        total_nats, total_bytes = sums[0], sums[1]
    total_bytes = total_bytes.item()
    if total_bytes == 0:
        return float("inf")
    return total_nats.item() / (math.log(2) * total_bytes)


def evaluate_bpb_budget(model, make_batches, eval_tokens, batch_size, seq_len, token_bytes, world_size=1):
    """bpb over the first `eval_tokens // (seq_len·world)` validation sequences of this rank, read in chunks of
    `batch_size` rows from the fresh iterator `make_batches()`."""
    sequences = eval_sequences(eval_tokens, seq_len, world_size)
    steps = math.ceil(sequences / batch_size)
    return evaluate_bpb(model, make_batches(), steps, token_bytes, num_sequences=sequences)

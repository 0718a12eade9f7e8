"""The data skip list: at optimizer step S, discard the data of N steps before training (a rollback's cure).

Format (flag `--data_skip` and checkpoint meta `data_skip`): `S:N[,S:N...]`, e.g. `40:16` = when step 40 starts,
the loader first discards the micro-batches of 16 optimizer steps (16 x grad_accum), then step 40 trains on what
follows. Entries are relative to the stream as it is at step S, so a fresh run given the same list consumes the
same batches as a run that rolled back to step S and skipped there. The skip happens inside step S (after its
resume snapshot), so every checkpoint of step S holds the position before the skip and resumes exactly.
"""
from nanochat.common import UsageError


def parse_data_skip(text) -> dict:
    """`"40:16,60:5"` -> {40: 16, 60: 5}; "" -> {}; UsageError (one line) otherwise."""
    out = {}
    for part in str(text or "").replace(" ", "").split(","):
        if not part:
            continue
        step, sep, count = part.partition(":")
        try:
            s, n = int(step), int(count)
        except ValueError:
            s = n = -1
        if not sep or s < 0 or n < 1:
            raise UsageError(f"--data_skip={text!r}: expected STEP:COUNT[,STEP:COUNT...] with STEP >= 0 and "
                             f"COUNT >= 1, e.g. --data_skip=40:16")
        out[s] = out.get(s, 0) + n
    return out


def format_data_skip(skips: dict) -> str:
    return ",".join(f"{s}:{n}" for s, n in sorted(skips.items()))


def effective_skips(flag: dict, meta_skips, start_step) -> dict:
    """On resume from `start_step`: the checkpoint's history for the steps before it, the flag from it on."""
    history = {int(s): int(n) for s, n in (meta_skips or {}).items() if int(s) < start_step}
    return {**history, **{s: n for s, n in flag.items() if s >= start_step}}


def skip_micro_batches(loader, count):
    """Advance `loader` by `count` micro-batches: its own `skip_batches(n)` when it has one, else by reading."""
    if count <= 0:
        return
    fast = getattr(loader, "skip_batches", None)
    if fast is not None:
        fast(count)
        return
    nxt = loader.next_batch if hasattr(loader, "next_batch") else lambda: next(loader)
    for _ in range(count):
        nxt()

"""The training loop's parts by role (flags, OOM, faults, signals, RNG, W&B, step hook, guard, data skip); the loop
itself is nanochat/trainer.py."""

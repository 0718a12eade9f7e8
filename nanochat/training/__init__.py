"""The training loop's parts by role (flags, OOM, fault injection, signals, RNG, W&B, step hook); the loop
itself is nanochat/trainer.py."""

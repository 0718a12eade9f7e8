"""What a stage contributes to each optimizer step: the micro-batch loss and the log lines (StepHook)."""
from nanochat.common import format_mfu


class StepHook:
    """A stage's part in each optimizer step: the loss every micro-batch backpropagates and the step's log line.

    This default is pretraining's (and midtraining's): a batch is (x, y); each micro-batch backpropagates its mean
    token loss divided by the accumulation steps; the line is `step S/N (p%) | loss: ... | ... | total time: ...`.
    A stage with other needs (SFT) passes its own subclass to `Trainer(hook=...)`.
    """
    count_targets = False  # True: the trainer counts the targets >= 0 of each step (all ranks) as `num_tokens`

    def micro_loss(self, trainer, batch):
        """The loss to backpropagate for one micro-batch; over the step's micro-batches these sum to the step loss."""
        x, y = batch
        with trainer.autocast():
            loss = trainer.forward_model(x, y)
        return loss / trainer.grad_accum_steps

    def batch_lines(self, trainer):
        per_rank = trainer.B * trainer.T
        return [f"Tokens / micro-batch / rank: {trainer.B} x {trainer.T} = {per_rank:,}",
                f"Tokens / micro-batch: {per_rank * trainer.world_size:,}",
                f"Total batch size {trainer.total_batch_size:,} => gradient accumulation steps: "
                f"{trainer.grad_accum_steps}"]

    def step_line(self, trainer, step, m) -> str:
        """m: train_loss (this step), debiased (EMA), lrm, dt, tok_per_sec, mfu, num_tokens, total_time (s)."""
        n = trainer.num_iterations
        pct = 100 * step / n if n else 100.0
        return (f"step {step:05d}/{n:05d} ({pct:.2f}%) | loss: {m['debiased']:.6f} | lrm: {m['lrm']:.2f} | "
                f"dt: {m['dt'] * 1000:.2f}ms | tok/sec: {m['tok_per_sec']:,} | mfu: {format_mfu(m['mfu'])} | "
                f"total time: {m['total_time'] / 60:.2f}m")

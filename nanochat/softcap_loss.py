"""Softcapped cross-entropy of the lm head as one eager autograd op: few whole-tensor in-place passes, fp32.

`softcap_cross_entropy(z, targets, softcap)` equals
    F.cross_entropy((softcap * tanh(z.float() / softcap)).view(-1, V), targets.view(-1), ignore_index=-1)
to fp32 rounding, without materialising the log-softmax or the autograd chain of five elementwise ops. It is the
eager path of GPT.forward; under torch.compile the model keeps the plain ops, which inductor fuses by itself.

Six passes forward and three backward over the [N, V] logits, against about fifteen for the plain ops (each a
separate kernel with its own temporaries). Logits are bounded by the cap, so exp(logit - softcap) never overflows
and needs no max pass. Whole-tensor ops, not row chunks: on a busy CPU every extra op is an extra thread barrier.
The backward consumes the saved buffers in place (one backward per forward, as in training; a second backward
through the same graph raises).
"""
import torch

class _SoftcapCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, softcap, ignore_index, reduction):
        t = torch.div(z, softcap) if z.dtype == torch.float32 else z.float().div_(softcap)  # bf16 logits: fp32
        t.tanh_()                                                # tanh(z / softcap)
        e = torch.mul(t, softcap).sub_(softcap).exp_()           # exp(logit - softcap) <= 1: needs no max pass
        sums = e.sum(dim=1)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        target_logit = softcap * t.gather(1, safe_targets[:, None]).squeeze(1)
        losses = (sums.log() + softcap - target_logit) * valid
        count = valid.sum()
        if reduction == "mean":
            loss = losses.sum() / count
        elif reduction == "sum":
            loss = losses.sum()
        else:
            loss = losses
        ctx.softcap, ctx.reduction, ctx.z_dtype = softcap, reduction, z.dtype
        ctx.consumed = False
        ctx.save_for_backward(t, e, sums, valid, safe_targets, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.consumed:
            raise RuntimeError("softcap_cross_entropy: the backward consumes its buffers; it runs once per forward "
                               "(use the plain ops for retain_graph / double backward)")
        ctx.consumed = True
        t, e, sums, valid, safe_targets, count = ctx.saved_tensors
        weights = valid.float() * grad_loss                      # d loss / d loss_row, 0 for ignored rows
        if ctx.reduction == "mean":
            weights = weights / count
        coef = weights / sums
        rows = torch.arange(t.size(0), device=t.device)
        e.mul_(coef[:, None])                                    # weight * softmax
        t.square_()
        e.addcmul_(e, t, value=-1.0)                             # * (1 - tanh²), the softcap's derivative
        # the one-hot part: - weight * (1 - tanh² at the target)
        t_target = t[rows, safe_targets]                         # already squared above
        e.index_put_((rows, safe_targets), -weights * (1.0 - t_target), accumulate=True)
        grad_z = e if ctx.z_dtype == torch.float32 else e.to(ctx.z_dtype)
        return grad_z, None, None, None, None


def softcap_cross_entropy(z, targets, softcap, ignore_index=-1, reduction="mean"):
    """Cross-entropy of softcap·tanh(z/softcap) (fp32) against targets; z: [N, V] (any float dtype), targets: [N]."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return _SoftcapCrossEntropy.apply(z.contiguous(), targets.contiguous(), float(softcap), ignore_index, reduction)

"""SFT loss weighting (upstream's per-micro-batch mean / accumulation steps at the configured device batch, kept
through an OOM fallback to a smaller device batch), the stage hook, and mid/SFT's clipping and momentum defaults."""
import random
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from nanochat.common import UsageError
from nanochat.gpt import GPT, GPTConfig
from nanochat.scripts import chat_sft, mid_train
from nanochat.tasks.batching import SFTLoader

CFG = GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)


class ListTokenizer:
    """Conversations are given pre-rendered: {"ids": [...], "mask": [...]}."""

    def render_conversation(self, conv, max_tokens=2048):
        return conv["ids"][:max_tokens], conv["mask"][:max_tokens]

    def encode_special(self, name):
        return 1


def conversations(n=16, seed=0):
    """Prompts of 4-20 tokens, answers of 1 (a multiple-choice letter + end) to 12 tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, answer = rng.randint(4, 20), rng.choice([1, 1, 2, 6, 12])
        ids = [0] + [rng.randrange(2, CFG.vocab_size) for _ in range(prompt + answer)]
        mask = [0] * (1 + prompt) + [1] * answer
        out.append({"ids": ids, "mask": mask})
    return out


def tiny_model():
    torch.manual_seed(0)
    model = GPT(CFG)
    model.init_weights()
    return model


def grads_with_hook(model, data, B, accum, state=None, group_size=None):
    """The gradient of one optimizer step as chat_sft's trainer computes it (SFTStepHook over SFTLoader)."""
    model.zero_grad(set_to_none=True)
    loader = SFTLoader(ListTokenizer(), data, B, accum, "cpu", max_seq_len=64, state=state, group_size=group_size)
    hook = chat_sft.SFTStepHook()
    trainer = SimpleNamespace(autocast=nullcontext, forward_model=model)
    total = 0.0
    for _ in range(accum):
        loss = hook.micro_loss(trainer, loader.next_batch())
        total += loss.item()
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, total


def grads_upstream(model, data, B, accum):
    """Upstream chat_sft, written out: per micro-batch of B conversations, the mean loss over its valid targets
    (cross-entropy's default reduction), divided by the accumulation steps, backpropagated."""
    model.zero_grad(set_to_none=True)
    for m in range(accum):
        rows = data[m * B:(m + 1) * B]
        width = max(len(r["ids"]) for r in rows) - 1
        x = torch.full((B, width), 1, dtype=torch.long)
        y = torch.full((B, width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            ids = torch.tensor(r["ids"])
            x[i, :len(ids) - 1] = ids[:-1]
            t = ids[1:].clone()
            t[torch.tensor(r["mask"][1:]) == 0] = -1
            y[i, :len(ids) - 1] = t
        (model(x, y) / accum).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_close(a, b, rtol=1e-4, atol=1e-6):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def max_rel_diff(a, b):
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp(min=1e-12)).item() for n in a)


def test_configured_batch_matches_upstream_per_micro_batch_mean():
    data = conversations(8)
    model = tiny_model()
    ours, _ = grads_with_hook(model, data, B=4, accum=2)
    assert_close(ours, grads_upstream(model, data, B=4, accum=2))
    # and it is not the token mean over the whole step (which weighs a 1-token answer less)
    model.zero_grad(set_to_none=True)
    x_all = [SFTLoader(ListTokenizer(), data, 8, 1, "cpu", max_seq_len=64).next_batch()]
    x, y, _ = x_all[0]
    model(x, y).backward()
    token_mean = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert max_rel_diff(ours, token_mean) > 1e-2


def test_fallback_batch_gives_the_configured_batch_gradient():
    """B=2 after an OOM fallback from B=4 (group size 4 restored from the loader state): the same gradient."""
    data = conversations(8, seed=1)
    model = tiny_model()
    at_4, loss_4 = grads_with_hook(model, data, B=4, accum=2)
    at_2, loss_2 = grads_with_hook(model, data, B=2, accum=4, state={"example": 0, "group": 4})
    assert_close(at_2, at_4)
    assert loss_2 == pytest.approx(loss_4, rel=1e-5)
    # weighting each micro-batch of 2 on its own (upstream at B=2) is a different gradient: the test can fail
    naive_2, _ = grads_with_hook(model, data, B=2, accum=4, group_size=2)
    assert max_rel_diff(naive_2, at_4) > 1e-2
    assert_close(naive_2, grads_upstream(model, data, B=2, accum=4))


def test_loader_state_carries_the_group_size_and_rejects_groups_that_do_not_tile():
    data = conversations(8)
    loader = SFTLoader(ListTokenizer(), data, 4, 2, "cpu", group_size=4)
    loader.next_batch()
    assert loader.state_dict() == {"example": 4, "group": 4}
    loader.next_batch()
    assert loader.state_dict() == {"example": 8, "group": 4}
    resumed = SFTLoader(ListTokenizer(), data, 1, 8, "cpu", state=loader.state_dict(), group_size=1)
    assert resumed.group_size == 4  # the checkpoint's, not this run's device batch
    with pytest.raises(UsageError):
        SFTLoader(ListTokenizer(), data, 3, 2, "cpu", group_size=4)


def test_row_weights_of_a_fully_masked_group_are_zero():
    data = conversations(4)
    masked = [{"ids": d["ids"], "mask": [0] * len(d["mask"])} for d in data[:2]]
    loader = SFTLoader(ListTokenizer(), masked + data[2:], 2, 2, "cpu", group_size=2)
    _, _, w0 = loader.next_batch()
    _, y1, w1 = loader.next_batch()
    assert w0.tolist() == [0.0, 0.0]
    n = int((y1 >= 0).sum())
    assert w1.tolist() == pytest.approx([1 / (n * 2)] * 2)


def test_mid_and_sft_do_not_clip_and_sft_keeps_momentum_constant_by_default():
    mid = mid_train.build_parser().parse_args([])
    sft = chat_sft.build_parser().parse_args([])
    assert mid.grad_clip == 0.0 and sft.grad_clip == 0.0 and not sft.muon_momentum_warmup
    assert chat_sft.build_parser().parse_args(["--grad_clip=1.0", "--muon_momentum_warmup"]).grad_clip == 1.0

"""GPT: exact sizes and FLOPs, initialisation, forward/loss semantics, softcap, causality, KV cache, a tiny fit."""
import math

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig, KVCache, config_for_depth
from nanochat.optim import Muon


def meta_model(depth, vocab_size=65536, sequence_len=2048):
    with torch.device("meta"):
        return GPT(config_for_depth(depth, vocab_size, sequence_len))


def tiny_model(depth=2, vocab_size=128, sequence_len=32, seed=0):
    torch.manual_seed(seed)
    model = GPT(config_for_depth(depth, vocab_size, sequence_len))
    model.init_weights()
    return model


def test_exact_parameter_counts_d4_and_d20():
    assert meta_model(4).num_params() == 36_700_160
    d20 = meta_model(20)
    assert d20.num_params() == 560_988_160
    assert d20.num_scaling_params() == 560_988_160 - 65536 * 1280
    assert d20.transformer.wte.weight.is_meta


def test_estimate_flops_d20():
    flops = meta_model(20, sequence_len=2048).estimate_flops()
    assert flops == 3_491_758_080
    assert f"{flops:e}" == "3.491758e+09"


def test_config_for_depth_sizes():
    assert config_for_depth(20, 65536, 2048) == GPTConfig(sequence_len=2048, vocab_size=65536, n_layer=20,
                                                          n_head=10, n_kv_head=10, n_embd=1280)
    d2 = config_for_depth(2)
    assert (d2.n_embd, d2.n_head, d2.n_kv_head) == (128, 1, 1)
    d1 = config_for_depth(1)
    assert (d1.n_embd, d1.n_head) == (64, 1)
    with pytest.raises(ValueError):
        config_for_depth(0)


def test_heads_by_ceiling_division_as_upstream():
    """num_heads = ceil(64·depth / 128): d3 = 2 heads of 96, d7 = 4 of 112, d15 = 8 of 120; d5 (320 / 3) fails."""
    sizes = {d: (config_for_depth(d).n_head, config_for_depth(d).n_embd // config_for_depth(d).n_head)
             for d in (1, 2, 3, 4, 6, 7, 15, 20)}
    assert sizes == {1: (1, 64), 2: (1, 128), 3: (2, 96), 4: (2, 128), 6: (3, 128), 7: (4, 112), 15: (8, 120),
                     20: (10, 128)}
    with pytest.raises(ValueError, match="not divisible"):
        config_for_depth(5)
    torch.manual_seed(0)
    model = GPT(config_for_depth(7, vocab_size=64, sequence_len=8))
    model.init_weights()
    loss = model(torch.randint(0, 64, (1, 8)), torch.randint(0, 64, (1, 8)))
    assert torch.isfinite(loss)


def test_no_biases_untied_head_and_rotary_not_in_state_dict():
    model = tiny_model()
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    keys = set(model.state_dict())
    assert "cos" not in keys and "sin" not in keys
    assert model.cos.size(1) == 10 * model.config.sequence_len


def test_initialisation():
    model = tiny_model(depth=4, vocab_size=512)
    dim = model.config.n_embd
    for block in model.transformer.h:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
        for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
            assert linear.weight.std().item() == pytest.approx(dim ** -0.5, rel=0.1)
    assert model.transformer.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.transformer.wte.weight.dtype == torch.float32  # bf16 only on CUDA


def test_meta_model_materialises_with_to_empty_and_init_weights():
    model = meta_model(2, vocab_size=256, sequence_len=32)
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.isfinite(model.cos).all() and torch.isfinite(model.sin).all()
    assert model.cos[0, 0].eq(1).all() and model.sin[0, 0].eq(0).all()
    logits = model(torch.zeros(1, 8, dtype=torch.long))
    assert torch.isfinite(logits).all()


def test_forward_shapes_and_initial_loss_near_uniform():
    model = tiny_model(vocab_size=256)
    idx = torch.randint(0, 256, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 256)
    loss = model(idx, idx)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert abs(loss.item() - math.log(256)) < 0.05  # tiny head init: near-uniform predictions
    assert model(idx, idx, loss_reduction="none").shape == (48,)
    torch.testing.assert_close(model(idx, idx, loss_reduction="sum"), loss * 48)


def test_ignored_targets_do_not_count():
    model = tiny_model()
    idx = torch.randint(0, 128, (2, 10))
    targets = torch.randint(0, 128, (2, 10))
    masked = targets.clone()
    masked[:, 5:] = -1
    per_token = model(idx, targets, loss_reduction="none").view(2, 10)
    torch.testing.assert_close(model(idx, masked), per_token[:, :5].mean())
    assert (model(idx, masked, loss_reduction="none").view(2, 10)[:, 5:] == 0).all()


def test_logit_softcap_bounds_logits():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 50.0)
    logits = model(torch.randint(0, 128, (2, 16)))
    assert logits.abs().max() <= 15.0
    assert logits.abs().max() > 14.5  # the cap is actually reached, not just a small model


def test_attention_is_causal():
    model = tiny_model()
    with torch.no_grad():  # make the blocks non-trivial (zero-init projections would hide leaks)
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.1)
            block.mlp.c_proj.weight.normal_(0, 0.1)
    a = torch.randint(0, 128, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 128
    la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :10], lb[:, :10])
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


def test_kv_cache_decoding_matches_full_forward():
    model = tiny_model(depth=2, sequence_len=32)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.1)
            block.mlp.c_proj.weight.normal_(0, 0.1)
    cfg = model.config
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(2, cfg.n_kv_head, 40, cfg.n_embd // cfg.n_head, cfg.n_layer)
        parts = [model(idx[:, :12], kv_cache=cache), model(idx[:, 12:16], kv_cache=cache)]
        parts += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(16, 20)]
    assert cache.get_pos() == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)


def test_setup_optimizers_groups_and_learning_rates():
    model = tiny_model(depth=2)
    adamw, muon = model.setup_optimizers()
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, Muon)
    scale = (128 / 768) ** -0.5
    head, embedding = adamw.param_groups
    assert head["params"] == [model.lm_head.weight] and head["lr"] == pytest.approx(0.004 * scale)
    assert embedding["params"] == [model.transformer.wte.weight] and embedding["lr"] == pytest.approx(0.2 * scale)
    assert adamw.defaults["betas"] == (0.8, 0.95) and adamw.defaults["eps"] == 1e-10
    assert adamw.defaults["weight_decay"] == 0.0
    muon_params = {id(p) for g in muon.param_groups for p in g["params"]}
    assert muon_params == {id(p) for p in model.transformer.h.parameters()}
    assert all(g["lr"] == 0.02 and g["momentum"] == 0.95 for g in muon.param_groups)
    assert all(g["initial_lr"] == g["lr"] for opt in (adamw, muon) for g in opt.param_groups)


def test_tiny_model_fits_a_repeated_batch():
    torch.manual_seed(0)
    model = tiny_model(depth=2, vocab_size=256, sequence_len=32)
    optimizers = model.setup_optimizers()
    batch = torch.randint(0, 256, (4, 33))
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(30):
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), abs=0.05)
    assert losses[-1] < 0.25 * losses[0], losses


def test_generate_is_deterministic_and_in_vocab():
    model = tiny_model()
    a = list(model.generate([1, 2, 3], max_tokens=6, temperature=1.0, top_k=5, seed=7))
    b = list(model.generate([1, 2, 3], max_tokens=6, temperature=1.0, top_k=5, seed=7))
    greedy = list(model.generate([1, 2, 3], max_tokens=4, temperature=0.0))
    assert a == b and len(a) == 6 and all(0 <= t < 128 for t in a)
    assert len(greedy) == 4


def test_bf16_embedding_works_with_and_without_autocast():
    """On CUDA init_weights keeps wte in bf16; mimic that on CPU (rotary tables in bf16 too)."""
    model = tiny_model()
    model.transformer.wte.to(dtype=torch.bfloat16)
    model.cos, model.sin = model.cos.bfloat16(), model.sin.bfloat16()
    idx = torch.randint(0, 128, (2, 8))
    plain = model(idx, idx)
    assert plain.dtype == torch.float32 and torch.isfinite(plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(idx, idx)
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - plain.item()) < 0.05
    mixed.backward()
    assert model.transformer.wte.weight.grad.dtype == torch.bfloat16

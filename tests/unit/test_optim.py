"""Muon / DistMuon / DistAdamW numerics, schedules, weights_only-safe state, 2-rank Gloo DDP equivalence."""
import io
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nanochat import optim
from nanochat.optim import (DistAdamW, DistMuon, Muon, get_lr_multiplier, get_muon_momentum, muon_lr_scale,
                            newton_schulz, set_ns_precision)


@pytest.fixture
def fp32_newton_schulz():
    set_ns_precision(torch.float32)
    yield
    set_ns_precision(None)


def singular_values(m):
    return torch.linalg.svdvals(m.double())


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 128)])
def test_newton_schulz_is_near_orthogonal(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    for dtype in (torch.float32, torch.bfloat16):
        sv = singular_values(newton_schulz(g, steps=5, dtype=dtype))
        assert sv.numel() == min(shape)
        assert sv.min() > 0.55 and sv.max() < 1.3, (dtype, sv.min().item(), sv.max().item())
    # the input itself is nowhere near orthogonal: the test can tell the difference
    raw = singular_values(g / g.norm())
    assert raw.max() < 0.3


def test_newton_schulz_is_scale_invariant_and_keeps_shape():
    torch.manual_seed(1)
    g = torch.randn(40, 24)
    a = newton_schulz(g, dtype=torch.float32)
    b = newton_schulz(1000 * g, dtype=torch.float32)
    assert a.shape == g.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_muon_single_step_is_scaled_orthogonalised_gradient(fp32_newton_schulz):
    torch.manual_seed(2)
    tall = torch.nn.Parameter(torch.randn(64, 16))
    wide = torch.nn.Parameter(torch.randn(16, 64))
    before = [tall.detach().clone(), wide.detach().clone()]
    tall.grad, wide.grad = torch.randn(64, 16), torch.randn(16, 64)
    opt = Muon([tall, wide], lr=0.02, momentum=0.95)
    opt.step()
    assert muon_lr_scale(tall.shape) == pytest.approx(2.0) and muon_lr_scale(wide.shape) == 1.0
    for p, p0 in zip((tall, wide), before):
        # first step: buffer = 0.05 g, nesterov direction ∝ g, NS is scale invariant
        expected = p0 - 0.02 * muon_lr_scale(p.shape) * newton_schulz(p.grad, 5, torch.float32)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_muon_groups_by_shape_and_rejects_vectors():
    params = [torch.nn.Parameter(torch.zeros(4, 8)), torch.nn.Parameter(torch.zeros(8, 4)),
              torch.nn.Parameter(torch.zeros(4, 8))]
    opt = Muon(params)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1]
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.zeros(5))])


def test_precision_override_changes_newton_schulz_dtype(monkeypatch):
    seen = []
    real = optim.newton_schulz
    monkeypatch.setattr(optim, "newton_schulz", lambda G, steps, dtype: seen.append(dtype) or real(G, steps, dtype))
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = Muon([p])
    for override in (None, torch.float32):
        set_ns_precision(override)
        try:
            p.grad = torch.randn(8, 8)
            opt.step()
        finally:
            set_ns_precision(None)
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    opt.step()
    assert seen == [torch.bfloat16, torch.float32, torch.float32]


def _run_muon_adamw(steps, resume_at=None):
    """Train two matrices and a vector with Muon+AdamW; optionally round-trip the optimizer state through bytes."""
    torch.manual_seed(3)
    w = torch.nn.Parameter(torch.randn(12, 20))
    e = torch.nn.Parameter(torch.randn(30, 6))
    muon, adam = Muon([w], ns_dtype=torch.float32), torch.optim.AdamW([e], lr=0.01, betas=(0.8, 0.95), eps=1e-10)
    gen = torch.Generator().manual_seed(4)
    for step in range(steps):
        if step == resume_at:
            blobs = []
            for opt in (muon, adam):
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                blobs.append(torch.load(buf, weights_only=True))
            muon, adam = Muon([w], ns_dtype=torch.float32), torch.optim.AdamW([e], lr=0.01, betas=(0.8, 0.95),
                                                                              eps=1e-10)
            muon.load_state_dict(blobs[0])
            adam.load_state_dict(blobs[1])
        w.grad = torch.randn(12, 20, generator=gen)
        e.grad = torch.randn(30, 6, generator=gen)
        muon.param_groups[0]["momentum"] = get_muon_momentum(step)
        muon.step()
        adam.step()
    return w.detach().clone(), e.detach().clone()


def test_optimizer_state_round_trips_through_weights_only_load():
    straight = _run_muon_adamw(6)
    resumed = _run_muon_adamw(6, resume_at=3)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_lr_multiplier_flat_then_linear_warmdown():
    n = 1000
    values = [get_lr_multiplier(it, n) for it in range(n + 1)]
    assert all(v == 1.0 for v in values[:801])
    assert values[900] == pytest.approx(0.5)
    assert values[n] == 0.0
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert get_lr_multiplier(n + 50, n) == 0.0  # past the end: clamped, never negative
    assert get_lr_multiplier(n, n, final_lr_frac=0.1) == pytest.approx(0.1)
    assert get_lr_multiplier(900, n, final_lr_frac=0.1) == pytest.approx(0.55)


def test_lr_multiplier_warmup_and_bounds():
    n = 100
    assert get_lr_multiplier(0, n, warmup_ratio=0.1) == pytest.approx(0.1)
    assert get_lr_multiplier(9, n, warmup_ratio=0.1) == pytest.approx(1.0)
    assert get_lr_multiplier(50, n, warmup_ratio=0.1) == 1.0
    for it in range(-5, 2 * n):
        assert 0.0 <= get_lr_multiplier(it, n, warmup_ratio=0.1, final_lr_frac=2.0) <= 1.0
    assert get_lr_multiplier(5, n, warmdown_ratio=0.0) == 1.0


def test_muon_momentum_warms_from_085_to_095_over_300_steps():
    assert get_muon_momentum(0) == pytest.approx(0.85)
    assert get_muon_momentum(150) == pytest.approx(0.90)
    assert get_muon_momentum(300) == pytest.approx(0.95)
    assert get_muon_momentum(10_000) == pytest.approx(0.95)


# ---- DDP: two Gloo ranks must reproduce one process stepping on the averaged gradient ---------------------------

MUON_SHAPES = [(16, 32), (16, 32), (16, 32), (32, 16), (32, 16), (24, 24)]  # odd group sizes exercise padding
ADAM_SHAPES = [(10, 4), (3, 5), (7,)]  # dim 0 divisible by 2 (sharded) and not (replicated)
DDP_STEPS = 3


def _initial_params():
    gen = torch.Generator().manual_seed(123)
    muon = [torch.randn(s, generator=gen) for s in MUON_SHAPES]
    adam = [torch.randn(s, generator=gen) for s in ADAM_SHAPES]
    return muon, adam


def _grads(step, rank):
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(s, generator=gen) for s in MUON_SHAPES + ADAM_SHAPES]


def _adam_groups(params):
    return [dict(params=params[:2], lr=0.01), dict(params=params[2:], lr=0.05)]


def _ddp_worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from nanochat.common import compute_cleanup, compute_init, get_dist_info
    from nanochat.gpt import GPT, config_for_depth

    set_ns_precision(torch.float32)
    ddp, r, local_rank, w, device = compute_init("cpu")
    assert (ddp, r, local_rank, w, device.type) == (True, rank, rank, world, "cpu")
    assert get_dist_info() == (True, rank, rank, world)
    try:
        # setup_optimizers picks the distributed variants under DDP
        model = GPT(config_for_depth(1, vocab_size=64, sequence_len=16))
        adamw_kind, muon_kind = (type(o) for o in model.setup_optimizers())
        assert (adamw_kind, muon_kind) == (DistAdamW, DistMuon)

        muon_init, adam_init = _initial_params()
        muon_params = [torch.nn.Parameter(t.clone()) for t in muon_init]
        adam_params = [torch.nn.Parameter(t.clone()) for t in adam_init]
        dist_muon = DistMuon(muon_params, lr=0.02, momentum=0.95)
        dist_adam = DistAdamW(_adam_groups(adam_params), betas=(0.8, 0.95), eps=1e-10, weight_decay=0.01)

        ref_muon_params = [torch.nn.Parameter(t.clone()) for t in muon_init]
        ref_adam_params = [torch.nn.Parameter(t.clone()) for t in adam_init]
        ref_muon = Muon(ref_muon_params, lr=0.02, momentum=0.95)
        ref_adam = torch.optim.AdamW(_adam_groups(ref_adam_params), betas=(0.8, 0.95), eps=1e-10,
                                     weight_decay=0.01)

        for step in range(DDP_STEPS):
            for p, g in zip(muon_params + adam_params, _grads(step, rank)):
                p.grad = g
            averaged = [torch.stack(gs).mean(0) for gs in zip(*(_grads(step, q) for q in range(world)))]
            for p, g in zip(ref_muon_params + ref_adam_params, averaged):
                p.grad = g
            for opt in (dist_muon, ref_muon):
                opt.param_groups[0]["momentum"] = get_muon_momentum(step)
            dist_muon.step()
            dist_adam.step()
            ref_muon.step()
            ref_adam.step()
            for p, ref in zip(muon_params + adam_params, ref_muon_params + ref_adam_params):
                torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-5, atol=1e-6)

        # sharded state is a per-rank, weights_only-loadable file
        for opt in (dist_muon, dist_adam):
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            opt.load_state_dict(torch.load(buf, weights_only=True))
        owned = sum(len(v) > 0 for v in dist_muon.state.values())
        assert owned == (4 if rank == 0 else 2)  # round robin within the shape groups of 3, 2 and 1
    finally:
        set_ns_precision(None)
        compute_cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_dist_muon_and_dist_adamw_match_single_process_on_two_gloo_ranks():
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port()), nprocs=world, join=True)

"""CPU emulation of the trainer's CUDA-only paths: bf16 autocast + bf16 embedding, CUDA->CPU resume, OOM phases,
compiled Newton–Schulz, the memory cap, the compile switch, and the GPU tests' log-line regexes."""
import importlib.util
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from nanochat import optim
from nanochat.common import UsageError
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.optim import get_lr_multiplier
from nanochat.trainer import (FAULT_OOM_ENV, FlagParser, Trainer, add_training_flags, cuda_memory_cap_gib,
                              cuda_memory_fraction)

CFG = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
REPO = Path(__file__).resolve().parents[2]


class CountingLoader:
    """Deterministic random batches; the position is the number of batches served."""

    def __init__(self, B, T, state=None):
        self.B, self.T = B, T
        self.pos = (state or {}).get("pos", 0)

    def next_batch(self):
        gen = torch.Generator().manual_seed(1000 + self.pos)
        self.pos += 1
        tokens = torch.randint(0, CFG.vocab_size, (self.B, self.T + 1), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self):
        return {"pos": self.pos}


def make_model(cuda_like: bool):
    """A tiny GPT; cuda_like: bf16 embedding and rotary tables, as init_weights leaves them on CUDA."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(CFG)
    model.to_empty(device="cpu")
    model.init_weights()
    if cuda_like:
        model.transformer.wte.to(dtype=torch.bfloat16)
        model.cos, model.sin = model.cos.bfloat16(), model.sin.bfloat16()
    return model


def make_trainer(flags, model=None, cuda_like=True, evaluators=(), on_step=None, device="cpu", **kwargs):
    args = add_training_flags(FlagParser()).parse_args(
        ["--device_batch_size=2", "--max_seq_len=16", "--total_batch_size=64", "--eval_every=-1",
         "--model_tag=emu", *flags])
    model = model if model is not None else make_model(cuda_like)
    optimizers = model.setup_optimizers()
    n = args.num_iterations
    return Trainer(args=args, stage="base", model_tag="emu", model=model, optimizers=optimizers, device=device,
                   make_train_loader=lambda state: CountingLoader(args.device_batch_size, args.max_seq_len, state),
                   num_iterations=n, lr_multiplier=lambda s: get_lr_multiplier(s, n), flops_per_token=1.0,
                   meta={"model_config": asdict(CFG)}, evaluators=list(evaluators), on_step=on_step, **kwargs)


@pytest.fixture
def bf16_autocast(monkeypatch):
    """Make Trainer.autocast() what it is on CUDA (bf16 autocast), on the CPU."""
    monkeypatch.setattr(Trainer, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))


def _ckpt(trainer, step):
    return torch.load(os.path.join(trainer.ckpt_dir, f"model_{step:06d}.pt"), weights_only=True)


def _meta(trainer, step):
    with open(os.path.join(trainer.ckpt_dir, f"meta_{step:06d}.json")) as f:
        return json.load(f)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class FakeTokenizer:
    def encode_special(self, name):
        return CFG.vocab_size - 1

    def get_bos_token_id(self):
        return 0


# ---------------------------------------------------------------------------------------------------------------------
# (1) dtypes under bf16 autocast with a bf16 embedding

def test_bf16_autocast_steps_eval_sampling_and_checkpoint(base_dir, bf16_autocast):
    seen = {}

    def evaluate(trainer, step, last):
        x, y = CountingLoader(2, 16, {"pos": 999}).next_batch()
        losses = trainer.eval_forward(x, y, loss_reduction="none")
        seen.setdefault("eval_dtype", losses.dtype)
        assert torch.isfinite(losses).all()
        with trainer.autocast():
            seen["greedy"] = list(trainer.model.generate([1, 2, 3], max_tokens=4, temperature=0))
            engine = Engine(trainer.model, FakeTokenizer())
            seen["sampled"] = list(engine.generate([1, 2, 3], num_samples=2, max_tokens=4, temperature=1.0, top_k=5))

    def on_step(trainer, step, metrics):
        seen.setdefault("losses", []).append(metrics["train/raw_loss"])

    trainer = make_trainer(["--num_iterations=3", "--save_every=2"], evaluators=[evaluate], on_step=on_step)
    model = trainer.model
    wte_before = model.transformer.wte.weight.detach().clone()
    assert trainer.run() == 0
    assert seen["eval_dtype"] == torch.float32  # the loss is computed in fp32 even under autocast
    assert len(seen["greedy"]) == 4 and all(0 <= t < CFG.vocab_size for t in seen["greedy"])
    assert len(seen["sampled"]) == 4 and all(len(col) == 2 for col, _ in seen["sampled"])
    assert all(torch.isfinite(torch.tensor(seen["losses"])))
    wte = model.transformer.wte.weight
    assert wte.dtype == torch.bfloat16 and not torch.equal(wte, wte_before)  # trained, still bf16
    adamw, muon = trainer.optimizers
    assert adamw.state[wte]["exp_avg"].dtype == torch.bfloat16
    for p in model.transformer.h.parameters():
        assert p.dtype == torch.float32 and muon.state[p]["momentum_buffer"].dtype == torch.float32
    saved = _ckpt(trainer, 3)
    assert saved["transformer.wte.weight"].dtype == torch.bfloat16
    assert torch.equal(saved["transformer.wte.weight"], wte)


def test_logits_softcap_and_loss_are_fp32_under_bf16_autocast():
    model = make_model(cuda_like=True)
    x, y = CountingLoader(2, 16).next_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = model(x, y)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    # the softcap runs on fp32 logits: its output is not limited to bf16's 8-bit mantissa
    assert not torch.equal(logits, logits.bfloat16().float())
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits.view(-1, CFG.vocab_size), y.reshape(-1)))


def test_cuda_style_checkpoint_resumes_on_a_plain_fp32_cpu_model(base_dir, bf16_autocast, monkeypatch):
    # "CUDA" run: bf16 embedding, fused AdamW (its param groups carry fused=True into the checkpoint)
    first = make_trainer(["--num_iterations=4", "--save_every=2"])
    for group in first.optimizers[0].param_groups:
        group["fused"] = True
    assert first.run() == 0
    saved = _ckpt(first, 2)
    # resume step 2 on a CPU model: fp32 embedding, plain autocast-free forward, non-fused AdamW
    monkeypatch.setattr(Trainer, "autocast", lambda self: torch.autocast("cpu", enabled=False))
    resumed = make_trainer(["--num_iterations=4", "--save_every=2", "--resume_from_step=2"], cuda_like=False)
    resumed.setup()
    wte = resumed.model.transformer.wte.weight
    assert wte.dtype == torch.float32
    assert torch.equal(wte, saved["transformer.wte.weight"].float())
    state = resumed.optimizers[0].state[wte]
    assert state["exp_avg"].dtype == torch.float32 and state["step"].device.type == "cpu"
    assert resumed.run() == 0
    assert torch.isfinite(resumed.model.transformer.wte.weight).all()


# ---------------------------------------------------------------------------------------------------------------------
# (3) OOM: the emergency checkpoint must hold the weights of the step it is named after

def test_oom_inside_the_optimizer_step_saves_no_half_updated_weights(base_dir, capsys):
    trainer = make_trainer(["--num_iterations=3", "--save_every=-1"])
    adamw, muon = trainer.optimizers
    real_step = muon.step

    def failing_step(*args, **kwargs):
        if trainer.step == 1:  # AdamW (first in the list) has already updated the embedding and the head
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_step(*args, **kwargs)

    muon.step = failing_step
    assert trainer.run() == 3
    out = capsys.readouterr().out
    assert "OOM: CUDA out of memory at device_batch_size=2, step 2; emergency checkpoint: none" in out
    assert not [f for f in os.listdir(trainer.ckpt_dir) if f.startswith("meta_")]
    assert all(p.grad is None for p in trainer.model.parameters())  # memory was released


def test_oom_right_after_the_optimizer_step_checkpoints_the_new_step(base_dir, capsys):
    after_step0 = {}

    def on_step(trainer, step, metrics):
        if step == 0:
            after_step0.update(_weights(trainer.model))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    trainer = make_trainer(["--num_iterations=3", "--save_every=-1"], on_step=on_step)
    assert trainer.run() == 3
    out = capsys.readouterr().out
    assert "emergency checkpoint: step 000001" in out
    saved = _ckpt(trainer, 1)  # the weights after one step are checkpoint 1, never checkpoint 0
    assert all(torch.equal(saved[k], after_step0[k]) for k in after_step0)
    assert not os.path.exists(os.path.join(trainer.ckpt_dir, "meta_000000.json"))
    assert _meta(trainer, 1)["loader_states"][0] == {"pos": 2}  # grad accumulation 2: two batches consumed


def test_oom_while_clipping_gradients_checkpoints_the_last_completed_step(base_dir, capsys, monkeypatch):
    after_step0 = {}
    trainer = make_trainer(["--num_iterations=3", "--save_every=-1"],
                           on_step=lambda tr, step, m: after_step0.update(_weights(tr.model)) if step == 0 else None)
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *args, **kwargs):
        if trainer.step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    assert trainer.run() == 3
    assert "OOM: CUDA out of memory at device_batch_size=2, step 2; emergency checkpoint: step 000001" \
        in capsys.readouterr().out
    saved = _ckpt(trainer, 1)
    assert all(torch.equal(saved[k], after_step0[k]) for k in after_step0)
    assert _meta(trainer, 1)["loader_states"][0] == {"pos": 2}  # the failed step's batches will be replayed


def test_oom_while_sampling_in_an_evaluator_checkpoints_that_step(base_dir, capsys, bf16_autocast):
    def evaluate(trainer, step, last):
        if step == 2:
            with trainer.autocast():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    trainer = make_trainer(["--num_iterations=4", "--save_every=-1"], evaluators=[evaluate])
    assert trainer.run() == 3
    assert "emergency checkpoint: step 000002" in capsys.readouterr().out
    assert _meta(trainer, 2)["reason"] == "oom"


# ---------------------------------------------------------------------------------------------------------------------
# (2) torch.compile switches and the compiled Newton–Schulz

def test_compiled_newton_schulz_lets_oom_through_and_falls_back_on_compile_errors(monkeypatch, capsys):
    monkeypatch.setattr(optim, "_compile_wanted", lambda device: True)
    G = torch.randn(8, 16)

    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")

    monkeypatch.setattr(optim, "_compiled_newton_schulz", oom)
    with pytest.raises(torch.OutOfMemoryError):
        optim._orthogonalise(G, 5, torch.float32)
    assert optim._compiled_newton_schulz is oom  # an OOM does not switch compilation off

    def broken(*args):
        raise RuntimeError("backend compiler failed: no working C++ compiler")

    monkeypatch.setattr(optim, "_compiled_newton_schulz", broken)
    out = optim._orthogonalise(G, 5, torch.float32)
    assert torch.allclose(out, optim.newton_schulz(G, 5, torch.float32))
    assert optim._compiled_newton_schulz is False
    assert "running it eagerly" in capsys.readouterr().err


def test_compile_switches_on_a_cuda_device(monkeypatch, base_dir):
    cuda = torch.device("cuda")
    monkeypatch.delenv("NANOCHAT_COMPILE", raising=False)
    monkeypatch.delenv("NANOCHAT_NO_COMPILE", raising=False)
    assert optim._compile_wanted(cuda) and not optim._compile_wanted(torch.device("cpu"))
    # torch.compile is lazy, so a trainer for a CUDA device can be built (not run) here
    compiled = make_trainer(["--num_iterations=1"], device="cuda")
    assert isinstance(compiled.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.autocast().device == "cuda" and compiled.autocast().fast_dtype == torch.bfloat16
    monkeypatch.setenv("NANOCHAT_COMPILE", "0")
    assert not optim._compile_wanted(cuda)
    assert make_trainer(["--num_iterations=1"], device="cuda").forward_model is not None
    assert not isinstance(make_trainer(["--num_iterations=1"], device="cuda").forward_model,
                          torch._dynamo.eval_frame.OptimizedModule)


# ---------------------------------------------------------------------------------------------------------------------
# (4) the per-process memory cap

def test_memory_cap_fraction_math_and_validation(monkeypatch):
    assert cuda_memory_fraction(24, 80 * 2**30) == pytest.approx(0.3)
    assert cuda_memory_fraction(24, 24_564 * 2**20) == 1.0  # an RTX 4090 (23.99 GiB) is not capped further
    monkeypatch.delenv("NANOCHAT_CUDA_MEMORY_CAP_GIB", raising=False)
    assert cuda_memory_cap_gib() is None
    monkeypatch.setenv("NANOCHAT_CUDA_MEMORY_CAP_GIB", "23.5")
    assert cuda_memory_cap_gib() == 23.5
    for bad in ("24GiB", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("NANOCHAT_CUDA_MEMORY_CAP_GIB", bad)
        with pytest.raises(UsageError, match="NANOCHAT_CUDA_MEMORY_CAP_GIB"):
            cuda_memory_cap_gib()


def test_trainer_setup_applies_the_memory_cap_on_cuda(monkeypatch, base_dir):
    calls = []

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setenv("NANOCHAT_CUDA_MEMORY_CAP_GIB", "24")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append((fraction, device)))
    trainer = make_trainer(["--num_iterations=1"], device="cuda", compile_model=False, save_checkpoints=False)
    trainer.setup()
    assert calls == [(pytest.approx(0.3), torch.device("cuda"))]


# ---------------------------------------------------------------------------------------------------------------------
# (8) the GPU test's regexes against the lines the trainer really prints (OOM at B=16, resume at B=4)

def _gpu_test_module():
    """tests/gpu/gpu_helpers.py (a helper, not a test module), loaded by path: no test module imports another."""
    spec = importlib.util.spec_from_file_location("gpu_helpers_check", REPO / "tests" / "gpu" / "gpu_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_train_check_parses_real_trainer_output(base_dir, capsys, monkeypatch):
    gpu = _gpu_test_module()
    flags = ["--total_batch_size=512", "--num_iterations=3", "--save_every=100"]
    monkeypatch.setenv(FAULT_OOM_ENV, "4")
    assert make_trainer([*flags, "--device_batch_size=16"], compile_model=False).run() == 3
    out = capsys.readouterr().out
    m = re.search(r"^OOM: CUDA out of memory at device_batch_size=16, step (\d+); emergency checkpoint: step "
                  r"(\d{6})$", out, re.M)
    assert m and int(m.group(2)) == 0
    monkeypatch.delenv(FAULT_OOM_ENV)
    assert make_trainer([*flags, "--device_batch_size=4", "--resume_from_step=latest"],
                        compile_model=False).run() == 0
    out = capsys.readouterr().out
    assert "Resuming optimization from step 0 (device batch size 4" in out
    steps = gpu.STEP.findall(out)
    assert [int(s) for s, _, _ in steps] == [0, 1, 2] and all(mfu == "n/a" for _, _, mfu in steps)
    assert re.search(r"^Peak memory usage: ([\d.]+)MiB$", out, re.M)


# ---------------------------------------------------------------------------------------------------------------------
# (2) the compiled training path itself (inductor on the CPU: slow)

@pytest.mark.slow
def test_compiled_trainer_steps_under_bf16_autocast(base_dir, bf16_autocast):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses = []
    trainer = make_trainer(["--num_iterations=2", "--save_every=-1"], compile_model=True, save_checkpoints=False,
                           on_step=lambda tr, step, m: losses.append(m["train/raw_loss"]))
    assert isinstance(trainer.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    x, y = CountingLoader(2, 16).next_batch()
    with trainer.autocast():
        eager_loss = trainer.model(x, y)
        compiled_loss = trainer.forward_model(x, y)
    assert compiled_loss.dtype == torch.float32
    assert abs(compiled_loss.item() - eager_loss.item()) < 2e-2
    trainer.model.zero_grad(set_to_none=True)
    assert trainer.run() == 0
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch._dynamo.utils.counters["graph_break"]  # one graph for forward+loss: dynamic=False holds
    ns = torch.compile(optim.newton_schulz)
    for shape in [(8, 8), (32, 8), (8, 32)]:  # the shapes of c_q/c_fc/c_proj: recompiles, then dynamic
        G = torch.randn(shape)
        assert torch.allclose(ns(G, 5, torch.float32), optim.newton_schulz(G, 5, torch.float32), atol=1e-4)

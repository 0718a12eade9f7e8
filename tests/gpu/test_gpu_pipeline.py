"""GPU check of the user's single-GPU plan under a 24 GiB cap: a d20 model (random weights) doing mid_train steps at
DEVICE_BS=4, SEQ_LEN=1024 and chat_sft steps at DEVICE_BS=2 (padded rows up to 2048 tokens, summed masked loss).
Prints peak memory and step time. Run on a CUDA machine: pytest -m gpu tests/gpu/test_gpu_pipeline.py -s"""
import gc
import time

import pytest
import torch

from nanochat.gpt import GPT, config_for_depth

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300, func_only=True)]
CAP_GIB = 24
STEPS = 10


def _steps(batch, seq, sum_loss):
    gc.collect()  # the previous case's model and optimizer states must not count against this case's cap and peak
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total), 0)
    torch.manual_seed(0)
    config = config_for_depth(20, vocab_size=65536, sequence_len=2048)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
    optimizers = model.setup_optimizers()
    times = []
    for step in range(STEPS):
        x = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
        y = torch.roll(x, -1, 1)
        if sum_loss:  # SFT: assistant-only targets, normalised by the count of valid targets
            y[:, : seq // 2] = -1
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = model(x, y, loss_reduction="sum") / (y >= 0).sum() if sum_loss else model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        assert torch.isfinite(loss)
    peak = torch.cuda.max_memory_allocated() / 2**30
    step_ms = 1000 * sorted(times[2:])[len(times[2:]) // 2]
    return peak, step_ms


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,batch,seq,sum_loss", [("mid_train", 4, 1024, False), ("chat_sft", 2, 2048, True)])
def test_d20_fits_24gib(name, batch, seq, sum_loss):
    peak, step_ms = _steps(batch, seq, sum_loss)
    print(f"\n{name}: d20, device batch {batch} x {seq}: peak memory {peak:.2f} GiB (cap {CAP_GIB}), "
          f"median micro-step {step_ms:.1f} ms on {torch.cuda.get_device_name(0)}")
    assert peak < CAP_GIB

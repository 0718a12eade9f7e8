"""The VRAM predictor (nanotui/core/vram.py): each term's arithmetic, the choice rule, published calibration facts."""
import pytest

from nanotui.core.vram import (GIB, Assumptions, ModelShape, accumulation, allocated_bytes, candidates, device_bytes,
                               eval_terms, format_stage, gpu_spec, param_counts, plan_stage, training_terms)

D20_1024 = ModelShape(20, 65536, 1024)
D20_2048 = ModelShape(20, 65536, 2048)


def test_model_dims_follow_depth():
    s = ModelShape(20)
    assert (s.n_embd, s.n_head, s.head_dim) == (1280, 10, 128)
    assert (ModelShape(2).n_embd, ModelShape(2).n_head, ModelShape(2).head_dim) == (128, 1, 128)
    assert (ModelShape(32).n_embd, ModelShape(32).n_head) == (2048, 16)


def test_param_counts_match_upstream():
    assert param_counts(ModelShape(20))["total"] == 560_988_160   # `Number of parameters` of the d20 speedrun
    assert param_counts(ModelShape(32))["total"] == 1_879_048_192  # upstream run1000.sh (d32)
    p = param_counts(ModelShape(20))
    assert p["wte"] == p["lm_head"] == 65536 * 1280 and p["matrices"] == 12 * 20 * 1280 ** 2


def test_state_terms_dtypes():
    p = param_counts(D20_1024)
    t = training_terms(D20_1024, 1)
    # bf16 embedding, fp32 lm_head and matrices (+ rotary tables: 2 x 10T x 64 bf16)
    assert t["weights"] == 2 * p["wte"] + 4 * p["lm_head"] + 4 * p["matrices"] + 2 * 10 * 1024 * 64 * 2
    grads = 2 * p["wte"] + 4 * p["lm_head"] + 4 * p["matrices"]
    # accumulating (the default): the .grad, the compiled backward's fresh fp32 gradients and their bf16 halves
    assert t["grads"] == int(2.5 * grads)
    assert t["adamw"] == 2 * (2 * p["wte"] + 4 * p["lm_head"])       # exp_avg + exp_avg_sq in the param dtype
    assert t["muon"] == 4 * p["matrices"]                              # one fp32 momentum buffer
    cpu = training_terms(D20_1024, 1, Assumptions(cuda=False))
    assert cpu["grads"] == int(2.5 * 4 * p["total"])
    assert training_terms(D20_1024, 1, Assumptions(compiled=False))["grads"] == grads   # eager: one set
    sharded = training_terms(D20_1024, 1, Assumptions(world_size=8))
    assert sharded["muon"] == t["muon"] // 8 and sharded["adamw"] == t["adamw"] // 8
    assert sharded["grads"] == t["grads"]                              # every rank holds full gradients


def test_activation_and_logit_terms_scale_with_tokens():
    a, b = training_terms(D20_1024, 4), training_terms(D20_1024, 8)
    for k in ("activations", "logits", "backward_transient"):
        assert b[k] == 2 * a[k]
    for k in ("weights", "grads", "adamw", "muon"):
        assert b[k] == a[k]
    # compiled training holds the logits as one bf16 [B, T, V] buffer (its gradient reuses it)
    assert a["logits"] == 4 * 1024 * 65536 * 2
    eager = training_terms(D20_1024, 4, Assumptions(compiled=False))
    assert eager["logits"] == 8 * a["logits"]                          # four fp32 copies
    assert eager["activations"] == a["activations"]                    # compile keeps as much (fitted, 1.0)
    tokens = 4 * 1024
    assert eager["activations"] == tokens * 20 * (19 * 1280 + 2) * 2 + tokens * 3 * 1280 * 2


def test_first_micro_step_has_no_gradients_at_its_peak():
    """One micro-step per optimizer step: zero_grad left .grad None, so the start-of-backward peak has none; a
    tiny batch peaks at the end of the backward instead (fresh gradients and their bf16 halves)."""
    assert accumulation(524288, 32, 2048, 8) == 1 and accumulation(524288, 8, 2048) == 32
    assert accumulation(524288, 3, 2048) is None
    big = training_terms(D20_2048, 32, Assumptions(world_size=8), grad_accum=1)
    assert big["grads"] == 0
    grads = training_terms(D20_2048, 32)["grads"] / 2.5
    tiny = training_terms(ModelShape(20, 65536, 16), 1, grad_accum=1)
    token_part = tiny["activations"] + tiny["logits"] + tiny["backward_transient"]
    assert tiny["grads"] + token_part == pytest.approx(1.5 * grads, abs=2)
    assert allocated_bytes(big) == sum(big.values())


def test_eval_terms_have_no_grads_and_three_logit_copies():
    e = eval_terms(D20_1024, 4)
    assert "grads" not in e and e["logits"] == 4 * 1024 * 65536 * 4 * 3
    assert eval_terms(D20_1024, 1, seq_len=10)["logits"] == 10 * 65536 * 12


def test_device_bytes_adds_slack_and_context():
    a = Assumptions(allocator_slack=0.1, context_gib=0.5)
    assert device_bytes({"x": 10 * GIB}, a) == int(11 * GIB + 0.5 * GIB)


def test_candidates_are_powers_of_two_dividing_the_per_rank_batch():
    assert candidates(524288, 1024) == [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert candidates(524288, 2048, 8) == [32, 16, 8, 4, 2, 1]
    assert candidates(8192, 256, limit=8) == [8, 4, 2, 1]
    assert candidates(24, 1) == [8, 4, 2, 1]            # 24 sequences: 16 does not divide
    assert candidates(1000, 1024) == []


def test_gpu_names():
    assert gpu_spec("4090").capacity_gib == pytest.approx(23.99)
    assert gpu_spec("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    assert gpu_spec("NVIDIA H100 80GB HBM3").name == "H100 80GB"
    assert gpu_spec("NVIDIA A100-SXM4-40GB").name == "A100 40GB"
    assert gpu_spec("24GiB").capacity_gib == 24 and gpu_spec("16").capacity_gib == 16
    assert gpu_spec("Some New Card", capacity_gib=47.5).capacity_gib == 47.5
    assert gpu_spec("h100", capacity_gib=79.0).capacity_gib == 79.0   # NVML's total wins
    with pytest.raises(ValueError, match="unknown GPU"):
        gpu_spec("voodoo2")
    with pytest.raises(ValueError):
        gpu_spec("0")


def test_d20_rows_for_the_4090():
    """The rows the README quotes: T=1024 -> 8 chosen (16 does not fit), T=2048 -> 4."""
    sv = plan_stage("base_train", D20_1024, 524288, gpu_spec("4090"))
    assert sv.chosen == 8 and sv.eval_bs == 8
    assert 14.0 < sv.row(4).train_gib < 15.5 and 18.5 < sv.row(8).train_gib < 20.0
    assert 17.0 < sv.row(8).allocated_gib < sv.row(8).train_gib      # allocated: no slack, no CUDA context
    assert not sv.row(16).fits and sv.row(16).train_gib > 21.6
    sv2 = plan_stage("base_train", D20_2048, 524288, gpu_spec("4090"))
    assert sv2.chosen == 4 and not sv2.row(8).fits
    assert sv2.row(4).train_gib == pytest.approx(sv.row(8).train_gib, rel=1e-3)  # same tokens per micro-batch


def test_published_upstream_facts():
    """Calibration points (upstream README / run1000.sh, 2025-11 architecture, 8 x H100 80GB, T=2048):
    the d20 speedrun fits at device_batch_size=32; d32 fits at 8 but runs out of memory at 16."""
    h100 = gpu_spec("h100")
    d20 = plan_stage("base_train", D20_2048, 524288, h100, world_size=8, headroom=0.0)
    assert d20.row(32).fits
    d32 = plan_stage("base_train", ModelShape(32, 65536, 2048), 524288, h100, world_size=8, headroom=0.0)
    assert d32.row(8).fits and not d32.row(16).fits


def test_eval_batch_smaller_when_logits_dominate():
    """A small model with a big vocab: evaluation (three fp32 logit copies, eager) needs more than training."""
    sv = plan_stage("base_train", ModelShape(8, 65536, 2048), 524288, gpu_spec("24"))
    assert sv.chosen == 32 and sv.eval_bs == 8
    assert any("evaluation needs a smaller batch" in n for n in sv.notes)


def test_nothing_fits_and_headroom_validation():
    sv = plan_stage("base_train", ModelShape(32, 65536, 2048), 524288, gpu_spec("8"))
    assert sv.chosen is None and sv.eval_bs is None
    assert any("nothing fits" in line for line in format_stage(sv))
    with pytest.raises(ValueError):
        plan_stage("x", D20_1024, 524288, gpu_spec("4090"), headroom=1.0)


def test_headroom_changes_the_choice():
    loose = plan_stage("base_train", D20_1024, 524288, gpu_spec("4090"), headroom=0.0)
    tight = plan_stage("base_train", D20_1024, 524288, gpu_spec("4090"), headroom=0.5)
    assert loose.chosen == 8 and tight.chosen == 1


def test_format_marks_the_chosen_row_and_measured_values():
    sv = plan_stage("base_train", D20_1024, 524288, gpu_spec("4090"))
    lines = format_stage(sv, measured={16: {"peak_gib": None, "outcome": "OOM"},
                                       8: {"peak_gib": 14.0, "reserved_gib": 15.2, "outcome": "fits"}})
    chosen = [line for line in lines if line.startswith("*")]
    assert len(chosen) == 1 and chosen[0].split()[1] == "8"
    assert any("15.2 GiB fits" in line for line in lines) and any(line.rstrip().endswith("OOM") for line in lines)
    assert "limit 21.6 GiB (headroom 10%)" in lines[0]
    assert sv.to_dict()["chosen"] == 8

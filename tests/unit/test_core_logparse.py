"""Log parser: every line type of upstream 2025-11/2026 and our logs, ANSI, \\r redraws, streaming, speed."""
import random
from collections import Counter
from pathlib import Path

import pytest

from nanotui.core.events import (CheckpointSaved, Config, CoreMetric, EndOfRun, Error, EvalProgress, EvalResult,
                                 Oom, Raw, Sample, Step, StepMetrics, ValBpb, ValLoss)
from nanotui.core.logparse import LogParser, clean_line, parse_line, parse_text

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def read(name: str) -> str:
    # newline="" keeps the \r bytes: text mode would turn every \r into a line break
    with open(LOGS / name, encoding="utf-8", newline="") as fh:
        return fh.read()


def counts(events):
    return Counter(type(e).__name__ for e in events)


# ------------------------------------------------------------------ fixtures: every line type
EXPECTED_TYPES = {
    "upstream-2025-11-base_train-d20-8xh100.log":
        {"Config": 10, "ValBpb": 3, "CoreMetric": 2, "Step": 400, "Sample": 4, "CheckpointSaved": 1, "EndOfRun": 3},
    "upstream-2025-10-base_train-legacy-toksec.log": {"Config": 6, "ValBpb": 1, "Step": 40},
    "upstream-2025-11-mid_train.log": {"Config": 4, "ValBpb": 2, "Step": 120, "CheckpointSaved": 1, "EndOfRun": 3},
    "upstream-2025-11-chat_sft.log": {"Config": 4, "ValLoss": 4, "StepMetrics": 3, "Step": 59, "CheckpointSaved": 1},
    "upstream-2025-11-chat_eval-mid.log": {"Config": 1, "EvalProgress": 7, "EvalResult": 6},
    "upstream-2025-11-base_eval.log": {"Config": 1, "EvalResult": 10, "CoreMetric": 1},
    "upstream-2025-11-base_train-oom-traceback.log": {"Config": 6, "ValBpb": 1, "Step": 2, "Oom": 1, "Error": 1},
    "upstream-2026-base_train-d4-cpu.log":
        {"Config": 8, "ValBpb": 4, "Step": 30, "Sample": 14, "CheckpointSaved": 1, "EndOfRun": 3},
    "upstream-2026-base_train-bad-batch.log": {"Config": 5, "Error": 1},
    "ansi-redraw.log": {"Config": 2, "Step": 6, "ValBpb": 1, "EvalProgress": 1, "EndOfRun": 1},
    "ours-base_train-oom-fallback.log":
        {"Config": 12, "ValBpb": 2, "Step": 52, "CheckpointSaved": 3, "Oom": 1, "ResumedFrom": 1, "Sample": 1,
         "EndOfRun": 3},
}


def test_every_fixture_is_covered():
    # the one-line-per-format fixtures (*-formats.log) are checked line by line in test_core_upstream_formats.py
    assert {p.name for p in LOGS.glob("*.log") if not p.name.endswith("-formats.log")} == set(EXPECTED_TYPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_fixture_event_counts(name):
    assert dict(counts(parse_text(read(name)))) == EXPECTED_TYPES[name]


def test_upstream_2025_11_base_train_values():
    ev = parse_text(read("upstream-2025-11-base_train-d20-8xh100.log"))
    cfg = {e.key: e.value for e in ev if isinstance(e, Config)}
    assert cfg["vocab_size"] == 65536 and cfg["num_params"] == 560_988_160
    assert cfg["micro_batch"] == {"device_bs": 32, "seq_len": 2048, "tokens": 65536}
    assert cfg["total_batch_size"] == {"total_batch_size": 524288, "grad_accum": 1}
    assert cfg["num_iterations"] == 400 and cfg["device_type"] == "cuda" and cfg["num_layers"] == 20
    steps = [e for e in ev if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(400))
    assert all(s.kind == "base" and s.total == 400 and not s.bf16 and s.eta_min is None for s in steps)
    s = steps[123]
    assert 400_000 < s.dt_ms and s.mfu > 40 and s.tok_per_sec > 1_000_000 or s.dt_ms < 1000
    assert s.tok_per_sec == pytest.approx(524288 / (s.dt_ms / 1000))
    assert s.tok_per_sec_printed == pytest.approx(s.tok_per_sec, rel=1e-3)
    assert [e.step for e in ev if isinstance(e, ValBpb)] == [0, 250, 400]
    assert [e.step for e in ev if isinstance(e, CoreMetric)] == [0, 400]
    ck = [e for e in ev if isinstance(e, CheckpointSaved)][0]
    assert ck == CheckpointSaved(400, "/home/ubuntu/.cache/nanochat/base_checkpoints/d20", "upstream")
    end = {e.key: e.value for e in ev if isinstance(e, EndOfRun)}
    assert end["peak_mem_mib"] == 75422.16 and end["min_val_bpb"] == pytest.approx(1.2125)


def test_upstream_2026_fields():
    ev = parse_text(read("upstream-2026-base_train-d4-cpu.log"))
    steps = [e for e in ev if isinstance(e, Step)]
    assert all(s.bf16 and s.epoch == 1 for s in steps)
    assert steps[0].eta_min is None and steps[11].eta_min == 0.6 and steps[29].eta_min == 0.0
    assert steps[5].tok_per_sec_printed == 1120.0          # "1,120"
    cfg = {e.key: e.value for e in ev if isinstance(e, Config)}
    assert cfg["model_config"]["n_layer"] == 4 and cfg["num_params"] == 36_700_290
    assert cfg["num_iterations"] == 30
    err = parse_text(read("upstream-2026-base_train-bad-batch.log"))[-1]
    assert err == Error("AssertionError", "total_batch_size (700) must be a multiple of 512.")


def test_mid_lines_without_total_are_mid():
    ev = parse_text(read("upstream-2025-11-mid_train.log"))
    steps = [e for e in ev if isinstance(e, Step)]
    assert all(s.kind == "mid" and s.total is None for s in steps)
    assert steps[-1].pct == 100.0
    # an explicit kind wins over the guess
    assert parse_line("step 00001 (1.00%) | loss: 2.0 | lrm: 1.00 | dt: 1.00ms | tok/sec: 1 | mfu: 1.00 | "
                      "total time: 0.00m", kind="base").kind == "base"


def test_sft_lines():
    ev = parse_text(read("upstream-2025-11-chat_sft.log"))
    steps = [e for e in ev if isinstance(e, Step)]
    assert all(s.kind == "sft" and s.total == 60 and s.num_tokens >= 9000 for s in steps)
    assert parse_line("Step 00010/00701 | Training loss: 1.234567| lrm: 0.985735| num_tokens: 12,345") == Step(
        kind="sft", step=10, total=701, loss=1.234567, lrm=0.985735, num_tokens=12345)
    assert parse_line("Step 00100 | Validation loss: 1.234567") == ValLoss(100, 1.234567)
    m = [e for e in ev if isinstance(e, StepMetrics)][0]
    assert m.step == 0 and m.values == {"mmlu_acc": 0.3125, "arc_easy_acc": 0.4375}
    assert {e.key: e.value for e in ev if isinstance(e, Config)}["device_bs"] == 4


def test_eval_lines():
    ev = parse_text(read("upstream-2025-11-chat_eval-mid.log"))
    acc = {e.task: e.value for e in ev if isinstance(e, EvalResult)}
    assert acc["ARC-Easy"] == pytest.approx(0.3889) and acc["ChatCORE"] == 0.0734 and "HumanEval" in acc
    progress = [e for e in ev if isinstance(e, EvalProgress)]
    assert progress[3] == EvalProgress(32, 1319)             # the \r-redrawn line: only its final state
    assert progress[4] == EvalProgress(32, 1319, final=True)
    core = parse_text(read("upstream-2025-11-base_eval.log"))
    hs = [e for e in core if isinstance(e, EvalResult) and e.task == "hellaswag_zeroshot"][0]
    assert hs.value == 0.2612 and hs.centered == pytest.approx(0.0149, abs=1e-4)
    assert core[-1] == CoreMetric(None, 0.2219)
    assert EvalResult("val_bpb", 0.8156) in core


@pytest.mark.parametrize("line, expected", [
    ("step 00123/21400 (0.57%) | loss: 3.456789 | lrm: 1.00 | dt: 1234.56ms | tok/sec: 424,672 | mfu: 45.67 | "
     "total time: 12.34m",
     Step("base", 123, 21400, 3.456789, 1.0, 1234.56, 424672.0, 45.67, 12.34, None, None, False, None, 0.57,
          424672.0)),
    ("step 00007/00200 (3.50%) | loss: 8.1 | lrm: 1.00 | dt: 182.00ms | tok/sec: 45,010 | mfu: n/a | "
     "total time: 0.00m",
     Step("base", 7, 200, 8.1, 1.0, 182.0, 45010.0, None, 0.0, None, None, False, None, 3.5, 45010.0)),
    ("step 00010/00030 (33.33%) | loss: nan | lrm: 0.28 | dt: 1990.47ms | tok/sec: 1,028 | bf16_mfu: 0.00 | "
     "epoch: 1 pq: 0 rg: 1 | total time: 0.00m | eta: 0.6m", None),  # checked separately (nan != nan)
    ("Step 00250 | Validation bpb: 1.2345", ValBpb(250, 1.2345)),
    ("Step 02000 | CORE metric: 0.1234", CoreMetric(2000, 0.1234)),
    ("Vocab size: 65,536", Config("vocab_size", 65536)),
    ("2025-11-03 14:02:11,532 - nanochat.common - \x1b[32m\x1b[1mINFO\x1b[0m - Distributed world size: 8",
     Config("world_size", 8)),
    ("Number of parameters: 560,988,160", Config("num_params", 560988160)),
    ("Tokens / micro-batch / rank: 4 x 1024 = 4,096",
     Config("micro_batch", {"device_bs": 4, "seq_len": 1024, "tokens": 4096})),
    ("Total batch size 524,288 => gradient accumulation steps: 128",
     Config("total_batch_size", {"total_batch_size": 524288, "grad_accum": 128})),
    ("Calculated number of iterations from target data:param ratio: 21,400", Config("num_iterations", 21400)),
    ("Model config: {'sequence_len': 2048, 'n_layer': 20}",
     Config("model_config", {"sequence_len": 2048, "n_layer": 20})),
    ("Checkpoint saved: step 000500 -> /b/base_checkpoints/d20", CheckpointSaved(500, "/b/base_checkpoints/d20")),
    ("2025-11-03 14:06:02,120 - nanochat.checkpoint_manager - INFO - Saved model parameters to: "
     "/c/base_checkpoints/d20/model_021400.pt",
     CheckpointSaved(21400, "/c/base_checkpoints/d20", "upstream")),
    ("OOM: CUDA out of memory at device_batch_size=4, step 123; emergency checkpoint: step 000122",
     Oom(4, 123, 122, "ours",
         "OOM: CUDA out of memory at device_batch_size=4, step 123; emergency checkpoint: step 000122")),
    ("OOM: CUDA out of memory at device_batch_size=1, step 5; emergency checkpoint: none",
     Oom(1, 5, None, "ours", "OOM: CUDA out of memory at device_batch_size=1, step 5; emergency checkpoint: none")),
    ("torch.cuda.OutOfMemoryError: CUDA out of memory.",
     Oom(None, None, None, "traceback", "torch.cuda.OutOfMemoryError: CUDA out of memory.")),
    ("Peak memory usage: 20480.00MiB", EndOfRun("peak_mem_mib", 20480.0)),
    ("Total training time: 12.34m", EndOfRun("total_time_min", 12.34)),
    ("Minimum validation bpb: 0.8123", EndOfRun("min_val_bpb", 0.8123)),
    ("ARC-Easy accuracy: 45.67%", EvalResult("ARC-Easy", 0.4567)),
    ("<|bos|>The capital of France is Paris", Sample("<|bos|>The capital of France is Paris")),
    ("[rank1]: RuntimeError: NCCL timeout", Error("RuntimeError", "NCCL timeout")),
    ("KeyboardInterrupt", Error("KeyboardInterrupt", "")),
    ("Traceback (most recent call last):", None),
    ('  File "x.py", line 3, in <module>', None),
    ("WARNING: Flash Attention 3 not available, using PyTorch SDPA fallback", None),
    ("step forward and take a bow", None),
    ("Step right up | nothing here", None),
    ("", None),
])
def test_parse_line_table(line, expected):
    got = parse_line(line)
    if "loss: nan" in line:
        assert got.loss != got.loss and got.bf16 and got.epoch == 1 and got.eta_min == 0.6
        return
    assert got == expected


def test_legacy_tok_per_sec_is_recomputed_from_total_batch():
    """Upstream before PR #175 printed micro-batch tokens / dt: 8x too small with grad accum 8."""
    ev = parse_text(read("upstream-2025-10-base_train-legacy-toksec.log"))
    s = [e for e in ev if isinstance(e, Step)][20]
    assert s.tok_per_sec_printed == pytest.approx(65536 / (s.dt_ms / 1000), abs=1)
    assert s.tok_per_sec == pytest.approx(524288 / (s.dt_ms / 1000))
    # parse_line alone has no batch context: it reports the printed number
    assert parse_line(read("upstream-2025-10-base_train-legacy-toksec.log").splitlines()[30]).tok_per_sec < 20_000


def test_oom_traceback_once_with_context():
    ev = parse_text(read("upstream-2025-11-base_train-oom-traceback.log"))
    ooms = [e for e in ev if isinstance(e, Oom)]
    assert len(ooms) == 1                                   # [rank0] copy and plain copy -> one event
    assert (ooms[0].device_bs, ooms[0].step, ooms[0].source) == (16, 1, "traceback")
    assert "Tried to allocate 4.00 GiB" in ooms[0].text
    # a later, separate OOM (after training resumed) is reported again
    p = LogParser()
    p.feed("torch.OutOfMemoryError: CUDA out of memory\n")
    p.feed("step 00002/00010 (20.00%) | loss: 1.0 | lrm: 1.00 | dt: 1.00ms | tok/sec: 1 | mfu: 1.00 | total time: 0.00m\n")
    assert [type(e) for e in p.feed("torch.OutOfMemoryError: CUDA out of memory\n")] == [Oom]


def test_ansi_and_carriage_returns():
    ev = parse_text(read("ansi-redraw.log"))
    steps = [e for e in ev if isinstance(e, Step)]
    assert [s.step for s in steps] == [0, 1, 2, 3, 4, 5]
    assert steps[3].loss == pytest.approx(10.6)              # the overwritten "loss: 99" segment is gone
    assert [e for e in ev if isinstance(e, EvalProgress)] == [EvalProgress(7, 10)]
    assert Config("vocab_size", 65536) in ev                   # behind an OSC title sequence and bold
    assert ValBpb(5, 1.2345) in ev                             # red colour codes around it
    assert clean_line("\x1b[1mA\x1b[0m\rB\x1b[K\r\x1b[32mC\x1b[0m\r\n") == "C"
    assert clean_line("abc\r") == "abc"


def test_partial_lines_and_pending_text():
    p = LogParser()
    assert p.feed("Step 00250 | Validation") == []
    assert p.pending_text == "Step 00250 | Validation"
    assert p.feed(" bpb: 1.25\nRank 0 | 1/10 (10.00%)\rRank 0 | 2/10") == [ValBpb(250, 1.25)]
    assert p.pending_text == "Rank 0 | 2/10"                   # shown, not emitted
    assert p.feed(" (20.00%)\n") == [EvalProgress(2, 10)]      # only the last segment, once
    assert p.feed("Peak memory usage: 1.00MiB") == []
    assert p.flush() == [EndOfRun("peak_mem_mib", 1.0)]


def test_unknown_lines_ignored_or_raw():
    text = "hello world\n\x1b[31mwarning: red\x1b[0m\nStep 00001 | Validation bpb: 2.0\n"
    assert parse_text(text) == [ValBpb(1, 2.0)]
    assert parse_text(text, emit_raw=True) == [Raw("hello world"), Raw("warning: red"), ValBpb(1, 2.0)]


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_streaming_in_random_chunks_equals_whole_parse(name):
    text = read(name)
    whole = parse_text(text)
    rng = random.Random(hash(name) & 0xFFFF)
    data = text.encode("utf-8")
    for as_bytes in (False, True):
        p = LogParser()
        got, i = [], 0
        src = data if as_bytes else text
        while i < len(src):
            n = rng.choice((1, 2, 3, 7, 64, 500, 4096))
            got.extend(p.feed(src[i:i + n]))                   # bytes chunks split UTF-8 characters too
            i += n
        got.extend(p.flush())
        assert got == whole


def test_endless_redraw_without_newline_keeps_buffer_small():
    p = LogParser()
    for i in range(1, 20_001):
        assert p.feed(f"\r\x1b[KRank 0 | {i}/20000 ({i / 200:.2f}%)") == []
    assert len(p._buf) < 10_000 and p.pending_text == "Rank 0 | 20000/20000 (100.00%)"
    assert p.feed("\r\x1b[K\n") == [EvalProgress(20000, 20000)]   # a trailing clear does not erase the result


def test_fast_path_agrees_with_field_parser():
    from nanotui.core import logparse
    seen = 0
    for name in EXPECTED_TYPES:
        for line in read(name).split("\n"):
            line = clean_line(line)
            if line.startswith("step ") and "nan" not in line:
                assert logparse._STEP_FAST_RE.match(line), line   # every real format takes the fast path
                for tb in (None, 524288):
                    assert logparse._parse_step(line, None, tb) == logparse._parse_step_fields(line, None, tb)
                seen += 1
    assert seen > 600


def test_our_resume_and_stop_lines():
    from nanotui.core.events import ResumedFrom, StopRequested
    assert parse_line("Resuming optimization from step 120 (device batch size 2, gradient accumulation steps 16)") \
        == ResumedFrom(120)
    assert parse_line("Stopped on request (SIGTERM) at step 123; checkpoint: step 000123") == \
        StopRequested(123, "SIGTERM", 123)


def test_our_trainer_log():
    from nanotui.core.events import ResumedFrom
    ev = parse_text(read("ours-base_train-oom-fallback.log"), kind="base")
    ooms = [e for e in ev if isinstance(e, Oom)]
    assert [(o.device_bs, o.step, o.emergency_step, o.source) for o in ooms] == [(8, 38, 37, "ours")]
    assert [e.step for e in ev if isinstance(e, CheckpointSaved)] == [25, 37, 50]
    assert ResumedFrom(37) in ev
    cfg = [e for e in ev if isinstance(e, Config) and e.key == "model_config"]
    assert cfg[0].value["n_embd"] == 128
    steps = [e for e in ev if isinstance(e, Step)]
    assert all(s.mfu is None for s in steps)                           # "mfu: n/a" on CPU
    after = [s for s in steps if s.step >= 38]
    assert after[0].tok_per_sec == pytest.approx(8192 / (after[0].dt_ms / 1000))   # total batch unchanged

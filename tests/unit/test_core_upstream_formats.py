"""Every upstream nanochat print/log format (2025-11 and 2026, see fixtures/logs/UPSTREAM_FORMATS.md) parses into
the right event with the right values, line by line and through the streaming LogParser."""
import dataclasses
from pathlib import Path

import pytest

from nanotui.core.events import (CheckpointSaved, Config, CoreMetric, EndOfRun, EvalProgress, EvalResult, Sample,
                                 Step, StepMetrics, ValBpb, ValLoss)
from nanotui.core.logparse import LogParser, parse_line, parse_text

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def lines(name: str) -> list:
    text = (LOGS / name).read_bytes().decode("utf-8")
    return [line for line in text.split("\n") if line]


def same(got, want) -> bool:
    """Equal type and fields; floats to 1e-9 relative (the parser divides percents by 100)."""
    if want is None or got is None:
        return got is want
    if type(got) is not type(want):
        return False
    for f in dataclasses.fields(want):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, dict):
            if not isinstance(a, dict) or a.keys() != b.keys() or any(a[k] != pytest.approx(b[k], rel=1e-9)
                                                                    for k in b):
                return False
        elif isinstance(b, float) and not isinstance(b, bool):
            if a != pytest.approx(b, rel=1e-9):
                return False
        elif a != b:
            return False
    return True


def step(kind, n, total, loss, **kw):
    fields = dict(lrm=None, dt_ms=None, tok_per_sec=None, mfu=None, total_time_min=None, eta_min=None, epoch=None,
                  bf16=False, num_tokens=None, pct=None, tok_per_sec_printed=None)
    fields.update(kw)
    return Step(kind=kind, step=n, total=total, loss=loss, **fields)


# one entry per non-empty line of the fixture, in order (None: a line no rule should turn into an event)
EXPECTED = {
    "upstream-2025-11-base_train-formats.log": [
        step("base", 100, 21400, 3.456789, lrm=1.0, dt_ms=1234.56, tok_per_sec=424672.0, mfu=45.68,
             total_time_min=1.48, pct=0.47, tok_per_sec_printed=424672.0),
        step("base", 101, 21400, 3.456789, lrm=1.0, dt_ms=1234.56, tok_per_sec=424672.0, mfu=45.68,
             total_time_min=1.48, pct=0.47, tok_per_sec_printed=424672.0),     # with " grad norm: 0.3412 |"
        ValBpb(250, 0.9123),
        CoreMetric(2000, 0.1877),
        EvalResult("hellaswag_zeroshot", 0.2612, 0.0149),
        CheckpointSaved(21400, "/home/ubuntu/.cache/nanochat/base_checkpoints/d20", "upstream"),
        None,                                                                   # Saved metadata to:
        None,                                                                   # Saved optimizer state to:
        EndOfRun("peak_mem_mib", 75352.04),
        EndOfRun("total_time_min", 170.57),
        EndOfRun("min_val_bpb", 0.8123),
    ],
    "upstream-2025-11-mid_train-formats.log": [
        Config("micro_batch", {"device_bs": 32, "seq_len": 2048, "tokens": 65536}),
        None,
        Config("total_batch_size", {"total_batch_size": 524288, "grad_accum": 1}),
        ValBpb(0, 0.5432),
        step("mid", 10, None, 1.234568, lrm=1.0, dt_ms=501.2, tok_per_sec=1046065.0, mfu=41.23, total_time_min=0.0,
             pct=1.23, tok_per_sec_printed=1046065.0),
        CheckpointSaved(809, "/home/ubuntu/.cache/nanochat/mid_checkpoints/d20", "upstream"),
        EndOfRun("peak_mem_mib", 62400.91),
        EndOfRun("total_time_min", 6.67),
        EndOfRun("min_val_bpb", 0.3988),
    ],
    "upstream-2025-11-chat_sft-formats.log": [
        ValLoss(0, 1.012346),
        step("sft", 10, 651, 0.876543, lrm=0.984639, num_tokens=12345),
        StepMetrics(100, {"mmlu_acc": 0.3125, "arc_easy_acc": 0.4375, "gsm8k_acc": 0.046875,
                          "humaneval_acc": 0.03125}),
        CheckpointSaved(650, "/home/ubuntu/.cache/nanochat/chatsft_checkpoints/d20", "upstream"),
        None,                                                                   # ✅ Saved model checkpoint to <dir>
    ],
    "upstream-2025-11-chat_eval-formats.log": [
        None,                                                                   # Loading model from ... with step
        EvalProgress(924, 2376, final=True),
        EvalResult("ARC-Easy", 0.3889),
        EvalProgress(2, 3),                                                     # \r\033[K redraws: the last one
        EvalProgress(97, 1319, final=True),
        EvalResult("GSM8K", 0.0735),
        EvalResult("ChatCORE", 0.2568),
    ],
    "upstream-2025-11-base_eval-formats.log": [
        EvalResult("hellaswag_zeroshot", 0.2612, 0.0149),
        EvalResult("jeopardy", 0.0512, 0.0512),
        EvalResult("bigbench_qa_wikidata", 0.4, 0.4),
        None, None, None,                                                       # ===, Model: ..., ===
        None,                                                                   # CSV header
        EvalResult("hellaswag_zeroshot", 0.2612, 0.014933),
        EvalResult("jeopardy", 0.0512, 0.0512),
        EvalResult("bigbench_qa_wikidata", 0.4, 0.4),
        CoreMetric(None, 0.155311),                                             # the CSV's CORE row
    ],
    "upstream-2025-11-base_loss-formats.log": [
        EvalResult("train_bpb", 0.8123),
        EvalResult("val_bpb", 0.8157),
        Sample("<|bos|>The capital of France is Paris. It is the largest city in France and"),
    ],
    "upstream-2025-11-chat_rl-formats.log": [
        StepMetrics(0, {"Pass@1": 0.1875, "Pass@2": 0.25, "Pass@3": 0.2812, "Pass@4": 0.3125}),
        StepMetrics(12, {"Average reward": 0.3125, "Average sequence length": 234.57}),
        CheckpointSaved(60, "/home/ubuntu/.cache/nanochat/chatrl_checkpoints/d20", "upstream"),
    ],
    "upstream-2026-base_train-formats.log": [
        Config("num_params", 1_880_000_000),
        step("base", 5, 5568, 9.8765, lrm=0.15, dt_ms=500.0, tok_per_sec=2097152.0, mfu=40.0, total_time_min=0.0,
             epoch=1, bf16=True, pct=0.09, tok_per_sec_printed=2097152.0),
        step("base", 1234, 5568, 2.987654, lrm=1.0, dt_ms=412.34, tok_per_sec=2542988.0, mfu=51.23,
             total_time_min=8.34, eta_min=29.5, epoch=1, bf16=True, pct=22.16, tok_per_sec_printed=2542988.0),
        ValBpb(1250, 0.812346),
        CoreMetric(2000, 0.2199),
        CheckpointSaved(5568, "/root/.cache/nanochat/base_checkpoints/d24", "upstream"),
        EndOfRun("peak_mem_mib", 66757.2),
        EndOfRun("total_time_min", 38.34),
        EndOfRun("min_val_bpb", 0.745679),
    ],
    "upstream-2026-chat_sft-formats.log": [
        ValBpb(0, 0.4321),
        step("sft", 25, None, 1.123457, lrm=1.0, dt_ms=321.0, tok_per_sec=1633295.0, mfu=38.76,
             total_time_min=0.07, epoch=1, pct=3.45, tok_per_sec_printed=1633295.0),
        EvalResult("ARC-Easy", 0.4568),
        EvalResult("SpellingBee", 0.984),
        StepMetrics(200, {"ChatCORE": 0.2345, "ChatCORE_cat": 0.1234}),
    ],
    "upstream-2026-base_eval-formats.log": [
        None,                                                                   # Evaluating model: ...
        None,                                                                   # Eval modes: ...
        EvalResult("train_bpb", 0.745679),
        EvalResult("val_bpb", 0.750123),
        EvalResult("arc_easy", 0.6123, 0.4831),
        None,                                                                   # Results written to: ...
        CoreMetric(None, 0.2601),
    ],
}


def test_every_formats_fixture_is_covered():
    assert {p.name for p in LOGS.glob("*-formats.log")} == set(EXPECTED)
    assert (LOGS / "UPSTREAM_FORMATS.md").is_file()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_line_parses_to_its_event(name):
    got = [parse_line(line) for line in lines(name)]
    assert len(got) == len(EXPECTED[name]), "fixture and expectations out of step"
    for line, event, want in zip(lines(name), got, EXPECTED[name]):
        assert same(event, want), f"{line!r} -> {event}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_streaming_parser_gives_the_same_events(name):
    """Streaming gives the same events (mid_train's tok/sec is recomputed from its `Total batch size` line)."""
    text = (LOGS / name).read_bytes()
    parser = LogParser()
    events = []
    for i in range(0, len(text), 7):                    # odd-sized byte chunks: splits UTF-8 and ANSI sequences
        events.extend(parser.feed(text[i:i + 7]))
    events.extend(parser.flush())
    want = [e for e in EXPECTED[name] if e is not None]
    if name == "upstream-2025-11-mid_train-formats.log":       # total_batch / dt, grad accumulation 1
        want[3] = dataclasses.replace(want[3], tok_per_sec=524288 / 0.5012)
    assert len(events) == len(want)
    for got, expected in zip(events, want):
        assert same(got, expected), f"{got} != {expected}"


def test_kind_hint_overrides_the_guess():
    line = lines("upstream-2026-chat_sft-formats.log")[1]
    assert parse_line(line, kind="mid").kind == "mid"
    mid = lines("upstream-2025-11-mid_train-formats.log")[4]
    assert parse_line(mid).kind == "mid" and parse_line(mid, kind="sft").kind == "sft"


def test_legacy_mid_tok_per_sec_recomputed_from_total_batch():
    # mid_train prints world micro-batch tokens / dt; with grad accumulation 4 the true rate is 4x that
    text = ("Total batch size 524,288 => gradient accumulation steps: 4\n"
            "step 00010 (1.23%) | loss: 1.234568 | lrm: 1.00 | dt: 500.00ms | tok/sec: 262,144 | mfu: 41.23"
            " | total time: 0.00m\n")
    ev = [e for e in parse_text(text) if isinstance(e, Step)][0]
    assert ev.tok_per_sec == pytest.approx(524288 / 0.5) and ev.tok_per_sec_printed == 262144


def test_windows_checkpoint_path_and_plain_logger():
    line = ("2026-03-12 15:37:25,812 - nanochat.checkpoint_manager - INFO - Saved model parameters to: "
            "C:\\Users\\me\\.cache\\nanochat\\base_checkpoints\\d3\\model_000500.pt")
    assert parse_line(line) == CheckpointSaved(500, "C:\\Users\\me\\.cache\\nanochat\\base_checkpoints\\d3",
                                               "upstream")


@pytest.mark.parametrize("line", [
    "Task                               , Accuracy  , Centered",
    "Tokens / micro-batch: 524,288",
    "  indented: text%",
    "Step 00010 | note: n/a",
])
def test_near_misses_are_not_events(line):
    assert parse_line(line) is None

"""Log-line parser: raw stage output (ANSI, `\\r` redraws, partial chunks) -> typed events of events.py."""
from __future__ import annotations

import ast
import codecs
import json
import re
from typing import Optional, Union

from .events import (
    BatchChoice, BatchProbe, CheckpointSaved, Config, CoreMetric, Divergence, EndOfRun, Error, EvalProgress,
    EvalResult, Event, Oom, Raw, ResumedFrom, Sample, Step, StepMetrics, StopRequested, ValBpb, ValLoss, new_step,
)
from .termtext import displayable
from .wandbinfo import parse_wandb

__all__ = ["parse_line", "clean_line", "strip_ansi", "LogParser", "parse_text"]

# CSI (ESC [ ... final), OSC (ESC ] ... BEL | ESC \), and the short escapes: ESC, intermediates, one final
# (ESC c resets the terminal, ESC 7 saves the cursor, ESC ( 0 selects line drawing).
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")

# Fast path for the common base/mid line (2025-11 and 2026 spellings); anything else goes field by field.
_STEP_FAST_RE = re.compile(
    r"step (\d+)(?:/(\d+))? \(([\d.]+)%\) \| loss: ([^ |]+) \| lrm: ([^ |]+) \| dt: ([\d.]+)ms"
    r" \| tok/sec: ([\d,]+) \| (bf16_)?mfu: ([^ |]+)(?: \| epoch: (\d+)[^|]*)? \| total time: ([\d.]+)m"
    r"(?: \| eta: ([\d.]+)m)?$")
_STEP_HEAD_RE = re.compile(r"step (\d+)(?:/(\d+))?(?: \(([-\d.]+)%\))?\s*$")
_STEP_CAP_RE = re.compile(r"Step (\d+)(?:/(\d+))? \| ?(.*)$")
_METRIC_VALUE_RE = re.compile(r"[-+]?(?:[\d.]+(?:[eE][-+]?\d+)?|nan|inf)%?$")
_CKPT_OURS_RE = re.compile(r"Checkpoint saved: step (\d+) -> (.+)$")
_CKPT_UPSTREAM_RE = re.compile(r"Saved model parameters to: `?(.*?model_(\d+)\.pt)`?\s*$")
_OOM_BS_RE = re.compile(r"device_batch_size=(\d+)")
_OOM_STEP_RE = re.compile(r"\bstep (\d+)")
_OOM_EMERGENCY_RE = re.compile(r"emergency checkpoint: (?:step )?(\d+)")
_MICRO_RE = re.compile(r"Tokens / micro-batch / rank: (\d+) x (\d+) = ([\d,]+)")
_TOTAL_BATCH_RE = re.compile(r"Total batch size ([\d,]+) => gradient accumulation steps: (\d+)")
_ITERS_RE = re.compile(r"(?:number of iterations|num_iterations).*: ([\d,]+)\s*$", re.IGNORECASE)
_ACCURACY_RE = re.compile(r"(\S.*?) accuracy: ([\d.]+)%\s*$")
_CORE_TASK_RE = re.compile(
    r"(?:Evaluating: (\S+).*?)?accuracy: ([\d.]+) \| centered: ([-\d.]+)")
_RANK_PROGRESS_RE = re.compile(r"Rank \d+ \| (\d+)/(\d+)")
_FINAL_RE = re.compile(r"Final: (\d+)/(\d+)")
_ERROR_RE = re.compile(
    r"((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit))(?::\s*(.*))?$")
_RANK_PREFIX_RE = re.compile(r"\[(?:rank|default)\d+\]:\s?")
_PARAM_TOTAL_RE = re.compile(r"total\s+: ([\d,]+)\s*$")
_MODEL_LINE_RE = re.compile(r"(num_layers|model_dim|num_heads|num_kv_heads): (\d+)\s*$")
_PROBE_RE = re.compile(r"Device batch probe: device_batch_size=(\d+) peak=(\S+) reserved=(\S+) limit=(\S+) -> (.+?)\s*$")
_CHOICE_RE = re.compile(r"(Device|Eval) batch size auto: (\d+|none fits)\s*(?:\((.*)\))?\s*$")
_CHOICE_DETAIL_RE = re.compile(r"headroom ([\d.]+)%, limit ([\d.]+(?:GiB|MiB)) of ([\d.]+(?:GiB|MiB))")
_DIVERGENCE_RE = re.compile(r"Divergence: (non-finite loss|loss spike) at step (\d+) \((.*)\); update not applied; "
                            r"last checkpoint: (?:step (\d+)|none)\s*$")
_RESUMED_RE = re.compile(r"Resuming optimization from step (\d+)")
_STOPPED_RE = re.compile(r"Stopped on request \(([^)]*)\) at step (\d+)(?:; checkpoint: step (\d+))?")
_SPLIT_BPB_RE = re.compile(r"(train|val) bpb: ([\d.]+)\s*$")
# base_eval echoes its CSV: `{label:<35}, {acc:<10.6f}, {centered:<10.6f}` and `CORE<pad>, <10 blanks>, {core:<10.6f}`
_CORE_CSV_ROW_RE = re.compile(r"([^\s,][^,]*?)\s*, ([-\d.]+)\s*, ([-\d.]+)\s*$")
_CORE_CSV_TOTAL_RE = re.compile(r"CORE\s*,\s*, ([-\d.]+)\s*$")
# upstream 2026 chat_sft in-training ChatCORE tasks: `  ARC-Easy: 45.67%`
_INDENTED_TASK_PCT_RE = re.compile(r"\s+([A-Za-z][\w\-]*): ([\d.]+)%$")

_KINDS = ("base", "mid", "sft")


def strip_ansi(text: str) -> str:
    """Remove ANSI CSI/OSC escape sequences (cheap when there are none)."""
    return _ANSI_RE.sub("", text) if "\x1b" in text else text


def clean_line(line: str) -> str:
    """One raw line -> what a terminal shows: the last non-empty `\\r` segment, ANSI stripped, right-trimmed, and
    no control character left (a stray ESC c or SO that a log line carries would reset or garble the dashboard)."""
    if "\r" in line:
        shown = ""
        for segment in reversed(line.split("\r")):
            segment = strip_ansi(segment).rstrip()
            if segment:
                shown = segment
                break
        return displayable(shown, "")
    return displayable(strip_ansi(line) if "\x1b" in line else line, "").rstrip()


def _num(text: str) -> Optional[float]:
    """'1,234.5ms' -> 1234.5; 'n/a' and garbage -> None."""
    text = text.strip().rstrip("ms%").replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> Optional[int]:
    try:
        return int(text.strip().replace(",", ""))
    except ValueError:
        return None


def _step_kind(hint: Optional[str], total: Optional[str], epoch: Optional[str] = None) -> str:
    """Without a hint: `/total` -> base; no total but an `epoch` field -> sft (upstream 2026 chat_sft, which
    replaced mid_train); neither -> mid (upstream 2025 mid_train)."""
    if hint in _KINDS:
        return hint
    return "base" if total else ("sft" if epoch else "mid")


def _parse_step(s: str, kind: Optional[str], total_batch: Optional[int] = None) -> Optional[Step]:
    """A `step ...` line. With `total_batch` known, tok_per_sec = total_batch / dt (see LogParser)."""
    m = _STEP_FAST_RE.match(s)
    if m is not None:
        step, total, pct, loss, lrm, dt, tps, bf16, mfu, epoch, ttime, eta = m.groups()
        try:
            loss_v = float(loss)
            lrm_v = float(lrm)
        except ValueError:
            loss_v = None
        if loss_v is not None:
            try:
                mfu_v = float(mfu)
            except ValueError:
                mfu_v = None
            dt_ms = float(dt)
            printed = float(tps.replace(",", ""))
            tok = total_batch * 1000.0 / dt_ms if (total_batch and dt_ms > 0.0) else printed
            return new_step(kind if kind in _KINDS else ("base" if total else ("sft" if epoch else "mid")), int(step),
                            int(total) if total else None, loss_v, lrm_v, dt_ms, tok, mfu_v, float(ttime),
                            float(eta) if eta else None, int(epoch) if epoch else None, bf16 is not None,
                            None, float(pct), printed)
    return _parse_step_fields(s, kind, total_batch)


def _parse_step_fields(s: str, kind: Optional[str], total_batch: Optional[int] = None) -> Optional[Step]:
    """The general path: any order of `key: value` fields (unknown keys ignored)."""
    head, _, rest = s.partition("|")
    hm = _STEP_HEAD_RE.match(head)
    if hm is None:
        return None
    fields = {}
    for part in rest.split("|"):
        key, sep, value = part.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "loss" not in fields:
        return None
    loss = _num(fields["loss"])
    if loss is None:
        return None
    bf16 = "bf16_mfu" in fields
    epoch = fields.get("epoch")
    tok = _num(fields["tok/sec"]) if "tok/sec" in fields else None
    total = hm.group(2)
    dt_ms = _num(fields["dt"]) if "dt" in fields else None
    return Step(
        kind=_step_kind(kind, total, epoch), step=int(hm.group(1)), total=int(total) if total else None,
        loss=loss, lrm=_num(fields["lrm"]) if "lrm" in fields else None,
        dt_ms=dt_ms, tok_per_sec=total_batch * 1000.0 / dt_ms if (total_batch and dt_ms) else tok,
        mfu=_num(fields["bf16_mfu" if bf16 else "mfu"]) if (bf16 or "mfu" in fields) else None,
        total_time_min=_num(fields["total time"]) if "total time" in fields else None,
        eta_min=_num(fields["eta"]) if "eta" in fields else None,
        epoch=_int(epoch.split()[0]) if epoch else None, bf16=bf16,
        num_tokens=_int(fields["num_tokens"]) if "num_tokens" in fields else None,
        pct=_num(hm.group(3)) if hm.group(3) else None, tok_per_sec_printed=tok)


def _parse_cap_step(s: str, kind: Optional[str]) -> Optional[Event]:
    m = _STEP_CAP_RE.match(s)
    if m is None:
        return None
    step = int(m.group(1))
    rest = m.group(3)
    if rest.startswith("Validation bpb:"):
        v = _num(rest[15:])
        return ValBpb(step, v) if v is not None else None
    if rest.startswith("Validation loss:"):
        v = _num(rest[16:].split("|")[0])
        return ValLoss(step, v) if v is not None else None
    if rest.startswith("CORE metric:"):
        v = _num(rest[12:])
        return CoreMetric(step, v) if v is not None else None
    if rest.startswith("Training loss:"):
        fields = {}
        for part in rest.split("|"):
            key, sep, value = part.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        loss = _num(fields.get("Training loss", ""))
        if loss is None:
            return None
        total = m.group(2)
        return Step(kind=kind if kind in ("base", "mid", "sft") else "sft", step=step,
                    total=int(total) if total else None, loss=loss,
                    lrm=_num(fields["lrm"]) if "lrm" in fields else None,
                    num_tokens=_int(fields["num_tokens"]) if "num_tokens" in fields else None,
                    dt_ms=_num(fields["dt"]) if "dt" in fields else None)
    values = _metric_pairs(rest)
    return StepMetrics(step, values) if values else None


def _metric_pairs(rest: str) -> dict:
    """`mmlu_acc: 0.31, arc_easy_acc: 0.43` / `Average reward: 0.31 | Average sequence length: 234.56` /
    `Pass@1: 0.18, Pass@2: 0.25` -> {key: float}; a `%` value stays in percent; non-numeric pairs are skipped."""
    values = {}
    for part in rest.replace(",", "|").split("|"):
        key, sep, value = part.rpartition(": ")
        key = key.strip()
        value = value.strip()
        if sep and key and _METRIC_VALUE_RE.match(value):
            values[key] = float(value.rstrip("%"))
    return values


def _parse_oom_line(s: str) -> Oom:
    bs = _OOM_BS_RE.search(s)
    st = _OOM_STEP_RE.search(s)
    em = _OOM_EMERGENCY_RE.search(s)
    return Oom(device_bs=int(bs.group(1)) if bs else None, step=int(st.group(1)) if st else None,
               emergency_step=int(em.group(1)) if em else None, source="ours", text=s)


def _parse_model_config(text: str) -> Optional[dict]:
    text = text.strip()
    for loader in (json.loads, ast.literal_eval):
        try:
            value = loader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _gib(text: str) -> Optional[float]:
    """`14.20GiB` -> 14.2, `512.00MiB` -> 0.5; `n/a` -> None."""
    if text.endswith("GiB"):
        return _num(text[:-3])
    if text.endswith("MiB"):
        v = _num(text[:-3])
        return v / 1024 if v is not None else None
    return None


def _parse_choice(s: str) -> Optional[BatchChoice]:
    m = _CHOICE_RE.match(s)
    if not m:
        return None
    kind = "train" if m.group(1) == "Device" else "eval"
    bs = int(m.group(2)) if m.group(2).isdigit() else None
    detail = m.group(3) or ""
    d = _CHOICE_DETAIL_RE.search(detail)
    if d:
        return BatchChoice(kind, bs, float(d.group(1)) / 100, _gib(d.group(2)), _gib(d.group(3)), detail)
    return BatchChoice(kind, bs, detail=detail)


def _parse_other(s: str) -> Optional[Event]:
    """Every rule except step lines; `s` is a clean, non-empty line."""
    c = s[0]
    if c == "[" and (s.startswith("[rank") or s.startswith("[default")):
        # torchrun prefixes worker stderr with "[rank0]: "; parse what follows
        m = _RANK_PREFIX_RE.match(s)
        if m and m.end() < len(s):
            return _parse_other(s[m.end():])
    if c == "C":
        if s.startswith("Checkpoint saved:"):
            m = _CKPT_OURS_RE.match(s)
            return CheckpointSaved(int(m.group(1)), m.group(2).strip(), "ours") if m else None
        if s.startswith("CORE metric:"):
            v = _num(s[12:])
            return CoreMetric(None, v) if v is not None else None
        if s.startswith("Calculated number of iterations"):
            m = _ITERS_RE.search(s)
            return Config("num_iterations", _int(m.group(1))) if m else None
        if s.startswith("CORE ") or s.startswith("CORE,"):
            m = _CORE_CSV_TOTAL_RE.match(s)
            return CoreMetric(None, float(m.group(1))) if m else None
        if s.startswith("ChatCORE metric:"):
            v = _num(s[16:])
            return EvalResult("ChatCORE", v) if v is not None else None
    elif c == "O" and s.startswith("OOM:"):
        return _parse_oom_line(s)
    elif c == "<" and s.startswith("<|bos|>"):
        return Sample(s)
    elif c == "P":
        if s.startswith("Peak memory usage:"):
            v = _num(s[18:].replace("MiB", ""))
            return EndOfRun("peak_mem_mib", v) if v is not None else None
    elif c == "T":
        if s.startswith("Total training time:"):
            v = _num(s[20:])
            return EndOfRun("total_time_min", v) if v is not None else None
        if s.startswith("Tokens / micro-batch / rank:"):
            m = _MICRO_RE.match(s)
            if m:
                return Config("micro_batch", {"device_bs": int(m.group(1)), "seq_len": int(m.group(2)),
                                              "tokens": _int(m.group(3))})
            return None
        if s.startswith("Total batch size"):
            m = _TOTAL_BATCH_RE.match(s)
            if m:
                return Config("total_batch_size", {"total_batch_size": _int(m.group(1)),
                                                   "grad_accum": int(m.group(2))})
            return None
        if s.startswith("Target examples per step:"):
            v = _int(s[25:])
            return Config("target_examples_per_step", v) if v is not None else None
    elif c == "S" and s.startswith("Stopped on request"):
        m = _STOPPED_RE.match(s)
        if m:
            return StopRequested(int(m.group(2)), m.group(1), int(m.group(3)) if m.group(3) else None)
        return None
    elif c == "M":
        if s.startswith("Minimum validation bpb:"):
            v = _num(s[23:])
            return EndOfRun("min_val_bpb", v) if v is not None else None
        if s.startswith("Model config:"):
            rest = s[13:].strip()
            if rest:
                value = _parse_model_config(rest)
                return Config("model_config", value) if value is not None else None
            return None
    elif c == "V" and s.startswith("Vocab size:"):
        v = _int(s[11:])
        return Config("vocab_size", v) if v is not None else None
    elif c == "N" and s.startswith("Number of parameters:"):
        v = _int(s[21:])
        return Config("num_params", v) if v is not None else None
    elif c == "U" and s.startswith("Using user-provided number of iterations"):
        m = _ITERS_RE.search(s)
        return Config("num_iterations", _int(m.group(1))) if m else None
    elif c == "A" and s.startswith("Autodetected device type:"):
        return Config("device_type", s[25:].strip())
    elif c == "D" and s.startswith("Device batch size:"):
        v = _int(s[18:])
        return Config("device_bs", v) if v is not None else None
    elif c == "D" and s.startswith("Divergence: "):
        m = _DIVERGENCE_RE.match(s)
        return Divergence(int(m.group(2)), "nonfinite" if m.group(1) == "non-finite loss" else "spike", m.group(3),
                          int(m.group(4)) if m.group(4) else None) if m else None
    elif c == "D" and s.startswith("Device batch probe:"):
        m = _PROBE_RE.match(s)
        if m:
            return BatchProbe(int(m.group(1)), _gib(m.group(2)), _gib(m.group(3)), _gib(m.group(4)), m.group(5))
        return None
    elif (c == "D" or c == "E") and " batch size auto:" in s:
        return _parse_choice(s)
    elif c == "R":
        if s.startswith("Rank "):
            m = _RANK_PROGRESS_RE.match(s)
            return EvalProgress(int(m.group(1)), int(m.group(2))) if m else None
        if s.startswith("Resuming optimization from step"):
            m = _RESUMED_RE.match(s)
            return ResumedFrom(int(m.group(1))) if m else None
    elif c == "F" and s.startswith("Final: "):
        m = _FINAL_RE.match(s)
        return EvalProgress(int(m.group(1)), int(m.group(2)), final=True) if m else None
    elif c == "E" and s.startswith("Evaluating: "):
        m = _CORE_TASK_RE.match(s)
        if m:
            return EvalResult(m.group(1) or "?", float(m.group(2)), float(m.group(3)))
        return None
    elif c == "a" and s.startswith("accuracy: "):
        m = _CORE_TASK_RE.match(s)
        return EvalResult("?", float(m.group(2)), float(m.group(3))) if m else None
    elif (c == "W" and s.startswith("W&B ")) or (c == "w" and s.startswith("wandb:") and "View run" in s):
        return parse_wandb(s)
    # rules that need a search rather than a prefix test
    if "Distributed world size:" in s:
        v = _int(s.rsplit(":", 1)[1])
        return Config("world_size", v) if v is not None else None
    if "Saved model parameters to:" in s:
        m = _CKPT_UPSTREAM_RE.search(s)
        if m:
            path = m.group(1)
            cut = max(path.rfind("/"), path.rfind("\\"))  # POSIX or Windows separator
            return CheckpointSaved(int(m.group(2)), path[:cut] if cut > 0 else ".", "upstream")
        return None
    if c == " " and s[-1] == "%":
        m = _INDENTED_TASK_PCT_RE.match(s)
        if m:
            return EvalResult(m.group(1), float(m.group(2)) / 100.0)
    if ", " in s and s[-1].isdigit():
        m = _CORE_CSV_ROW_RE.match(s)
        if m:
            return EvalResult(m.group(1), float(m.group(2)), float(m.group(3)))
    if "OutOfMemoryError" in s or "CUDA out of memory" in s:
        return Oom(device_bs=None, step=None, emergency_step=None, source="traceback", text=s)
    if " accuracy: " in s:
        m = _ACCURACY_RE.match(s)
        if m:
            return EvalResult(m.group(1), float(m.group(2)) / 100.0)
    if "Error" in s or "Exception" in s or "Interrupt" in s or "Exit" in s:
        if c not in " \t" and "(most recent call last)" not in s:
            m = _ERROR_RE.match(s)
            if m:
                return Error(m.group(1), (m.group(2) or "").strip())
    if "iterations" in s:
        m = _ITERS_RE.search(s)
        if m and ("umber of iterations" in s or "num_iterations" in s):
            return Config("num_iterations", _int(m.group(1)))
    if c == "t":
        m = _PARAM_TOTAL_RE.match(s)
        if m:
            return Config("num_params", _int(m.group(1)))
        m = _SPLIT_BPB_RE.match(s)
        if m:
            return EvalResult(f"{m.group(1)}_bpb", float(m.group(2)))
    elif c == "n":
        m = _MODEL_LINE_RE.match(s)
        if m:
            return Config(m.group(1), int(m.group(2)))
    elif c == "v":
        m = _SPLIT_BPB_RE.match(s)
        if m:
            return EvalResult(f"{m.group(1)}_bpb", float(m.group(2)))
    return None


def parse_line(line: str, kind: Optional[str] = None) -> Optional[Event]:
    """Parse one line (ANSI and `\\r` handled) into an event, or None for lines no rule knows.

    `kind` ("base" | "mid" | "sft") labels step lines; without it a `step` line with `/total` is "base",
    without `/total` "mid", and `Step N/M | Training loss` is "sft". Stateless: use `LogParser` for streams
    (it also corrects legacy tok/sec, fills OOM details from context and de-duplicates tracebacks).
    """
    if "\r" in line or "\x1b" in line:
        line = clean_line(line)
    else:
        line = line.rstrip()
    if not line:
        return None
    if line.startswith("step "):
        return _parse_step(line, kind)
    if line.startswith("Step "):
        return _parse_cap_step(line, kind)
    return _parse_other(line)


class LogParser:
    """Streaming parser: `feed(chunk)` any slices of the output (str or bytes) and get events per completed line.

    - keeps the partial last line until its newline arrives (`flush()` at end of stream parses it);
    - a line rewritten with `\\r` yields only its last non-empty segment; `pending_text` shows the segment
      being redrawn right now without emitting it, so nothing is emitted twice;
    - remembers the run's batch geometry to recompute `Step.tok_per_sec` as total_batch_size / dt (correct
      for upstream before and after PR #175; the printed number stays in `tok_per_sec_printed`);
    - an upstream OOM traceback (one per rank under torchrun) yields ONE `Oom(source="traceback")`, with the
      device batch size and last step filled from context; the latch resets on the next step line;
    - collects the multi-line `Model config:` JSON block of upstream 2026 into one `Config("model_config")`;
    - with `emit_raw=True` unrecognised non-empty lines come out as `Raw(text)` (for a log view).
    """

    __slots__ = ("kind", "emit_raw", "_buf", "_decoder", "_total_batch", "_device_bs", "_last_step",
                 "_oom_latched", "_json_lines", "lines")

    def __init__(self, kind: Optional[str] = None, emit_raw: bool = False):
        self.kind = kind
        self.emit_raw = emit_raw
        self._buf = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._total_batch: Optional[int] = None
        self._device_bs: Optional[int] = None
        self._last_step: Optional[int] = None
        self._oom_latched = False
        self._json_lines: Optional[list] = None
        self.lines = 0  # completed lines seen

    @property
    def pending_text(self) -> str:
        """The incomplete line as a terminal would show it now (last `\\r` segment, ANSI stripped)."""
        return clean_line(self._buf) if self._buf else ""

    @property
    def device_bs(self) -> Optional[int]:
        return self._device_bs

    @property
    def last_step(self) -> Optional[int]:
        return self._last_step

    def feed(self, chunk: Union[str, bytes]) -> list:
        if isinstance(chunk, (bytes, bytearray)):
            chunk = self._decoder.decode(bytes(chunk))
        if not chunk:
            return []
        data = self._buf + chunk if self._buf else chunk
        if "\n" not in chunk:
            if len(data) > _COMPACT_AT and "\r" in data:
                data = _drop_overwritten(data)
            self._buf = data
            return []
        parts = data.split("\n")
        self._buf = parts.pop()
        out: list = []
        for line in parts:
            self._line(line, out)
        return out

    def flush(self) -> list:
        """End of stream: parse whatever partial line remains."""
        tail = self._decoder.decode(b"", final=True)
        rest = self._buf + tail
        self._buf = ""
        out: list = []
        if rest:
            self._line(rest, out)
        return out

    def _line(self, line: str, out: list) -> None:
        self.lines += 1
        if "\r" in line or "\x1b" in line:
            line = clean_line(line)
        elif line and line[-1] in " \t":
            line = line.rstrip()
        if not line:
            return
        if self._json_lines is not None:
            self._json_lines.append(line)
            if line == "}" or len(self._json_lines) > 200:
                value = _parse_model_config("\n".join(self._json_lines))
                self._json_lines = None
                if value is not None:
                    out.append(Config("model_config", value))
            return
        if line.startswith("step "):
            ev = _parse_step(line, self.kind, self._total_batch)
            if ev is not None:
                self._last_step = ev.step
                self._oom_latched = False
                out.append(ev)
                return
        elif line.startswith("Step "):
            ev = _parse_cap_step(line, self.kind)
        else:
            ev = _parse_other(line)
        if ev is None:
            if line == "Model config:":
                self._json_lines = []
            elif self.emit_raw:
                out.append(Raw(line))
            return
        cls = type(ev)
        if cls is Step:
            self._last_step = ev.step
            self._oom_latched = False
        elif cls is Config:
            key = ev.key
            if key == "total_batch_size":
                self._total_batch = ev.value["total_batch_size"]
            elif key == "micro_batch":
                self._device_bs = ev.value["device_bs"]
            elif key == "device_bs":
                self._device_bs = ev.value
        elif cls is BatchChoice:
            if ev.kind == "train" and ev.device_bs is not None:
                self._device_bs = ev.device_bs
        elif cls is Oom:
            if self._oom_latched:
                return
            self._oom_latched = True
            if ev.source == "traceback":
                ev = Oom(self._device_bs, self._last_step, None, "traceback", ev.text)
        elif cls is CheckpointSaved:
            self._oom_latched = False
        out.append(ev)


_COMPACT_AT = 8192


def _drop_overwritten(partial: str) -> str:
    """Keep a partial line from its last visible `\r` segment on: a progress bar redrawn for hours without a
    newline must not grow the buffer (nor make each feed copy it). Same result once the newline comes."""
    segments = partial.split("\r")
    for i in range(len(segments) - 1, -1, -1):
        if strip_ansi(segments[i]).strip():
            return "\r".join(segments[i:])
    return segments[-1]


def parse_text(text: str, kind: Optional[str] = None, emit_raw: bool = False) -> list:
    """Parse a whole log text (convenience for tests and replays)."""
    parser = LogParser(kind=kind, emit_raw=emit_raw)
    events = parser.feed(text)
    events.extend(parser.flush())
    return events

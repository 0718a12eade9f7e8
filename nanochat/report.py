"""The report card: each stage logs a markdown section under $BASE/report/; `generate` assembles report.md with a
summary table (CORE, ARC-E, ARC-C, MMLU, GSM8K, HumanEval, ChatCORE by stage) and the total wall time."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
import time

from nanochat.common import ArgumentParser, get_base_dir, run_main

# Known sections in pipeline order (others follow in the order they were written).
SECTION_ORDER = ["Tokenizer training", "Tokenizer evaluation", "Base model training", "Base model loss",
                 "Base model evaluation", "Midtraining", "Chat evaluation mid", "Chat SFT", "Chat evaluation sft",
                 "Chat RL", "Chat evaluation rl"]
SUMMARY_METRICS = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE"]
STAGE_OF_SECTION = {"Base model evaluation": "BASE", "Chat evaluation mid": "MID", "Chat evaluation sft": "SFT",
                    "Chat evaluation rl": "RL"}
HEADER = "header"


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _write_atomic(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Report:
    def __init__(self, report_dir: str):
        self.dir = report_dir
        os.makedirs(report_dir, exist_ok=True)

    def log(self, section: str, data) -> str:
        """Write one stage's section. `data` is a list of strings (paragraphs) and dicts (`- key: value` lines);
        the dicts' values are kept as JSON for the summary table."""
        lines, values = [f"## {section}", f"timestamp: {datetime.datetime.now():%Y-%m-%d %H:%M:%S}", ""], {}
        for item in data if isinstance(data, (list, tuple)) else [data]:
            if isinstance(item, dict):
                for key, value in item.items():
                    lines.append(f"- {key}: {_format_value(value)}")
                    values[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
            elif item:
                lines.append(str(item))
            lines.append("")
        slug = slugify(section)
        path = os.path.join(self.dir, f"{slug}.md")
        _write_atomic(path, "\n".join(lines).rstrip() + "\n")
        _write_atomic(os.path.join(self.dir, f"{slug}.json"),
                      json.dumps({"section": section, "written_at": time.time(), "values": values}))
        return path

    def reset(self):
        """Start a new report: remove old sections and record the start time and the system in the header."""
        for name in os.listdir(self.dir):
            if name.endswith((".md", ".json")):
                os.remove(os.path.join(self.dir, name))
        self._write_header(time.time())

    def _write_header(self, started: float):
        info = ["# nanochat training report", "",
                f"Started: {datetime.datetime.fromtimestamp(started):%Y-%m-%d %H:%M:%S}", "",
                "## Environment", "", f"- Platform: {platform.platform()}", f"- Python: {sys.version.split()[0]}",
                f"- CPUs: {os.cpu_count()}"]
        try:
            import torch
            info.append(f"- PyTorch: {torch.__version__}")
            if torch.cuda.is_available():
                info.append(f"- GPU: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
        except Exception:
            pass
        _write_atomic(os.path.join(self.dir, f"{HEADER}.md"), "\n".join(info) + "\n")
        _write_atomic(os.path.join(self.dir, f"{HEADER}.json"), json.dumps({"started": started}))

    def sections(self) -> list[dict]:
        found = []
        for name in os.listdir(self.dir):
            if name.endswith(".json") and name != f"{HEADER}.json":
                try:
                    with open(os.path.join(self.dir, name)) as f:
                        meta = json.load(f)
                    with open(os.path.join(self.dir, name[:-5] + ".md"), encoding="utf-8") as f:
                        meta["markdown"] = f.read()
                except (OSError, ValueError):
                    continue
                found.append(meta)
        known = {title: i for i, title in enumerate(SECTION_ORDER)}
        return sorted(found, key=lambda s: (known.get(s["section"], len(known)), s["written_at"]))

    def summary_table(self, sections) -> str:
        columns = [STAGE_OF_SECTION[s["section"]] for s in sections if s["section"] in STAGE_OF_SECTION]
        columns = [c for c in ["BASE", "MID", "SFT", "RL"] if c in columns] or ["BASE", "MID", "SFT"]
        table = {}
        extra = []
        for s in sections:
            stage = STAGE_OF_SECTION.get(s["section"])
            if not stage:
                continue
            for key, value in s["values"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if key not in SUMMARY_METRICS and not key.startswith("_") and key not in extra \
                            and s["section"] != "Base model evaluation":
                        extra.append(key)
                    table[(key, stage)] = value
        rows = ["| Metric | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
        for metric in SUMMARY_METRICS + extra:
            cells = [f"{table[(metric, c)]:.4f}" if (metric, c) in table else "-" for c in columns]
            rows.append(f"| {metric} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def generate(self) -> str:
        header_json = os.path.join(self.dir, f"{HEADER}.json")
        sections = self.sections()
        if not os.path.exists(header_json):
            first = min((s["written_at"] for s in sections), default=time.time())
            self._write_header(first)
        with open(header_json) as f:
            started = json.load(f)["started"]
        with open(os.path.join(self.dir, f"{HEADER}.md"), encoding="utf-8") as f:
            parts = [f.read().rstrip(), ""]
        for s in sections:
            parts += [s["markdown"].rstrip(), ""]
        now = time.time()
        parts += ["## Summary", "", self.summary_table(sections), "",
                  f"Total wall clock time: {_format_duration(now - started)}", ""]
        path = os.path.join(self.dir, "report.md")
        _write_atomic(path, "\n".join(parts))
        return path


class DummyReport:
    """What non-zero ranks get: logging does nothing."""
    def log(self, *args, **kwargs):
        return None

    def reset(self, *args, **kwargs):
        return None


def get_report():
    from nanochat.common import get_dist_info
    rank = get_dist_info()[1]
    return Report(os.path.join(get_base_dir(), "report")) if rank == 0 else DummyReport()


def build_parser():
    parser = ArgumentParser(prog="python -m nanochat.report", description="the nanochat report card")
    parser.add_argument("command", choices=["generate", "reset"])
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    report = Report(os.path.join(get_base_dir(), "report"))
    if args.command == "reset":
        report.reset()
        print(f"Report reset: {report.dir}")
    else:
        path = report.generate()
        print(f"Report written: {path}")
    return 0


if __name__ == "__main__":
    run_main(main)

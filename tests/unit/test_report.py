"""Report card: sections per stage, summary table by stage, total wall time, reset, CLI exit codes."""
import json
import subprocess
import sys

from nanochat.report import Report, get_report


def test_sections_summary_and_wall_time(base_dir):
    report = get_report()
    report.reset()
    hdr = json.loads((base_dir / "report" / "header.json").read_text())
    hdr["started"] -= 125  # the run started 2 minutes ago
    (base_dir / "report" / "header.json").write_text(json.dumps(hdr))
    report.log("Chat evaluation sft", [{"ARC-Easy": 0.41, "GSM8K": 0.05, "ChatCORE": 0.2, "SpellingBee": 0.5}])
    report.log("Base model evaluation", ["Greedy samples follow.", {"CORE": 0.1234, "train bpb": 1.1}])
    report.log("Midtraining", [{"num_iterations": 1200, "min val bpb": 0.81}])
    report.log("Chat evaluation mid", [{"ARC-Easy": 0.35, "MMLU": 0.3}])
    path = report.generate()
    text = open(path).read()
    # sections in pipeline order regardless of writing order
    assert text.index("## Base model evaluation") < text.index("## Midtraining") < \
        text.index("## Chat evaluation mid") < text.index("## Chat evaluation sft") < text.index("## Summary")
    assert "- num_iterations: 1,200" in text
    assert "| Metric | BASE | MID | SFT |" in text
    assert "| CORE | 0.1234 | - | - |" in text
    assert "| ARC-Easy | - | 0.3500 | 0.4100 |" in text
    assert "| HumanEval | - | - | - |" in text
    assert "| SpellingBee | - | - | 0.5000 |" in text
    assert "Total wall clock time: 2m0" in text


def test_cli_generate_and_reset(base_dir):
    Report(str(base_dir / "report")).log("Chat SFT", [{"steps": 3}])
    out = subprocess.run([sys.executable, "-m", "nanochat.report", "generate"], capture_output=True, text=True)
    assert out.returncode == 0 and (base_dir / "report" / "report.md").exists()
    assert "## Chat SFT" in (base_dir / "report" / "report.md").read_text()
    out = subprocess.run([sys.executable, "-m", "nanochat.report", "reset"], capture_output=True, text=True)
    assert out.returncode == 0 and not (base_dir / "report" / "chat-sft.md").exists()
    bad = subprocess.run([sys.executable, "-m", "nanochat.report", "explode"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in bad.stderr

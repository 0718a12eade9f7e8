"""Benchmark: wall time of the preflight before a launch (`nanotui start --dry-run`) and of its one stage-checker
process (`python -m nanochat.stage_check --json`, every stage of the plan through its own parser), medians of N runs.

    python bench/bench_preflight.py [N] [PROFILE]      (default 5 runs of cpu-demo)
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from nanotui.core.plan import build_plan
from nanotui.core.preflight import stage_command

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5
PROFILE = sys.argv[2] if len(sys.argv) > 2 else "cpu-demo"


def timed(cmd, **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0


def main() -> None:
    plan = build_plan(PROFILE, python=sys.executable).to_dict()
    stages = [dict(zip(("python", "module", "argv", "world_size"), stage_command(s["argv"])), name=s["name"])
              for s in plan["stages"] if stage_command(s["argv"])]
    request = json.dumps({"stages": stages})
    with tempfile.TemporaryDirectory() as base:
        env = dict(os.environ, NANOCHAT_BASE_DIR=base)
        checker = [timed([sys.executable, "-m", "nanochat.stage_check", "--json"], input=request, env=env)
                   for _ in range(N)]
        dry = [timed([sys.executable, "-m", "nanotui.cli", "start", "--dry-run", "--profile", PROFILE], env=env)
               for _ in range(N)]
        bare = [timed([sys.executable, "-c", "import torch"], env=env) for _ in range(N)]
    print(f"profile {PROFILE}, {len(stages)} stages, {N} runs each (median s):")
    print(f"  python -c 'import torch'            {statistics.median(bare):.2f}")
    print(f"  nanochat.stage_check --json         {statistics.median(checker):.2f}")
    print(f"  nanotui start --dry-run             {statistics.median(dry):.2f}")
    print(f"  dry run / bare torch import         {statistics.median(dry) / statistics.median(bare):.2f}x")


if __name__ == "__main__":
    main()

"""SSH drop: `nanotui attach` inside tmux, the tmux session killed (SIGHUP) 10 times; the run keeps advancing."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


def status_json(env):
    r = subprocess.run([sys.executable, "-m", "nanotui.cli", "status", "--json"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_killing_the_tmux_session_never_stops_the_run(base_dir):
    rd = RunDir.create(base_dir, fake_plan(base_dir, [fake_stage(num_iterations=100000, save_every=50,
                                                                 step_time=0.02)], stop_timeout=5))
    sup = spawn_supervisor(rd)
    sock = f"nanotui-test-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color")
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    try:
        deadline = time.monotonic() + 20
        while (rd.read_state().get("step") or 0) < 1:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        last_step = 0
        for i in range(10):
            name = f"drop{i}"
            cmd = f"cd {REPO} && exec {sys.executable} -m nanotui.cli attach {rd.run_id}"
            subprocess.run(tmux + ["new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd], env=env,
                           check=True, timeout=30)
            time.sleep(0.6)  # the client is up (plain status or the dashboard) and talking to the run
            # check=True: the session must still exist, i.e. the client was alive until we hung it up
            subprocess.run(tmux + ["kill-session", "-t", name], env=env, check=True, timeout=30)  # SIGHUP
            time.sleep(0.2)
            s = status_json(env)
            assert s["state"] == "running" and s["supervisor_alive"], s
            assert s["step"] > last_step, f"drop {i}: run did not advance ({s['step']} <= {last_step})"
            last_step = s["step"]
        assert sup.poll() is None
        assert not [e for e in rd.read_events() if e["type"] in ("stopped", "crashed", "failed")]
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        subprocess.run([sys.executable, "-m", "nanotui.cli", "stop", rd.run_id], env=env, cwd=REPO,
                       capture_output=True, timeout=60)
        sup.wait(30)
    assert rd.read_state()["phase"] == "stopped"

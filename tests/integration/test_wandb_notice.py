"""W&B reach: the trainer prints the run URL (and why logging is off); the supervisor keeps the URL for `nanotui
status` and the dashboard header, and a failed W&B start becomes a `wandb_failed` event and notice."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

from nanotui.core.events import WandbInfo
from nanotui.core.logparse import parse_line
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan  # noqa: E402
from supervisor_helpers import cli  # noqa: E402

URL = "https://wandb.ai/djhenny/nanochat/runs/ab12cd34"


def _start(run="djhenny-nanochat-speedrun-4090"):
    """What the trainer does at setup (nanochat/training/wandb_run.py), on rank 0."""
    from nanochat.training.wandb_run import start_wandb
    return start_wandb(project="nanochat", run_name=run, run_id="ab12cd34", master=True, config={"depth": 2})


def test_trainer_prints_the_url_and_uses_the_configured_project(monkeypatch, capsys):
    calls = {}

    class Run:
        url = URL

        def log(self, *a, **k):
            pass

        def finish(self):
            pass

    def init(**kw):
        calls.update(kw)
        return Run()
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))  # stands in for the W&B servers
    monkeypatch.setenv("WANDB_PROJECT", "speedrun")
    _start()
    out = capsys.readouterr().out.splitlines()
    assert calls["project"] == "speedrun" and calls["name"] == "djhenny-nanochat-speedrun-4090"
    assert out == ["W&B run: djhenny-nanochat-speedrun-4090 (id ab12cd34)", f"W&B run URL: {URL}"]
    assert parse_line(out[1]) == WandbInfo(url=URL)


def test_real_wandb_without_login_is_one_line(tmp_path):
    """The real wandb package, not logged in (no key, no netrc): the stage says why and trains on. In a fresh
    interpreter, because wandb keeps process-wide settings from any earlier in-process init (a disabled-mode trainer
    run in another test makes a later init succeed offline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path))
    code = ("from nanochat.training.wandb_run import start_wandb\n"
            "run = start_wandb(project='nanochat', run_name='djhenny-nanochat-speedrun-4090', run_id='ab12cd34',"
            " master=True, config={'depth': 2})\n"
            "print('TYPE', type(run).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out[-1] == "TYPE DummyWandb", out
    said = out[:-1]
    assert len(said) == 1 and said[0].startswith("W&B logging disabled: "), said
    assert parse_line(said[0]).error and "API key" in said[0]


def _run(base_dir, tag, lines):
    script = "import time\n" + "".join(f"print({line!r}, flush=True)\n" for line in lines) + "time.sleep(0.3)\n"
    stage = {"name": "base_train", "argv": [sys.executable, "-c", script], "env": {}, "trains": False,
             "log_kind": "base"}
    rd = RunDir.create(base_dir, fake_plan(base_dir, [stage]), run_id=f"run-{tag}")
    assert spawn_supervisor(rd).wait(60) == 0
    return rd


def test_supervisor_keeps_the_url_and_announces_a_failed_start(base_dir):
    ok = _run(base_dir, "ok", ["W&B run: djhenny (id ab12cd34)", f"W&B run URL: {URL}"])
    assert ok.read_state()["wandb_url"] == URL
    ev = [e for e in ok.read_events() if e["type"] == "wandb"]
    assert len(ev) == 1 and ev[0]["url"] == URL
    status = cli("status", ok.run_id)
    assert status.returncode == 0 and f"W&B {URL}" in status.stdout
    assert json.loads(cli("status", "--json", ok.run_id).stdout)["wandb_url"] == URL

    bad = _run(base_dir, "bad", ["W&B run: djhenny (id ab12cd34)",
                                 "W&B logging disabled: No API key configured. Use `wandb login` to log in."])
    ev = [e for e in bad.read_events() if e["type"] == "wandb_failed"]
    assert len(ev) == 1 and "wandb login" in ev[0]["error"]
    assert ev[0]["message"].startswith("base_train: W&B logging disabled (No API key configured")
    from nanotui.core.notify import notice_for_event
    notice = notice_for_event(ev[0])
    assert notice.severity == "warning" and "W&B logging disabled" in notice.message
    assert "W&B off: No API key configured" in cli("status", bad.run_id).stdout


def test_dashboard_header_shows_the_url():
    from nanotui.tui.model import RunSnapshot
    from nanotui.tui.widgets.panels import HeaderBar
    snap = RunSnapshot(run_id="r", path=Path("."), profile="4090", phase="running", wandb_run="djhenny",
                       wandb_url=URL)
    assert URL in HeaderBar.build(snap).plain
    assert "djhenny" in HeaderBar.build(snap, compact=True).plain
    off = RunSnapshot(run_id="r", path=Path("."), profile="4090", phase="running", wandb_run="djhenny",
                      wandb_error="No API key")
    assert "W&B off" in HeaderBar.build(off).plain

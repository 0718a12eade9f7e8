"""notify_url with real supervised runs (the fake trainer): a run that falls back after an OOM, finishes, or crashes
posts one plain-text line per event to a local HTTP server; an endpoint that refuses or hangs changes nothing."""
import sys
import time
from pathlib import Path

from http_sinks import Hanging, Sink, refusing_url

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_stage  # noqa: E402
from supervisor_helpers import launch  # noqa: E402


def _oom_run(base_dir, monkeypatch):
    """B=4 runs out of memory at step 3 (>2): fallback to 2 with grace 0, then finishes. Returns (rd, seconds)."""
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("FAKE_OOM_AFTER_STEP", "3")
    t0 = time.monotonic()
    rd, sup = launch(base_dir, [fake_stage(device_bs=4, num_iterations=6, save_every=3, step_time=0.02)], grace=0)
    assert sup.wait(60) == 0
    return rd, time.monotonic() - t0


def _outcome(rd):
    st = rd.read_state()
    steps = [line.split()[1] for log in rd.list_logs() for line in log.read_text().splitlines()
             if line.startswith("step ")]
    return ([e["type"] for e in rd.read_events()], st["phase"], st["device_bs"], st["stages"][0]["attempts"], steps)


def test_fallback_done_and_crash_post_one_line_each(base_dir, monkeypatch):
    with Sink() as sink:
        monkeypatch.setenv("NANOTUI_NOTIFY_URL", sink.url)
        rd, _ = _oom_run(base_dir, monkeypatch)
        bodies = sink.wait(2)
        assert bodies == [f"nanotui {rd.run_id}: OOM fallback: base_train: restarting at device_batch_size=2 "
                          f"(was 4) from the newest checkpoint (oom policy)",
                          f"nanotui {rd.run_id}: done: run {rd.run_id} finished all 1 stages"]
        monkeypatch.delenv("NANOCHAT_FAULT_OOM_ABOVE_BS")
        crash = base_dir / "crash"
        crash.mkdir()
        rd2, sup2 = launch(crash, [fake_stage(device_bs=2, num_iterations=3, step_time=0.01, exit_code=1)])
        assert sup2.wait(60) == 1
        time.sleep(0.5)   # nothing more may arrive: crashed + failed is ONE post
        posts = sink.bodies()[2:]
        assert len(posts) == 1 and posts[0].startswith(f"nanotui {rd2.run_id}: crashed: base_train: exited with "
                                                       f"code 1")
        assert all("\n" not in b for b in sink.bodies())
        assert "notify_url: posting run events (from env)" in rd.supervisor_log.read_text()


def test_refusing_or_hanging_endpoint_changes_nothing(base_dir, monkeypatch):
    monkeypatch.setenv("NANOTUI_NOTIFY_TIMEOUT", "1")
    monkeypatch.delenv("NANOTUI_NOTIFY_URL", raising=False)
    (base_dir / "none").mkdir()
    base, base_s = _oom_run(base_dir / "none", monkeypatch)   # the same run without any notify_url
    results = {}
    for name in ("refused", "hanging"):
        d = base_dir / name
        d.mkdir()
        with Hanging() as stuck:
            monkeypatch.setenv("NANOTUI_NOTIFY_URL", refusing_url() if name == "refused" else stuck.url)
            results[name] = _oom_run(d, monkeypatch)
    for name, (rd, secs) in results.items():
        assert _outcome(rd) == _outcome(base), name
        # two posts each time out after 1 s in the background; the exit waits for the queue at most ~2 s
        assert secs < base_s + 4, (name, secs, base_s)
        assert "could not post" in rd.supervisor_log.read_text(), name


def test_divergence_rollback_posts_one_line_then_done(base_dir, monkeypatch):
    """A NaN at step 12 (the trainer exits 5): the supervisor rolls back to step 10 with a data skip and finishes;
    a real local endpoint receives the rollback line and the done line, nothing else."""
    stage = fake_stage(num_iterations=20, save_every=5, step_time=0.01)
    stage["env"] = {"NANOCHAT_FAULT_NAN_AT_STEP": "12"}
    with Sink() as sink:
        monkeypatch.setenv("NANOTUI_NOTIFY_URL", sink.url)
        rd, sup = launch(base_dir, [stage], grace=0)
        assert sup.wait(60) == 0
        bodies = sink.wait(2)
        time.sleep(0.5)
        assert sink.bodies() == bodies == [
            f"nanotui {rd.run_id}: divergence rollback: base_train: rollback 1 to checkpoint step 10 after a "
            f"non-finite loss at step 12; data skipped 10:13 (grace 0: acting at once)",
            f"nanotui {rd.run_id}: done: run {rd.run_id} finished all 1 stages"]

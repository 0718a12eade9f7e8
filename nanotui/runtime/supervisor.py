"""The detached supervisor daemon: owns one run (flock), runs its stages, tails logs, applies the OOM policy.

Design (re-adoption and exit codes): each stage attempt runs under `stagewrap.py`, which leads the attempt's
process group and writes the child's exit status to `logs/<attempt>.exit`. The child's stdout/stderr go straight
into `logs/<attempt>.log` (no pipe through the supervisor), so the supervisor only tails files. If the supervisor
dies (even SIGKILL), the stage keeps running and writing; a new supervisor (`nanotui resume`, or
`python -m nanotui.runtime.supervisor RUN_DIR`) finds `stage_pid` (+ its create time, against pid reuse) alive in
state.json, re-parses the log from the start to rebuild step/checkpoint state, keeps tailing, and learns the end
from the `.exit` file. Run as `python -m nanotui.runtime.supervisor RUN_DIR [--resume [--step S] [--device-bs B]]`.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nanotui.core import oom as policy
from nanotui.core.events import BatchChoice, BatchProbe, CheckpointSaved, Config, Error, Oom, Step
from nanotui.core.logparse import LogParser
from nanotui.runtime import probes, procs
from nanotui.runtime.control import ControlServer
from nanotui.runtime.gpu import open_backend
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.tail import LogTailer

DEFAULT_STOP_TIMEOUT = 120.0  # seconds between SIGTERM and SIGKILL (a d20 checkpoint takes a while)
POLL = 0.2


class SupervisorBusy(RuntimeError):
    """Another supervisor holds this run's lock."""


@dataclass
class AttemptEnd:
    exit_code: int | None        # None: the attempt vanished without an exit file (killed with its wrapper)
    signal: int | None
    oom: Oom | None
    error: str | None
    last_step: int | None


def acquire_lock(rd: RunDir) -> int:
    """flock supervisor.lock; returns the fd to keep open for the supervisor's lifetime."""
    fd = os.open(rd.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = rd.read_state().get("supervisor_pid")
        raise SupervisorBusy(f"run {rd.run_id} already has a supervisor (pid {pid}); "
                             f"use `nanotui attach {rd.run_id}` or `nanotui stop {rd.run_id}`") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def stage_argv(stage: dict, device_bs: int | None, resume) -> list[str]:
    """The stage's argv, with the batch size and resume point the supervisor chose (training stages only)."""
    if not stage.get("trains"):
        return list(stage["argv"])
    from nanotui.core.plan import argv_with
    return argv_with(stage, device_bs=device_bs, resume=resume)


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        for spelled in (f"--{name}", f"--{name.replace('_', '-')}"):
            if a.startswith(spelled + "="):
                return a.split("=", 1)[1]
            if a == spelled and i + 1 < len(argv):
                return argv[i + 1]
    return None


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class Supervisor:
    def __init__(self, rd: RunDir, *, resume: bool = False, resume_step=None, resume_device_bs=None,
                 gpu_backend=None):
        self.rd = rd
        self.plan = rd.read_plan()
        self.stages: list[dict] = self.plan["stages"]
        self.state = rd.read_state()
        self.resume = resume
        self.resume_step = resume_step
        self.resume_device_bs = resume_device_bs
        self.stop_timeout = float(self.plan.get("stop_timeout", DEFAULT_STOP_TIMEOUT))
        self.gpu_interval = float(self.plan.get("gpu_interval", 1.0))
        grace = self.state.get("grace")
        if grace is None:
            grace = self.plan.get("grace")
        self.oom_state = policy.OomState(grace=policy.parse_grace(
            grace if grace is not None else policy.DEFAULT_GRACE_S))
        self.lock = threading.RLock()
        self.request = None           # ("stop", reason) | ("restart", device_bs, resume, why)
        self.server: ControlServer | None = None
        self.gpu = gpu_backend
        self._gpu_stop = threading.Event()
        self._last_state_write = 0.0
        self._pgid: int | None = None

    # ---- state and events ---------------------------------------------------------------------
    def save_state(self, force: bool = True) -> None:
        now = time.time()
        if not force and now - self._last_state_write < 0.5:
            return
        self._last_state_write = now
        with self.lock:
            self.rd.write_state(self.state)

    def event(self, type: str, notify: str | None = None, message: str | None = None, **fields) -> dict:
        ev = self.rd.append_event(type, **({"message": message} if message else {}), **fields)
        if notify and self.server:
            self.server.broadcast({"notify": notify, "message": message or type, "event": ev})
        return ev

    def set_phase(self, phase: str, reason: str | None = None) -> None:
        self.state["phase"] = phase
        if reason is not None or phase in ("running", "starting"):
            self.state["reason"] = reason
        self.save_state()

    def stage_rec(self, idx: int) -> dict:
        return self.state["stages"][idx]

    # ---- control commands (called on control threads) -----------------------------------------
    def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        args = {k: v for k, v in req.items() if k != "cmd"}
        if cmd == "status":
            with self.lock:
                return {"ok": True, "state": dict(self.state), "summary": self.rd.status_summary()}
        if cmd not in ("stop", "fallback", "retry", "resume", "set_grace"):
            return {"ok": False, "error": f"unknown command {cmd!r}; expected status, stop, fallback, retry, "
                                          f"resume, set_grace or subscribe"}
        self.rd.append_event("command", cmd=cmd, args=args)
        with self.lock:
            waiting = self.oom_state.phase == "waiting"
            if cmd == "stop":
                self.request = ("stop", args.get("reason") or "stopped by user")
                return {"ok": True, "message": "stopping: the stage gets SIGTERM, then SIGKILL after "
                                               f"{self.stop_timeout:g}s"}
            if cmd == "set_grace":
                try:
                    grace = policy.parse_grace(args.get("grace"))
                except ValueError as e:
                    return {"ok": False, "error": str(e)}
                self._apply_policy(policy.SetGrace(grace, time.time()))
                self.state["grace"] = grace
                if self.state.get("pending_oom") and self.oom_state.pending:
                    self.state["pending_oom"]["deadline"] = self.oom_state.pending.deadline
                self.save_state()
                return {"ok": True, "grace": grace}
            if cmd == "fallback":
                b = _int_or_none(args.get("device_bs"))
                if b is None or b < 1:
                    return {"ok": False, "error": "fallback needs device_bs: a positive integer"}
                if waiting:
                    rej = self._apply_policy(policy.UserFallback(b))
                    return {"ok": False, "error": rej} if rej else {"ok": True, "device_bs": b}
                if not self._current_trains():
                    return {"ok": False, "error": "the current stage does not train; nothing to fall back"}
                self.request = ("restart", b, "latest", f"fallback to device_batch_size={b} requested")
                return {"ok": True, "device_bs": b, "message": "restarting the stage from its newest checkpoint"}
            if cmd == "retry":
                if not waiting:
                    return {"ok": False, "error": "no out-of-memory decision is pending"}
                rej = self._apply_policy(policy.UserRetry())
                return {"ok": False, "error": rej} if rej else {"ok": True}
            if cmd == "resume":
                step = args.get("step")
                if step is not None and _int_or_none(step) is None:
                    return {"ok": False, "error": "resume step must be an integer"}
                b = args.get("device_bs")
                if b is not None and (_int_or_none(b) is None or int(b) < 1):
                    return {"ok": False, "error": "device_bs must be a positive integer"}
                if not self._current_trains():
                    return {"ok": False, "error": "the current stage does not train; nothing to resume"}
                b = int(b) if b is not None else self.state.get("device_bs")
                self.request = ("restart", b, int(step) if step is not None else "latest",
                                "resume requested")
                self.oom_state = policy.decide(self.oom_state, policy.Resumed(b))[0]
                return {"ok": True, "device_bs": b, "step": step if step is not None else "latest"}
        return {"ok": False, "error": "unreachable"}

    def _current_trains(self) -> bool:
        idx = self.state.get("stage_index") or 0
        return idx < len(self.stages) and bool(self.stages[idx].get("trains"))

    def _apply_policy(self, ev) -> str | None:
        """Feed the OOM policy; turn its actions into requests/notifications. Returns a Reject reason."""
        with self.lock:
            self.oom_state, actions = policy.decide(self.oom_state, ev)
            for a in actions:
                if isinstance(a, policy.Reject):
                    return a.reason
                if isinstance(a, policy.Restart):
                    self.request = ("restart", a.device_bs, a.from_step, "oom policy")
                elif isinstance(a, policy.Stop):
                    self.request = ("oom_stop", a.reason)
                elif isinstance(a, policy.Notify) and a.kind == "oom":
                    # fallback/retry/stopped are announced with their events by the caller
                    if self.server:
                        self.server.broadcast({"notify": a.kind, "message": a.message})
                elif isinstance(a, policy.Wait):
                    pass
        return None

    # ---- GPU sampling -------------------------------------------------------------------------
    def _gpu_loop(self) -> None:
        if self.gpu is None:
            self.gpu = open_backend()
        while not self._gpu_stop.wait(self.gpu_interval):
            pid = self.state.get("stage_pid")
            pids = procs.tree_pids(pid) if pid else []
            try:
                self.rd.append_gpu(self.gpu.sample(pids))
            except Exception as e:  # never let sampling take the supervisor down
                print(f"gpu sample failed: {e}", file=sys.stderr, flush=True)

    # ---- one attempt --------------------------------------------------------------------------
    def _spawn(self, idx: int, argv: list[str], device_bs: int | None) -> tuple[subprocess.Popen, Path, Path]:
        stage = self.stages[idx]
        rec = self.stage_rec(idx)
        rec["attempts"] = int(rec.get("attempts") or 0) + 1
        attempt = rec["attempts"]
        log = self.rd.log_path(idx, stage["name"], attempt)
        exit_file = RunDir.exit_path(log)
        try:
            exit_file.unlink()
        except FileNotFoundError:
            pass
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (stage.get("env") or {}).items()})
        env["PYTHONUNBUFFERED"] = "1"
        env.update(probes.probe_env(stage, argv, self.plan, probes.last_gpu_sample(self.rd)))
        env.setdefault("NANOCHAT_BASE_DIR", str(self.plan.get("base_dir") or ""))
        if not env["NANOCHAT_BASE_DIR"]:
            env.pop("NANOCHAT_BASE_DIR")
        if self.state.get("stage_index") != idx or self.state.get("stage") != stage["name"]:
            self.state.update(step=None, total=None)
        proc = procs.spawn_stage(argv, env=env, cwd=self.plan.get("cwd"), log_path=log, exit_path=exit_file)
        rec.update(state="running", started=rec.get("started") or time.time(), ended=None, exit_code=None,
                   device_bs=device_bs)
        self.state.update(phase="running", stage_index=idx, stage=stage["name"], attempt=attempt,
                          stage_pid=proc.pid, stage_pid_created=procs.create_time(proc.pid),
                          device_bs=device_bs, log=str(log.relative_to(self.rd.path)), reason=None,
                          pending_oom=None)
        self.state["seq_len"] = _int_or_none(_flag_value(argv, "max_seq_len")) or self.state.get("seq_len")
        self.state["wandb_run"] = _flag_value(argv, "run") or self.state.get("wandb_run")
        self.save_state()
        self.event("stage_started", stage=stage["name"], index=idx, attempt=attempt, argv=argv,
                   device_bs=device_bs, log=self.state["log"], pid=proc.pid)
        return proc, log, exit_file

    def _watch(self, idx: int, log: Path, exit_file: Path, proc: subprocess.Popen | None,
               catch_up: bool = False) -> AttemptEnd:
        """Tail the attempt's log into the parser until it ends; honour stop/restart requests meanwhile."""
        stage = self.stages[idx]
        parser = LogParser(kind=stage.get("log_kind"))
        tailer = LogTailer(log)
        pid, created = self.state["stage_pid"], self.state.get("stage_pid_created")
        self._pgid = pid
        oom_ev: Oom | None = None
        error: str | None = None
        term_sent_at: float | None = None
        killed = False
        quiet = catch_up  # while re-reading an adopted log, don't repeat its events
        recorder = probes.ProbeRecorder(stage)

        def consume(lines: list[str]) -> None:
            nonlocal oom_ev, error
            for line in lines:
                if line.startswith("error: "):
                    error = line[7:].strip()
                for ev in parser.feed(line + "\n"):
                    t = type(ev)
                    if t is Step:
                        self.state["step"], self.state["total"] = ev.step, ev.total
                    elif t is CheckpointSaved:
                        ck = {"stage": stage["name"], "step": ev.step, "path": ev.path}
                        self.state["last_checkpoint"] = ck
                        if not quiet:
                            self.event("checkpoint", **ck)
                    elif t is Oom:
                        oom_ev = ev
                    elif t is Error:
                        error = f"{ev.exc_type}: {ev.message}"
                    elif t is Config and ev.key == "total_batch_size":
                        self.state["total_batch_size"] = ev.value.get("total_batch_size")
                    elif t is Config and ev.key == "micro_batch":
                        self.state["seq_len"] = ev.value.get("seq_len") or self.state.get("seq_len")
                    elif t is BatchProbe or t is BatchChoice:
                        self._on_probe(idx, recorder.observe(ev), quiet)

        if catch_up:
            while True:
                lines = tailer.read_lines(1 << 22)
                if not lines:
                    break
                consume(lines)
            quiet = False
            self.save_state()
        while True:
            consume(tailer.read_lines())
            self.save_state(force=False)
            ended = (proc.poll() is not None) if proc is not None else not procs.pid_matches(pid, created)
            if ended:
                break
            with self.lock:
                req = self.request
            if req and term_sent_at is None and req[0] in ("stop", "restart"):
                procs.signal_group(pid, signal.SIGTERM)
                term_sent_at = time.monotonic()
                self.event("stopping", stage=stage["name"], why=req[-1] if req[0] == "restart" else req[1],
                           pgid=pid)
            if term_sent_at is not None and not killed and time.monotonic() - term_sent_at > self.stop_timeout:
                procs.signal_group(pid, signal.SIGKILL)
                killed = True
                self.event("killed", stage=stage["name"], after_s=self.stop_timeout)
            time.sleep(POLL)
        # the wrapper is gone; make sure nothing of the group lingers, then read the exit file
        if procs.group_alive(pid):
            procs.stop_group(pid, timeout=5)
        deadline = time.monotonic() + 2.0
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        consume(tailer.read_lines())
        for line in tailer.flush_partial():
            consume([line])
        tailer.close()
        for ev in parser.flush():
            if isinstance(ev, Oom):
                oom_ev = ev
        try:
            info = json.loads(exit_file.read_text())
            code, sig = info.get("exit_code"), info.get("signal")
        except (FileNotFoundError, ValueError):
            code, sig = None, None
        self._pgid = None
        return AttemptEnd(code, sig, oom_ev, error, parser.last_step)

    def _on_probe(self, idx: int, record: dict | None, quiet: bool) -> None:
        """A stage's `--device_batch_size=auto` probe finished: its choice is the attempt's batch size from now on
        (OOM ladder, resume), and the table goes into state.json (`probes`) and events (`device_bs_probe`)."""
        if record is None:
            return
        if record.get("device_bs"):
            self.state["device_bs"] = record["device_bs"]
            self.stage_rec(idx)["device_bs"] = record["device_bs"]
        probes.record_probe(self.state, record)
        self.save_state()
        if not quiet:
            chosen = record.get("device_bs") or "none fits"
            self.event("device_bs_probe", message=f"{record['stage']}: device_batch_size auto -> {chosen}", **record)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        self.state["supervisor_pid"] = os.getpid()
        if self.state.get("grace") is None:
            self.state["grace"] = self.oom_state.grace
        self.server = ControlServer(self.rd.socket_path, self.handle).start()
        threading.Thread(target=self._gpu_loop, name="gpu", daemon=True).start()
        try:
            return self._run_stages()
        finally:
            self._gpu_stop.set()
            self.save_state()
            if self.server:
                time.sleep(0.1)  # let the last notifications flush
                self.server.close()

    def _first_action(self):
        """Where to begin: adopt a live attempt, account for one that ended unsupervised, resume, or start."""
        st = self.state
        idx = int(st.get("stage_index") or 0)
        live = st.get("phase") in ("starting", "running", "waiting")
        if live and procs.pid_matches(st.get("stage_pid"), st.get("stage_pid_created")) and st.get("log"):
            return ("adopt", idx)
        if idx < len(self.stages) and self.stage_rec(idx).get("state") == "running" and st.get("log"):
            return ("ended_unsupervised", idx)
        if self.resume:
            return ("resume", idx)
        if st.get("phase") in ("done",):
            return ("finished", idx)
        return ("start", idx)

    def _run_stages(self) -> int:
        kind, idx = self._first_action()
        next_attempt = None  # (argv, device_bs) for the next spawn of stage idx
        if kind == "finished":
            print(f"run {self.rd.run_id} is already done", flush=True)
            return 0
        if kind == "start":
            self.event("started", run_id=self.rd.run_id, profile=self.plan.get("profile"),
                       stages=[s["name"] for s in self.stages], supervisor_pid=os.getpid())
        end = None
        if kind in ("adopt", "ended_unsupervised"):
            log = self.rd.path / self.state["log"]
            self.event("adopted", notify=None, stage=self.state.get("stage"), pid=self.state.get("stage_pid"),
                       attempt=self.state.get("attempt"), still_running=(kind == "adopt"))
            end = self._watch(idx, log, RunDir.exit_path(log), proc=None, catch_up=True)
            if self.resume and (end.exit_code != 0):
                next_attempt = self._resume_attempt(idx)
                end = None
        elif kind == "resume":
            while idx < len(self.stages) and self.stage_rec(idx).get("state") == "done":
                idx += 1
            if idx < len(self.stages):
                next_attempt = self._resume_attempt(idx)
        while idx < len(self.stages):
            stage = self.stages[idx]
            if end is None:
                if self.stage_rec(idx).get("state") == "done":
                    idx += 1
                    continue
                with self.lock:
                    if self.request and self.request[0] == "stop":
                        return self._stopped(idx, self.request[1], None)
                argv, bs = next_attempt or (stage_argv(stage, stage.get("device_bs"), None), stage.get("device_bs"))
                next_attempt = None
                argv, bs, reused = probes.reuse(stage, argv, bs, self.state.get("probes"))
                if reused:
                    self.event("device_bs_reused", stage=stage["name"], device_bs=bs, from_stage=reused["stage"],
                               key=reused["key"], message=f"{stage['name']}: device_batch_size={bs} from the "
                               f"{reused['stage']} probe (same shape)")
                proc, log, exit_file = self._spawn(idx, argv, bs)
                end = self._watch(idx, log, exit_file, proc)
            outcome = self._after_attempt(idx, end)
            end = None
            if outcome == "next":
                idx += 1
                continue
            if isinstance(outcome, tuple):  # restart this stage
                next_attempt = outcome
                continue
            return outcome  # an exit code: the run stopped or failed
        self.state.update(phase="done", stage_pid=None, reason=None, pending_oom=None)
        self.save_state()
        self.event("done", notify="done", message=f"run {self.rd.run_id} finished all {len(self.stages)} stages")
        return 0

    def _resume_attempt(self, idx: int):
        stage = self.stages[idx]
        bs = self.resume_device_bs or self.state.get("device_bs") or stage.get("device_bs")
        if self.state.get("stage_index") != idx:
            bs = self.resume_device_bs or stage.get("device_bs")
        step = self.resume_step if self.resume_step is not None else "latest"
        if stage.get("trains"):
            self.event("resumed", notify="resumed", message=f"{stage['name']}: resuming from "
                       f"{'checkpoint step ' + str(step) if step != 'latest' else 'the newest checkpoint'} "
                       f"at device_batch_size={bs}", stage=stage["name"], step=step, device_bs=bs)
        else:
            self.event("resumed", notify="resumed", message=f"{stage['name']}: re-running the stage",
                       stage=stage["name"])
        return stage_argv(stage, bs, step), bs

    def _stopped(self, idx: int, reason: str, end: AttemptEnd | None) -> int:
        rec = self.stage_rec(idx)
        rec.update(state="stopped", ended=time.time(), exit_code=end.exit_code if end else None)
        self.state.update(stage_pid=None, pending_oom=None)
        self.set_phase("stopped", reason)
        self.event("stopped", notify="stopped", message=f"{self.stages[idx]['name']}: {reason}",
                   stage=self.stages[idx]["name"], exit_code=end.exit_code if end else None,
                   step=self.state.get("step"), last_checkpoint=self.state.get("last_checkpoint"))
        return 0

    def _after_attempt(self, idx: int, end: AttemptEnd):
        """Decide what follows an attempt: 'next', (argv, device_bs) to restart, or a supervisor exit code."""
        stage = self.stages[idx]
        name = stage["name"]
        rec = self.stage_rec(idx)
        rec.update(exit_code=end.exit_code, ended=time.time())
        self.state["stage_pid"] = None
        with self.lock:
            req, self.request = self.request, None
        if req and req[0] == "stop":
            return self._stopped(idx, req[1], end)
        if req and req[0] == "restart" and end.exit_code != 0:
            _, bs, resume, why = req
            self.event("retry" if bs == self.state.get("device_bs") else "fallback",
                       notify="fallback" if bs != self.state.get("device_bs") else "retry",
                       message=f"{name}: restarting at device_batch_size={bs} from {resume} ({why})",
                       stage=name, from_bs=self.state.get("device_bs"), to_bs=bs, resume=resume, why=why)
            return stage_argv(stage, bs, resume), bs
        if end.exit_code == 0:
            rec["state"] = "done"
            total = self.state.get("total")
            if isinstance(total, int) and isinstance(self.state.get("step"), int):
                self.state["step"] = total  # step lines count from 0: a finished stage has done `total` steps
            self.save_state()
            self.event("stage_done", notify="stage_done", message=f"{name} done", stage=name, index=idx,
                       step=self.state.get("step"))
            return "next"
        is_oom = end.exit_code == 3 or end.oom is not None
        if is_oom and stage.get("trains"):
            return self._handle_oom(idx, end)
        if end.exit_code is None:
            reason = f"{name}: the stage vanished without an exit code (killed together with its wrapper?)"
        elif is_oom:
            reason = f"{name}: out of memory (exit {end.exit_code}); this stage has no batch size to lower"
        elif end.exit_code == 4:
            reason = f"{name}: stopped (exit 4) without a request from nanotui"
        else:
            reason = f"{name}: exited with code {end.exit_code}" + (f" ({end.error})" if end.error else "")
            if end.signal:
                reason = f"{name}: killed by signal {end.signal}"
        rec["state"] = "failed"
        self.state.update(pending_oom=None)
        self.set_phase("failed", reason)
        self.event("crashed", notify="crashed", message=reason, stage=name, exit_code=end.exit_code,
                   signal=end.signal, error=end.error, step=end.last_step)
        self.event("failed", notify="failed", message=reason, stage=name)
        return 1

    def _handle_oom(self, idx: int, end: AttemptEnd):
        stage = self.stages[idx]
        name = stage["name"]
        bs = self.state.get("device_bs") or (end.oom.device_bs if end.oom else None)
        ck = self.state.get("last_checkpoint")
        ckpt_step = ck["step"] if ck and ck.get("stage") == name else None
        step = (end.oom.step if end.oom and end.oom.step is not None else end.last_step)
        total = stage.get("total_batch_size") or self.state.get("total_batch_size")
        seq = stage.get("seq_len") or self.state.get("seq_len") or 1
        world = int(stage.get("world_size") or 1)
        self.event("oom", stage=name, step=step, device_bs=bs, exit_code=end.exit_code,
                   emergency_step=end.oom.emergency_step if end.oom else None, ckpt_step=ckpt_step)
        now = time.time()
        with self.lock:
            self.request = None
        self._apply_policy(policy.OomDetected(name, step, bs, ckpt_step, now, total, seq, world))
        p = self.oom_state.pending
        if self.oom_state.phase == "waiting" and p is not None:
            self.state["pending_oom"] = {"stage": name, "step": step, "device_bs": bs, "ladder": list(p.ladder),
                                         "deadline": p.deadline}
            self.set_phase("waiting", f"out of memory at device_batch_size={bs}; waiting for a decision")
            self.event("waiting", notify="waiting", message=self.state["reason"], stage=name,
                       ladder=list(p.ladder), deadline=p.deadline, grace=self.oom_state.grace,
                       pending_oom=self.state["pending_oom"])
        while True:
            with self.lock:
                req = self.request
            if req:
                break
            self._apply_policy(policy.GraceTick(time.time()))
            time.sleep(POLL)
        with self.lock:
            self.request = None
            self.state["pending_oom"] = None
        if req[0] == "oom_stop":
            rec = self.stage_rec(idx)
            rec.update(state="stopped")
            self.state["stage_pid"] = None
            self.set_phase("stopped", req[1])
            self.event("stopped", notify="stopped", message=req[1], stage=name, reason=req[1])
            return 0
        if req[0] == "stop":
            self.oom_state = policy.decide(self.oom_state, policy.UserStop(req[1]))[0]
            return self._stopped(idx, req[1], end)
        _, new_bs, resume, why = req
        self.oom_state = policy.decide(self.oom_state, policy.Resumed(new_bs))[0]
        kind = "fallback" if new_bs != bs else "retry"
        self.event(kind, notify=kind, message=f"{name}: restarting at device_batch_size={new_bs} (was {bs}) "
                   f"from {'the newest checkpoint' if resume == 'latest' else 'step ' + str(resume)} ({why})",
                   stage=name, from_bs=bs, to_bs=new_bs, resume=resume, why=why, ckpt_step=ckpt_step)
        return stage_argv(stage, new_bs, resume), new_bs


def spawn_supervisor(rd: RunDir, extra_args: list[str] = (), python: str | None = None) -> subprocess.Popen:
    """Start a detached supervisor for `rd`: new session, no terminal, stdio to run_dir/supervisor.log."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    log_fd = os.open(rd.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen([python or sys.executable, "-m", "nanotui.runtime.supervisor", str(rd.path),
                                 *extra_args],
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT, env=env,
                                cwd=str(rd.path), start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nanotui-supervisor")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--step", type=int)
    ap.add_argument("--device-bs", type=int)
    a = ap.parse_args(argv)
    rd = RunDir(a.run_dir)
    try:
        rd.read_plan()
    except Exception as e:
        print(f"error: {e}", flush=True)
        return 2
    problem = rd.state_problem()
    if problem:  # resuming from a blank state would silently restart the pipeline at its first stage
        print(f"error: run {rd.run_id}: {problem}; restore that file or start a new run", flush=True)
        return 2
    try:
        lock_fd = acquire_lock(rd)
    except SupervisorBusy as e:
        print(f"error: {e}", flush=True)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sup = Supervisor(rd, resume=a.resume, resume_step=a.step, resume_device_bs=a.device_bs)

    def on_term(signum, frame):  # e.g. a system shutdown: stop the stage cleanly (it checkpoints), then exit
        sup.request = ("stop", "supervisor received SIGTERM")
    signal.signal(signal.SIGTERM, on_term)
    print(f"supervisor pid {os.getpid()} for run {rd.run_id}", flush=True)
    try:
        return sup.run()
    finally:
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())

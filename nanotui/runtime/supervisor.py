"""The supervisor of one run: runs its stages, tails their logs, applies the OOM and divergence policies.

Re-adoption and exit codes (docs/CONTRACTS.md "Supervisor"): each stage attempt runs under `stagewrap.py`, which
leads the attempt's process group and writes the child's exit status to `logs/<attempt>.exit`. The child's output
goes straight into `logs/<attempt>.log`, so the supervisor only tails files. If the supervisor dies (even SIGKILL),
the stage keeps running; a new supervisor (`nanotui resume`, or `python -m nanotui.runtime.supervisor RUN_DIR`)
finds `stage_pid` (+ its create time, against pid reuse) alive in state.json, re-parses the log, keeps tailing,
and learns the end from the `.exit` file. The whole process tree of a stage (torchrun ranks run in sessions of
their own) is remembered in state.json and verified gone after every attempt.
Run as `python -m nanotui.runtime.supervisor RUN_DIR [--resume [--step S] [--device-bs B]]`; the process around it
(spawning, the run's lock, never-raising output, the command line) is nanotui/runtime/daemon.py.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from nanotui.core import oom as policy
from nanotui.core.argvflags import flag_value
from nanotui.core.events import (BatchChoice, BatchProbe, CheckpointSaved, Config, Divergence, Error, Oom, Step,
                                 WandbInfo)
from nanotui.core.launchers import wraps_child_error
from nanotui.core.logparse import LogParser
from nanotui.core.runstate import (EXIT_DIVERGED, EXIT_OOM, EXIT_STOPPED, CheckpointRef, OomStopRequest,
                                   RestartRequest, RollbackRequest, RunState, StopRequest)
from nanotui.core.wandbinfo import wandb_update
from nanotui.runtime import oom_fallback, probes, procs, rollback, webhook
from nanotui.runtime.control import ControlServer
from nanotui.runtime.daemon import (LOCK_SETTLE_S, SupervisorBusy, acquire_lock,  # noqa: F401 (re-exported)
                                   run_main, spawn_supervisor)
from nanotui.runtime.gpu import open_backend
from nanotui.runtime.recorder import Recorder
from nanotui.runtime.rundir import RunDir, shown
from nanotui.runtime.tail import LogTailer

DEFAULT_STOP_TIMEOUT = 120.0  # seconds between SIGTERM and SIGKILL (a d20 checkpoint takes a while)
POLL = 0.2
SIGNAL_SETTLE_S = 2.0   # after our own SIGTERM/SIGHUP: how long to look for the stage having got one too
OOM_TAIL_LINES = 40     # an OOM decides the attempt's fate only when its signature is among its last lines
TREE_EVERY_S = 1.0      # how often the stage's process tree is re-read (and saved for a later re-adoption)


@dataclass
class AttemptEnd:
    exit_code: int | None        # None: the attempt vanished without an exit file (killed with its wrapper)
    signal: int | None
    oom: Oom | None              # an OOM signature at the end of the attempt (None if an OOM line was followed
    error: str | None            # by another error): `error` is the last error the attempt printed
    last_step: int | None
    last_line: str | None = None
    divergence: Divergence | None = None  # the trainer's `Divergence:` trailer (exit 5)


def stage_argv(stage: dict, device_bs: int | None, resume) -> list[str]:
    """The stage's argv, with the batch size and resume point the supervisor chose (training stages only)."""
    if not stage.get("trains"):
        return list(stage["argv"])
    if stage.get("dialect"):  # an upstream script: its own flag spellings, an integer resume step (or none)
        from nanotui.runtime.dialects import attempt_argv, stage_dialect
        if stage_dialect(stage) is not None:
            return attempt_argv(stage, device_bs, resume)[0]
    from nanotui.core.plan import argv_with
    return argv_with(stage, device_bs=device_bs, resume=resume)


def _int_or_none(v):
    if isinstance(v, bool):
        return None
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
        self.state: RunState = rd.load_state()
        self.resume = resume
        self.resume_step = resume_step
        self.resume_device_bs = resume_device_bs
        self.stop_timeout = float(self.plan.get("stop_timeout", DEFAULT_STOP_TIMEOUT))
        self.gpu_interval = float(self.plan.get("gpu_interval", 1.0))
        grace = self.state.grace
        if grace is None:
            grace = self.plan.get("grace")
        self.oom_state = policy.OomState(grace=policy.parse_grace(
            grace if grace is not None else policy.DEFAULT_GRACE_S), scratch_consent=bool(self.plan.get("grace_given")))
        self.lock = threading.RLock()
        self.request: StopRequest | RestartRequest | OomStopRequest | None = None
        self.own_signal: str | None = None   # set when the supervisor itself got SIGTERM/SIGHUP
        self.server: ControlServer | None = None
        self.gpu = gpu_backend
        self._gpu_stop = threading.Event()
        self.notifier = webhook.for_run(rd.run_id, self.plan)   # notify_url: POSTs done/crash/fallback/...
        self.recorder = Recorder(rd, self.state, self.lock, self._broadcast, on_event=self.notifier)

    # ---- state and events (through the Recorder: a full disk is reported, never fatal) ----------------
    def _broadcast(self, msg: dict) -> None:
        if self.server:
            self.server.broadcast(msg)

    def save_state(self, force: bool = True) -> None:
        self.recorder.save(force)

    def event(self, type: str, notify: str | None = None, message: str | None = None, **fields) -> dict:
        return self.recorder.event(type, notify, message, **fields)

    def set_phase(self, phase: str, reason: str | None = None) -> None:
        self.state.phase = phase
        if reason is not None or phase in ("running", "starting"):
            self.state.reason = reason
        self.save_state()

    def stage_rec(self, idx: int):
        return self.state.stages[idx]

    # ---- control commands (called on control threads) -----------------------------------------
    def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        args = {k: v for k, v in req.items() if k != "cmd"}
        if cmd == "status":
            with self.lock:
                return {"ok": True, "state": self.state.to_json(), "summary": self.rd.status_summary()}
        if cmd not in ("stop", "fallback", "retry", "resume", "set_grace"):
            return {"ok": False, "error": f"unknown command {cmd!r}; expected status, stop, fallback, retry, "
                                          f"resume, set_grace or subscribe"}
        self.event("command", cmd=cmd, args=args)
        with self.lock:
            waiting = self.oom_state.phase == "waiting"
            if cmd == "stop":
                self.request = StopRequest(args.get("reason") or "stopped by user")
                return {"ok": True, "message": "stopping: the stage gets SIGTERM, then SIGKILL after "
                                               f"{self.stop_timeout:g}s"}
            if cmd == "set_grace":
                try:
                    grace = policy.parse_grace(args.get("grace"))
                except ValueError as e:
                    return {"ok": False, "error": str(e)}
                self._apply_policy(policy.SetGrace(grace, time.time()))
                self.state.grace = grace
                if self.state.pending_oom and self.oom_state.pending:
                    self.state.pending_oom.deadline = self.oom_state.pending.deadline
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
                self.request = RestartRequest(b, "latest", f"fallback to device_batch_size={b} requested")
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
                b = int(b) if b is not None else self.state.device_bs
                self.request = RestartRequest(b, int(step) if step is not None else "latest", "resume requested")
                self.oom_state = policy.decide(self.oom_state, policy.Resumed(b))[0]
                return {"ok": True, "device_bs": b, "step": step if step is not None else "latest"}
        return {"ok": False, "error": "unreachable"}

    def _current_trains(self) -> bool:
        idx = self.state.stage_index
        return idx < len(self.stages) and bool(self.stages[idx].get("trains"))

    def _apply_policy(self, ev) -> str | None:
        """Feed the OOM policy; turn its actions into requests/notifications. Returns a Reject reason."""
        with self.lock:
            self.oom_state, actions = policy.decide(self.oom_state, ev)
            for a in actions:
                if isinstance(a, policy.Reject):
                    return a.reason
                if isinstance(a, policy.Restart):
                    self.request = RestartRequest(a.device_bs, a.from_step, "oom policy")
                elif isinstance(a, policy.Stop):
                    self.request = OomStopRequest(a.reason)
                elif isinstance(a, policy.Rollback):
                    self.request = RollbackRequest(a.from_step, a.skips, a.onset, a.kind, a.why)
                elif isinstance(a, policy.Notify) and a.kind in ("oom", "divergence"):
                    # fallback/retry/stopped are announced with their events by the caller
                    if self.server:
                        self.server.broadcast({"notify": a.kind, "message": a.message})
        return None

    def on_signal(self, signum: int) -> None:
        """Our own SIGTERM (logout, shutdown): stop the stage cleanly — with no second SIGTERM if the
        stage got one from the same source — then exit."""
        name = signal.Signals(signum).name
        if self.own_signal is None:
            self.own_signal = name
            with self.lock:
                if not isinstance(self.request, StopRequest):
                    self.request = StopRequest(f"supervisor received {name}")

    # ---- GPU sampling -------------------------------------------------------------------------
    def _gpu_loop(self) -> None:
        if self.gpu is None:
            self.gpu = open_backend()
        while not self._gpu_stop.wait(self.gpu_interval):
            pid = self.state.stage_pid
            pids = procs.tree_pids(pid) if pid else []
            try:
                self.rd.append_gpu(self.gpu.sample(pids))
            except Exception as e:  # never let sampling (or a full disk) take the supervisor down
                print(f"gpu sample failed: {e}", file=sys.stderr, flush=True)

    # ---- one attempt --------------------------------------------------------------------------
    def _stage_env(self, stage: dict, argv: list[str]) -> dict:
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (stage.get("env") or {}).items()})
        env["PYTHONUNBUFFERED"] = "1"
        env.update(probes.probe_env(stage, argv, self.plan, probes.last_gpu_sample(self.rd)))
        # the run's own base dir (run.json), not whatever NANOCHAT_BASE_DIR the supervisor inherited: a resume from
        # another shell, or two runs created in the same second under different bases (same run id), must never
        # put their checkpoints in one directory. A stage's own env setting still wins.
        plan_base = str(self.plan.get("base_dir") or "")
        if plan_base and "NANOCHAT_BASE_DIR" not in (stage.get("env") or {}):
            env["NANOCHAT_BASE_DIR"] = plan_base
        # nanochat's checkpoint lineage: a stage resumes, loads and prunes only checkpoints of this run
        # (a training stage of a whole script keeps the script's lineage: its stages load each other's models)
        env["NANOCHAT_RUN_ID"] = self.plan.get("lineage_id") or self.rd.run_id
        # torchrun's agent SIGKILLs its ranks this long after forwarding a SIGTERM: the same as ours
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(max(1, math.ceil(self.stop_timeout)))
        from nanotui.runtime.scripts import shim_env  # a whole bash script: its training stages come back to us
        env.update(shim_env(self.rd.path, stage, env))
        return env

    def _spawn(self, idx: int, argv: list[str], device_bs: int | None):
        """Start an attempt; returns (proc, log, exit_file), or None when it could not start (stage failed)."""
        stage = self.stages[idx]
        argv = rollback.with_skips(argv, stage, self.state)  # a divergence rollback's data skip list, if any
        rec = self.stage_rec(idx)
        rec.attempts = int(rec.attempts or 0) + 1
        attempt = rec.attempts
        log = self.rd.log_path(idx, stage["name"], attempt)
        exit_file = RunDir.exit_path(log)
        for stale in (exit_file, Path(f"{exit_file}.signals")):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        if self.state.stage_index != idx or self.state.stage != stage["name"]:
            self.state.step = self.state.total = None
        self.state.stage_index, self.state.stage, self.state.attempt = idx, stage["name"], attempt
        try:
            proc = procs.spawn_stage(argv, env=self._stage_env(stage, argv), cwd=self.plan.get("cwd"), log_path=log,
                                     exit_path=exit_file)
        except OSError as e:
            where = f" in {self.plan.get('cwd')}" if isinstance(e, FileNotFoundError) and self.plan.get("cwd") \
                and not os.path.isdir(self.plan["cwd"]) else ""
            reason = f"{stage['name']}: cannot start the stage{where}: {e.strerror or e}"
            rec.state, rec.reason, rec.ended = "failed", reason, time.time()
            self.state.stage_pid = None
            self.state.pending_oom = None
            self.set_phase("failed", reason)
            self.event("spawn_failed", stage=stage["name"], index=idx, attempt=attempt, error=str(e))
            self.event("failed", notify="failed", message=reason, stage=stage["name"], reason=reason)
            return None
        rec.state, rec.started, rec.ended, rec.exit_code, rec.device_bs, rec.reason = \
            "running", rec.started or time.time(), None, None, device_bs, None
        st = self.state
        st.stage_pid, st.stage_pid_created = proc.pid, procs.create_time(proc.pid)
        st.device_bs, st.log, st.reason, st.pending_oom = device_bs, str(log.relative_to(self.rd.path)), None, None
        st.phase = "running"
        st.extra["stage_tree"] = [[proc.pid, st.stage_pid_created]] if st.stage_pid_created else []
        st.seq_len = _int_or_none(flag_value(argv, "max_seq_len")) or st.seq_len
        st.wandb_run = flag_value(argv, "run") or st.wandb_run
        self.save_state()
        self.event("stage_started", stage=stage["name"], index=idx, attempt=attempt, argv=argv,
                   device_bs=device_bs, log=st.log, pid=proc.pid)
        if stage.get("dialect") and attempt == 1:   # an upstream script: its dialect, and a save nanotui added
            from nanotui.runtime.dialects import dialect_event
            self.event("dialect", **dialect_event(stage))
        return proc, log, exit_file

    def _stage_got_signal(self, exit_file: Path) -> bool:
        """The stage's wrapper noted a TERM/INT/HUP (sent by someone else, e.g. a logout hitting the session)."""
        try:
            return bool(Path(f"{exit_file}.signals").read_text().strip())
        except OSError:
            return False

    def _remember_tree(self, pid: int) -> list:
        snap = procs.merge_snapshots([tuple(x) for x in self.state.extra.get("stage_tree") or []],
                                     procs.tree_snapshot(pid))
        self.state.extra["stage_tree"] = [[p, ct] for p, ct in snap]
        return snap

    def _watch(self, idx: int, log: Path, exit_file: Path, proc: subprocess.Popen | None,
               catch_up: bool = False) -> AttemptEnd:
        """Tail the attempt's log into the parser until it ends; honour stop/restart requests meanwhile."""
        stage = self.stages[idx]
        parser = LogParser(kind=stage.get("log_kind"))
        tailer = LogTailer(log)
        pid, created = self.state.stage_pid, self.state.stage_pid_created
        tail = deque(maxlen=OOM_TAIL_LINES)   # the attempt's last lines (OOM must be at the end)
        last = {"oom": None, "oom_at": -1, "error": None, "error_at": -1, "n": 0}
        term_sent_at: float | None = None
        stop_seen_at: float | None = None
        killed = False
        tree_at = 0.0
        quiet = catch_up  # while re-reading an adopted log, don't repeat its events
        recorder = probes.ProbeRecorder(stage)

        def consume(lines: list[str]) -> None:
            for line in lines:
                last["n"] += 1
                if line.strip():
                    tail.append(line)
                if line.startswith("error: ") or line.startswith("Disk full:"):
                    last["error"], last["error_at"] = line.strip(), last["n"]
                for ev in parser.feed(line + "\n"):
                    t = type(ev)
                    if t is Step:
                        self.state.step, self.state.total = ev.step, ev.total
                    elif t is CheckpointSaved:
                        self.state.last_checkpoint = CheckpointRef(stage["name"], ev.step, ev.path)
                        if not quiet:
                            self.event("checkpoint", stage=stage["name"], step=ev.step, path=ev.path)
                    elif t is Oom:
                        last["oom"], last["oom_at"] = ev, last["n"]
                    elif t is Divergence:
                        last["divergence"] = ev
                    elif t is Error and not wraps_child_error(ev.exc_type):  # torchrun's epilogue: not the cause
                        last["error"], last["error_at"] = f"{ev.exc_type}: {ev.message}", last["n"]
                    elif t is Config and ev.key == "total_batch_size":
                        self.state.total_batch_size = ev.value.get("total_batch_size")
                    elif t is Config and ev.key == "micro_batch":
                        self.state.seq_len = ev.value.get("seq_len") or self.state.seq_len
                    elif t is BatchProbe or t is BatchChoice:
                        self._on_probe(idx, recorder.observe(ev), quiet)
                    elif t is WandbInfo:   # run URL for status/header; a failed W&B start is a notice
                        self._on_wandb(stage["name"], ev, quiet)

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
            now = time.monotonic()
            if now - tree_at >= TREE_EVERY_S:
                tree_at = now
                self._remember_tree(pid)
            self.save_state(force=False)
            ended = (proc.poll() is not None) if proc is not None else not procs.pid_matches(pid, created)
            if ended:
                break
            with self.lock:
                req = self.request
            if isinstance(req, (StopRequest, RestartRequest)) and term_sent_at is None:
                if stop_seen_at is None:
                    stop_seen_at = now
                    self._remember_tree(pid)
                external = self._stage_got_signal(exit_file)
                # after our own SIGTERM, give the session-wide signal a moment to show up at the stage
                settling = self.own_signal is not None and now - stop_seen_at < SIGNAL_SETTLE_S
                if external or not settling:
                    why = req.why if isinstance(req, RestartRequest) else req.reason
                    if not external:
                        procs.signal_group(pid, signal.SIGTERM)
                    term_sent_at = now
                    self.event("stopping", stage=stage["name"], why=why, pgid=pid,
                               message=None if not external else "the stage already received a termination "
                               "signal; not sending another (only SIGKILL escalates)")
            if term_sent_at is not None and not killed and now - term_sent_at > self.stop_timeout:
                snap = self._remember_tree(pid)
                procs.signal_group(pid, signal.SIGKILL)
                hit = procs.kill_snapshot(snap)
                killed = True
                self.event("killed", stage=stage["name"], after_s=self.stop_timeout, pids=hit)
            time.sleep(POLL)
        self._reap_tree(stage["name"], pid, term_sent_at)
        # the wrapper writes the exit file before it exits: a short grace for the rename to show is enough
        deadline = time.monotonic() + 0.3
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        consume(tailer.read_lines())
        for line in tailer.flush_partial():
            consume([line])
        tailer.close()
        for ev in parser.flush():
            if isinstance(ev, Oom):
                last["oom"], last["oom_at"] = ev, last["n"]
        try:
            info = json.loads(exit_file.read_text())
            code, sig = info.get("exit_code"), info.get("signal")
        except (OSError, ValueError, AttributeError):
            code, sig = None, None
        # an OOM counts only at the end of the attempt, and only if no other error followed it
        oom = last["oom"]
        if oom is not None and (last["n"] - last["oom_at"] >= OOM_TAIL_LINES or last["error_at"] > last["oom_at"]
                                and not _oomish(last["error"])):
            oom = None
        self.state.extra.pop("stage_tree", None)
        return AttemptEnd(code, sig, oom, last["error"], parser.last_step, tail[-1] if tail else None,
                          last.get("divergence"))

    def _reap_tree(self, name: str, pid: int, term_sent_at: float | None) -> None:
        """The wrapper is gone: make sure nothing of the stage's tree (ranks in other sessions included) lingers.
        Leftovers get SIGTERM, the rest of the stop timeout, then SIGKILL; the result is verified."""
        snap = procs.merge_snapshots([tuple(x) for x in self.state.extra.get("stage_tree") or []])
        left = procs.alive_of(snap)
        if not left and not procs.group_alive(pid):
            return
        self.event("escaped", stage=name, pids=[p for p, _ in left],
                   message=f"{name}: {len(left)} process(es) of the stage outlived it; stopping them")
        limit = self.stop_timeout if term_sent_at is None else self.stop_timeout - (time.monotonic() - term_sent_at)
        still = procs.finish_tree(pid, left, limit, signalled=term_sent_at is not None)
        if still:
            self.event("escaped", stage=name, pids=still,
                       message=f"{name}: processes {still} survive SIGKILL (stuck in the kernel?)")

    def _on_probe(self, idx: int, record: dict | None, quiet: bool) -> None:
        """A stage's `--device_batch_size=auto` probe finished: its choice is the attempt's batch size from now on
        (OOM ladder, resume), and the table goes into state.json (`probes`) and events (`device_bs_probe`)."""
        if record is None:
            return
        if record.get("device_bs"):
            self.state.device_bs = record["device_bs"]
            self.stage_rec(idx).device_bs = record["device_bs"]
        self.state.probes = probes.record_probe(self.state.probes, record)
        self.save_state()
        if not quiet:
            chosen = record.get("device_bs") or "none fits"
            self.event("device_bs_probe", message=f"{record['stage']}: device_batch_size auto -> {chosen}", **record)

    def _on_wandb(self, stage: str, info, quiet: bool) -> None:
        found = wandb_update(self.state.extra, info, stage)
        if found:
            self.save_state()
            if not quiet:
                kind, fields, message = found
                self.event(kind, notify=kind if kind == "wandb_failed" else None, message=message, **fields)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        self.state.supervisor_pid = os.getpid()
        self.recorder.make_reserve()
        if self.state.grace is None:
            self.state.grace = self.oom_state.grace
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
            if self.notifier:
                self.notifier.close()   # bounded: a hanging endpoint delays the exit by its timeout at most

    def _first_action(self):
        """Where to begin: adopt a live attempt, account for one that ended unsupervised, resume, or start."""
        st = self.state
        idx = st.stage_index
        if st.live and procs.pid_matches(st.stage_pid, st.stage_pid_created) and st.log:
            return ("adopt", idx)
        rec = st.record(idx)
        if rec is not None and rec.state == "running" and st.log:
            return ("ended_unsupervised", idx)
        if self.resume:
            return ("resume", idx)
        if st.phase == "done":
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
            log = self.rd.path / self.state.log
            self.event("adopted", stage=self.state.stage, pid=self.state.stage_pid,
                       attempt=self.state.attempt, still_running=(kind == "adopt"))
            end = self._watch(idx, log, RunDir.exit_path(log), proc=None, catch_up=True)
            if self.resume and (end.exit_code != 0):
                next_attempt = self._resume_attempt(idx)
                end = None
        elif kind == "resume":
            while idx < len(self.stages) and self.stage_rec(idx).state == "done":
                idx += 1
            if idx < len(self.stages):
                next_attempt = self._resume_attempt(idx)
        while idx < len(self.stages):
            if end is None:
                if self.stage_rec(idx).state == "done":
                    idx += 1
                    continue
                with self.lock:
                    if isinstance(self.request, StopRequest):
                        return self._stopped(idx, self.request.reason, None)
                argv, bs = next_attempt or self._fresh_attempt(idx)
                next_attempt = None
                stage = self.stages[idx]
                argv, bs, reused = probes.reuse(stage, argv, bs, self.state.probes)
                if reused:
                    self.event("device_bs_reused", stage=stage["name"], device_bs=bs, from_stage=reused["stage"],
                               key=reused["key"], message=f"{stage['name']}: device_batch_size={bs} from the "
                               f"{reused['stage']} probe (same shape)")
                spawned = self._spawn(idx, argv, bs)
                if spawned is None:
                    return 1
                proc, log, exit_file = spawned
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
        self.state.phase, self.state.stage_pid, self.state.reason, self.state.pending_oom = "done", None, None, None
        self.save_state()
        self.event("done", notify="done", message=f"run {self.rd.run_id} finished all {len(self.stages)} stages")
        return 0

    def _carried_bs(self, idx: int) -> tuple[int | None, str | None]:
        """A batch size an earlier stage of this run had to fall back to at the same sequence length (SFT, with no
        sequence length of its own, keeps its batch size). Returns (device_bs, the stage that found it)."""
        stage = self.stages[idx]
        seq, planned = stage.get("seq_len"), stage.get("device_bs")
        if not stage.get("trains") or not seq or not planned:
            return None, None
        found = self.state.carried_bs.get(str(seq))
        if not found or found >= planned:
            return None, None
        total, world = stage.get("total_batch_size"), int(stage.get("world_size") or 1)
        bs = found
        if total:  # the carried size must still divide this stage's total batch: the largest rung <= found
            fits = [b for b in [planned] + policy.fallback_ladder(planned, total, seq, world) if b <= found]
            bs = fits[0] if fits else None
        src = self.state.extra.get("carried_from", {}).get(str(seq))
        return bs, src

    def _fresh_attempt(self, idx: int):
        stage = self.stages[idx]
        bs = stage.get("device_bs")
        carried, src = self._carried_bs(idx)
        if carried is not None:
            bs = carried
            self.event("carried_bs", notify="fallback", stage=stage["name"], device_bs=bs,
                       seq_len=stage.get("seq_len"), from_stage=src,
                       message=f"{stage['name']}: starting at device_batch_size={bs} (planned "
                               f"{stage.get('device_bs')}): {src or 'an earlier stage'} needed it at "
                               f"seq len {stage.get('seq_len')}")
        return stage_argv(stage, bs, None), bs

    def _resume_attempt(self, idx: int):
        stage = self.stages[idx]
        bs = self.resume_device_bs or self.state.device_bs or stage.get("device_bs")
        if self.state.stage_index != idx:
            bs = self.resume_device_bs or self._carried_bs(idx)[0] or stage.get("device_bs")
        step = self.resume_step if self.resume_step is not None else "latest"
        if stage.get("trains"):
            from nanotui.runtime.dialects import resume_words
            self.event("resumed", notify="resumed", message=f"{stage['name']}: resuming from "
                       f"{resume_words(stage, step, self.state.step)} at device_batch_size={bs}",
                       stage=stage["name"], step=step, device_bs=bs)
        else:
            self.event("resumed", notify="resumed", message=f"{stage['name']}: re-running the stage",
                       stage=stage["name"])
        return stage_argv(stage, bs, step), bs

    def _stopped(self, idx: int, reason: str, end: AttemptEnd | None) -> int:
        rec = self.stage_rec(idx)
        rec.state, rec.ended, rec.exit_code, rec.reason = "stopped", time.time(), end.exit_code if end else None, \
            reason
        self.state.stage_pid, self.state.pending_oom = None, None
        if end is not None and end.exit_code not in (EXIT_STOPPED, 0, None) and self.own_signal is None:
            reason += f" (the stage exited with code {end.exit_code})"
        self.state.extra["stop_cause"] = "signal" if self.own_signal else "request"  # core/resumable.py
        self.set_phase("stopped", reason)
        ck = self.state.last_checkpoint
        self.event("stopped", notify="stopped", message=f"{self.stages[idx]['name']}: {reason}",
                   stage=self.stages[idx]["name"], exit_code=end.exit_code if end else None,
                   step=self.state.step, last_checkpoint=ck.to_json() if ck else None)
        return 0

    def _crash_reason(self, name: str, end: AttemptEnd) -> str:
        err = shown(end.error or end.last_line)
        if end.exit_code is None:
            return f"{name}: the stage vanished without an exit code (killed together with its wrapper?)"
        if end.signal:
            return f"{name}: killed by signal {end.signal}" + (f" ({err})" if err else "")
        if end.exit_code == EXIT_STOPPED:
            return f"{name}: stopped (exit 4) without a request from nanotui"
        return f"{name}: exited with code {end.exit_code}" + (f" ({err})" if err else "")

    def _after_attempt(self, idx: int, end: AttemptEnd):
        """Decide what follows an attempt: 'next', (argv, device_bs) to restart, or a supervisor exit code."""
        stage = self.stages[idx]
        name = stage["name"]
        rec = self.stage_rec(idx)
        rec.exit_code, rec.ended = end.exit_code, time.time()
        self.state.stage_pid = None
        with self.lock:
            req, self.request = self.request, None
        if isinstance(req, StopRequest):
            return self._stopped(idx, req.reason, end)
        if isinstance(req, RestartRequest) and end.exit_code != 0:
            bs = req.device_bs
            kind = "retry" if bs == self.state.device_bs else "fallback"
            self.event(kind, notify=kind,
                       message=f"{name}: restarting at device_batch_size={bs} from {req.resume} ({req.why})",
                       stage=name, from_bs=self.state.device_bs, to_bs=bs, step=req.resume, why=req.why)
            return stage_argv(stage, bs, req.resume), bs
        if end.exit_code == 0:
            rec.state = "done"
            st = self.state
            if isinstance(st.total, int) and isinstance(st.step, int):
                st.step = st.total  # step lines count from 0: a finished stage has done `total` steps
            planned, seq = stage.get("device_bs"), stage.get("seq_len")
            if stage.get("trains") and seq and planned and st.device_bs and st.device_bs < planned:
                st.carried_bs[str(seq)] = st.device_bs  # later stages at this seq len start there
                st.extra.setdefault("carried_from", {})[str(seq)] = name
            self.save_state()
            self.event("stage_done", notify="stage_done", message=f"{name} done", stage=name, index=idx,
                       step=st.step)
            return "next"
        if end.exit_code == EXIT_DIVERGED and end.divergence is not None and stage.get("trains"):  # our trainer's
            return rollback.handle(self, idx, end)
        is_oom = end.exit_code == EXIT_OOM or (end.oom is not None and end.exit_code not in (EXIT_STOPPED,))
        if is_oom and stage.get("trains"):
            return oom_fallback.handle(self, idx, end)
        if is_oom:
            reason = f"{name}: out of memory (exit {end.exit_code}); this stage has no batch size to lower"
        else:
            reason = self._crash_reason(name, end)
        rec.state, rec.reason = "failed", reason
        self.state.pending_oom = None
        self.set_phase("failed", reason)
        self.event("crashed", notify="crashed", message=reason, stage=name, exit_code=end.exit_code,
                   signal=end.signal, error=shown(end.error), step=end.last_step)
        self.event("failed", notify="failed", message=reason, stage=name, reason=reason)
        return 1


def _oomish(text: str | None) -> bool:
    t = (text or "").lower()
    return "out of memory" in t or "outofmemory" in t


def main(argv: list[str] | None = None) -> int:
    return run_main(Supervisor, argv)


if __name__ == "__main__":
    sys.exit(main())

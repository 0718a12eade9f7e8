"""The `nanotui` command line: start/run detached runs, attach, inspect (ls/status/logs/ckpts), stop, resume, doctor."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from nanotui.core.runstate import StateError, make_event
from nanotui.runtime.launch import StartError
from nanotui.runtime.rundir import RunDir, RunNotFound, default_base_dir, list_runs, resolve_run, shown

from nanotui.core.notify import NOTICE_KINDS as NOTIFY_KINDS  # the same kinds the dashboard announces


class UsageError(Exception):
    """A user mistake: printed as one `error: ...` line, exit 2."""


# ------------------------------------------------------------------------------------------- helpers
def _base_dir() -> Path:
    return default_base_dir()


def _resolve(run_id: str | None) -> RunDir:
    try:
        return resolve_run(_base_dir(), run_id)
    except RunNotFound as e:
        raise UsageError(str(e)) from None


def _grace_arg(value: str | None):
    if value is None:
        return None
    from nanotui.core.oom import parse_grace
    try:
        return parse_grace(value)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _fmt_step(s: dict) -> str:
    if s.get("step") is None:
        return "-"
    return f"{s['step']}/{s['total']}" if s.get("total") else str(s["step"])


def _status_line(s: dict) -> str:
    bits = [f"{s['run_id']}", s["state"], f"stage {s.get('stage') or '-'} "
            f"({(s.get('stage_index') or 0) + 1}/{s.get('stages_total') or '?'})", f"step {_fmt_step(s)}"]
    if s.get("device_bs"):
        bits.append(f"B={s['device_bs']}")
    ck = s.get("last_checkpoint")
    if ck:
        bits.append(f"ckpt {ck.get('stage')}@{ck.get('step')}")
    p = s.get("pending_oom")
    if p:
        dl = p.get("deadline")
        bits.append(f"OOM at B={p.get('device_bs')}: ladder {p.get('ladder')}"
                    + (f", auto in {max(0, dl - time.time()):.0f}s" if dl else ", waiting for a command"))
    if s.get("reason") and not p:
        bits.append(s["reason"])
    if s.get("wandb_url") or s.get("wandb_error"):
        bits.append(f"W&B {s['wandb_url']}" if s.get("wandb_url") else f"W&B off: {s['wandb_error']}")
    if s.get("problem"):  # a corrupt state.json, or a condition the supervisor reports (disk full)
        live_issue = s["problem"].startswith(("disk full", "write error"))
        bits.append(s["problem"] if live_issue else f"{s['problem']}: this status may be wrong")
    return " | ".join(bits)


def notify_terminal(message: str, stream=None) -> None:
    """Terminal bell plus an OSC 9 desktop notification (off with NANOTUI_NO_NOTIFY=1)."""
    from nanotui.core.notify import notifications_enabled, terminal_notification
    if not notifications_enabled(os.environ):
        return
    stream = stream or sys.stdout
    stream.write(terminal_notification(message))
    stream.flush()


# ------------------------------------------------------------------------------------------- commands
def cmd_start(a) -> int:
    from nanotui.core.plan import collect_overrides
    from nanotui.runtime.launch import profile_plan
    from nanotui.usercli import start_profile
    a.profile = start_profile(a.profile)   # --profile, NANOTUI_PROFILE or the config file
    flags = {"DEVICE_BS": a.device_bs, "SEQ_LEN": a.seq_len, "NPROC_PER_NODE": a.nproc, "WANDB_RUN": a.wandb_run}
    plan = profile_plan(a.profile, collect_overrides(os.environ, flags), a.stages, a.set, python=sys.executable)
    if getattr(a, "dry_run", False):   # the preflight alone: nothing started, nothing written
        from nanotui.runtime.preflight import dry_run
        return dry_run(plan, _base_dir())
    return _start_plan(plan, a)


def _detected_gpu() -> dict | None:
    """The first GPU NVML reports (name, mem_total bytes), or None."""
    try:
        from nanotui.runtime.gpu import open_backend
        backend = open_backend()
        gpus = backend.sample([]).get("gpus") if backend.available else None
        return gpus[0] if gpus else None
    except Exception:
        return None


def _positive_int(value, flag: str):
    """None, or `value` as a positive int; ValueError (one line) otherwise."""
    if value is None:
        return None
    if not str(value).strip().isdigit() or int(value) < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


def cmd_plan(a) -> int:
    """`nanotui plan --profile P [--gpu NAME] [--headroom F] [--depth N] [--vocab-size V]`: predicted memory per
    DEVICE_BS of each training stage."""
    from nanotui.core.plan import PlanError, build_plan, collect_overrides
    from nanotui.core.vramplan import choose_gpu, format_plan, plan_vram
    from nanotui.usercli import start_profile
    a.profile = start_profile(a.profile)   # --profile, NANOTUI_PROFILE or the config file
    flags = {"DEVICE_BS": a.device_bs, "SEQ_LEN": a.seq_len, "NPROC_PER_NODE": a.nproc}
    try:
        plan = build_plan(a.profile, collect_overrides(os.environ, flags), python=sys.executable).to_dict()
        try:
            headroom = float(a.headroom) if a.headroom is not None else 0.10
        except ValueError:
            headroom = float("nan")
        if not 0 <= headroom < 1:
            raise ValueError(f"--headroom must be a fraction in [0, 1), got {a.headroom}")
        depth, vocab = _positive_int(a.depth, "--depth"), _positive_int(a.vocab_size, "--vocab-size")
        gpu = choose_gpu(a.gpu, None if a.gpu else _detected_gpu(), a.profile)
        explicit = a.device_bs is not None or bool(os.environ.get("DEVICE_BS"))
        tables = plan_vram(plan, gpu, headroom, depth=depth, vocab_size=vocab,
                           keep_chosen=explicit)   # an explicit DEVICE_BS keeps its row
    except (PlanError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else "bad --headroom") from None
    if a.json:
        print(json.dumps({"profile": a.profile, "gpu": gpu.name, "capacity_gib": gpu.capacity_gib,
                          "stages": [t.to_dict() for t in tables]}, indent=2))
    else:
        print("\n".join(format_plan(tables, a.profile)))
    unfit = [t.stage for t in tables if t.chosen is None]
    if unfit:   # nothing fits: a start with this plan would run out of memory
        print(f"error: nothing fits for {', '.join(unfit)} on {gpu.name}; use a shorter --seq-len, a smaller model "
              f"or a bigger GPU", file=sys.stderr)
        return 1
    return 0


def cmd_run(a) -> int:
    from nanotui.core.plan import PlanError
    from nanotui.runtime.scripts import run_plan
    cmd = list(a.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        plan, notes = run_plan(cmd, str(_base_dir()), os.getcwd())  # the script's dialect; shell scripts: stages
    except PlanError as e:
        raise UsageError(str(e)) from None
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise UsageError(f"command not found: {cmd[0]}")
    from nanotui.runtime import settings
    try:  # the config file's W&B settings reach a supervised script through WANDB_RUN/WANDB_PROJECT/...
        settings.apply_to_plan(plan, command=True)
    except settings.ConfigError as e:
        raise UsageError(str(e)) from None
    for note in notes:
        print(note)
    return _start_plan(plan, a)


def _start_plan(plan: dict, a) -> int:
    from nanotui.runtime.launch import start_plan
    from nanotui.runtime.preflight import preflight_or_refuse
    from nanotui.usercli import check_notify_url
    grace = _grace_arg(a.grace)
    if check_notify_url(getattr(a, "notify_url", None)):
        plan["notify_url"] = a.notify_url   # else NANOTUI_NOTIFY_URL / the config file, read by the supervisor
    preflight_or_refuse(plan, _base_dir())   # refusals: StartError, one line each; warnings printed
    rd, pid = start_plan(plan, _base_dir(), cwd=os.getcwd(), grace=grace,
                         stop_timeout=getattr(a, "stop_timeout", None), preflight=False)
    print(f"started run {rd.run_id} (supervisor pid {pid}); it keeps running if you log out.")
    print(f"  watch: nanotui attach   status: nanotui status   stop: nanotui stop   dir: {rd.path}")
    if getattr(a, "attach", False):
        return _attach(rd)
    return 0


def cmd_attach(a) -> int:
    base = _base_dir()
    if a.run:
        rd = _resolve(a.run)
    else:
        runs = list_runs(base)
        if not runs:
            if sys.stdout.isatty() and _dashboard() is not None:
                return _dashboard()(None, base)
            raise UsageError("no run to attach to; start one with `nanotui start --profile cpu-demo` "
                             "(or `nanotui demo`)")
        rd = _resolve(None)
    return _attach(rd)


def _dashboard():
    try:
        from nanotui.tui.app import run_dashboard
        return run_dashboard
    except Exception:
        return None


def _attach(rd: RunDir) -> int:
    if sys.stdout.isatty() and sys.stdin.isatty() and not os.environ.get("NANOTUI_PLAIN"):
        dash = _dashboard()
        if dash is not None:
            return int(dash(rd.path, _base_dir()) or 0)
    return plain_attach(rd)


def plain_attach(rd: RunDir, interval: float = 1.0, out=None) -> int:
    """A live plain-text status (no TUI): one line per change, bell + OSC 9 on important events, until Ctrl-C."""
    out = out or sys.stdout
    stop = threading.Event()

    def listen():
        from nanotui.runtime.control import ControlClient, ControlError
        while not stop.is_set():
            try:
                for msg in ControlClient(rd, timeout=2.0).subscribe(timeout=0.5):
                    if stop.is_set():
                        return
                    kind = msg.get("notify")
                    if kind:
                        text = shown(msg.get("message", "")) or ""
                        out.write(f"[{kind}] {text}\n")
                        if kind in NOTIFY_KINDS:
                            notify_terminal(text or kind, out)
                        out.flush()
            except (ControlError, OSError, ValueError):
                pass
            if stop.wait(1.0):
                return

    threading.Thread(target=listen, daemon=True).start()
    last = None
    try:
        while True:
            s = rd.status_summary()
            line = _status_line(s)
            if line != last:
                out.write(line + "\n")
                out.flush()
                last = line
            if s["state"] in ("done", "failed", "stopped", "corrupt") and not s["supervisor_alive"]:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        out.write("\ndetached; the run goes on (nanotui attach to come back)\n")
    finally:
        stop.set()
    return 0


def cmd_ls(a) -> int:
    runs = list_runs(_base_dir())
    if a.json:
        print(json.dumps([r.status_summary() for r in runs], indent=1))
        return 0
    if not runs:
        print(f"no runs in {_base_dir() / 'runs'}")
        return 0
    print(f"{'RUN':32} {'STATE':8} {'STAGE':14} {'STEP':>13} {'B':>3}  SUPERVISOR")
    for r in runs:
        s = r.status_summary()
        print(f"{s['run_id']:32} {s['state']:8} {str(s.get('stage') or '-'):14} {_fmt_step(s):>13} "
              f"{str(s.get('device_bs') or '-'):>3}  {'alive' if s['supervisor_alive'] else '-'}")
    return 0


def cmd_status(a) -> int:
    rd = _resolve(a.run)
    s = rd.status_summary()
    st = rd.read_state()
    probes = st.get("probes") or []   # --device_batch_size=auto tables (nanotui/runtime/probes.py)
    rollbacks = st.get("rollbacks") or []  # divergence rollbacks (nanotui/runtime/rollback.py)
    from nanotui.runtime.scripts import substage_lines, substages  # a whole script's training stages
    if a.json:
        print(json.dumps(dict(s, probes=probes, substages=substages(rd), rollbacks=rollbacks), indent=1))
    else:
        print(_status_line(s))
        for line in substage_lines(rd):
            print(line)
        from nanotui.core.divergence import format_rollbacks
        from nanotui.core.vramplan import format_probes
        for line in format_probes(probes) + format_rollbacks(rollbacks):
            print(line)
    return 0


def cmd_logs(a) -> int:
    from nanotui.runtime.tail import LogTailer, read_tail
    if a.bytes < 1:
        raise UsageError(f"--bytes must be a positive number of bytes, got {a.bytes}")
    rd = _resolve(a.run)
    log = rd.current_log()
    if log is None:
        print("no logs yet", file=sys.stderr)
        return 0
    lines, offset = read_tail(log, a.bytes)
    for line in lines:
        print(line)
    if not a.follow:
        return 0
    tailer = LogTailer(log, offset=offset)
    try:
        while True:
            new = tailer.read_lines()
            for line in new:
                print(line, flush=True)
            cur = rd.current_log()
            if cur is not None and cur != log:
                for line in tailer.read_lines() + tailer.flush_partial():
                    print(line, flush=True)
                tailer.close()
                log, tailer = cur, LogTailer(cur)
                print(f"==> {cur.name} <==", flush=True)
                continue
            if not new:
                # over when nothing can write any more: no supervisor, and no stage outliving a dead one
                if not rd.supervisor_alive() and rd.status_summary()["state"] != "running":
                    for line in tailer.read_lines() + tailer.flush_partial():
                        print(line, flush=True)
                    return 0
                time.sleep(0.25)
    except KeyboardInterrupt:
        return 0


def cmd_stop(a) -> int:
    from nanotui.runtime import procs
    from nanotui.runtime.control import ControlClient, ControlError
    rd = _resolve(a.run)
    if rd.supervisor_alive():
        try:
            reply = ControlClient(rd).request("stop")
        except ControlError as e:
            raise UsageError(str(e)) from None
        if not reply.get("ok"):
            raise UsageError(reply.get("error", "stop refused"))
        print(f"stopping {rd.run_id}: {reply.get('message', '')}")
        if a.no_wait:
            return 0
        timeout = float(rd.read_plan().get("stop_timeout", 120)) + 15
        deadline = time.monotonic() + timeout
        while rd.supervisor_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(_status_line(rd.status_summary()))
        return 0
    try:
        st = rd.load_state()
    except StateError as e:
        raise UsageError(f"cannot stop run {rd.run_id}: {e}; restore that file") from None
    pid, created = st.stage_pid, st.stage_pid_created
    if pid and procs.pid_matches(pid, created):
        snap = [tuple(x) for x in st.extra.get("stage_tree") or [] if isinstance(x, list) and len(x) == 2]
        how = procs.stop_tree(int(pid), snap, timeout=float(rd.read_plan().get("stop_timeout", 120)))
        st = rd.load_state()
        st.phase, st.reason, st.stage_pid = "stopped", "stopped by user (no supervisor was running)", None
        st.extra.pop("stage_tree", None)
        rec = st.record()
        if rec is not None:
            rec.state, rec.reason = "stopped", st.reason
        rd.write_state(st)
        rd.append_event(**make_event("stopped", message="stopped by user without a supervisor", pgid=pid, how=how))
        print(f"stopped {rd.run_id}: process tree of {pid} {how}")
        return 0
    print(f"{rd.run_id} is not running ({rd.status_summary()['state']})")
    return 0


def cmd_resume(a) -> int:
    from nanotui.runtime.control import ControlClient, ControlError
    if a.all_unfinished:
        if a.run or a.step is not None or a.device_bs is not None:
            raise UsageError("--all-unfinished resumes every interrupted run as it was; give no run, --step "
                             "or --device-bs with it")
        from nanotui.usercli import resume_all_unfinished
        return resume_all_unfinished()
    rd = _resolve(a.run)
    if a.step is not None and a.step < 0:
        raise UsageError("--step must be >= 0")
    if a.device_bs is not None and a.device_bs < 1:
        raise UsageError("--device-bs must be a positive integer")
    if rd.supervisor_alive() and not rd.state_problem():
        st = rd.read_state()
        if st.get("phase") != "waiting":
            raise UsageError(f"run {rd.run_id} already has a supervisor (pid {st.get('supervisor_pid')}); "
                             f"use `nanotui attach` or `nanotui stop` first")
        args = {k: v for k, v in (("step", a.step), ("device_bs", a.device_bs)) if v is not None}
        try:
            reply = ControlClient(rd).request("resume", **args)
        except ControlError as e:
            raise UsageError(str(e)) from None
        if not reply.get("ok"):
            raise UsageError(reply.get("error", "resume refused"))
        print(f"resuming {rd.run_id}")
        return 0
    from nanotui.runtime.launch import resume_run
    pid = resume_run(rd, a.step, a.device_bs, _grace_arg(a.grace))
    print(f"resumed {rd.run_id} (supervisor pid {pid}): {_status_line(rd.status_summary())}")
    return 0


def cmd_ckpts(a) -> int:
    from nanotui.core import ckpts
    base = _base_dir()
    subdirs, rd = None, None
    if a.run or list_runs(base):
        rd = _resolve(a.run)
        subdirs = {s.get("ckpt_subdir") for s in rd.read_plan().get("stages", []) if s.get("ckpt_subdir")}
    infos = ckpts.discover(str(base))
    if subdirs:
        infos = [c for c in infos if f"{c.stage}_checkpoints/{c.tag}" in subdirs] or infos
    if a.json:
        print(json.dumps([dict(c.to_dict(), this_run=rd is not None and c.run_id == rd.run_id) for c in infos],
                         indent=1))
        return 0
    if not infos:
        print(f"no checkpoints under {base}")
        return 0
    mine = [c for c in infos if rd is None or c.run_id == rd.run_id]
    others = [c for c in infos if c not in mine]
    if rd is not None:
        print(f"checkpoints of run {rd.run_id} (the only ones it resumes from or loads):")
    print(f"{'STAGE':8} {'TAG':8} {'STEP':>7} {'STATUS':11} {'SIZE':>10} {'VAL_BPB':>8} {'B':>3}  NOTE")
    for c in mine:
        print(_ckpt_row(c, c.reason))
    if not mine:
        print("  (none yet)")
    if others:
        print(f"other runs' checkpoints in the same directories (never resumed by {rd.run_id}; to continue one on "
              f"purpose, resume that run with `nanotui resume RUN`):")
        for c in others:
            print(_ckpt_row(c, f"other run {c.run_id}" if c.run_id else "no run id (upstream or older)"))
    return 0


def _ckpt_row(c, note: str) -> str:
    size = f"{c.size_bytes / 2**20:.1f}M" if c.size_bytes else "-"
    bpb = f"{c.val_bpb:.4f}" if c.val_bpb is not None else "-"
    return (f"{c.stage:8} {c.tag:8} {c.step:>7} {c.status:11} {size:>10} {bpb:>8} {str(c.device_bs or '-'):>3}  "
            f"{shown(note) or ''}")


def cmd_doctor(a) -> int:
    from nanotui.core.plan import PROFILE_NAMES
    from nanotui.runtime.doctor import run_checks
    from nanotui.runtime import settings
    ok, where = True, "--profile"
    try:   # --profile, NANOTUI_PROFILE or the config file, as `start` chooses; else the single-GPU user's 4090
        chosen = settings.effective({"profile": a.profile})["profile"]
        a.profile, where = (chosen.value, chosen.where or chosen.source) if chosen.value else ("4090", "default")
    except settings.ConfigError as e:   # a doctor reports a broken config file instead of refusing to run
        print(f"[FAIL] config: {e}")
        ok, a.profile, where = False, a.profile or "4090", "--profile" if a.profile else "default"
    if a.profile not in PROFILE_NAMES:
        raise UsageError(f"unknown profile {a.profile!r} (from {where}); choose one of: {', '.join(PROFILE_NAMES)}")
    print(f"[info] profile: {a.profile} (from {where})")
    for name, status, detail in run_checks(_base_dir(), profile=a.profile):
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "info"}[status]
        print(f"[{mark}] {name}: {detail}")
        ok &= status != "fail"
    return 0 if ok else 1


def cmd_demo(a) -> int:
    # the offline demo never logs to W&B, whatever the config file says
    a.profile, a.device_bs, a.seq_len, a.nproc, a.wandb_run = "cpu-demo", None, None, None, "dummy"
    a.stages, a.set, a.stop_timeout, a.attach = None, [], None, True
    return cmd_start(a)


def cmd_bare(a) -> int:
    base = _base_dir()
    if sys.stdout.isatty() and sys.stdin.isatty() and not os.environ.get("NANOTUI_PLAIN"):
        dash = _dashboard()
        if dash is not None:
            from nanotui.runtime.rundir import find_active_run
            active = find_active_run(base)
            return int(dash(active.path if active else None, base) or 0)
    a.run = None
    return cmd_attach(a)


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanotui", description="Supervise nanochat training runs that survive SSH drops.")
    p.add_argument("--version", action="version", version=f"nanotui {_version()}")
    sub = p.add_subparsers(dest="command")

    def grace(sp):
        sp.add_argument("--grace", help="OOM grace period: seconds, 0 = act at once, off = wait for a command "
                                        "(default 60)")

    sp = sub.add_parser("start", help="start a pipeline from a profile, detached")
    sp.add_argument("--profile", help="4090, 8xh100 or cpu-demo (default: NANOTUI_PROFILE or `profile` in the "
                                      "config file, see `nanotui config`)")
    sp.add_argument("--device-bs")
    sp.add_argument("--seq-len")
    sp.add_argument("--nproc")
    sp.add_argument("--wandb-run")
    sp.add_argument("--notify-url", help="POST run events here (default: NANOTUI_NOTIFY_URL or the config file; "
                                         "off = none)")
    sp.add_argument("--stages", help="comma-separated subset of the profile's stages")
    sp.add_argument("--set", action="append", default=[], metavar="STAGE:--flag=value",
                    help="override one flag of a stage (repeatable)")
    sp.add_argument("--stop-timeout", type=float, help="seconds between SIGTERM and SIGKILL on stop")
    sp.add_argument("--attach", action="store_true", help="attach right after starting")
    sp.add_argument("--dry-run", action="store_true", help="only run the preflight checks; start nothing")
    grace(sp)
    sp.set_defaults(fn=cmd_start)

    sp = sub.add_parser("plan", help="predicted VRAM per DEVICE_BS for each training stage of a profile")
    sp.add_argument("--profile", help="default: NANOTUI_PROFILE or `profile` in the config file")
    sp.add_argument("--gpu", help="4090, h100, a100, ... or a size in GiB (default: the detected GPU, else the "
                                  "profile's)")
    sp.add_argument("--headroom", help="fraction of the card left free (default 0.1)")
    sp.add_argument("--device-bs")
    sp.add_argument("--seq-len")
    sp.add_argument("--nproc")
    sp.add_argument("--depth", help="model depth (default: the profile's base_train --depth)")
    sp.add_argument("--vocab-size", help="vocabulary size (default: the profile's tok_train --vocab_size)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="supervise any command: nanotui run -- bash speedrun.sh")
    grace(sp)
    sp.add_argument("--stop-timeout", type=float)
    sp.add_argument("--attach", action="store_true")
    sp.add_argument("cmd", nargs=argparse.REMAINDER)
    sp.set_defaults(fn=cmd_run)

    for name, fn, hlp in (("attach", cmd_attach, "open the dashboard of a run (default: the active one)"),
                          ("status", cmd_status, "one-line or JSON status"),
                          ("logs", cmd_logs, "print the current stage log"),
                          ("stop", cmd_stop, "stop a run (SIGTERM, then SIGKILL)"),
                          ("resume", cmd_resume, "continue a stopped/crashed run from its newest checkpoint"),
                          ("ckpts", cmd_ckpts, "list checkpoints")):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("run", nargs="?", help="run id or a unique prefix (default: active or newest)")
        sp.set_defaults(fn=fn)
        if name in ("status", "ckpts"):
            sp.add_argument("--json", action="store_true")
        if name == "logs":
            sp.add_argument("-f", "--follow", action="store_true")
            sp.add_argument("--bytes", type=int, default=1 << 16, help="how much of the end to print")
        if name == "stop":
            sp.add_argument("--no-wait", action="store_true")
        if name == "resume":
            from nanotui.usercli import add_resume_flag
            add_resume_flag(sp)
            sp.add_argument("--step", type=int)
            sp.add_argument("--device-bs", type=int)
            grace(sp)
    sp = sub.add_parser("ls", help="list runs")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_ls)
    sp = sub.add_parser("doctor", help="check CUDA, NVML, disk, logind, W&B, boot resume and the code sandbox")
    sp.add_argument("--profile", help="default: NANOTUI_PROFILE or `profile` in the config file, else 4090")
    sp.set_defaults(fn=cmd_doctor)
    from nanotui.usercli import add_commands
    add_commands(sub)   # config, service
    sp = sub.add_parser("demo", help="start the cpu-demo pipeline and attach")
    grace(sp)
    sp.set_defaults(fn=cmd_demo)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("nanotui")
    except Exception:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def arg_error(message):  # argparse errors: one line, exit 2
        print(f"error: {message} (see `nanotui -h`)", file=sys.stderr)
        sys.exit(2)
    parser.error = arg_error
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for sp in action.choices.values():
            sp.error = arg_error
    args = parser.parse_args(argv)
    fn = getattr(args, "fn", None)
    try:
        if fn is None:
            return cmd_bare(args)
        return int(fn(args) or 0)
    except (UsageError, RunNotFound) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StartError as e:
        for line in str(e).splitlines() or [""]:   # a preflight refusal: one line per cause
            print(f"error: {line}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

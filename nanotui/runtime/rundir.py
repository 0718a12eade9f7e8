"""The run directory (docs/CONTRACTS.md "Run directory"): plan, atomic typed state, event timeline, logs, GPU samples, lock, socket."""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from nanotui.core.logparse import clean_line
from nanotui.core.notify import sanitize_message
from nanotui.core.runstate import LIVE_PHASES, PHASES, RunState, StateError  # noqa: F401  (PHASES re-exported)

RUNS_SUBDIR = "runs"
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_.-]+$")
GPU_MAX_BYTES = 32 * 1024 * 1024  # gpu.jsonl rotates to gpu.jsonl.1 beyond this (~1 day at 1 Hz)


class RunNotFound(LookupError):
    """No run directory matches the requested id (or none exists at all)."""


def default_base_dir() -> Path:
    """`$NANOCHAT_BASE_DIR` or `~/.cache/nanochat` (not created)."""
    env = os.environ.get("NANOCHAT_BASE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nanochat"


def runs_dir(base_dir: Path | str | None = None) -> Path:
    return Path(base_dir if base_dir is not None else default_base_dir()) / RUNS_SUBDIR


def new_run_id(profile: str, now: float | None = None) -> str:
    """`YYYYmmdd-HHMMSS-<profile>` in local time."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", profile) or "run"
    return f"{stamp}-{safe}"


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is retried; an error such as ENOSPC raises)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(f"write returned {n}")
        view = view[n:]


def atomic_write_json(path: Path, obj: Any) -> None:
    """Complete or nothing: JSON to a temp file in the same directory (all bytes), fsync, rename over `path`.

    On any error (ENOSPC...) the temp file is removed, `path` keeps its previous content and the error is raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(obj, indent=1, sort_keys=False).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read() or b"null")
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def initial_state(run_id: str, stages: list[dict]) -> dict:
    return RunState.initial(run_id, stages).to_json()


class RunDir:
    """One run directory. Cheap to construct; every read goes to disk (several processes share it)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, base_dir: Path | str | None, plan: dict, run_id: str | None = None) -> "RunDir":
        """Create `runs/<run_id>/` (0700) with run.json = plan (+run_id, created) and an initial state.json."""
        rid = run_id or new_run_id(plan.get("profile", "run"))
        root = runs_dir(base_dir)
        root.mkdir(parents=True, exist_ok=True)
        path = root / rid
        n = 1
        while path.exists():  # two starts in the same second
            n += 1
            path = root / f"{rid}-{n}"
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
        rd = cls(path)
        (path / "logs").mkdir(mode=0o700)
        plan = dict(plan)
        plan["run_id"] = rd.run_id
        plan.setdefault("created", time.time())
        atomic_write_json(rd.run_json, plan)
        atomic_write_json(rd.state_json, initial_state(rd.run_id, plan.get("stages", [])))
        return rd

    @classmethod
    def open(cls, base_dir: Path | str | None, run_id: str) -> "RunDir":
        rd = cls(runs_dir(base_dir) / run_id)
        if not run_id or "/" in run_id or not rd.run_json.is_file():
            raise RunNotFound(f"no run '{run_id}' in {runs_dir(base_dir)} (see `nanotui ls`)")
        return rd

    # ---- paths --------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.path.name

    run_json = property(lambda self: self.path / "run.json")
    state_json = property(lambda self: self.path / "state.json")
    events_path = property(lambda self: self.path / "events.jsonl")
    logs_dir = property(lambda self: self.path / "logs")
    gpu_path = property(lambda self: self.path / "gpu.jsonl")
    socket_path = property(lambda self: self.path / "control.sock")
    lock_path = property(lambda self: self.path / "supervisor.lock")
    supervisor_log = property(lambda self: self.path / "supervisor.log")

    def log_path(self, stage_index: int, stage_name: str, attempt: int) -> Path:
        """`logs/NN-<stage>-aA.log` (NN = stage index, A = attempt, both from 1 for A)."""
        return self.logs_dir / f"{stage_index:02d}-{stage_name}-a{attempt}.log"

    @staticmethod
    def exit_path(log_path: Path) -> Path:
        """Where the stage wrapper records the exit code of the attempt that wrote `log_path`."""
        return Path(log_path).with_suffix(".exit")

    def list_logs(self) -> list[Path]:
        """All stage attempt logs in order (stage index, then attempt)."""
        def key(p: Path):
            m = re.match(r"^(\d+)-(.+)-a(\d+)\.log$", p.name)
            return (int(m.group(1)), int(m.group(3))) if m else (10**9, 0)
        if not self.logs_dir.is_dir():
            return []
        return sorted((p for p in self.logs_dir.glob("*.log")), key=key)

    def current_log(self) -> Path | None:
        """The log of the current (or last) attempt."""
        log = self.read_state().get("log")
        if log:
            return self.path / log
        logs = self.list_logs()
        return logs[-1] if logs else None

    # ---- plan and state -----------------------------------------------------------------------
    def read_plan(self) -> dict:
        plan = _read_json(self.run_json)
        if not isinstance(plan, dict):
            raise RunNotFound(f"{self.run_json} is missing or unreadable")
        return plan

    def write_plan(self, plan: dict) -> None:
        atomic_write_json(self.run_json, plan)

    def _plan_stages(self) -> list:
        try:
            stages = self.read_plan().get("stages", [])
        except RunNotFound:
            return []
        return stages if isinstance(stages, list) else []

    def load_state(self) -> RunState:
        """The typed state. A missing state.json gives the initial state; unreadable or wrongly shaped JSON raises
        StateError with a one-line reason."""
        stages = self._plan_stages()
        try:
            raw = self.state_json.read_bytes()
        except FileNotFoundError:
            return RunState.initial(self.run_id, stages)
        except OSError as e:
            raise StateError(f"state.json is unreadable ({_one_line(e)})") from None
        try:
            obj = json.loads(raw or b"null")
        except ValueError as e:
            raise StateError(f"state.json is unreadable ({_one_line(e)})") from None
        try:
            st = RunState.from_json(obj, n_stages=len(stages) if stages else None)
        except StateError as e:
            raise StateError(f"state.json has the wrong shape: {e}") from None
        if not st.run_id:
            st.run_id = self.run_id
        return st

    def read_state(self) -> dict:
        """state.json as a validated dict; the initial state when it is missing or cannot be trusted (never raises
        for a run with a plan: `state_problem()` tells why)."""
        try:
            return self.load_state().to_json()
        except StateError:
            return RunState.initial(self.run_id, self._plan_stages()).to_json()

    def state_problem(self) -> str | None:
        """Why run.json or state.json cannot be trusted (unreadable, not an object, wrong shape), else None."""
        try:
            obj = json.loads(self.run_json.read_bytes() or b"null")
        except FileNotFoundError:
            return "run.json is missing"
        except (OSError, ValueError) as e:
            return f"run.json is unreadable ({_one_line(e)})"
        if not isinstance(obj, dict):
            return "run.json is unreadable (not a JSON object)"
        if not isinstance(obj.get("stages", []), list):
            return "run.json has the wrong shape: stages is not a list"
        try:
            self.load_state()
        except StateError as e:
            return str(e)
        return None

    def write_state(self, state: "RunState | dict") -> None:
        """Atomic, complete-or-nothing; raises OSError (e.g. ENOSPC) with the old state.json left intact."""
        obj = state.to_json() if isinstance(state, RunState) else state
        if isinstance(state, RunState):
            state.updated = time.time()
        obj["updated"] = time.time()
        atomic_write_json(self.state_json, obj)

    def update_state(self, **changes: Any) -> dict:
        st = self.read_state()
        st.update(changes)
        self.write_state(st)
        return st

    # ---- events -------------------------------------------------------------------------------
    def append_event(self, type: str, **fields: Any) -> dict:
        """Append `{t, type, ...fields}` as one line (O_APPEND: whole lines even with several writers); nanotui's
        writers check kinds and fields with core.runstate.make_event first. Raises OSError (ENOSPC...); a partly written line is cut back."""
        ev = {"t": round(time.time(), 3), "type": type, **fields}
        line = (json.dumps(ev, default=str) + "\n").encode()
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                write_all(fd, line)
            except OSError:
                try:
                    os.ftruncate(fd, start)  # never leave a torn line that would glue onto the next one
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        return ev

    def iter_events(self, offset: int = 0) -> Iterator[dict]:
        """Events from byte `offset` on; skips a torn last line."""
        for ev, _ in self.iter_events_with_offsets(offset):
            yield ev

    def iter_events_with_offsets(self, offset: int = 0) -> Iterator[tuple[dict, int]]:
        """(event, byte offset just after it): lets a follower resume where it stopped."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(offset)
                pos = offset
                for raw in f:
                    if not raw.endswith(b"\n"):
                        return
                    pos += len(raw)
                    try:
                        ev = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        continue
                    if isinstance(ev, dict):  # a damaged line holding a list/number is skipped like bad JSON
                        yield ev, pos
        except FileNotFoundError:
            return

    def read_events(self) -> list[dict]:
        return list(self.iter_events())

    # ---- GPU samples --------------------------------------------------------------------------
    def append_gpu(self, sample: dict, max_bytes: int = GPU_MAX_BYTES) -> None:
        """Append one sample; beyond `max_bytes` the file rotates to gpu.jsonl.1 (one generation kept)."""
        try:
            if self.gpu_path.stat().st_size > max_bytes:
                os.replace(self.gpu_path, self.gpu_path.with_name("gpu.jsonl.1"))
        except FileNotFoundError:
            pass
        with open(self.gpu_path, "a") as f:
            f.write(json.dumps(sample, separators=(",", ":")) + "\n")

    def read_gpu(self, tail: int | None = None) -> list[dict]:
        """GPU samples, oldest first; `tail=N` reads only the last N (fast: reads from the end)."""
        paths = [self.gpu_path.with_name("gpu.jsonl.1"), self.gpu_path]
        out: list[dict] = []
        if tail is None:
            for p in paths:
                out.extend(_parse_jsonl(p.read_bytes()) if p.exists() else [])
            return out
        for p in reversed(paths):
            if len(out) >= tail or not p.exists():
                continue
            need = tail - len(out)
            out = _tail_jsonl(p, need) + out
        return out[-tail:] if tail else []

    # ---- supervisor liveness ------------------------------------------------------------------
    def supervisor_alive(self) -> bool:
        """True while some process holds the supervisor flock."""
        if not self.lock_path.exists():
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops our probe lock, if we got it
        return False

    def status_summary(self) -> dict:
        """The compact status `nanotui status --json` prints (also handy for the TUI's run list)."""
        corrupt = self.state_problem()   # validates state.json once; read_state() then cannot fail
        st = self.read_state() if not corrupt else RunState.initial(self.run_id, self._plan_stages()).to_json()
        try:
            plan = self.read_plan()
        except RunNotFound:
            plan = {}
        alive = self.supervisor_alive()
        phase = st.get("phase") or "starting"
        state = {"starting": "running"}.get(phase, phase)
        problem = corrupt or st.get("problem")
        if corrupt and not alive:
            state = "corrupt"
        elif state in ("running", "waiting") and not alive:
            from nanotui.runtime.procs import pid_matches  # local: procs imports psutil
            if not pid_matches(st.get("stage_pid"), st.get("stage_pid_created")):
                state = "failed"
        return {
            "run_id": self.run_id, "state": state, "phase": phase, "stage": st.get("stage"),
            "stage_index": st.get("stage_index"), "stages_total": len(plan.get("stages", [])),
            "step": st.get("step"), "total": st.get("total"), "device_bs": st.get("device_bs"),
            "attempt": st.get("attempt"), "profile": plan.get("profile"),
            "supervisor_alive": alive, "supervisor_pid": st.get("supervisor_pid"),
            "stage_pid": st.get("stage_pid"), "last_checkpoint": st.get("last_checkpoint"),
            "pending_oom": st.get("pending_oom"), "reason": shown(st.get("reason")),
            "grace": st.get("grace", plan.get("grace")), "updated": st.get("updated"),
            "path": str(self.path), "problem": shown(problem),
            "wandb_run": st.get("wandb_run"), "wandb_url": shown(st.get("wandb_url")),
            "wandb_error": shown(st.get("wandb_error")),
        }


def shown(text: Any, limit: int = 400) -> str | None:
    """Text from logs/state made safe for a terminal: ANSI/OSC escapes and control characters removed, one line."""
    if text is None:
        return None
    return sanitize_message(clean_line(str(text)), limit)


def _one_line(exc: Exception) -> str:
    """An exception's message on one line (JSON errors say where: `line 1 column 16`)."""
    return " ".join(str(exc).split())


def _parse_jsonl(data: bytes) -> list[dict]:
    out = []
    for raw in data.splitlines():
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _tail_jsonl(path: Path, n: int) -> list[dict]:
    """Last `n` complete JSON lines of a file, reading backwards in blocks."""
    if n <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block, data = 8192, b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            block *= 2
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # torn last line
    lines = data.splitlines()
    if pos > 0:
        lines = lines[1:]  # first line may be partial
    return _parse_jsonl(b"\n".join(lines[-n:]))


def list_runs(base_dir: Path | str | None = None) -> list[RunDir]:
    """Every run under `base_dir/runs`, newest first."""
    root = runs_dir(base_dir)
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and (p / "run.json").is_file()]
    return sorted(runs, key=lambda r: r.run_id, reverse=True)


def find_active_run(base_dir: Path | str | None = None) -> RunDir | None:
    """The newest run with a live supervisor, else the newest whose state says running/waiting, else None."""
    runs = list_runs(base_dir)
    for r in runs:
        if r.supervisor_alive():
            return r
    for r in runs:
        if r.read_state().get("phase") in LIVE_PHASES:
            return r
    return None


def resolve_run(base_dir: Path | str | None, run_id: str | None, *, latest_ok: bool = True) -> RunDir:
    """A named run (exact id or a unique prefix), or the active/newest run when `run_id` is None.

    Raises RunNotFound with a one-line, user-facing message."""
    if run_id:
        try:
            return RunDir.open(base_dir, run_id)
        except RunNotFound:
            matches = [r for r in list_runs(base_dir) if r.run_id.startswith(run_id)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(r.run_id for r in matches[:4]) + (", ..." if len(matches) > 4 else "")
                raise RunNotFound(f"run id prefix '{run_id}' is ambiguous: it matches {len(matches)} runs "
                                  f"({shown}); give more of the id") from None
            raise
    active = find_active_run(base_dir)
    if active is not None:
        return active
    runs = list_runs(base_dir)
    if latest_ok and runs:
        return runs[0]
    raise RunNotFound(f"no runs in {runs_dir(base_dir)}; start one with `nanotui start --profile cpu-demo`")

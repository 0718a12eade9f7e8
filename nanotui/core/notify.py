"""Notifications: which run events deserve one, their text and severity, and the bell + OSC 9 escape sequence."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

# events.jsonl kinds an attached dashboard announces (toast + bell + desktop notification)
NOTICE_KINDS = ("oom", "waiting", "fallback", "carried_bs", "stage_done", "crashed", "failed", "stopped", "done",
                "disk_full", "wandb_failed")
SEVERITY = {"oom": "error", "crashed": "error", "failed": "error", "disk_full": "error", "waiting": "warning",
            "wandb_failed": "warning",
            "fallback": "warning", "carried_bs": "warning",
            "stopped": "warning", "stage_done": "information", "done": "information"}
MAX_MESSAGE = 200
OPT_OUT_ENV = "NANOTUI_NO_NOTIFY"

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # C0, DEL and C1 (incl. the 8-bit ST/OSC/CSI introducers)


@dataclass(frozen=True)
class Notice:
    """One announcement: the event kind, a one-line human message and a Textual severity."""
    kind: str
    message: str
    severity: str = "information"


def sanitize_message(message: object, limit: int = MAX_MESSAGE) -> str:
    """One printable line: control characters (ESC, BEL, newlines...) become single spaces; at most `limit` chars."""
    text = _CONTROL_RE.sub(" ", str(message)).strip()
    if len(text) > limit:
        text = text[: max(0, limit - 1)].rstrip() + "…"
    return text


def terminal_notification(message: object, limit: int = MAX_MESSAGE) -> str:
    """The bytes to write for a notification: a bell, then OSC 9 (iTerm2, WezTerm, kitty, Windows Terminal...)."""
    return f"\a\x1b]9;nanotui: {sanitize_message(message, limit)}\x07"


def notifications_enabled(environ: Mapping[str, str]) -> bool:
    """False when the user opted out of bells and desktop notifications with NANOTUI_NO_NOTIFY=1 (or true/yes)."""
    return environ.get(OPT_OUT_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _describe_oom(ev: Mapping) -> str:
    text = f"{ev.get('stage') or 'stage'}: out of memory"
    if ev.get("device_bs") is not None:
        text += f" at device_batch_size={ev['device_bs']}"
    if ev.get("step") is not None:
        text += f", step {ev['step']}"
    ck = ev.get("emergency_step") if ev.get("emergency_step") is not None else ev.get("ckpt_step")
    return text + (f"; checkpoint at step {ck}" if ck is not None else "")


def notice_for_event(ev: Mapping) -> Notice | None:
    """The notice for one events.jsonl record, or None when its kind is not announced."""
    kind = ev.get("type")
    if kind not in NOTICE_KINDS:
        return None
    message = ev.get("message")
    if not message:
        stage = ev.get("stage")
        if kind == "oom":
            message = _describe_oom(ev)
        elif kind == "stage_done":
            message = f"{stage or 'stage'} done"
        elif kind == "done":
            message = "run finished"
        else:
            message = f"{stage}: {ev.get('reason') or kind}" if stage else str(ev.get("reason") or kind)
    return Notice(kind, sanitize_message(message), SEVERITY.get(kind, "information"))


# ---- pushed notifications (runtime/webhook.py POSTs these when a notify_url is configured) ------------------------
# event kind -> the word the one-line message starts with. Generic by kind: a new kind needs one entry here.
PUSH_KINDS = {"done": "done", "crashed": "crashed", "failed": "failed", "fallback": "OOM fallback",
              "disk_full": "disk full", "rollback": "divergence rollback", "stopped": "stopped"}
PUSH_LIMIT = 400


def push_text(ev: Mapping, run_id: str, previous: Mapping | None = None) -> str | None:
    """The plain-text body to POST for one events.jsonl record, or None when the kind is not pushed. A `failed`
    that follows a pushed `crashed` of the same stage says nothing new and is skipped (one post per crash)."""
    kind = ev.get("type")
    label = PUSH_KINDS.get(kind)
    if label is None:
        return None
    if kind == "failed" and previous is not None and previous.get("type") == "crashed" \
            and previous.get("stage") == ev.get("stage"):
        return None
    message = ev.get("message")
    if not message:
        if kind == "fallback":
            message = f"{ev.get('stage') or 'stage'}: device_batch_size {ev.get('from_bs')} -> {ev.get('to_bs')}"
        elif kind == "rollback":
            step = ev.get("to_step", ev.get("step"))
            message = f"{ev.get('stage') or 'stage'}: rolled back" + (f" to step {step}" if step is not None else "")
        else:
            notice = notice_for_event(ev)
            message = notice.message if notice else (ev.get("reason") or ev.get("error") or kind)
    return sanitize_message(f"nanotui {run_id}: {label}: {message}", PUSH_LIMIT)

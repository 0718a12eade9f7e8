"""Reads the per-user config file (~/.config/nanotui/config.toml) and applies it to new plans as the lowest layer."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from nanotui.core.userconfig import ConfigError, Setting, config_path, parse_config, resolve

__all__ = ["ConfigError", "user_config_path", "load_file", "effective", "plan_overrides", "apply_to_plan",
           "notify_url"]


def user_config_path(env: Optional[Mapping[str, str]] = None) -> Path:
    env = os.environ if env is None else env
    return Path(config_path(env, str(Path.home())))


def load_file(path: Optional[Path] = None) -> tuple[dict, bool]:
    """(settings of the file, whether it exists). ConfigError (one line) when it exists but cannot be used."""
    path = path or user_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, False
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({getattr(e, 'strerror', None) or e})") from None
    return parse_config(text, str(path)), True


def effective(flags: Optional[Mapping] = None, env: Optional[Mapping[str, str]] = None) -> dict:
    """{key: Setting}: flags > environment > the config file > defaults (ConfigError for a bad file)."""
    env = os.environ if env is None else env
    path = user_config_path(env)
    values, _found = load_file(path)
    return resolve(values, env, flags, str(path))


def plan_overrides(overrides: Mapping, env: Optional[Mapping[str, str]] = None) -> dict:
    """Profile overrides with the config file's `wandb_run` underneath: what `--wandb-run`/WANDB_RUN do not set,
    the file does (so every training stage gets `--run=<it>`)."""
    s = effective(env=env)
    out = dict(overrides)
    if out.get("WANDB_RUN") in (None, "") and s["wandb_run"].source == "file":
        out["WANDB_RUN"] = s["wandb_run"].value
    return out


def apply_to_plan(plan: dict, env: Optional[Mapping[str, str]] = None, command: bool = False) -> dict:
    """Put the effective W&B entity/project (env or file) into every stage's environment, and for a supervised
    command (`nanotui run -- bash speedrun.sh`) WANDB_RUN too, so that its own `--run="$WANDB_RUN"` follows the
    file. Values already in the caller's environment are recorded as they are (a resume at boot has no shell)."""
    s = effective(env=env)
    keys = ["wandb_entity", "wandb_project"] + (["wandb_run"] if command else [])
    add = {KEYS_ENV[k]: s[k].value for k in keys if s[k].source in ("env", "file") and s[k].value}
    if add:
        for stage in plan.get("stages", []):
            stage["env"] = {**add, **(stage.get("env") or {})}
    return plan


def notify_url(plan: Mapping, env: Optional[Mapping[str, str]] = None) -> tuple[Optional[str], str]:
    """The URL run events are POSTed to, and where it came from: run.json `notify_url` (`nanotui start
    --notify-url`; "off" disables), else NANOTUI_NOTIFY_URL, else the config file. A bad file gives (None, why)."""
    given = plan.get("notify_url")
    if given:
        return (None, "flag (off)") if given == "off" else (given, "flag")
    try:
        s: Setting = effective(env=env)["notify_url"]
    except ConfigError as e:
        return None, str(e)
    return s.value, s.source


KEYS_ENV = {"wandb_run": "WANDB_RUN", "wandb_entity": "WANDB_ENTITY", "wandb_project": "WANDB_PROJECT"}

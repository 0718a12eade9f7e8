"""The per-user config file's keys and parsing, and which source (flag > env > file > default) wins for each key."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None

# key -> (environment variable, `nanotui start` flag or None, one-line meaning)
KEYS: dict = {
    "wandb_run": ("WANDB_RUN", "--wandb-run", "W&B run name of every training stage (dummy = no W&B)"),
    "wandb_entity": ("WANDB_ENTITY", None, "W&B entity (user or team) the runs go to"),
    "wandb_project": ("WANDB_PROJECT", None, "W&B project (default nanochat)"),
    "notify_url": ("NANOTUI_NOTIFY_URL", "--notify-url", "URL that gets one plain-text POST per run event "
                                                          "(ntfy topics work as-is)"),
    "profile": ("NANOTUI_PROFILE", "--profile", "profile `nanotui start` uses without --profile"),
}
DEFAULTS: dict = {"wandb_run": "dummy", "wandb_entity": None, "wandb_project": None, "notify_url": None,
                  "profile": None}
SOURCES = ("flag", "env", "file", "default")
EXAMPLE = '''# ~/.config/nanotui/config.toml
wandb_run = "djhenny-nanochat-speedrun-4090"
wandb_project = "nanochat"
notify_url = "https://ntfy.sh/my-secret-topic"
profile = "4090"
'''


class ConfigError(ValueError):
    """The config file cannot be used; str() is one line that names the file and what to fix."""


@dataclass(frozen=True)
class Setting:
    key: str
    value: Optional[str]
    source: str          # flag | env | file | default
    where: str = ""      # the env variable, the flag or the file path it came from


def config_path(env: Mapping[str, str], home: str) -> str:
    """`$XDG_CONFIG_HOME/nanotui/config.toml`, else `~/.config/nanotui/config.toml` (XDG base directory spec)."""
    xdg = env.get("XDG_CONFIG_HOME") or ""
    root = xdg if xdg.startswith("/") else f"{home.rstrip('/')}/.config"
    return f"{root}/nanotui/config.toml"


# A minimal reader for Python 3.10 without tomli: top-level `key = "string"` / `'string'` lines and comments only.
_LINE_RE = re.compile(r"""\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*')\s*(?:#.*)?$""")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def parse_minimal(text: str) -> dict:
    """Parse the subset of TOML this file needs; ValueError naming the line for anything else."""
    out: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE_RE.fullmatch(line)
        if not m:
            raise ValueError(f"line {n}: expected key = \"string\" (this Python has no TOML parser: "
                             f"pip install tomli for full TOML)")
        key, raw = m.group(1), m.group(2)
        if key in out:
            raise ValueError(f"line {n}: {key} is defined twice")
        if raw[0] == "'":
            out[key] = raw[1:-1]
            continue
        body, value, i = raw[1:-1], [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                nxt = body[i + 1]
                if nxt not in _ESCAPES:
                    raise ValueError(f"line {n}: unsupported escape \\{nxt}")
                value.append(_ESCAPES[nxt])
                i += 2
                continue
            value.append(ch)
            i += 1
        out[key] = "".join(value)
    return out


def parse_config(text: str, path: str = "config.toml") -> dict:
    """The file's settings as {key: str}. ConfigError (one line) for bad TOML, an unknown key, a value that is not a
    non-empty string without spaces, or a notify_url that is not http(s)."""
    try:
        data = _toml.loads(text) if _toml is not None else parse_minimal(text)
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{path}: not valid TOML ({' '.join(str(e).split())}); fix or remove the file") from None
    out = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(KEYS)}")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {key} must be a non-empty string in quotes, e.g. {key} = \"...\"")
        value = value.strip()
        if any(ch.isspace() for ch in value):
            raise ConfigError(f"{path}: {key} must not contain spaces, got {value!r}")
        if key == "notify_url" and not re.match(r"https?://[^/\s]+", value):
            raise ConfigError(f"{path}: notify_url must be an http:// or https:// URL, got {value!r}")
        out[key] = value
    return out


def resolve(file_values: Mapping[str, str], env: Mapping[str, str], flags: Optional[Mapping] = None,
            path: str = "") -> dict:
    """{key: Setting} with the winning source per key: a flag, then the environment variable, then the file,
    then the built-in default. `flags` maps keys (e.g. "wandb_run") to values; None means not given."""
    flags = flags or {}
    out = {}
    for key, (var, flag, _meaning) in KEYS.items():
        if flags.get(key) not in (None, ""):
            out[key] = Setting(key, str(flags[key]), "flag", flag or key)
        elif env.get(var) not in (None, ""):
            out[key] = Setting(key, env[var], "env", var)
        elif file_values.get(key) is not None:
            out[key] = Setting(key, file_values[key], "file", path)
        else:
            out[key] = Setting(key, DEFAULTS[key], "default", "")
    return out


def format_settings(settings: Mapping[str, Setting], path: str, found: bool) -> list:
    """The lines `nanotui config` prints: the file, then one row per key with its value and where it came from."""
    lines = [f"config file: {path}" + ("" if found else " (not present; create it to keep your defaults)")]
    width = max(len(k) for k in KEYS)
    for key in KEYS:
        s = settings[key]
        value = "-" if s.value is None else s.value
        origin = s.source if s.source in ("default",) else f"{s.source} ({s.where})" if s.source != "file" else "file"
        lines.append(f"  {key:<{width}}  {value:<34} {origin}")
    return lines

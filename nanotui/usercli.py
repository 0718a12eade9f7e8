"""`nanotui config`, `nanotui service install|uninstall|status|show` and `nanotui resume --all-unfinished`."""
from __future__ import annotations

import argparse
import json
import sys

from nanotui.runtime.launch import StartError


def _settings(flags=None):
    from nanotui.runtime import settings
    try:
        return settings.effective(flags)
    except settings.ConfigError as e:
        raise StartError(str(e)) from None


def start_profile(given: str | None) -> str:
    """`nanotui start`'s profile: --profile, else NANOTUI_PROFILE, else `profile` in the config file."""
    s = _settings({"profile": given})["profile"]
    if not s.value:
        from nanotui.core.plan import PROFILE_NAMES
        raise StartError(f"choose a profile: --profile {'|'.join(PROFILE_NAMES)} (or set profile = \"4090\" in "
                         f"{_config_path()})")
    return s.value


def check_notify_url(url: str | None) -> str | None:
    import re
    if url is None or url == "off" or re.match(r"https?://[^/\s]+", url):
        return url
    raise StartError(f"--notify-url must be an http:// or https:// URL (or off), got {url!r}")


def _config_path():
    from nanotui.runtime.settings import user_config_path
    return user_config_path()


def cmd_config(a) -> int:
    """Effective settings and where each comes from; `nanotui config KEY` prints just that value (for scripts)."""
    from nanotui.core.userconfig import EXAMPLE, KEYS, format_settings
    from nanotui.runtime.settings import load_file
    flags = {"wandb_run": a.wandb_run, "notify_url": a.notify_url, "profile": a.profile}
    settings = _settings(flags)
    if a.key is not None:
        if a.key not in KEYS:
            raise StartError(f"unknown key {a.key!r}; known keys: {', '.join(KEYS)}")
        value = settings[a.key].value
        print("" if value is None else value)
        return 0
    path = _config_path()
    found = load_file(path)[1]
    if a.json:
        print(json.dumps({"path": str(path), "found": found,
                          "settings": {k: {"value": s.value, "source": s.source, "where": s.where}
                                       for k, s in settings.items()}}, indent=1))
        return 0
    print("\n".join(format_settings(settings, str(path), found)))
    if not found:
        print("\nexample:\n" + EXAMPLE.rstrip())
    return 0


def cmd_service(a) -> int:
    from nanotui.runtime import service
    try:
        if a.action == "show":
            print(service.unit_text(service.unit_settings()), end="")
            return 0
        if a.action == "install":
            for line in service.install(dry_run=False):
                print(line)
            return 0
        if a.action == "uninstall":
            for line in service.uninstall():
                print(line)
            return 0
        for line in service.status_lines():
            print(line)
        return 0
    except service.ServiceError as e:
        raise StartError(str(e)) from None


def resume_all_unfinished() -> int:
    """Resume every run a reboot, power loss or shutdown interrupted (newest first); 0 unless a resume failed."""
    from nanotui.runtime.rundir import default_base_dir
    from nanotui.runtime.service import resume_unfinished
    results = resume_unfinished(default_base_dir())
    if not results:
        print(f"no unfinished runs in {default_base_dir() / 'runs'}")
    failed = 0
    for run_id, ok, text in results:
        print(f"{run_id}: {text}")
        failed += not ok
    sys.stdout.flush()
    return 1 if failed else 0


def add_commands(sub) -> None:
    """Register `config` and `service` on the main parser's subcommands."""
    sp = sub.add_parser("config", help="show your settings (config file, environment, flags) and where each "
                                       "comes from")
    sp.add_argument("key", nargs="?", help="print only this key's effective value")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--profile")
    sp.add_argument("--wandb-run")
    sp.add_argument("--notify-url")
    sp.set_defaults(fn=cmd_config)
    sp = sub.add_parser("service", help="a systemd user unit that resumes interrupted runs at boot")
    sp.add_argument("action", choices=("install", "uninstall", "status", "show"),
                    help="install/uninstall the unit, show its state, or print it")
    sp.set_defaults(fn=cmd_service)


def add_resume_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--all-unfinished", action="store_true",
                    help="resume every run a reboot or power loss interrupted (not the ones you stopped)")

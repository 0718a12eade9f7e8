"""The per-user config file: parsing, flag > env > file > default, and the Done-when: its wandb_run is the `--run=`
of every training stage of a started plan, unless WANDB_RUN or --wandb-run says otherwise."""
import pytest

from nanotui.core.userconfig import ConfigError, config_path, parse_config, parse_minimal, resolve
from nanotui.runtime.launch import StartError, profile_plan

SEED = 'wandb_run = "djhenny-nanochat-speedrun-4090"\n'


def _runs(plan):
    out = {}
    for st in plan["stages"]:
        runs = [a for a in st["argv"] if a.startswith("--run=")]
        if runs:
            out[st["name"]] = runs[0][len("--run="):]
    return out


def test_config_wandb_run_names_every_training_stage(user_config, monkeypatch):
    user_config(SEED)
    plan = profile_plan("4090", {})
    runs = _runs(plan)
    assert set(runs) == {"base_train", "mid_train", "chat_sft"}
    assert set(runs.values()) == {"djhenny-nanochat-speedrun-4090"}
    # WANDB_RUN in the environment (what `nanotui start` passes through collect_overrides) wins over the file
    from nanotui.core.plan import collect_overrides
    monkeypatch.setenv("WANDB_RUN", "x")
    assert set(_runs(profile_plan("4090", collect_overrides({"WANDB_RUN": "x"}, {}))).values()) == {"x"}
    assert set(_runs(profile_plan("4090", collect_overrides({"WANDB_RUN": "x"}, {"WANDB_RUN": "y"}))).values()) \
        == {"y"}


def test_no_config_file_keeps_the_profile_default():
    assert set(_runs(profile_plan("4090", {})).values()) == {"dummy"}


def test_entity_and_project_reach_the_stage_environment(user_config):
    user_config(SEED + 'wandb_entity = "djhenny"\nwandb_project = "speedrun"\n')
    plan = profile_plan("cpu-demo", {})
    for st in plan["stages"]:
        assert st["env"]["WANDB_ENTITY"] == "djhenny" and st["env"]["WANDB_PROJECT"] == "speedrun"


@pytest.mark.parametrize("text, needle", [
    ('wandb_run = "a"\nwandb_rn = "b"\n', "unknown key 'wandb_rn'"),
    ("wandb_run = djhenny\n", "not valid TOML"),
    ("wandb_run = 5\n", "must be a non-empty string"),
    ('wandb_run = "has space"\n', "must not contain spaces"),
    ('notify_url = "ntfy.sh/topic"\n', "http:// or https://"),
    ('[wandb]\nrun = "x"\n', "unknown key 'wandb'"),
])
def test_bad_file_is_one_line_naming_the_file(text, needle):
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "/home/u/.config/nanotui/config.toml")
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg and msg.startswith("/home/u/.config/nanotui/config.toml: ")


def test_bad_file_refuses_the_start(user_config):
    user_config("wandb_run = djhenny\n")
    with pytest.raises(StartError) as ei:
        profile_plan("4090", {})
    assert "config.toml: not valid TOML" in str(ei.value) and ei.value.code == 2


def test_sources_flag_env_file_default():
    file = {"wandb_run": "from-file", "profile": "4090"}
    env = {"WANDB_RUN": "from-env", "NANOTUI_NOTIFY_URL": "http://127.0.0.1:9/t"}
    got = resolve(file, env, {"profile": "cpu-demo"}, "/f.toml")
    assert (got["wandb_run"].value, got["wandb_run"].source) == ("from-env", "env")
    assert (got["profile"].value, got["profile"].source) == ("cpu-demo", "flag")
    assert got["notify_url"].source == "env" and got["notify_url"].where == "NANOTUI_NOTIFY_URL"
    assert (got["wandb_entity"].value, got["wandb_entity"].source) == (None, "default")
    assert resolve(file, {}, None, "/f.toml")["wandb_run"].source == "file"


def test_xdg_path():
    assert config_path({"XDG_CONFIG_HOME": "/x/cfg"}, "/home/u") == "/x/cfg/nanotui/config.toml"
    assert config_path({}, "/home/u") == "/home/u/.config/nanotui/config.toml"
    assert config_path({"XDG_CONFIG_HOME": "relative"}, "/home/u") == "/home/u/.config/nanotui/config.toml"


def test_minimal_parser_for_python_without_tomllib():
    text = '# mine\nwandb_run = "djhenny-nanochat-speedrun-4090"  # seed\nnotify_url = \'https://ntfy.sh/t\'\n' \
           'wandb_project = "a\\"b"\n'
    assert parse_minimal(text) == {"wandb_run": "djhenny-nanochat-speedrun-4090", "notify_url": "https://ntfy.sh/t",
                                   "wandb_project": 'a"b'}
    import tomllib
    assert parse_minimal(text) == tomllib.loads(text)
    with pytest.raises(ValueError, match="line 2"):
        parse_minimal('wandb_run = "a"\n[table]\n')


def test_notify_url_precedence(user_config):
    import os
    from nanotui.runtime.settings import notify_url
    xdg = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    assert notify_url({}, xdg) == (None, "default")
    user_config('notify_url = "https://ntfy.sh/from-file"\n')
    assert notify_url({}, xdg) == ("https://ntfy.sh/from-file", "file")
    assert notify_url({}, dict(xdg, NANOTUI_NOTIFY_URL="http://127.0.0.1:1/e")) == ("http://127.0.0.1:1/e", "env")
    assert notify_url({"notify_url": "http://127.0.0.1:1/flag"}, dict(xdg, NANOTUI_NOTIFY_URL="http://x/e"))[1] \
        == "flag"
    assert notify_url({"notify_url": "off"}, xdg)[0] is None
    user_config("notify_url = nope\n")
    url, why = notify_url({}, xdg)
    assert url is None and "not valid TOML" in why   # the supervisor runs on, without posts


def test_interrupted_runs_only():
    from nanotui.core.resumable import interrupted
    assert interrupted({"phase": "running"}, False, False)
    assert interrupted({"phase": "waiting"}, False, False)
    assert interrupted({"phase": "running"}, True, False) is None       # live
    assert interrupted({"phase": "running"}, False, True) is None       # its stage still runs: adopt, not resume
    assert interrupted({"phase": "stopped", "stop_cause": "signal", "reason": "supervisor received SIGTERM"},
                       False, False)
    assert interrupted({"phase": "stopped", "reason": "supervisor received SIGTERM"}, False, False)   # older runs
    assert interrupted({"phase": "stopped", "stop_cause": "request", "reason": "stopped by user"}, False, False) \
        is None
    assert interrupted({"phase": "stopped", "stop_cause": "oom", "reason": "out of memory at B=1"}, False, False) \
        is None
    for phase in ("done", "failed"):
        assert interrupted({"phase": phase}, False, False) is None


def _nanotui(*args, env=None):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "nanotui.cli", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)


def test_nanotui_config_shows_each_value_and_its_source(user_config):
    import json
    path = user_config(SEED + 'profile = "4090"\n')
    r = _nanotui("config", "--notify-url", "https://ntfy.sh/t", env={"WANDB_PROJECT": "speedrun"})
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in r.stdout.splitlines()[1:]}
    assert r.stdout.splitlines()[0] == f"config file: {path}"
    assert rows["wandb_run"] == ["djhenny-nanochat-speedrun-4090", "file"]
    assert rows["wandb_project"] == ["speedrun", "env (WANDB_PROJECT)"]
    assert rows["notify_url"] == ["https://ntfy.sh/t", "flag (--notify-url)"]
    assert rows["wandb_entity"] == ["-", "default"]
    assert _nanotui("config", "wandb_run", env={"WANDB_RUN": "x"}).stdout == "x\n"
    got = json.loads(_nanotui("config", "--json").stdout)
    assert got["found"] and got["settings"]["profile"] == {"value": "4090", "source": "file", "where": str(path)}
    bad = _nanotui("config", "wandb_rn")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    user_config("profile = 4090\n")
    for args in (("config",), ("start",)):
        r = _nanotui(*args)
        assert r.returncode == 2 and "config.toml: profile must be a non-empty string in quotes" in r.stderr
        assert r.stderr.count("\n") == 1
        assert "Traceback" not in r.stderr


def test_plan_and_start_take_the_configured_profile(user_config, capsys):
    from nanotui import cli
    assert cli.main(["plan", "--gpu", "4090"]) == 2
    assert "choose a profile" in capsys.readouterr().err
    user_config('profile = "4090"\n')
    assert cli.main(["plan", "--gpu", "4090"]) == 0
    assert "VRAM plan for profile 4090" in capsys.readouterr().out


def test_bad_notify_url_flag_is_refused_before_anything_is_written(base_dir, capsys):
    from nanotui import cli
    assert cli.main(["start", "--profile", "cpu-demo", "--notify-url", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--notify-url must be an http:// or https:// URL" in err
    assert not (base_dir / "runs").exists()

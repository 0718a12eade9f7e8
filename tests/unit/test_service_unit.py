"""The systemd unit's text (quoting of odd paths) and doctor's boot check, per systemd state."""
import shlex

from nanotui.runtime import doctor, service


def test_unit_text_quotes_paths_and_keeps_supervisors_in_its_cgroup():
    s = service.UnitSettings(python='/home/dj/my envs/py"3', base_dir="/data/nano 100%", path_env="/a b:/usr/bin")
    text = service.unit_text(s)
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["Type"] == "oneshot" and lines["RemainAfterExit"] == "yes" and lines["WantedBy"] == "default.target"
    assert int(lines["TimeoutStopSec"]) >= 240      # a d20 stop checkpoint (stage stop timeout 120 s) fits
    argv = shlex.split(lines["ExecStart"])
    assert argv == ['/home/dj/my envs/py"3', "-m", "nanotui.cli", "resume", "--all-unfinished"]
    envs = [shlex.split(line[len("Environment="):])[0] for line in text.splitlines() if line.startswith("Environment=")]
    assert "NANOCHAT_BASE_DIR=/data/nano 100%%" in envs   # systemd expands %: doubled


def test_doctor_boot_check(monkeypatch, tmp_path):
    status, detail = doctor.check_boot_resume()       # this machine, as it is
    assert status in ("ok", "info", "warn") and detail
    monkeypatch.setattr(service, "systemd_absent", lambda: None)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert doctor.check_boot_resume()[0] == "info"     # systemd, no unit
    (tmp_path / "systemd" / "user").mkdir(parents=True)
    (tmp_path / "systemd" / "user" / service.UNIT_NAME).write_text("x")
    monkeypatch.setattr(service, "linger", lambda: "no")
    status, detail = doctor.check_boot_resume()
    assert status == "warn" and "enable-linger" in detail
    monkeypatch.setattr(service, "linger", lambda: "yes")
    assert doctor.check_boot_resume()[0] == "ok"

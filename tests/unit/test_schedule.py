# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The systemd timer of galera_schedule: what it renders, what it refuses, and what systemd reads back.

Every hostile value (command substitution, quotes, backticks, %, $, \\, newlines, blanks, '..') must be
refused naming its variable, or reach the unit so that systemd reads back exactly that value. "Reads
back" is checked three ways: a reader of systemd's documented unit-file syntax (below), the host's
``systemd-analyze verify`` (it resolves specifiers and looks for the program), and, where the systemd
binary can run in test mode (``systemd --test --user``, no running systemd needed), systemd's own dump of
the loaded unit (ExecStart= argv, Environment=, WorkingDirectory=).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

import module_helpers  # pylint: disable=import-error
from ansible_collections.dbtools.galera.plugins.module_utils import _schedule
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._stores import CommandRunner

ANALYZE = shutil.which("systemd-analyze")
SYSTEMD = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None)

HOSTILE = [
    "$(touch /tmp/pwned)", "`id`", "'single'", '"double"', "100%", "%n%i%%", "$HOME", "${HOME}", "$$", "a$",
    "back\\slash", "trail\\", "quote\\\"", "with space", "two  spaces", "trail ", "new\nline", "cr\rx", "tab\tx",
    "nul\x00x", "del\x7fx", "ls\u2028x", "..", ";", "a;b", "&&", "|", "#hash", "-e", "@x", "a,b", "é", "{\"x\":1}",
]
CONTROL = ("\n", "\r", "\t", "\x00", "\x7f", "\u2028")


# ---------------------------------------------------------------------------------------------
# A reader of systemd's unit syntax (systemd.syntax(7), systemd.service(5) "COMMAND LINES"), as documented

def undouble(text: str, char: str, what: str) -> str:
    """``char`` doubled is one ``char``; a lone one would change the value (a specifier, a variable): an error."""
    out, i = [], 0
    while i < len(text):
        if text[i] == char:
            assert text[i + 1:i + 2] == char, f"unescaped {what} in {text!r}"
            out.append(char)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def unspecifier(text: str) -> str:
    """Specifier resolution: '%%' is '%'; any other specifier would change the value, so it is an error here."""
    return undouble(text, "%", "specifier")


def undollar(text: str) -> str:
    """ExecStart= variable expansion at start: '$$' is '$'; a lone '$' would expand a variable: an error here."""
    return undouble(text, "$", "$")


def words(value: str) -> list:
    """Split a value into words as systemd does for ExecStart= and Environment= (quotes, C escapes)."""
    out, i = [], 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        word = []
        if value[i] == '"':
            i += 1
            while value[i] != '"':
                if value[i] == "\\":
                    assert value[i + 1] in '\\"', f"unexpected escape in {value!r}"
                    i += 1
                word.append(value[i])
                i += 1
            i += 1
            assert i == len(value) or value[i] == " ", f"text right after a closing quote in {value!r}"
        else:
            while i < len(value) and value[i] != " ":
                assert value[i] not in '"\\', f"bare quote or backslash in {value!r}"
                word.append(value[i])
                i += 1
        out.append("".join(word))
    return out


def read_unit(text: str) -> dict:
    """``{key: [raw values]}`` of a unit file: one line per setting, no continuation lines."""
    settings = {}
    for line in text.split("\n"):
        if not line or line[0] in "#;" or line.startswith("["):
            continue
        assert not line.endswith("\\"), f"a continuation line: {line!r}"
        key, _sep, value = line.partition("=")
        settings.setdefault(key, []).append(value.strip())
    return settings


def exec_argv(service: str) -> list:
    (line,) = read_unit(service)["ExecStart"]
    raw = words(line)
    return [unspecifier(raw[0])] + [undollar(unspecifier(w)) for w in raw[1:]]


def environment(service: str) -> dict:
    out = {}
    for line in read_unit(service).get("Environment", []):
        for word in words(line):
            name, _sep, value = unspecifier(word).partition("=")
            out[name] = value
    return out


def working_dir(service: str) -> str:
    (value,) = read_unit(service)["WorkingDirectory"]
    return unspecifier(value)


# ---------------------------------------------------------------------------------------------
# Helpers

class Runner:
    """run_command/get_bin_path of a host with systemctl (and systemd-analyze when the host has it)."""

    def __init__(self, enabled=False, active=False, fail=None):
        self.calls, self.enabled, self.active, self.fail = [], enabled, active, fail
        self.real = CommandRunner()

    def get_bin_path(self, name):
        return "/bin/systemctl" if name == "systemctl" else self.real.get_bin_path(name)

    def run_command(self, argv, environ_update=None, expand_user_and_vars=True):
        assert expand_user_and_vars is False and isinstance(argv, list)
        if argv[0] != "/bin/systemctl":
            return self.real.run_command(argv, environ_update=environ_update, expand_user_and_vars=False)
        self.calls.append(argv[1:])
        verb = argv[1]
        if verb == "is-enabled":
            return (0, "enabled\n", "") if self.enabled else (1, "disabled\n", "")
        if verb == "is-active":
            return (0, "", "") if self.active else (3, "", "")
        if verb == self.fail:
            return 1, "", "Failed to do it: Access denied"
        if verb == "enable":
            self.enabled = self.active = True
        if verb == "disable":
            self.enabled = self.active = False
        return 0, "", ""


def base(tmp_path, **over) -> dict:
    params = dict(state="present", name="prod", playbook="binlog_archive", inventory=str(tmp_path / "inventory.ini"),
                  unit_dir=str(tmp_path), ansible_playbook="/usr/bin/ansible-playbook")
    params.update(over)
    return params


def settings(tmp_path, runner=None, **over) -> dict:
    return _schedule.check_settings(base(tmp_path, **over), runner=runner)


def refused(option, call):
    with pytest.raises(GaleraError) as info:
        call()
    assert f"galera_backup_schedule_{option} (option {option})" in info.value.msg, info.value.msg
    assert info.value.msg.endswith("Nothing was changed.")
    assert info.value.get("variable") == f"galera_backup_schedule_{option}"
    return info.value.msg


# ---------------------------------------------------------------------------------------------
# Rendering

def test_render_binlog_archive_defaults(tmp_path):
    s = settings(tmp_path, hosts="prod", user="backup", extra_vars_files=["/srv/ops/vault.yml"],
                 vault_password_file="/srv/ops/.vault-pass", env={"ANSIBLE_COLLECTIONS_PATH": "/srv/ops/collections"})
    units = _schedule.render(s)
    service, timer = read_unit(units["service"]), read_unit(units["timer"])
    assert s["unit"] == "dbtools-galera-binlog_archive-prod"
    assert _schedule.paths(s) == {"service": str(tmp_path / f"{s['unit']}.service"),
                                  "timer": str(tmp_path / f"{s['unit']}.timer")}
    assert service["Type"] == ["oneshot"] and service["User"] == ["backup"]
    assert service["WorkingDirectory"] == [str(tmp_path)]  # the inventory's directory
    assert service["TimeoutStartSec"] == ["3600"]
    assert exec_argv(units["service"]) == [
        "/usr/bin/ansible-playbook", "-i", str(tmp_path / "inventory.ini"), "dbtools.galera.binlog_archive", "-b",
        "-e", '{"galera_hosts":"prod"}', "-e", "@/srv/ops/vault.yml", "--vault-password-file", "/srv/ops/.vault-pass"]
    assert exec_argv(units["service"]) == _schedule.command(s)
    assert environment(units["service"]) == {"ANSIBLE_COLLECTIONS_PATH": "/srv/ops/collections"}
    assert timer["OnCalendar"] == ["*:0/5"] and timer["Persistent"] == ["true"]
    assert timer["RandomizedDelaySec"] == ["0"] and timer["Unit"] == [f"{s['unit']}.service"]
    assert timer["WantedBy"] == ["timers.target"]


@pytest.mark.parametrize("playbook, calendar, timeout", [
    ("backup", "*-*-* 01:30:00", "86400"), ("freshness", "hourly", "900"), ("restore_drill", "Sun *-*-* 05:00:00", "86400"),
])
def test_each_playbook_has_its_defaults(tmp_path, playbook, calendar, timeout):
    units = _schedule.render(settings(tmp_path, playbook=playbook, become=False))
    assert read_unit(units["timer"])["OnCalendar"] == [calendar]
    assert read_unit(units["service"])["TimeoutStartSec"] == [timeout]
    argv = exec_argv(units["service"])
    assert f"dbtools.galera.{playbook}" in argv and "-b" not in argv


def test_given_calendar_delay_timeout_and_chdir(tmp_path):
    units = _schedule.render(settings(tmp_path, on_calendar="Mon..Fri *-*-* 02:00:00", randomized_delay=300,
                                      timeout=7200, chdir="/srv/ops"))
    assert read_unit(units["timer"])["OnCalendar"] == ["Mon..Fri *-*-* 02:00:00"]
    assert read_unit(units["timer"])["RandomizedDelaySec"] == ["300"]
    assert read_unit(units["service"])["TimeoutStartSec"] == ["7200"]
    assert working_dir(units["service"]) == "/srv/ops"


@pytest.mark.skipif(not ANALYZE, reason="systemd-analyze is not installed")
def test_calendar_is_checked_by_systemd_analyze(tmp_path):
    s = settings(tmp_path, runner=CommandRunner(), on_calendar="hourly")
    assert s["calendar_normalized"] == "*-*-* *:00:00"
    # Only the characters are wrong in neither: systemd-analyze refuses them.
    for bad in ("bogus", "*:0/5 99:99", "Mon..Fri 25:00"):
        msg = refused("on_calendar", lambda b=bad: settings(tmp_path, runner=CommandRunner(), on_calendar=b))
        assert "systemd-analyze calendar" in msg
    # An expression that looks like an option is passed after "--", never read as one.
    refused("on_calendar", lambda: settings(tmp_path, runner=CommandRunner(), on_calendar="--help"))


def test_calendar_characters_are_checked_without_systemd_analyze(tmp_path):
    assert settings(tmp_path, on_calendar="*:0/5")["calendar_normalized"] is None
    for bad in ("*:0/5\nExecStart=/bin/sh", "%n", "$(id)", "'hourly'", "hourly ", "a  b", ""):
        if bad:
            refused("on_calendar", lambda b=bad: settings(tmp_path, on_calendar=b))


# ---------------------------------------------------------------------------------------------
# Hostile values

PATH_OPTIONS = ("inventory", "chdir", "extra_vars_files", "vault_password_file", "ansible_playbook")


def read_back(units: dict, option: str, s: dict):
    argv = exec_argv(units["service"])
    if option == "inventory":
        return argv[argv.index("-i") + 1]
    if option == "chdir":
        return working_dir(units["service"])
    if option == "extra_vars_files":
        return argv[argv.index("-e") + 1][1:]
    if option == "vault_password_file":
        return argv[argv.index("--vault-password-file") + 1]
    if option == "ansible_playbook":
        return argv[0]
    if option == "env":
        return environment(units["service"])["ANSIBLE_CONFIG"]
    if option == "hosts":
        return json.loads(argv[argv.index("-e") + 1])["galera_hosts"]
    if option == "user":
        return read_unit(units["service"])["User"][0]
    if option == "name":
        return s["unit"]
    raise AssertionError(option)


def given(option: str, value: str) -> dict:
    if option in ("inventory", "chdir", "vault_password_file", "ansible_playbook"):
        return {option: "/srv/ops/" + value}
    if option == "extra_vars_files":
        return {option: ["/srv/ops/" + value]}
    if option == "env":
        return {option: {"ANSIBLE_CONFIG": value}}
    return {option: value}


def expected(option: str, value: str):
    if option in PATH_OPTIONS:
        return "/srv/ops/" + value
    if option == "name":
        return f"dbtools-galera-binlog_archive-{value}"
    return value


@pytest.mark.parametrize("option", PATH_OPTIONS + ("env", "hosts", "user", "name"))
@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v) for v in HOSTILE])
def test_a_hostile_value_is_refused_or_read_back_exactly(tmp_path, option, value):
    try:
        s = settings(tmp_path, **given(option, value))
    except GaleraError as exc:
        assert f"galera_backup_schedule_{option} (option {option})" in exc.msg, exc.msg
        assert exc.msg.endswith("Nothing was changed.")
        return
    assert not any(c in value for c in CONTROL), "a control character was accepted"
    units = _schedule.render(s)
    assert read_back(units, option, s) == expected(option, value)
    # Nothing but what was given: the other arguments and settings are untouched.
    assert exec_argv(units["service"])[3] == "dbtools.galera.binlog_archive"
    assert read_unit(units["timer"])["OnCalendar"] == ["*:0/5"]


@pytest.mark.parametrize("option", PATH_OPTIONS)
@pytest.mark.parametrize("value, why", [
    ("relative/inv.ini", "is not an absolute path"), ("/srv/../etc/inv", "is not a normalised path"),
    ("/srv/./inv", "is not a normalised path"), ("/srv//inv", "is not a normalised path"),
    ("/srv/inv\n[Service]", "holds a newline"), ("/srv/inv ", "ends with a blank or a backslash"),
    ("/srv/inv\\", "ends with a blank or a backslash"), ("", "is empty"),
])
def test_paths_must_be_absolute_normalised_and_on_one_line(tmp_path, option, value, why):
    if option == "chdir" and value == "":
        return  # empty means the inventory's directory
    if option in ("vault_password_file", "ansible_playbook") and value == "":
        return  # empty means none / the default
    over = {option: [value] if option == "extra_vars_files" else value}
    assert why in refused(option, lambda: settings(tmp_path, **over))


def test_refusals_specific_to_one_option(tmp_path):
    assert "as a list of hosts" in refused("inventory", lambda: settings(tmp_path, inventory="/srv/a,b"))
    assert "argv[0]" in refused("ansible_playbook", lambda: settings(tmp_path, ansible_playbook="/opt/$x/ansible-playbook"))
    for name in ("", ".hidden", "-x", "a/b", "x" * 65, "a b", "a%b", "a$b", "..", "é"):
        refused("name", lambda n=name: settings(tmp_path, name=n))
    assert settings(tmp_path, name="x" * 64)["unit"] == "dbtools-galera-binlog_archive-" + "x" * 64
    assert settings(tmp_path, name="db_1.prod-eu")["unit"] == "dbtools-galera-binlog_archive-db_1.prod-eu"
    refused("playbook", lambda: settings(tmp_path, playbook="restore_cluster"))
    refused("randomized_delay", lambda: settings(tmp_path, randomized_delay=-1))
    refused("timeout", lambda: settings(tmp_path, timeout=-5))
    refused("unit_dir", lambda: settings(tmp_path, unit_dir="etc/systemd/system"))
    refused("env", lambda: settings(tmp_path, env={"1BAD": "x"}))
    refused("env", lambda: settings(tmp_path, env={"A=B": "x"}))
    refused("env", lambda: settings(tmp_path, env={"X": ["list"]}))


@pytest.mark.parametrize("name", ["ANSIBLE_VAULT_PASSWORD", "MYSQL_PWD_PASSWD", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN",
                                  "ANSIBLE_BECOME_PASS", "GALERA_ENCRYPT_KEY", "SSH_AUTH", "MY_PRIVATE"])
def test_a_secret_in_the_environment_is_refused(tmp_path, name):
    msg = refused("env", lambda: settings(tmp_path, env={name: "s3cr3t"}))
    assert "s3cr3t" not in msg and "vault_password_file" in msg


@pytest.mark.parametrize("name", ["ANSIBLE_VAULT_PASSWORD_FILE", "AWS_SHARED_CREDENTIALS_FILE", "ANSIBLE_COLLECTIONS_PATH",
                                  "ANSIBLE_CONFIG", "SSH_AUTH_SOCK_DIR", "KEYWORDS"])
def test_a_file_naming_variable_is_accepted(tmp_path, name):
    assert environment(_schedule.render(settings(tmp_path, env={name: "/srv/x"}))["service"]) == {name: "/srv/x"}


def test_secrets_never_reach_the_unit(tmp_path):
    units = _schedule.render(settings(tmp_path, extra_vars_files=["/srv/ops/vault.yml"],
                                      vault_password_file="/srv/ops/.vault-pass"))
    text = units["service"] + units["timer"]
    assert "--vault-password-file" in text and "vault-password-file=" not in text
    assert "password" not in _schedule.render(settings(tmp_path))["service"].lower()


# ---------------------------------------------------------------------------------------------
# systemd itself

HOSTILE_DIRS = ["ops dir", "100% $HOME", "q\"uo'te `id` $(id) back\\slash", "é;&|"]


def hostile_layout(root) -> dict:
    """A fake ansible-playbook (an executable script) and files under paths with spaces, %, $ and quotes."""
    bindir = root / "bin dir %i 100%"
    bindir.mkdir()
    program = bindir / "ansible-playbook"
    program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    program.chmod(0o755)
    dirs = [root / d for d in HOSTILE_DIRS]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "inventory.ini").write_text("[galera]\n", encoding="utf-8")
    return dict(ansible_playbook=str(program), inventory=str(dirs[0] / "inventory.ini"), chdir=str(dirs[1]),
                extra_vars_files=[str(dirs[2] / "vault $$.yml"), str(dirs[3] / "100%.yml")],
                vault_password_file=str(dirs[2] / ".vault %n pass"), user="root", hosts="prod,db*",
                env={"ANSIBLE_COLLECTIONS_PATH": str(dirs[1]), "ANSIBLE_CONFIG": "/x/\"%i\" $y \\z `id`"})


def write_units(s: dict) -> dict:
    units = _schedule.render(s)
    for kind, path in _schedule.paths(s).items():
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(units[kind])
    return units


@pytest.mark.skipif(not ANALYZE, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_units_with_hostile_paths(tmp_path):
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    s = settings(tmp_path, unit_dir=str(unit_dir), runner=CommandRunner(), **hostile_layout(tmp_path))
    write_units(s)
    names = [f"{s['unit']}.service", f"{s['unit']}.timer"]
    done = subprocess.run([ANALYZE, "verify", *names], cwd=unit_dir, capture_output=True, text=True, timeout=120,
                          check=False, env=dict(os.environ, SYSTEMD_LOG_COLOR="0"))
    assert done.returncode == 0, done.stderr
    assert s["unit"] not in done.stderr + done.stdout, done.stderr
    # The check can fail: with the specifier in the program's path left unescaped systemd resolves '%i' and
    # finds no such program.
    broken = (unit_dir / names[0]).read_text(encoding="utf-8").replace("%%i", "%i")
    (unit_dir / names[0]).write_text(broken, encoding="utf-8")
    done = subprocess.run([ANALYZE, "verify", *names], cwd=unit_dir, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0 and "ansible-playbook" in done.stderr


def systemd_dump(unit_dir, unit: str) -> dict:
    """systemd's own reading of ``unit`` in ``unit_dir`` (``systemd --test --user``): its argv, environment and
    working directory. Skips where the systemd binary cannot run so."""
    if not SYSTEMD:
        pytest.skip("no systemd binary")
    base_dir = tempfile.mkdtemp(prefix="schedule-dump-")
    try:
        os.chmod(base_dir, 0o755)
        units = os.path.join(base_dir, "units")
        shutil.copytree(unit_dir, units)
        home = os.path.join(base_dir, "home")
        os.mkdir(home, 0o700)
        for path in (units, *[os.path.join(units, f) for f in os.listdir(units)]):
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        env = dict(PATH="/usr/bin:/bin", HOME=home, XDG_RUNTIME_DIR=home, SYSTEMD_UNIT_PATH=units + ":",
                   LC_ALL="C.UTF-8")
        argv = [SYSTEMD, "--test", "--user", f"--unit={unit}", "--log-target=console", "--no-pager"]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if not setpriv:
                pytest.skip("running as root without setpriv: systemd --test --user refuses root")
            os.chown(home, 65534, 65534)
            argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False, env=env)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    out = done.stdout.decode("utf-8", "replace")
    start = out.find(f"-> Unit {unit}:")
    if done.returncode != 0 or start < 0:
        pytest.skip(f"systemd --test cannot run here: {done.stderr.decode('utf-8', 'replace')[-300:]}")
    block = out[start:].split("\n\t-> Unit ", 1)[0]
    found = dict(env={})
    for line in block.split("\n"):
        key, _sep, value = line.lstrip("\t").partition(": ")
        if key == "Command Line":
            found["argv"] = words_dump(value)
        elif key == "Environment":
            name, _sep, val = value.partition("=")
            found["env"][name] = val
        elif key == "WorkingDirectory":
            found["chdir"] = value
    return found


def words_dump(line: str) -> list:
    """The words of systemd's dump of a command line (bare, or in double quotes with \\ before \\ " $ `)."""
    out, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        word = []
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                word.append(line[i])
                i += 1
            i += 1
        else:
            while i < len(line) and line[i] != " ":
                word.append(line[i])
                i += 1
        out.append("".join(word))
    return out


def test_systemd_reads_back_every_value_exactly(tmp_path):
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    layout = hostile_layout(tmp_path)
    printable = [v for v in HOSTILE if not any(c in v for c in CONTROL)]
    # Every accepted hostile value at once, as extra vars files (one argument each) and environment values.
    layout["extra_vars_files"] += ["/srv/ops/" + v for v in printable if v not in ("..", "trail ", "trail\\")]
    layout["env"].update({f"V{i}": v for i, v in enumerate(printable)})
    s = settings(tmp_path, unit_dir=str(unit_dir), **layout)
    write_units(s)
    dump = systemd_dump(unit_dir, f"{s['unit']}.service")
    # The dump shows the stored argv, before the start-time expansion in which '$$' is '$'.
    assert [undollar(w) for w in dump["argv"][1:]] == _schedule.command(s)[1:]
    assert dump["argv"][0] == s["ansible_playbook"]
    assert dump["env"] == s["env"]
    assert dump["chdir"] == s["chdir"]
    # ... and the unit-syntax reader of this file agrees with systemd.
    units = _schedule.render(s)
    assert exec_argv(units["service"]) == _schedule.command(s)
    assert environment(units["service"]) == s["env"] and working_dir(units["service"]) == s["chdir"]


# ---------------------------------------------------------------------------------------------
# Files and systemctl (apply with a fake systemctl)

def test_apply_with_systemd_enables_once_and_restarts_on_change(tmp_path):
    runner = Runner()
    s = settings(tmp_path)
    first = _schedule.apply(s, "present", False, True, runner)
    timer = f"{s['unit']}.timer"
    assert first["changed"] and first["changed_files"] == ["service", "timer"]
    assert first["commands"] == [["/bin/systemctl", "daemon-reload"], ["/bin/systemctl", "enable", "--now", timer]]
    for path in first["files"].values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    again = _schedule.apply(s, "present", False, True, runner)
    assert not again["changed"] and again["commands"] == []
    later = settings(tmp_path, on_calendar="*:0/10")
    preview = _schedule.apply(later, "present", True, True, runner)
    assert preview["changed"] and preview["changed_files"] == ["timer"]
    assert preview["commands"] == [["/bin/systemctl", "daemon-reload"], ["/bin/systemctl", "restart", timer]]
    assert "OnCalendar=*:0/5" in open(first["files"]["timer"], encoding="utf-8").read()  # check mode wrote nothing
    assert runner.calls[-2:] == [["is-enabled", timer], ["is-active", "--quiet", timer]]  # and only asked
    changed = _schedule.apply(later, "present", False, True, runner)
    assert changed["commands"] == preview["commands"]
    assert "OnCalendar=*:0/10" in open(first["files"]["timer"], encoding="utf-8").read()


def test_apply_absent_disables_then_removes_only_its_two_files(tmp_path):
    runner = Runner()
    s = settings(tmp_path)
    _schedule.apply(s, "present", False, True, runner)
    others = [tmp_path / f"{s['unit']}2.service", tmp_path / f"{s['unit']}.service.d", tmp_path / "other.timer"]
    others[0].write_text("x", encoding="utf-8")
    others[1].mkdir()
    others[2].write_text("x", encoding="utf-8")
    gone = _schedule.apply(_schedule.check_settings(dict(state="absent", name="prod", playbook="binlog_archive",
                                                         unit_dir=str(tmp_path))), "absent", False, True, runner)
    timer = f"{s['unit']}.timer"
    assert gone["changed"] and gone["changed_files"] == ["service", "timer"]
    assert gone["commands"] == [["/bin/systemctl", "disable", "--now", timer], ["/bin/systemctl", "daemon-reload"]]
    assert not any(os.path.exists(p) for p in gone["files"].values())
    assert all(p.exists() for p in others)
    again = _schedule.apply(s, "absent", False, True, runner)
    assert not again["changed"] and again["commands"] == []


def test_a_failing_systemctl_names_the_command(tmp_path):
    with pytest.raises(GaleraError) as info:
        _schedule.apply(settings(tmp_path), "present", False, True, Runner(fail="enable"))
    assert "enable --now dbtools-galera-binlog_archive-prod.timer failed with exit status 1: Failed to do it" \
        in info.value.msg


def test_a_non_file_in_the_way_is_refused(tmp_path):
    s = settings(tmp_path)
    os.symlink("/dev/null", _schedule.paths(s)["service"])
    with pytest.raises(GaleraError, match="not a regular file"):
        _schedule.apply(s, "present", False, False)
    assert os.path.islink(_schedule.paths(s)["service"])


def test_a_wrong_mode_is_repaired(tmp_path):
    s = settings(tmp_path)
    _schedule.apply(s, "present", False, False)
    os.chmod(_schedule.paths(s)["timer"], 0o666)
    fixed = _schedule.apply(s, "present", False, False)
    assert fixed["changed_files"] == ["timer"] and stat.S_IMODE(os.stat(_schedule.paths(s)["timer"]).st_mode) == 0o644


# ---------------------------------------------------------------------------------------------
# The module through its entry point (a fake systemctl first on PATH, so a host where systemd runs is safe)

def run_module(args, tmp_path, check=False, diff=False):
    fake = tmp_path / "fakebin"
    if not fake.exists():
        fake.mkdir()
        (fake / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> '{tmp_path}/systemctl.log'\n"
                                        "case \"$1\" in is-enabled|is-active) exit 1;; esac\nexit 0\n",
                                        encoding="utf-8")
        (fake / "systemctl").chmod(0o755)
    return module_helpers.run_module("galera_schedule", args, check=check, diff=diff,
                                     env={"PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"})


def warnings(result) -> list:
    """The warning texts of a module result (newer ansible-core gives each as an event dict)."""
    return [w if isinstance(w, str) else (w.get("event") or w).get("msg", "") for w in result.get("warnings", [])]


def test_module_present_again_check_diff_absent(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    layout = hostile_layout(tmp_path)
    args = dict(name="prod", playbook="binlog_archive", unit_dir=str(units), **layout)
    service = units / "dbtools-galera-binlog_archive-prod.service"
    timer = units / "dbtools-galera-binlog_archive-prod.timer"
    running = os.path.isdir("/run/systemd/system")

    preview = run_module(args, tmp_path, check=True, diff=True)
    assert not preview.get("failed"), preview
    assert preview["changed"] and not service.exists() and not timer.exists()
    assert [d["before"] for d in preview["diff"]] == ["", ""]
    assert preview["diff"][0]["after"] == preview["service"] and preview["diff"][1]["after"] == preview["timer"]

    first = run_module(args, tmp_path, diff=True)
    assert not first.get("failed"), first
    assert first["changed"] and first["changed_files"] == ["service", "timer"]
    assert first["systemd_running"] is running
    assert service.read_text(encoding="utf-8") == first["service"] and timer.read_text(encoding="utf-8") == first["timer"]
    assert stat.S_IMODE(service.stat().st_mode) == 0o644 and stat.S_IMODE(timer.stat().st_mode) == 0o644
    assert exec_argv(first["service"]) == first["command"]
    assert first["command"][:4] == [layout["ansible_playbook"], "-i", layout["inventory"], "dbtools.galera.binlog_archive"]
    if not running:
        assert first["commands"] == []
        assert any("systemd is not running" in w for w in warnings(first))
    # The vault password file does not exist: said, not failed.
    assert any(".vault %n pass does not exist" in w for w in warnings(first))
    assert not list(units.glob(".dbtools-galera-*"))  # no temporary file left

    again = run_module(args, tmp_path, diff=True)
    assert not again.get("failed") and again["changed"] is False and again["changed_files"] == []
    assert [d["before"] for d in again["diff"]] == [d["after"] for d in again["diff"]]

    changed = dict(args, on_calendar="*:0/15", randomized_delay=30)
    check = run_module(changed, tmp_path, check=True, diff=True)
    assert check["changed"] and check["changed_files"] == ["timer"]
    assert "OnCalendar=*:0/5\n" in check["diff"][1]["before"] and "OnCalendar=*:0/15\n" in check["diff"][1]["after"]
    assert "OnCalendar=*:0/5\n" in timer.read_text(encoding="utf-8")  # check mode changed nothing

    bad = run_module(dict(args, inventory="inventory.ini"), tmp_path)
    assert bad["failed"] and "galera_backup_schedule_inventory (option inventory)" in bad["msg"]
    secret = run_module(dict(args, env={"ANSIBLE_VAULT_PASSWORD": "hunter2"}), tmp_path)
    assert secret["failed"] and "hunter2" not in secret["msg"]
    assert timer.read_text(encoding="utf-8") == first["timer"]  # refusals changed nothing

    keep = units / "dbtools-galera-binlog_archive-prod2.timer"
    keep.write_text("x", encoding="utf-8")
    absent = dict(name="prod", playbook="binlog_archive", unit_dir=str(units), state="absent")
    gone_check = run_module(absent, tmp_path, check=True)
    assert gone_check["changed"] and service.exists() and timer.exists()
    gone = run_module(absent, tmp_path, diff=True)
    assert not gone.get("failed"), gone
    assert gone["changed"] and not service.exists() and not timer.exists() and keep.exists()
    assert gone["diff"][0]["before"] == first["service"] and gone["diff"][0]["after"] == ""
    assert run_module(absent, tmp_path)["changed"] is False

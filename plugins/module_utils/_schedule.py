# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A systemd timer that runs one of the collection's playbooks on a schedule (private).

The scheduling host (the controller) gets two unit files, ``dbtools-galera-<playbook>-<name>.service``
(``Type=oneshot``: ``ansible-playbook -i <inventory> dbtools.galera.<playbook> ...``) and the ``.timer``
that starts it. Every value an operator gives reaches a unit file, and systemd reads unit files with
rules of its own, so each value is either refused here (naming the variable and the fix) or written so
that systemd reads back exactly that value:

- ``ExecStart=``: every argument in double quotes, ``\\`` and ``"`` backslash-escaped (systemd C-unescapes
  quoted words), ``%`` doubled (specifiers are resolved at load), ``$`` doubled (``$$`` is the literal
  dollar of systemd's variable expansion at start). The executable path is not variable-expanded by
  systemd but is ``argv[0]`` (which is), so a ``$`` there is refused.
- ``Environment=``: each assignment in double quotes, ``\\`` ``"`` escaped, ``%`` doubled; ``$`` is literal.
- ``WorkingDirectory=`` is taken raw (no quotes, no C escapes; ``%`` doubled); trailing blanks and a
  trailing ``\\`` (which continues the line) are refused.
- Newlines and every other non-printable character are refused everywhere: systemd has no way to
  read them back from a unit file line.

Secrets never go into the unit: ansible reads them from the files named by ``-e @<file>`` and
``--vault-password-file``; an environment variable whose name says it holds a secret is refused.
Nothing here touches the filesystem but ``read_state``/``write_atomic``/``remove``; the systemctl
calls go through a runner (``run_command`` of an AnsibleModule).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

PLAYBOOKS = ("backup", "binlog_archive", "freshness", "restore_drill")
STATES = ("present", "absent")
# When each playbook runs unless told (OnCalendar=): binlog archiving every 5 minutes (its RPO).
DEFAULT_CALENDAR = {
    "backup": "*-*-* 01:30:00",
    "binlog_archive": "*:0/5",
    "freshness": "hourly",
    "restore_drill": "Sun *-*-* 05:00:00",
}
# How long one run may take before systemd stops it (TimeoutStartSec=, seconds).
DEFAULT_TIMEOUT = {"backup": 86400, "binlog_archive": 3600, "freshness": 900, "restore_drill": 86400}
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_ANSIBLE_PLAYBOOK = "/usr/bin/ansible-playbook"
UNIT_PREFIX = "dbtools-galera"
UNIT_MODE = 0o644

# The role variable of each module option, for messages (the role passes galera_backup_schedule_<option>).
ROLE_PREFIX = "galera_backup_schedule_"

_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Names that say the variable holds a secret (its value would sit in a world-readable unit file); a
# variable naming a file that holds one (..._FILE, ..._PATH) is fine.
_SECRET_NAME = re.compile(r"PASSW(OR)?D|PASS$|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY$|(^|_)AUTH$", re.I)
_FILE_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.I)
# OnCalendar= without systemd-analyze: the characters of systemd.time(7) calendar events and time zones.
_CALENDAR = re.compile(r"[A-Za-z0-9_*:/.,~+-]+(?: [A-Za-z0-9_*:/.,~+-]+)*")
_HOSTS = re.compile(r"[A-Za-z0-9_.:,*!&-]{1,255}")


def variable(option: str) -> str:
    """How a message names an option: the role variable and the module option."""
    return f"{ROLE_PREFIX}{option} (option {option})"


def _refuse(option: str, value, why: str, fix: str) -> GaleraError:
    return GaleraError(f"{variable(option)}={value!r} {why}. {fix} Nothing was changed.", variable=ROLE_PREFIX + option)


def printable(text) -> bool:
    """A str of printable characters only (spaces allowed): no newline, tab, control or format character."""
    return isinstance(text, str) and all(c == " " or c.isprintable() for c in text)


def check_text(value, option: str, fix: str) -> str:
    if not isinstance(value, str):
        raise _refuse(option, value, "is not a string", fix)
    if not printable(value):
        raise _refuse(option, value, "holds a newline or another control character, which a unit file cannot carry",
                      fix)
    return value


def check_label(value, option: str = "name") -> str:
    """The ``<name>`` of the unit (the cluster's name, say): 1-64 of ``A-Za-z0-9_.-``, not starting with . or -."""
    fix = "Use 1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-' (the cluster's name, say)."
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise _refuse(option, value, "is not a valid schedule name", fix)
    return value


def check_path(value, option: str, what: str = "file") -> str:
    """An absolute, normalised path of printable characters, without trailing blanks or backslash."""
    fix = f"Give the absolute path of the {what}, e.g. /srv/galera-ops/{'inventory.ini' if what == 'file' else what}."
    check_text(value, option, fix)
    if not value:
        raise _refuse(option, value, "is empty", fix)
    if not value.startswith("/"):
        raise _refuse(option, value, "is not an absolute path (the timer's runs do not start where you are now)", fix)
    if value != value.rstrip() or value.endswith("\\"):
        raise _refuse(option, value, "ends with a blank or a backslash, which systemd strips or reads as a line "
                      "continuation", fix)
    parts = value.rstrip("/").split("/")[1:] if value != "/" else []
    if any(part in ("", ".", "..") for part in parts):
        raise _refuse(option, value, "is not a normalised path (it holds '..', '.' or '//')", fix)
    return value.rstrip("/") or "/"


def check_user(value, option: str = "user") -> str:
    if not isinstance(value, str) or not _ACCOUNT.fullmatch(value):
        raise _refuse(option, value, "is not a user name (letters, digits, '_', '.', '-', at most 32)",
                      "Name the account the playbook runs as (its SSH key reaches the nodes).")
    return value


def check_calendar(value, option: str = "on_calendar", runner=None) -> str | None:
    """Check an ``OnCalendar=`` expression; return systemd's normalised form when systemd-analyze checked it.

    The characters are checked first (always: no ``%``, quotes, ``$`` or control characters reach the
    timer); then, when ``runner`` has ``systemd-analyze``, ``systemd-analyze calendar -- <expr>`` (an
    argv list, no shell) must accept it. It needs no running systemd.
    """
    fix = "Give a systemd calendar event such as '*:0/5', 'hourly' or 'Mon..Fri *-*-* 01:30:00' (systemd.time(7))."
    check_text(value, option, fix)
    if not value or len(value) > 256 or not _CALENDAR.fullmatch(value):
        raise _refuse(option, value, "is not a calendar event (letters, digits, single spaces and * : / . , ~ + - _ "
                      "only)", fix)
    analyze = runner.get_bin_path("systemd-analyze") if runner is not None else None
    if not analyze:
        return None
    rc, out, err = runner.run_command([analyze, "calendar", "--", value], environ_update=dict(LC_ALL="C"),
                                      expand_user_and_vars=False)
    if rc != 0:
        said = " ".join((err or out or "").split())[-300:]
        raise _refuse(option, value, f"is refused by systemd-analyze calendar ({said or f'exit status {rc}'})", fix)
    match = re.search(r"Normalized form:\s*(.+)", out or "")
    return match.group(1).strip() if match else value


def check_seconds(value, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > 10 ** 9:
        raise _refuse(option, value, f"is not a whole number of seconds from {minimum}", "Give seconds as an integer.")
    return value


def check_env(env, option: str = "env") -> dict:
    """``{name: value}`` for ``Environment=``: plain names, printable values, no secret."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise _refuse(option, env, "is not a mapping of variable names to values", "Give e.g. "
                      "{ANSIBLE_COLLECTIONS_PATH: /srv/galera-ops/collections}.")
    out = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise _refuse(option, name, "holds a name that is not an environment variable name",
                          "Use letters, digits and '_', not starting with a digit.")
        if _SECRET_NAME.search(name) and not _FILE_NAME.search(name):
            raise _refuse(option, name, "would put a secret into the unit file, which every user can read",
                          "Put secrets into a vaulted extra vars file (extra_vars_files) and the vault password "
                          "into a file of mode 0600 (vault_password_file), or set a ..._FILE variable naming such a "
                          "file.")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _refuse(option, value, f"(variable {name}) is not a string or a number", "Give a plain value.")
        out[name] = check_text(str(value), option, f"Give {name} a value on one line.")
    return out


def check_hosts(value, option: str = "hosts") -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not _HOSTS.fullmatch(value):
        raise _refuse(option, value, "is not a host pattern (group or host names, letters, digits and _ . : , * ! & -)",
                      "Name the inventory group of the cluster, e.g. prod.")
    return value


def unit_name(playbook: str, name: str) -> str:
    return f"{UNIT_PREFIX}-{playbook}-{name}"


def quote_arg(value: str) -> str:
    """One ExecStart= argument that systemd reads back as ``value`` (and ``$$`` -> ``$`` at start)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def quote_executable(value: str) -> str:
    """The ExecStart= executable path: quoted and escaped like an argument, but its ``$`` is not doubled
    (systemd does not expand the path); ``check_settings`` refuses a ``$`` there."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def quote_env(name: str, value: str) -> str:
    """One Environment= assignment (no variable expansion there: ``$`` stays)."""
    text = f"{name}={value}"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def escape_raw(value: str) -> str:
    """A raw value (WorkingDirectory=): only the specifier character needs escaping."""
    return value.replace("%", "%%")


def check_settings(p: dict, runner=None) -> dict:
    """The checked settings of a schedule from the module's parameters (GaleraError naming the option)."""
    playbook = p.get("playbook")
    if playbook not in PLAYBOOKS:
        raise _refuse("playbook", playbook, "is not a playbook of the collection that can be scheduled",
                      f"Choose one of {', '.join(PLAYBOOKS)}.")
    s = dict(playbook=playbook, name=check_label(p.get("name")))
    s["unit"] = unit_name(playbook, s["name"])
    s["unit_dir"] = check_path(p.get("unit_dir") or DEFAULT_UNIT_DIR, "unit_dir", "directory")
    if p.get("state", "present") == "absent":
        return s
    s["inventory"] = check_path(p.get("inventory") or "", "inventory")
    if "," in s["inventory"]:
        raise _refuse("inventory", s["inventory"], "holds a ',' (ansible reads such an -i value as a list of hosts "
                      "when the path is missing)", "Rename the inventory file.")
    s["ansible_playbook"] = check_path(p.get("ansible_playbook") or DEFAULT_ANSIBLE_PLAYBOOK, "ansible_playbook")
    if "$" in s["ansible_playbook"]:
        raise _refuse("ansible_playbook", s["ansible_playbook"], "holds a '$', which systemd would expand in the "
                      "program's argv[0]", "Install or link ansible-playbook at a path without '$'.")
    # ansible reads ansible.cfg from the working directory: by default the inventory's directory.
    s["chdir"] = check_path(p.get("chdir") or os.path.dirname(s["inventory"]), "chdir", "directory")
    s["user"] = check_user(p.get("user") if p.get("user") is not None else "root")
    s["extra_vars_files"] = [check_path(f, "extra_vars_files") for f in (p.get("extra_vars_files") or [])]
    s["vault_password_file"] = check_path(p["vault_password_file"], "vault_password_file") \
        if p.get("vault_password_file") else ""
    s["hosts"] = check_hosts(p.get("hosts"))
    s["become"] = bool(p.get("become", True))
    s["env"] = check_env(p.get("env"))
    calendar = p.get("on_calendar") or DEFAULT_CALENDAR[playbook]
    s["calendar_normalized"] = check_calendar(calendar, runner=runner)
    s["on_calendar"] = calendar
    s["randomized_delay"] = check_seconds(p.get("randomized_delay") or 0, "randomized_delay", 0)
    s["timeout"] = check_seconds(p.get("timeout") or DEFAULT_TIMEOUT[playbook], "timeout", 1)
    return s


def command(s: dict) -> list:
    """The argv the service runs (what systemd reads back from ExecStart=)."""
    argv = [s["ansible_playbook"], "-i", s["inventory"], f"dbtools.galera.{s['playbook']}"]
    if s["become"]:
        argv.append("-b")
    if s["hosts"]:
        # JSON: ansible parses it as data, never as key=value words.
        argv += ["-e", json.dumps({"galera_hosts": s["hosts"]}, separators=(",", ":"))]
    for path in s["extra_vars_files"]:
        argv += ["-e", "@" + path]
    if s["vault_password_file"]:
        argv += ["--vault-password-file", s["vault_password_file"]]
    return argv


def render(s: dict) -> dict:
    """``{"service": text, "timer": text}`` of the checked settings ``s``."""
    argv = command(s)
    header = (f"# {s['unit']}: written by dbtools.galera (galera_schedule); a change here is overwritten by the "
              "next run.\n")
    description = f"dbtools.galera {s['playbook']} of {s['name']}"
    service = [
        header,
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"User={s['user']}",
        f"WorkingDirectory={escape_raw(s['chdir'])}",
    ]
    service += [f"Environment={quote_env(k, v)}" for k, v in sorted(s["env"].items())]
    service += [
        "ExecStart=" + " ".join([quote_executable(argv[0])] + [quote_arg(a) for a in argv[1:]]),
        f"TimeoutStartSec={s['timeout']}",
        "",
    ]
    timer = [
        header,
        "[Unit]",
        f"Description={description} (timer)",
        "",
        "[Timer]",
        f"OnCalendar={s['on_calendar']}",
        "Persistent=true",
        f"RandomizedDelaySec={s['randomized_delay']}",
        f"Unit={s['unit']}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ]
    return dict(service="\n".join(service), timer="\n".join(timer))


def paths(s: dict) -> dict:
    return {kind: os.path.join(s["unit_dir"], f"{s['unit']}.{kind}") for kind in ("service", "timer")}


# ---------------------------------------------------------------------------------------------
# Files

def read_state(path: str) -> dict:
    """``{"text": str|None, "mode": int|None}`` of a unit file (None: missing); GaleraError for a non-file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return dict(text=None, mode=None)
    if not stat.S_ISREG(info.st_mode):
        raise GaleraError(f"{path} exists and is not a regular file (a symbolic link or a directory): it is not a "
                          "unit file of ours. Remove it or choose another name. Nothing was changed.")
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        return dict(text=handle.read(), mode=stat.S_IMODE(info.st_mode))


def write_atomic(path: str, text: str, mode: int = UNIT_MODE) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, fsynced, then renamed."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".dbtools-galera-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_unit_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise GaleraError(f"{variable('unit_dir')}={path} is not an existing directory. Give systemd's unit "
                          f"directory ({DEFAULT_UNIT_DIR}). Nothing was changed.", variable=ROLE_PREFIX + "unit_dir")


# ---------------------------------------------------------------------------------------------
# systemctl

def _systemctl(runner, systemctl: str, args: list, done: list, check: bool = True) -> tuple:
    argv = [systemctl] + args
    rc, out, err = runner.run_command(argv, environ_update=dict(LC_ALL="C"), expand_user_and_vars=False)
    if check:
        done.append(argv)
        if rc != 0:
            said = " ".join(((err or "") + " " + (out or "")).split())[-500:]
            raise GaleraError(f"{' '.join(argv)} failed with exit status {rc}: {said or 'no message'}. The unit files "
                              "are in place; fix the cause and run again.", argv=argv, rc=rc, commands=done)
    return rc, (out or "").strip()


def timer_status(runner, systemctl: str, timer: str) -> dict:
    """Whether the timer is enabled and active (read-only queries)."""
    rc_enabled, enabled = _systemctl(runner, systemctl, ["is-enabled", timer], [], check=False)
    rc_active, _active = _systemctl(runner, systemctl, ["is-active", "--quiet", timer], [], check=False)
    return dict(enabled=rc_enabled == 0 and enabled.splitlines()[:1] == ["enabled"], active=rc_active == 0)


def apply(s: dict, state: str, check_mode: bool, systemd: bool, runner=None) -> dict:
    """Make the two unit files (and, where systemd runs, the timer's state) as ``state`` asks.

    Returns ``changed``, ``diff`` (a list of before/after per file), ``commands`` (the systemctl argv lists
    run, or that would run in check mode), ``files`` and ``warnings``.
    """
    check_unit_dir(s["unit_dir"])
    where = paths(s)
    before = {kind: read_state(path) for kind, path in where.items()}
    texts = render(s) if state == "present" else {"service": None, "timer": None}
    changed_files = [kind for kind in ("service", "timer")
                     if before[kind]["text"] != texts[kind]
                     or (texts[kind] is not None and before[kind]["mode"] != UNIT_MODE)]
    warnings, commands = [], []
    timer = f"{s['unit']}.timer"
    systemctl = None
    status = None
    if systemd:
        systemctl = runner.get_bin_path("systemctl") if runner is not None else None
        if not systemctl:
            raise GaleraError("systemd runs on this host but systemctl is not found on PATH. Install systemd's "
                              "systemctl or fix PATH. Nothing was changed.")
        status = timer_status(runner, systemctl, timer)

    planned = []
    if state == "present":
        if systemd:
            if changed_files:
                planned.append(["daemon-reload"])
            if not status["enabled"] or not status["active"]:
                planned.append(["enable", "--now", timer])
            elif changed_files:
                # The timer runs with the old calendar until restarted; starting it does not start the service.
                planned.append(["restart", timer])
        if not check_mode:
            for kind in changed_files:
                write_atomic(where[kind], texts[kind])
    else:
        present = [kind for kind in ("service", "timer") if before[kind]["text"] is not None]
        if systemd:
            if status["enabled"] or status["active"]:
                planned.append(["disable", "--now", timer])
            if present:
                planned.append(["daemon-reload"])
        if not check_mode:
            # disable first: the timer stops before its files go.
            for args in [a for a in planned if a[0] == "disable"]:
                _systemctl(runner, systemctl, args, commands)
            planned = [a for a in planned if a[0] != "disable"]
            for kind in present:
                os.unlink(where[kind])
    if check_mode:
        commands = [[systemctl] + args for args in planned] if systemd else []
    else:
        for args in planned:
            _systemctl(runner, systemctl, args, commands)
    if not systemd:
        warnings.append(f"systemd is not running on this host (a container?): the unit files were "
                        f"{'written' if state == 'present' else 'removed'} but no timer was "
                        f"{'enabled' if state == 'present' else 'disabled'}. Where systemd runs them: systemctl "
                        f"daemon-reload && systemctl {'enable' if state == 'present' else 'disable'} --now {timer}")
    if state == "present":
        warnings += file_warnings(s)
    diff = [dict(before_header=where[kind], after_header=where[kind], before=before[kind]["text"] or "",
                 after=texts[kind] or "") for kind in ("service", "timer")]
    return dict(changed=bool(changed_files) or bool(planned), diff=diff, commands=commands, warnings=warnings,
                files=where, changed_files=changed_files, status=status)


def file_warnings(s: dict) -> list:
    """What the timer's runs will trip on: a missing inventory or program, a secret file others can read."""
    out = []
    if not os.access(s["ansible_playbook"], os.X_OK):
        out.append(f"{s['ansible_playbook']} is not an executable here: the timer's runs fail until it is "
                   f"(set {ROLE_PREFIX}ansible_playbook to the path of ansible-playbook).")
    for label, path in [("inventory", s["inventory"])] + [("extra_vars_files", f) for f in s["extra_vars_files"]] \
            + ([("vault_password_file", s["vault_password_file"])] if s["vault_password_file"] else []):
        try:
            info = os.stat(path)
        except OSError:
            out.append(f"{ROLE_PREFIX}{label}: {path} does not exist here (yet): the timer's runs fail until it does.")
            continue
        mode = stat.S_IMODE(info.st_mode)
        if label != "inventory" and mode & 0o077 and stat.S_ISREG(info.st_mode):
            out.append(f"{ROLE_PREFIX}{label}: {path} is readable by others (mode {mode:04o}); a file with secrets "
                       f"should be 0600, owned by {s['user']}.")
    return out

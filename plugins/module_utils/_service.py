# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How the database server of a node is started, bootstrapped and stopped: the one seam between the
restore and the host's service manager (private).

Three argv lists: ``start`` (join the cluster), ``bootstrap`` (start a new Primary component from
this node) and ``stop``. Given ones are used as they are (several servers per host, plain processes,
containers: the operator names them). Missing ones default, where systemd runs, to
``systemctl start <unit>``, ``galera_new_cluster`` (MariaDB's script that sets ``--wsrep-new-cluster``
for one start of ``mariadb.service``; only for that unit) and ``systemctl stop <unit>``. Without
systemd a missing command is an error naming the variable to set: nothing guesses a container or
process layout. ``report`` says, before anything changes, which command each action would run or why
it cannot (the restore plan refuses with it). Commands are argv lists, never a shell string. Every
command must return once the server answers (``systemctl`` does for ``Type=notify`` units; the
Molecule image's ``galera-node`` waits for ``SELECT 1``) or has stopped.
"""

from __future__ import annotations

import os
import shutil

from ansible_collections.dbtools.galera.plugins.module_utils import _paths
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

ACTIONS = ("start", "bootstrap", "stop")
VARIABLES = {"start": "galera_restore_start_command", "bootstrap": "galera_restore_bootstrap_command",
             "stop": "galera_restore_stop_command"}
DEFAULT_UNIT = "mariadb"
# galera_new_cluster passes --wsrep-new-cluster through an environment file that only mariadb.service reads,
# then restarts its argument: for an instance unit (mariadb@NAME, several servers per host) it would start that
# server without the option, or restart mariadb.service, another server.
BOOTSTRAP_UNITS = ("mariadb", "mariadb.service")
SEARCH = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin", "/bin")


def check_argv(value, action: str) -> list | None:
    """A given command as a list of strings (None when not given); GaleraError for anything else."""
    if value is None or value == []:
        return None
    variable = VARIABLES[action]
    if not isinstance(value, (list, tuple)) or not all(isinstance(part, str) for part in value):
        raise GaleraError(f"{variable} must be a list of strings (an argv, no shell), got {value!r}. "
                          "Nothing was changed.")
    if not value[0] or not all(_paths.printable(part) for part in value):
        raise GaleraError(f"{variable} holds an empty program or a control character: {value!r}. Nothing was changed.")
    return list(value)


def commands(given: dict, systemd: bool, unit: str = DEFAULT_UNIT) -> dict:
    """The argv of each action: ``given[action]`` when set, else the systemd default (None without systemd)."""
    unit = unit or DEFAULT_UNIT
    if not _paths.printable(unit) or unit.startswith("-") or "/" in unit:
        raise GaleraError(f"galera_restore_service={unit!r} is not a systemd unit name. Nothing was changed.")
    defaults = {"start": ["systemctl", "start", unit], "stop": ["systemctl", "stop", unit]} if systemd else {}
    if systemd and unit in BOOTSTRAP_UNITS:
        defaults["bootstrap"] = ["galera_new_cluster"]
    out = {}
    for action in ACTIONS:
        out[action] = check_argv((given or {}).get(action), action) or defaults.get(action)
    return out


def missing_text(action: str, systemd: bool, unit: str = DEFAULT_UNIT) -> str:
    """Why ``action`` has no command, and what to set."""
    variable = VARIABLES[action]
    what = ("starts the server as the first node of a new cluster" if action == "bootstrap"
            else action + "s the server")
    if systemd and action == "bootstrap":
        return (f"galera_restore_service is {unit!r} and {variable} is not set: galera_new_cluster bootstraps only "
                f"MariaDB's mariadb.service (for another unit it would restart mariadb.service, or start {unit} "
                f"without --wsrep-new-cluster). Set {variable} to the command that {what} (an argv list, e.g. "
                f"[\"/usr/local/bin/db\", \"bootstrap\"])")
    return (f"this host has no systemd and {variable} is not set: name the command that {what} (an argv list, "
            f"e.g. [\"/usr/local/bin/db\", \"{action}\"])")


def require(cmds: dict, action: str, systemd: bool = False, unit: str = DEFAULT_UNIT) -> list:
    """The argv of ``action``; GaleraError naming the variable when there is none."""
    argv = cmds.get(action)
    if not argv:
        raise GaleraError(f"{missing_text(action, systemd, unit)}. Nothing was changed.", variable=VARIABLES[action])
    return argv


def locate(program: str) -> str | None:
    """``program`` found as the shell would (PATH), or in the sbin directories; None when not."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) and not os.path.isdir(program) else None
    found = shutil.which(program)
    if found:
        return found
    for directory in SEARCH:
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def unit_state(runner, unit: str) -> dict | None:
    """systemd's view of ``unit``: ``dict(Id, LoadState, ActiveState, MainPID)`` (``Id`` resolves an alias such
    as mysql.service), or None when systemctl cannot tell."""
    tool = locate("systemctl")
    if not tool or not _paths.printable(unit) or unit.startswith("-") or "/" in unit:
        return None
    rc, out, _err = runner.run_command([tool, "show", "--property=Id,LoadState,ActiveState,MainPID", unit],
                                       environ_update=dict(LC_ALL="C"), expand_user_and_vars=False)
    if rc != 0:
        return None
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_of_pid(pid: int | None, proc: str = "/proc") -> str | None:
    """The systemd service whose control group holds process ``pid`` (``/proc/<pid>/cgroup``: the
    ``name=systemd`` hierarchy of cgroup v1, the unified one of v2), or None: not a service's (a login
    session's scope, a container's own group) or not readable."""
    if not pid:
        return None
    try:
        with open(f"{proc}/{int(pid)}/cgroup", "r", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except (OSError, ValueError):
        return None
    paths = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    path = paths.get("name=systemd", paths.get(""))
    if not path:
        return None
    units = [part for part in path.split("/") if part.endswith(".service")]
    return units[-1] if units else None


def unit_problem(action: str, unit: str, state: dict | None, server: dict | None) -> str | None:
    """Why the default command of ``action`` (``systemctl <start|stop> unit``, ``galera_new_cluster``) would not
    act on this node's server: systemd has no such unit, or (``stop``, the server running with pid
    ``server['pid']``) another unit runs it or none does. ``server['unit']`` is the unit that runs it
    (``unit_of_pid``). None when it would, or when nothing can be told."""
    if state is None:
        return None
    variable = VARIABLES[action]
    if state.get("LoadState") != "loaded":
        return (f"galera_restore_service={unit!r}: systemd has no such unit on this host (LoadState "
                f"{state.get('LoadState') or 'unknown'}): name the unit that runs this node's server (with several "
                f"servers per host, its instance such as mariadb@NAME), or set {variable}")
    if action != "stop" or not (server or {}).get("pid"):
        return None
    owner = server.get("unit")
    if owner == state.get("Id"):
        return None
    where = f"the unit {owner}" if owner else "no systemd service (started by hand or by another tool)"
    return (f"galera_restore_service={unit!r} ({state.get('Id')}, {state.get('ActiveState')}) does not run this node's "
            f"server: its process {server['pid']} (pid file {server.get('pid_file')}) belongs to {where}. "
            f"systemctl stop {state.get('Id')} would not stop it"
            + (" and would stop another server" if state.get("ActiveState") == "active" else "")
            + f": set galera_restore_service{' to ' + repr(owner) if owner else ''} or {variable}")


def report(given: dict, systemd: bool, unit: str = DEFAULT_UNIT, state: dict | None = None,
           server: dict | None = None) -> dict:
    """For each action, ``dict(argv, problem)``: the command it would run (its program found on this
    host) and None, or why it cannot run (not set, not found, a wrong value, a default whose unit is not
    this server's: ``unit_problem`` with systemd's ``state`` of the unit and the running ``server``): read
    before anything changes, so that a restore refuses instead of failing after the data directories were
    swapped, or stopping another server."""
    try:
        cmds = commands(given, systemd, unit)
    except GaleraError as exc:
        return {action: dict(argv=None, problem=exc.msg.replace(" Nothing was changed.", "")) for action in ACTIONS}
    out = {}
    for action in ACTIONS:
        argv = cmds.get(action)
        if not argv:
            out[action] = dict(argv=None, problem=missing_text(action, systemd, unit or DEFAULT_UNIT))
        elif locate(argv[0]) is None:
            out[action] = dict(argv=argv, problem=(f"{argv[0]} ({VARIABLES[action]}"
                                                   f"{'' if (given or {}).get(action) else ', the default'}) is not an "
                                                   "executable program on this host (PATH and the sbin directories): "
                                                   f"install it or set {VARIABLES[action]}"))
        elif not (given or {}).get(action):
            out[action] = dict(argv=argv, problem=unit_problem(action, unit or DEFAULT_UNIT, state, server))
        else:
            out[action] = dict(argv=argv, problem=None)
    return out


def resolve(argv: list) -> list:
    """``argv`` with its program found on PATH or in the sbin directories (as the shell would)."""
    return [locate(argv[0]) or argv[0]] + list(argv[1:])


def run(runner, cmds: dict, action: str) -> dict:
    """Run ``action``'s command with ``runner.run_command`` (an AnsibleModule); GaleraError when it fails.
    The command bounds its own time (systemd's start timeout, the helper's own). Returns
    ``dict(argv, rc, stdout, stderr)`` (tails)."""
    argv = resolve(require(cmds, action))
    try:
        # expand_user_and_vars=False: the operator's argv reaches the program as written ($HOME, ~ included).
        rc, out, err = runner.run_command(argv, environ_update=dict(LC_ALL="C"), expand_user_and_vars=False)
    except OSError as exc:
        raise GaleraError(f"cannot run {VARIABLES[action]} {argv!r}: {exc}", argv=argv) from exc
    result = dict(argv=argv, rc=rc, stdout=(out or "")[-2000:], stderr=(err or "")[-2000:])
    if rc != 0:
        tail = " | ".join(line.strip() for line in ((err or "") + "\n" + (out or "")).strip().splitlines()[-12:]
                          if line.strip())
        raise GaleraError(f"{' '.join(argv)} ({VARIABLES[action]}) failed with exit status {rc}: "
                          f"{tail or 'no message'}", **result)
    return result

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
for one start of the unit) and ``systemctl stop <unit>``. Without systemd a missing command is an
error naming the variable to set: nothing guesses a container or process layout. Commands are argv
lists, never a shell string. Every command must return once the server answers (``systemctl`` does
for ``Type=notify`` units; the Molecule image's ``galera-node`` waits for ``SELECT 1``) or has stopped.
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


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


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
    defaults = {"start": ["systemctl", "start", unit], "bootstrap": ["galera_new_cluster"],
                "stop": ["systemctl", "stop", unit]} if systemd else {}
    out = {}
    for action in ACTIONS:
        out[action] = check_argv((given or {}).get(action), action) or defaults.get(action)
    return out


def require(cmds: dict, action: str) -> list:
    """The argv of ``action``; GaleraError naming the variable when there is none."""
    argv = cmds.get(action)
    if not argv:
        raise GaleraError(f"this host has no systemd and {VARIABLES[action]} is not set: name the command that "
                          f"{'starts the server as the first node of a new cluster' if action == 'bootstrap' else action + 's the server'} "
                          f"(an argv list, e.g. [\"/usr/local/bin/db\", \"{action}\"]). Nothing was changed.",
                          variable=VARIABLES[action])
    return argv


def resolve(argv: list) -> list:
    """``argv`` with its program found on PATH or in the sbin directories (as the shell would)."""
    program = argv[0]
    if os.sep in program:
        return list(argv)
    found = shutil.which(program)
    if not found:
        for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin", "/bin"):
            candidate = os.path.join(directory, program)
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    return [found or program] + list(argv[1:])


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

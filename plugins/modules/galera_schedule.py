#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_schedule
short_description: A systemd timer on the controller that runs one of the collection's playbooks on a schedule
version_added: 0.4.0
description:
  - Writes two unit files on the scheduling host (the controller, not a Galera node) -
    C(dbtools-galera-<playbook>-<name>.service), a C(Type=oneshot) service that runs
    C(ansible-playbook -i <inventory> dbtools.galera.<playbook> [-b] [-e @<file>]... [--vault-password-file <file>])
    as O(user) in O(chdir), and C(dbtools-galera-<playbook>-<name>.timer) with O(on_calendar), C(Persistent=true)
    (a run missed while the host was down starts at boot) and O(randomized_delay).
  - A run still going when the timer fires again is not started twice (a oneshot service that is active is not
    started again); the collection's leases keep one run per cluster across controllers and AWX.
  - Each file is written atomically (mode 0644) and only when its text or mode differs. Where systemd is the
    running init (C(/run/systemd/system) exists), C(systemctl daemon-reload) after a change and
    C(systemctl enable --now) of the timer (C(restart) when it was already running and its files changed);
    with O(state=absent), C(systemctl disable --now) of the timer and the removal of exactly these two files.
    Without a running systemd (a container) the files are written or removed, a warning says so and
    RV(systemd_running) is false; the module does not fail for it.
  - Every value reaches a unit file. A value with a newline or another control character, a relative or
    non-normalised path, a C(,) in the inventory path or a C($) in the program's path is refused, naming the
    option; every other character (spaces, quotes, C($), C(%), backslashes, backticks) is escaped so that systemd reads
    back exactly the value given (systemd.service(5) "COMMAND LINES", systemd.syntax(7)); no shell is involved.
  - Secrets never go into the units, which every user of the host can read. Ansible reads them from the files
    O(extra_vars_files) and O(vault_password_file) name (the operator keeps those at mode 0600; the module warns
    when one is readable by others); an O(env) variable whose name says it is a secret (C(*PASSWORD*), C(*TOKEN*),
    C(*SECRET*), C(*_KEY)...) is refused, unless its name ends in C(_FILE), C(_PATH) or C(_DIR).
  - O(on_calendar) is checked with C(systemd-analyze calendar) when that program exists (it needs no running
    systemd), otherwise by its characters only.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reads the files and the timer's state and reports what it would write and run, changing nothing.
  diff_mode:
    support: full
    details: The text of each unit file before and after.
  platform:
    platforms: posix
options:
  state:
    description: V(present) writes the units and enables the timer; V(absent) disables it and removes both files.
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - The schedule's label, part of the unit name, for example the cluster's name. 1 to 64 letters, digits,
        C(_), C(.) or C(-), not starting with C(.) or C(-).
    type: str
    required: true
  playbook:
    description: The playbook of the collection the timer runs.
    type: str
    choices: [backup, binlog_archive, freshness, restore_drill]
    required: true
  inventory:
    description:
      - Absolute path of the inventory (file or directory) on the scheduling host, passed as C(-i). Required with
        O(state=present). It must not hold a C(,) (ansible would read a missing one as a host list).
    type: str
  hosts:
    description:
      - The host pattern the playbook runs on (C(galera_hosts), passed as C(-e) JSON). Empty - the playbook's
        default, the group C(galera).
    type: str
    default: ""
  chdir:
    description:
      - Absolute path of the working directory of the runs (ansible reads C(ansible.cfg) there). Default - the
        inventory's directory.
    type: str
  user:
    description: The local user the runs run as; its SSH key must reach the nodes.
    type: str
    default: root
  become:
    description: Pass C(-b) (the playbooks need root on the nodes).
    type: bool
    default: true
  extra_vars_files:
    description:
      - Absolute paths of extra vars files, each passed as C(-e @<path>) (for example a vaulted file with the login
        and the encryption key, and the playbook's settings).
    type: list
    elements: str
    default: []
  vault_password_file:
    description: Absolute path of a file holding the vault password, passed as C(--vault-password-file). Empty - none.
    type: str
    default: ""
  env:
    description:
      - Environment variables of the runs (C(Environment=) lines), for example C(ANSIBLE_COLLECTIONS_PATH) when the
        collection is installed for that user only, or C(ANSIBLE_CONFIG). No secret (see above).
    type: dict
    default: {}
  ansible_playbook:
    description: Absolute path of the C(ansible-playbook) program (a virtualenv's, say).
    type: str
    default: /usr/bin/ansible-playbook
  on_calendar:
    description:
      - When the timer fires (C(OnCalendar=), systemd.time(7)). Empty - the playbook's default, C(*:0/5)
        (every 5 minutes) for V(binlog_archive), C(*-*-* 01:30:00) for V(backup), C(hourly) for V(freshness),
        C(Sun *-*-* 05:00:00) for V(restore_drill).
    type: str
    default: ""
  randomized_delay:
    description: Seconds of random delay added to each firing (C(RandomizedDelaySec=)), to spread many timers.
    type: int
    default: 0
  timeout:
    description:
      - Seconds one run may take before systemd stops it (C(TimeoutStartSec=)). 0 - the playbook's default,
        3600 for V(binlog_archive), 900 for V(freshness), 86400 for V(backup) and V(restore_drill).
    type: int
    default: 0
  unit_dir:
    description: The directory of the unit files.
    type: str
    default: /etc/systemd/system
notes:
  - Runs on the scheduling host; with the role, C(delegate_to) it (the role's C(schedule) entry point runs there
    with C(become)).
  - The runs' output goes to the journal - C(journalctl -u dbtools-galera-binlog_archive-prod).
seealso:
  - name: systemd.timer(5)
    description: The timer's settings.
    link: https://www.freedesktop.org/software/systemd/man/systemd.timer.html
  - name: systemd.service(5), command lines
    description: How ExecStart= is quoted and escaped.
    link: https://www.freedesktop.org/software/systemd/man/systemd.service.html#Command%20lines
"""

EXAMPLES = r"""
- name: Archive the binary logs of cluster prod every 5 minutes from the controller
  dbtools.galera.galera_schedule:
    name: prod
    playbook: binlog_archive
    inventory: /srv/galera-ops/inventory.ini
    hosts: prod
    user: backup
    extra_vars_files: [/srv/galera-ops/vault.yml]
    vault_password_file: /srv/galera-ops/.vault-pass
    ansible_playbook: /srv/galera-ops/venv/bin/ansible-playbook
    env:
      ANSIBLE_COLLECTIONS_PATH: /srv/galera-ops/collections
  become: true

- name: Remove it
  dbtools.galera.galera_schedule:
    name: prod
    playbook: binlog_archive
    state: absent
  become: true
"""

RETURN = r"""
unit:
  description: The units' name without suffix.
  returned: always
  type: str
  sample: dbtools-galera-binlog_archive-prod
files:
  description: The path of each unit file.
  returned: always
  type: dict
  sample: {"service": "/etc/systemd/system/dbtools-galera-binlog_archive-prod.service",
           "timer": "/etc/systemd/system/dbtools-galera-binlog_archive-prod.timer"}
changed_files:
  description: Which of the two files this run wrote (or removed); in check mode, which it would.
  returned: always
  type: list
  elements: str
  sample: [service, timer]
service:
  description: The text of the service unit (empty with O(state=absent)).
  returned: always
  type: str
timer:
  description: The text of the timer unit (empty with O(state=absent)).
  returned: always
  type: str
command:
  description: The argv the service runs, as systemd reads it back from C(ExecStart=).
  returned: when O(state=present)
  type: list
  elements: str
  sample: ["/usr/bin/ansible-playbook", "-i", "/srv/galera-ops/inventory.ini", "dbtools.galera.binlog_archive", "-b"]
on_calendar:
  description: The calendar event of the timer (O(on_calendar) or the playbook's default).
  returned: when O(state=present)
  type: str
  sample: "*:0/5"
calendar_normalized:
  description: systemd-analyze's normalised form of O(on_calendar); null when systemd-analyze is not installed.
  returned: when O(state=present)
  type: str
  sample: "*-*-* *:00/5:00"
systemd_running:
  description: Whether systemd is the running init here; without it no systemctl command runs.
  returned: always
  type: bool
commands:
  description: The systemctl argv lists run (in check mode, those that would run).
  returned: always
  type: list
  elements: list
  sample: [["/usr/bin/systemctl", "daemon-reload"], ["/usr/bin/systemctl", "enable", "--now",
           "dbtools-galera-binlog_archive-prod.timer"]]
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _schedule
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run_local
from ansible_collections.dbtools.galera.plugins.module_utils._proc import systemd_running


def main():
    module = build_module(
        dict(
            state=dict(type="str", default="present", choices=list(_schedule.STATES)),
            name=dict(type="str", required=True),
            playbook=dict(type="str", required=True, choices=list(_schedule.PLAYBOOKS)),
            # str, not path: a path option expands ~ and $VAR, and every character must reach the unit as given.
            inventory=dict(type="str"),
            hosts=dict(type="str", default=""),
            chdir=dict(type="str"),
            user=dict(type="str", default="root"),
            become=dict(type="bool", default=True),
            extra_vars_files=dict(type="list", elements="str", default=[]),
            vault_password_file=dict(type="str", default="", no_log=False),
            env=dict(type="dict", default={}),
            ansible_playbook=dict(type="str", default=_schedule.DEFAULT_ANSIBLE_PLAYBOOK),
            on_calendar=dict(type="str", default=""),
            randomized_delay=dict(type="int", default=0),
            timeout=dict(type="int", default=0),
            unit_dir=dict(type="str", default=_schedule.DEFAULT_UNIT_DIR),
        ),
        connection=False,
        supports_check_mode=True,
    )
    p = module.params

    def work():
        settings = _schedule.check_settings(p, runner=module)
        systemd = systemd_running()
        done = _schedule.apply(settings, p["state"], module.check_mode, systemd, runner=module)
        for warning in done["warnings"]:
            module.warn(warning)
        texts = _schedule.render(settings) if p["state"] == "present" else dict(service="", timer="")
        result = dict(changed=done["changed"], unit=settings["unit"], files=done["files"],
                      changed_files=done["changed_files"], service=texts["service"], timer=texts["timer"],
                      systemd_running=systemd, commands=done["commands"])
        if p["state"] == "present":
            result.update(command=_schedule.command(settings), on_calendar=settings["on_calendar"],
                          calendar_normalized=settings["calendar_normalized"])
        if module._diff:
            result["diff"] = done["diff"]
        return result

    run_local(module, work)


if __name__ == "__main__":
    main()

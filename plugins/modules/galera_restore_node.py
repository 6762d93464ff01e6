#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_restore_node
short_description: The node-side steps of rebuilding a Galera cluster or one node from a physical backup
version_added: 0.3.0
description:
  - Used by the P(dbtools.galera.galera_restore#role) role (playbooks C(dbtools.galera.restore_cluster) and
    C(dbtools.galera.rebuild_node)), one O(step) per call. The read-only steps come first, so that every refusal
    happens before anything changes.
  - V(inspect) reads the server's configuration (C(my_print_defaults --mysqld)), whether the server runs and its
    wsrep state (cluster status, state, size, state uuid, C(wsrep_local_cached_downto), gcache size), the data
    directory, and the backups at the source, the node's backup directory (O(dir)) or an off-host store
    (O(source)). Changes nothing.
  - V(check) checks the chosen backup O(id) on this node, changing nothing, its chain at the source (a missing
    member is named), the key against every encrypted member, the tools, and that the data directory is not
    a mount point (it could not be moved aside).
  - V(stage) starts a detached worker that fetches the chain from the store into O(work_dir) (every file checked
    against C(SHA256SUMS) on arrival, then the MACs of encrypted files), extracts, decrypts and prepares it
    into C(<datadir>.dbtools-restore-<run>) beside the data directory and writes C(grastate.dat) there from the
    manifest's C(uuid:seqno) (O(grastate)). The data directory itself is not touched. V(wait) reports the
    worker's progress (step, bytes) and, once done, its result; on failure the staged directory is removed.
  - V(swap) stops the server when it runs and O(stop) is true (a confirmed disaster restore; otherwise it refuses),
    moves the existing data directory aside to C(<datadir>.dbtools-<UTC time>) (a rename, never a deletion) and
    renames the staged directory into its place, or, without O(run_id), leaves an empty data directory (the node
    takes a full SST).
  - V(start) runs the bootstrap or start command (O(action); O(start_command), O(bootstrap_command) or the
    systemd defaults), after noting where the error log ends. V(joined) reads the log from there and says how
    the node got its state (C(IST), C(SST), C(none), or C(unknown) without a log).
  - V(clear_lease) deletes the backup's desync lease row (the backed-up node was desynced while the backup ran),
    before the cluster serves. V(verify) returns the node's Galera state, its tables and their C(CHECKSUM TABLE)
    figures. V(cleanup) removes the backups this run fetched into O(work_dir), named by O(fetched), nothing else.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._restore_source
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The read-only steps run; the others run their checks and say what they would do.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  step:
    description: The step to run.
    type: str
    required: true
    choices: [inspect, check, stage, wait, swap, start, joined, clear_lease, verify, cleanup]
  datadir:
    description: The server's data directory; empty takes the configured one (C(datadir)), else C(/var/lib/mysql).
    type: str
    default: ""
  defaults_file:
    description: The server's option file, for hosts with several servers (C(my_print_defaults --defaults-file)).
    type: path
  error_log:
    description: The server's error log, when the configuration names none (C(log_error)).
    type: path
  service:
    description:
      - The systemd unit of the server (the default commands, and its journal when there is no error log).
      - With the default commands, V(inspect) checks that systemd knows it and that it runs this node's server.
    type: str
    default: mariadb
  id:
    description: The backup to restore (V(check), V(stage)).
    type: str
  grastate:
    description: The C(grastate.dat) V(stage) writes, V(bootstrap) (C(safe_to_bootstrap) 1), V(joiner) (0) or V(none).
    type: str
    choices: [bootstrap, joiner, none]
    default: none
  stop:
    description: V(swap) may stop a running server (a confirmed disaster restore).
    type: bool
    default: false
  start_command:
    description: The command that starts the server and returns once it answers (an argv). Default C(systemctl start <service>).
    type: list
    elements: str
  stop_command:
    description: The command that stops the server and returns once it has stopped. Default C(systemctl stop <service>).
    type: list
    elements: str
  bootstrap_command:
    description:
      - The command that starts the server as the first node of a new cluster.
      - Default C(galera_new_cluster) where systemd runs and O(service) is V(mariadb); required for any other unit
        (C(galera_new_cluster) bootstraps only C(mariadb.service)) and without systemd.
    type: list
    elements: str
  action:
    description: V(start) or V(bootstrap), for O(step=start).
    type: str
    choices: [start, bootstrap]
    default: start
  log_offset:
    description: Where the error log ended before the start (V(joined)).
    type: int
  started_at:
    description: When the start began, a Unix time (V(joined), for the journal).
    type: float
  position:
    description: The position the restore wrote (V(joined)), C(cluster_uuid) and C(seqno).
    type: dict
  lease_database:
    description: The database of the desync lease (V(clear_lease)).
    type: str
    default: dbtools_galera
  tables:
    description: The tables to checksum (V(verify)), C([schema, table]) pairs; empty checksums every user table.
    type: list
    elements: raw
  fetched:
    description: The backup ids V(cleanup) removes from O(work_dir) (those V(stage) fetched).
    type: list
    elements: str
notes:
  - Run it with C(become). It never deletes a data directory.
seealso:
  - module: dbtools.galera.galera_restore
  - module: dbtools.galera.galera_wait_synced
"""

EXAMPLES = r"""
- name: Read what the node runs and which backups the store holds
  dbtools.galera.galera_restore_node:
    step: inspect
    source: "{{ galera_backup_copies[0] }}"
  register: inspected

- name: Prepare a backup beside the data directory, as the first node of the rebuilt cluster
  dbtools.galera.galera_restore_node:
    step: stage
    id: dbtools_galera-node3_20261201T030000Z-1a2b3c4d
    source: "{{ galera_backup_copies[0] }}"
    grastate: bootstrap
    encrypt_key_file: /root/galera-backup.key
  register: staged
"""

RETURN = r"""
msg:
  description: What the step did (or would do).
  returned: always
  type: str
config:
  description: The server's configuration as the restore reads it (V(inspect)).
  returned: when O(step=inspect)
  type: dict
server:
  description: Whether the server answers or its process runs, and its wsrep figures (V(inspect)).
  returned: when O(step=inspect)
  type: dict
commands:
  description:
    - For each action (C(start), C(bootstrap), C(stop)) the command it would run (C(argv)) and, when it cannot, why
      (C(problem)) (V(inspect)). The restore plan refuses a node whose command for what the plan needs there has a
      problem, before anything changes.
    - A default command (systemd runs and the command is not given) has a problem when systemd does not know
      O(service), or, for C(stop) while the server runs, when the server's process (its pid file) is not in that
      unit's control group.
  returned: when O(step=inspect)
  type: dict
source:
  description: The backups at the source, as M(dbtools.galera.galera_backup_info) summarises them (V(inspect)).
  returned: when O(step=inspect)
  type: dict
run_id:
  description: The run of V(stage).
  returned: when O(step=stage)
  type: str
progress:
  description: The worker's step, elapsed seconds, bytes written so far and time per phase (V(wait)).
  returned: when O(step=wait)
  type: dict
out:
  description: The worker's result once done (V(wait)), with the staging directory, the fetched ids, the tables.
  returned: when O(step=wait)
  type: dict
aside:
  description: Where the existing data directory was moved (V(swap)); null when there was none.
  returned: when O(step=swap)
  type: str
joined:
  description: How the node got its state (V(joined)), C(method) IST, SST, none or unknown, with the log lines.
  returned: when O(step=joined)
  type: dict
lease:
  description: The lease row cleared (V(clear_lease)).
  returned: when O(step=clear_lease)
  type: dict
checksums:
  description: C(CHECKSUM TABLE) figures and rows by C(schema.table) (V(verify)).
  returned: when O(step=verify)
  type: dict
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _restore_job
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run_local

CONNECTING = ("inspect", "swap", "start", "clear_lease", "verify")


def main():
    module = build_module(
        dict(
            **_restore_job.common_options(),
            step=dict(type="str", required=True, choices=["inspect", "check", "stage", "wait", "swap", "start",
                                                          "joined", "clear_lease", "verify", "cleanup"]),
            datadir=dict(type="str", default=""),
            defaults_file=dict(type="path"),
            error_log=dict(type="path"),
            service=dict(type="str", default="mariadb"),
            id=dict(type="str"),
            grastate=dict(type="str", choices=["bootstrap", "joiner", "none"], default="none"),
            stop=dict(type="bool", default=False),
            start_command=dict(type="list", elements="str"),
            stop_command=dict(type="list", elements="str"),
            bootstrap_command=dict(type="list", elements="str"),
            action=dict(type="str", choices=["start", "bootstrap"], default="start"),
            log_offset=dict(type="int"),
            started_at=dict(type="float"),
            position=dict(type="dict"),
            lease_database=dict(type="str", default="dbtools_galera"),
            tables=dict(type="list", elements="raw"),
            fetched=dict(type="list", elements="str"),
        ),
        supports_check_mode=True,
        mutually_exclusive=[("encrypt_key", "encrypt_key_file")],
        required_if=[("step", "check", ("id",)), ("step", "stage", ("id",)), ("step", "wait", ("run_id",))],
    )
    p = module.params
    if p["step"] in CONNECTING:
        _connection.require_pymysql(module)
    steps = dict(
        inspect=lambda: _restore_job.inspect(module, p),
        check=lambda: _restore_job.check(module, p),
        stage=lambda: _restore_job.stage(module, p, module.check_mode),
        wait=lambda: _restore_job.wait(p),
        swap=lambda: _restore_job.swap(module, p, module.check_mode),
        start=lambda: _restore_job.start(module, p, module.check_mode),
        joined=lambda: _restore_job.joined(module, p),
        clear_lease=lambda: _restore_job.clear_lease(p, module.check_mode),
        verify=lambda: _restore_job.verify(p),
        cleanup=lambda: _restore_job.cleanup(p, module.check_mode),
    )
    run_local(module, steps[p["step"]])


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_restore_drill
short_description: Restore the newest backup on a scratch host, start a standalone server, verify it, record the result
version_added: 0.3.0
description:
  - A restore drill, used by the P(dbtools.galera.galera_restore#role) role (C(tasks_from=drill), playbook
    C(dbtools.galera.restore_drill)). No cluster is touched; the host needs the server and backup packages, not a
    cluster.
  - V(start) chooses the newest restorable backup of O(cluster) at the source (an off-host store O(source), or the
    directory O(dir)), checks the key against every encrypted member, and starts a detached worker that fetches
    the chain into O(work_dir) (every file checked against C(SHA256SUMS) on arrival, then the MACs), prepares it
    into a scratch directory, starts a standalone server on it (socket only, no network, wsrep off, no binary
    log), checks that every table of the backup is there and that the C(CHECKSUM TABLE) figures equal those the
    backup's own restore verification recorded, stops the server and removes the scratch copy and what it fetched.
  - The worker writes the result, good or failed (with the step that failed), to C(<record_dir>/drill-<cluster>.json)
    (atomically, 0644); a failed record carries the last successful drill, so the freshness check
    (M(dbtools.galera.galera_drill_info)) can tell how old the last good drill is. With O(metrics_dir) it also
    writes the drill's metrics (C(galera_backup_drill_last_success_timestamp_seconds), ...) into node_exporter's
    textfile directory.
  - V(wait) reports the worker's progress and, once done, its result; it fails when the drill failed.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._restore_source
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: V(start) chooses the backup and checks the key, and says what it would do.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  step:
    description: V(start) the drill, or V(wait) for it.
    type: str
    choices: [start, wait]
    default: start
  cluster:
    description: The cluster whose newest backup is drilled; empty when the source holds backups of one cluster only.
    type: str
    default: ""
  id:
    description: Drill this backup instead of the newest.
    type: str
  keep_fetched:
    description: Keep the fetched backups in O(work_dir) after the drill.
    type: bool
    default: false
  record_dir:
    description: Where C(drill-<cluster>.json) is written (created 0755 when missing).
    type: path
    default: /var/lib/dbtools-galera
  metrics_dir:
    description: node_exporter's textfile directory for the drill's metrics; empty writes none.
    type: path
  node_name:
    description: The C(node) label of the metrics and the record's C(host); default this host's name.
    type: str
seealso:
  - module: dbtools.galera.galera_drill_info
  - module: dbtools.galera.galera_restore_node
"""

EXAMPLES = r"""
- name: Drill the newest backup of cluster prod from the S3 store
  dbtools.galera.galera_restore_drill:
    cluster: prod
    source: "{{ galera_backup_copies | selectattr('name', 'equalto', 's3') | first }}"
    encrypt_key_file: /root/galera-backup.key
  register: drill

- name: Wait for it
  dbtools.galera.galera_restore_drill:
    step: wait
    run_id: "{{ drill.run_id }}"
  register: drilled
  until: drilled is failed or drilled.done
  retries: 720
  delay: 0
"""

RETURN = r"""
run_id:
  description: The drill's run (V(start)).
  returned: when O(step=start)
  type: str
id:
  description: The backup drilled (V(start)).
  returned: when O(step=start)
  type: str
record:
  description: The path of the drill's record.
  returned: when O(step=start)
  type: str
progress:
  description: The worker's step, elapsed seconds, bytes and time per phase (V(wait)).
  returned: when O(step=wait)
  type: dict
out:
  description: The drill's result once done (V(wait)), with C(drill), the record written.
  returned: when O(step=wait)
  type: dict
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _restore_job
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run_local


def main():
    module = build_module(
        dict(
            **_restore_job.common_options(),
            step=dict(type="str", choices=["start", "wait"], default="start"),
            cluster=dict(type="str", default=""),
            id=dict(type="str"),
            keep_fetched=dict(type="bool", default=False),
            record_dir=dict(type="path", default="/var/lib/dbtools-galera"),
            metrics_dir=dict(type="path"),
            node_name=dict(type="str"),
        ),
        connection=False,
        supports_check_mode=True,
        mutually_exclusive=[("encrypt_key", "encrypt_key_file")],
        required_if=[("step", "wait", ("run_id",))],
    )
    p = module.params
    if p["step"] == "wait":
        run_local(module, lambda: _restore_job.wait(p))
    run_local(module, lambda: _restore_job.drill_start(module, p, module.check_mode))


if __name__ == "__main__":
    main()

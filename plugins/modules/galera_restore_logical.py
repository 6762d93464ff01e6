#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_restore_logical
short_description: Load a mysqldump or mydumper backup into a running Galera cluster through one node, Galera-safe
version_added: 0.3.0
description:
  - Used by the P(dbtools.galera.galera_restore#role) role (C(tasks_from=logical), playbook C(dbtools.galera.restore_logical)).
    Runs on one node, which must be Synced in a Primary component; the other nodes receive the rows by
    replication.
  - "V(start) chooses the backup (O(id), or the newest restorable logical backup of the node's cluster at the source),
    refuses a physical backup, one of another cluster and a wrong key, then starts a detached worker that fetches
    it (checksums on arrival, then the MACs), reads every C(CREATE TABLE) first and refuses, naming them, tables
    that are not InnoDB or have no primary key (Galera replicates only InnoDB rows and needs keys), and then loads
    it. A mysqldump is streamed (decrypted, decompressed) through a filter that drops C(LOCK TABLES) and
    C(UNLOCK TABLES), C(SET @@SESSION.SQL_LOG_BIN=0) and, unless O(system), the system schemas (C(mysql), with
    C(mysql.global_priv) and C(mysql.wsrep_*), and C(sys)); a mydumper directory goes through myloader with a
    C(--regex) that leaves the same schemas out. The collection's own lease schema (O(lease_database)) is never
    loaded: the running cluster's live lease stays as it is."
  - V(wait) reports the worker's progress and its result; verify the tables and checksums on every node
    afterwards with M(dbtools.galera.galera_restore_node) C(step=verify).
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._restore_source
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: V(start) chooses the backup and checks the node and the key, and says what it would load.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  step:
    description: V(start) the load, or V(wait) for it.
    type: str
    choices: [start, wait]
    default: start
  cluster:
    description: The cluster whose backup is loaded; default the node's C(wsrep_cluster_name).
    type: str
    default: ""
  id:
    description: The backup to load; default the newest restorable logical backup of the cluster.
    type: str
  system:
    description: Also load the system schemas (C(mysql), with C(mysql.global_priv) and C(mysql.wsrep_*), and C(sys)).
    type: bool
    default: false
  require_pk:
    description: Refuse tables without a primary key (tables that are not InnoDB are always refused).
    type: bool
    default: true
  threads:
    description: myloader threads.
    type: int
    default: 2
  lease_database:
    description: The collection's lease schema, never loaded.
    type: str
    default: dbtools_galera
seealso:
  - module: dbtools.galera.galera_restore_node
"""

EXAMPLES = r"""
- name: Load the newest mysqldump backup of the cluster through this node
  dbtools.galera.galera_restore_logical:
    dir: /var/backups/galera
  register: load

- name: Wait for it
  dbtools.galera.galera_restore_logical:
    step: wait
    run_id: "{{ load.run_id }}"
  register: loaded
  until: loaded is failed or loaded.done
  retries: 720
  delay: 0
"""

RETURN = r"""
run_id:
  description: The load's run (V(start)).
  returned: when O(step=start)
  type: str
checksums:
  description: The C(CHECKSUM TABLE) figures the backup's restore verification recorded (V(start)).
  returned: when O(step=start)
  type: dict
out:
  description: The load's result once done (V(wait)), with the backup's tables and what the filter left out.
  returned: when O(step=wait)
  type: dict
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _restore_job
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run_local


def main():
    module = build_module(
        dict(
            **_restore_job.common_options(),
            step=dict(type="str", choices=["start", "wait"], default="start"),
            cluster=dict(type="str", default=""),
            id=dict(type="str"),
            system=dict(type="bool", default=False),
            require_pk=dict(type="bool", default=True),
            threads=dict(type="int", default=2),
            lease_database=dict(type="str", default="dbtools_galera"),
        ),
        supports_check_mode=True,
        mutually_exclusive=[("encrypt_key", "encrypt_key_file")],
        required_if=[("step", "wait", ("run_id",))],
    )
    p = module.params
    if p["step"] == "wait":
        run_local(module, lambda: _restore_job.wait(p))
    _connection.require_pymysql(module)
    run_local(module, lambda: _restore_job.logical_start(module, p, module.check_mode))


if __name__ == "__main__":
    main()

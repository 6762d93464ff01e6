#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_backup_info
short_description: The backups of a Galera cluster on this host, their chains and their freshness
version_added: 0.2.0
description:
  - Reads the backup directory written by the P(dbtools.galera.galera_backup#role) role, every
    backup with a C(manifest.json) and every failed-run record C(<id>.failed.json). Directories
    ending C(.partial) or C(.partial.verify) are backups in progress and are ignored.
  - Reports each backup with its chain and whether it can be restored (an incremental backup needs
    every backup of its chain, up to its full backup), the newest restorable backup and the last run
    of each cluster, and one summary line for monitoring.
  - With O(max_age), O(fail_on) turns the module into a check for cron or monitoring. It fails with
    the summary line as its message, still returning all the data.
  - With O(merge), it reads no directory and combines earlier results of this module, for example
    one per node, into one verdict per cluster (backups live on the node that was backed up).
  - Read-only, never reports a change.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  path:
    description: The backup directory on this host (the role's C(galera_backup_dir)).
    type: path
    default: /var/backups/galera
  cluster:
    description: Only the backups and failed runs of the cluster of this name (C(wsrep_cluster_name)).
    type: str
  max_age:
    description:
      - The oldest age, in seconds, that the newest restorable backup of a cluster may have.
      - When given, RV(stale) is returned and the summary line names this limit.
    type: int
  fail_on:
    description:
      - Fail, with the summary line as the message, when any of these conditions holds.
      - V(stale), the newest restorable backup of a cluster is older than O(max_age), or there is none
        (needs O(max_age)).
      - V(last_run_failed), the newest run of a cluster, backup or failure record, failed.
      - V(none_found), a cluster has no restorable backup, or no backup was found at all.
    type: list
    elements: str
    choices: [stale, last_run_failed, none_found]
    default: []
  merge:
    description:
      - Earlier results of this module to combine, as a dict from a label (the inventory host) to
        the registered result. No directory is read and O(path) is ignored.
      - A label whose result is empty or has no RV(backups) (an unreachable host, a failed task) is
        reported in RV(problems).
      - Ages are worked out again at the time of the merge.
    type: dict
  parent_for:
    description:
      - Also choose the parent of an incremental backup about to be taken, returned as RV(parent) with
        RV(parent_reason). Needs O(cluster); not with O(merge).
      - The parent is the newest restorable backup of the cluster taken on the node with the same
        method, when it has a C(position.to_lsn), its chain holds fewer than O(parent_for.max_incrementals)
        incrementals and it is encrypted with the same key (or neither is encrypted). Otherwise there is no
        parent and a full backup starts a new chain; building on an older backup would fork the chain.
    type: dict
    suboptions:
      wsrep_node_name:
        description: The node to be backed up (InnoDB LSNs belong to one node's data directory).
        type: str
        required: true
      method:
        description: The backup tool, V(mariabackup) or V(xtrabackup).
        type: str
        required: true
      max_incrementals:
        description: Incrementals one full backup may carry.
        type: int
        required: true
      key_id:
        description: Id of the encryption key of the backup to be taken; none when it is not encrypted.
        type: str
notes:
  - Ages are the time from a backup's C(finished_at) to the current UTC time of the host that runs
    the module.
  - A missing backup directory is not a problem on its own (nodes that are never backed up have
    none); it only shows when no backup is found at all.
seealso:
  - module: dbtools.galera.galera_backup_prune
"""

EXAMPLES = r"""
- name: List the backups on this node
  dbtools.galera.galera_backup_info:
    path: /var/backups/galera
  register: backups

- name: Show the newest restorable backup of each cluster
  ansible.builtin.debug:
    msg: "{{ backups.newest }}"

- name: Fail when the newest backup is older than 26 hours or the last run failed
  dbtools.galera.galera_backup_info:
    cluster: dbtools
    max_age: 93600
    fail_on: [stale, last_run_failed, none_found]

- name: Combine the results of every node, once
  dbtools.galera.galera_backup_info:
    merge: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, 'backups'))) }}"
    max_age: 93600
  run_once: true
  delegate_to: localhost
  register: combined
"""

RETURN = r"""
backups:
  description: The backups, newest first.
  returned: always
  type: list
  elements: dict
  sample: [{"id": "dbtools_galera-node3_20261125T030000Z", "type": "full", "parent": null,
            "chain": ["dbtools_galera-node3_20261125T030000Z"], "cluster": "dbtools", "node": "galera-node3",
            "wsrep_node_name": "galera-node3", "finished_at": "2026-11-25T03:01:10Z", "age_seconds": 7560.0,
            "bytes": 1288490188, "method": "mariabackup", "encryption": {"key_id": "3f0a9c1d2b4e5f60",
            "cipher": "aes-256-ctr"}, "verify": "prepare",
            "position": {"cluster_uuid": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef", "seqno": 1234, "to_lsn": 4711},
            "restorable": true, "broken": null, "path": "/var/backups/galera/dbtools_galera-node3_20261125T030000Z"}]
  contains:
    id:
      description: The backup id, also its directory name.
      type: str
    type:
      description: V(full) or V(incremental) (a manifest without a type is a full backup).
      type: str
    parent:
      description: The id of the backup an incremental backup builds on, null for a full backup.
      type: str
    chain:
      description: The ids from the chain's full backup to this one.
      type: list
      elements: str
    restorable:
      description: Whether every backup of the chain is present and good.
      type: bool
    broken:
      description: Why the backup cannot be restored, null when it can.
      type: str
    age_seconds:
      description: Seconds since C(finished_at).
      type: float
    encryption:
      description: C(key_id) and C(cipher), null for an unencrypted backup.
      type: dict
    verify:
      description: The level the backup was verified at (V(checksum), V(prepare), V(restore)).
      type: str
    position:
      description: C(cluster_uuid), C(seqno) and C(to_lsn) (null for logical backups).
      type: dict
failures:
  description: The failed-run records, newest first.
  returned: always
  type: list
  elements: dict
  sample: [{"id": "dbtools_galera-node3_20261126T030000Z", "cluster": "dbtools", "node": "galera-node3",
            "method": "mariabackup", "started_at": "2026-11-26T03:00:00Z", "failed_at": "2026-11-26T03:02:11Z",
            "error": "mariabackup exited with status 1", "resynced": true,
            "path": "/var/backups/galera/dbtools_galera-node3_20261126T030000Z.failed.json"}]
newest:
  description: For each cluster name, the summary of its newest restorable backup.
  returned: always
  type: dict
  sample: {"dbtools": {"id": "dbtools_galera-node3_20261125T030000Z", "age_seconds": 7560.0}}
last_run:
  description:
    - For each cluster name, its newest run, a backup's C(finished_at) or a failure's C(failed_at),
      with C(result) (V(ok) or V(failed)), C(at), C(id), C(node) and C(error).
  returned: always
  type: dict
  sample: {"dbtools": {"result": "ok", "at": "2026-11-25T03:01:10Z", "id": "dbtools_galera-node3_20261125T030000Z",
                       "node": "galera-node3", "error": null}}
alerts:
  description: The conditions that hold, out of V(stale), V(last_run_failed) and V(none_found).
  returned: always
  type: list
  elements: str
  sample: ["last_run_failed"]
failing:
  description: The conditions of O(fail_on) that hold; the module failed when this is not empty.
  returned: always
  type: list
  elements: str
  sample: []
stale:
  description: Whether a cluster has no restorable backup younger than O(max_age).
  returned: when O(max_age) is given
  type: bool
  sample: false
problems:
  description: Unreadable or invalid manifests and failure records, backups that cannot be restored,
    merged results that are missing.
  returned: always
  type: list
  elements: str
  sample: ["backup dbtools_galera-node3_20261124T030000Z on galera-node3 cannot be restored:
           dbtools_galera-node3_20261123T030000Z, the parent of dbtools_galera-node3_20261124T030000Z, is missing"]
summary:
  description:
    - One line, starting C(OK), C(WARNING) (a condition or a problem that O(fail_on) does not name) or
      C(CRITICAL) (a condition of O(fail_on); the module failed with this line as its message).
  returned: always
  type: str
  sample: "OK: cluster dbtools newest backup dbtools_galera-node3_20261125T030000Z 2.1 h old (max 26.0 h),
    1.2 GiB, full, verified prepare, position 0a9b96b8-e84e-11f1-8837-e61f78bb5eef:1234"
checked_at:
  description: The UTC time the ages were computed at.
  returned: always
  type: str
  sample: "2026-11-25T05:07:10Z"
parent:
  description: The backup an incremental should build on (one of RV(backups)), or null for a full backup.
  returned: when O(parent_for) is given
  type: dict
parent_reason:
  description: Why RV(parent) was chosen, or why there is none.
  returned: when O(parent_for) is given
  type: str
  sample: the chain of the newest candidate dbtools_db3_20261125T030000Z has 7 backups, max_chain is 7
path:
  description: The directory read (null with O(merge)).
  returned: always
  type: str
  sample: /var/backups/galera
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog


def read(path, cluster, now):
    """Summaries, failure records and problems of one directory."""
    found = _catalog.read_dir(path)
    problems = [] if not found["exists"] else list(found["problems"])
    backups = [b for b in found["backups"] if cluster is None or _catalog.cluster_name(b) == cluster]
    failures = [_catalog.failure_summary(f) for f in found["failures"]
                if cluster is None or _catalog.cluster_name(f) == cluster]
    where = "in " + (path if found["exists"] else f"{path} (it does not exist)")
    return backups, _catalog.summarize(backups, now), failures, problems, where


def merge(results, cluster):
    """Summaries, failure records and problems of earlier results of this module."""
    summaries, failures, problems = [], [], []
    for label in sorted(results):
        result = results[label]
        if not isinstance(result, dict) or not isinstance(result.get("backups"), list):
            problems.append(f"{label}: no result to merge (unreachable, or its task failed or was skipped)")
            continue
        summaries.extend(s for s in result["backups"]
                         if isinstance(s, dict) and (cluster is None or s.get("cluster") == cluster))
        failures.extend(f for f in result.get("failures") or []
                        if isinstance(f, dict) and (cluster is None or f.get("cluster") == cluster))
        # Backups that cannot be restored are found again when the results are judged together.
        again = {_catalog.broken_problem(s) for s in result["backups"] if isinstance(s, dict)}
        problems.extend(f"{label}: {text}" for text in result.get("problems") or [] if text not in again)
    read = [f"{label} ({results[label].get('path')})" if isinstance(results[label], dict) and results[label].get("path")
            else label for label in sorted(results)]
    return summaries, failures, problems, "on " + (", ".join(read) or "no host")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/backups/galera"),
            cluster=dict(type="str"),
            max_age=dict(type="int"),
            fail_on=dict(type="list", elements="str", default=[],
                         choices=["stale", "last_run_failed", "none_found"]),
            merge=dict(type="dict"),
            parent_for=dict(type="dict", options=dict(
                wsrep_node_name=dict(type="str", required=True),
                method=dict(type="str", required=True),
                max_incrementals=dict(type="int", required=True),
                key_id=dict(type="str", no_log=False),
            )),
        ),
        mutually_exclusive=[("merge", "parent_for")],
        required_by=dict(parent_for="cluster"),
        supports_check_mode=True,
    )
    p = module.params
    if p["max_age"] is not None and p["max_age"] <= 0:
        module.fail_json(msg=f"max_age must be a positive number of seconds, got {p['max_age']}")
    if "stale" in p["fail_on"] and p["max_age"] is None:
        module.fail_json(msg="fail_on names stale but max_age is not set: give max_age, in seconds "
                             "(for example 93600 for 26 hours)")

    now = _catalog.utc_now()
    if p["merge"] is not None:
        summaries, failures, problems, where = merge(p["merge"], p["cluster"])
        path = None
    else:
        backups, summaries, failures, problems, where = read(p["path"], p["cluster"], now)
        path = p["path"]
    if p["cluster"] is not None:
        where += f", cluster {p['cluster']}"
    result = _catalog.freshness(summaries, failures, now=now, max_age=p["max_age"], fail_on=p["fail_on"],
                                problems=problems, where=where)
    result.update(changed=False, path=path)
    if p["parent_for"] is not None:
        want = p["parent_for"]
        parent, reason = _catalog.choose_parent(backups, p["cluster"], want["wsrep_node_name"], want["method"],
                                                want["max_incrementals"] + 1,
                                                key_matches=_catalog.key_id_matcher(want["key_id"]))
        result.update(parent=next((s for s in summaries if parent and s["id"] == parent["id"]), None),
                      parent_reason=reason)
    if result["failing"]:
        module.fail_json(msg=result["summary"], **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

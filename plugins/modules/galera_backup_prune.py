#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_backup_prune
short_description: Remove a Galera cluster's old backups, keeping every chain that a kept backup needs
version_added: 0.2.0
description:
  - Applies retention to the backups of one cluster in a backup directory written by the
    P(dbtools.galera.galera_backup#role) role.
  - Keeps every restorable backup that a retention rule keeps, together with every backup its chain
    needs (the full backup and the incremental backups in between). The rules are O(keep) (the newest
    backups), O(max_age) (the young ones) and O(keep_tiers) (calendar tiers hourly, daily, weekly,
    monthly, yearly); a backup is kept when any rule keeps it. The newest restorable backup is always
    kept. Every other backup of the cluster is removed. Give at least one rule.
  - Only restorable backups count for the rules. An incremental backup whose chain is broken (a backup
    it needs is missing) cannot be restored. It is removed when it is older than the oldest kept
    backup, kept and reported otherwise.
  - RV(reasons) says, for each kept backup, which rules keep it (for example C(daily 2026-11-30,
    weekly 2026-W48) or C(chain of <id>)); check mode and diff mode show the same before anything is
    removed.
  - Also removes the cluster's failed-run records C(<id>.failed.json) that are older than the oldest
    kept backup; the newest failed record of the cluster is always kept.
  - Only what provably is the cluster's is deleted. A backup, when its name is a backup id of the
    cluster and its C(manifest.json) names the same cluster name and, when both are known, the same
    cluster state uuid (O(cluster_uuid)); retention counts the backups of each state uuid apart, so two
    clusters that share a name (C(my_wsrep_cluster) is MariaDB's default) never prune each other.
  - An unfinished backup (C(<id>.partial), C(<id>.partial.verify)) is deleted only when its run record
    C(.run.json) names the cluster and that backup and is older than O(partial_margin), or was written
    on this host by a process that has ended. One without a valid run record, or whose process still
    runs, is left alone.
  - A failed-run record is deleted only when its name is an id of the cluster and it names the cluster.
  - Directories without a valid C(manifest.json), other files and the backups of other clusters are
    never touched; those that look like the cluster's are reported in RV(problems). Only direct
    children of O(path) are ever deleted.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._retention
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be removed, and why each kept backup stays (RV(reasons)); removes nothing.
  diff_mode:
    support: full
    details: Before and after lists of the cluster's backup ids, unfinished backups and failed-run records,
      then one line per backup saying why it is kept (the rules) or removed.
  platform:
    platforms: posix
options:
  path:
    description: The backup directory (the role's C(galera_backup_dir)).
    type: path
    required: true
  cluster:
    description: The name of the cluster (C(wsrep_cluster_name)) whose backups are pruned; others are left alone.
    type: str
    required: true
  keep:
    description:
      - How many restorable backups to keep, newest first, at least V(1).
      - Optional when O(max_age) or O(keep_tiers) is given; give at least one of the three.
    type: int
  cluster_uuid:
    description:
      - The cluster state uuid (C(wsrep_cluster_state_uuid)) whose backups may be deleted. Backups of the
        same cluster name with another state uuid are kept and reported in RV(problems).
      - Default, every state uuid of the cluster name, each pruned apart (the rules apply to each).
    type: str
  partial_margin:
    description:
      - Age in seconds past which an unfinished backup of the cluster (by its run record's start time) counts
        as abandoned and is deleted, whoever wrote it. Keep it above the longest backup run (the role's
        C(galera_backup_max_duration), 6 hours by default, plus a margin).
    type: int
    default: 22200
notes:
  - A backup is removed by deleting its C(manifest.json) first, so a removal cut short leaves a
    directory that no longer counts as a backup rather than a damaged backup that does.
  - A future binlog archive (point-in-time recovery) needs the binary logs from the oldest kept backup's
    position on; RV(oldest_kept) says where that is.
seealso:
  - module: dbtools.galera.galera_backup_info
"""

EXAMPLES = r"""
- name: Keep the three newest restorable backups of the cluster and what they need
  dbtools.galera.galera_backup_prune:
    path: /var/backups/galera
    cluster: dbtools
    keep: 3

- name: Keep two days of backups, then one a day for a week, one a week for a month, one a month for a year
  dbtools.galera.galera_backup_prune:
    path: /var/backups/galera
    cluster: dbtools
    max_age: 172800
    keep_tiers:
      daily: 7
      weekly: 4
      monthly: 12

- name: Show what retention would remove
  dbtools.galera.galera_backup_prune:
    path: /var/backups/galera
    cluster: dbtools
    keep: 1
  check_mode: true
  diff: true
  register: would

- name: Print the ids, and why the others stay
  ansible.builtin.debug:
    msg: "would remove {{ would.removed }}; kept: {{ would.reasons }}"
"""

RETURN = r"""
removed:
  description: The ids of the backups removed (in check mode, that would be removed), newest first.
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261120T030000Z", "dbtools_galera-node3_20261119T030000Z"]
removed_failures:
  description: The ids of the failed-run records removed (in check mode, that would be removed).
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261118T030000Z"]
kept:
  description: The ids of the cluster's backups kept, oldest first.
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261124T030000Z", "dbtools_galera-node3_20261125T030000Z"]
removed_partial:
  description: The unfinished backups of the cluster removed as abandoned (in check mode, that would be removed).
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261124T030000Z-0a1b2c3d.partial"]
in_flight:
  description: Unfinished backups of the cluster left alone (their run is alive, or younger than O(partial_margin)).
  returned: always
  type: list
  elements: str
  sample: []
reasons:
  description: For each kept backup id, the rules that keep it, comma-separated. C(newest restorable),
    C(keep 2 of 7), C(max_age) with the backup's age, a tier and its period (C(hourly 2026-11-30T14Z), C(daily 2026-11-30),
    C(weekly 2026-W48), C(monthly 2026-11), C(yearly 2026)), C(chain of <id>) (a kept backup needs it), or why a
    backup that cannot be restored is kept.
  returned: always
  type: dict
  sample: {"dbtools_galera-node3_20261124T030000Z": "daily 2026-11-24, weekly 2026-W48",
           "dbtools_galera-node3_20261125T030000Z": "newest restorable, keep 1 of 3, daily 2026-11-25"}
oldest_kept:
  description:
    - Per cluster (name and state uuid), the oldest kept restorable backup, with its times and C(position)
      as its manifest records it (Galera C(uuid:seqno), LSNs, binlog). Empty when nothing restorable is kept.
    - A binlog archive (point-in-time recovery) needs the binary logs from that position on, and no older ones.
  returned: always
  type: list
  elements: dict
  sample: [{"cluster": "dbtools", "cluster_uuid": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef",
            "id": "dbtools_galera-node3_20261124T030000Z", "started_at": "2026-11-24T03:00:00Z",
            "finished_at": "2026-11-24T03:12:40Z",
            "position": {"galera": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef:1234", "seqno": 1234, "to_lsn": 99812}}]
policy:
  description: The retention policy applied (rules not given are null).
  returned: always
  type: dict
  sample: {"keep": 3, "max_age": null, "hourly": null, "daily": 7, "weekly": 4, "monthly": 12, "yearly": null}
broken:
  description: The ids of the cluster's backups that cannot be restored (a backup of their chain is missing).
  returned: always
  type: list
  elements: str
  sample: []
problems:
  description: What looks like the cluster's but cannot be proven to be, and was left alone (unreadable
    or invalid manifests and records, another state uuid, an unfinished backup without a run record).
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _module, _retention


def main():
    module = _module.build_module(
        dict(
            path=dict(type="path", required=True),
            cluster=dict(type="str", required=True),
            keep=dict(type="int"),
            **_retention.retention_argument_spec(),
            cluster_uuid=dict(type="str"),
            partial_margin=dict(type="int", default=_retention.DEFAULT_MARGIN),
        ),
        connection=False,
        supports_check_mode=True,
    )
    p = module.params
    if p["partial_margin"] < 0:
        module.fail_json(msg=f"partial_margin must not be negative, got {p['partial_margin']}. Nothing was deleted.")

    def work():
        policy = _retention.policy_from_options(p["keep"], p["keep_tiers"], p["max_age"],
                                                untouched="Nothing was deleted.")
        result = _retention.prune(p["path"], p["cluster"], policy, module.check_mode, state_uuid=p["cluster_uuid"],
                                  margin=p["partial_margin"], diff=module._diff)
        if not result.pop("exists"):
            module.warn(f"{p['path']} does not exist: there is nothing to prune. Nothing was deleted.")
        return result
    _module.run_local(module, work)


if __name__ == "__main__":
    main()

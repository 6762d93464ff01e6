#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_drill_info
short_description: How long ago the last successful restore drill of each Galera cluster was
version_added: 0.3.0
description:
  - Reads the records C(drill-<cluster>.json) that M(dbtools.galera.galera_restore_drill) writes (playbook
    C(dbtools.galera.restore_drill)), and judges them per cluster, the newest drill and the newest successful one.
  - With O(max_age) and O(fail_on), a check for cron, monitoring and the C(dbtools.galera.freshness) playbook
    ("no successful drill in N days"). It fails with the summary line as its message, still returning the data.
  - With O(merge), it reads nothing and combines earlier results of this module (one per drill host).
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
    description: The directory of the drill records (the role's C(galera_restore_drill_dir)).
    type: path
    default: /var/lib/dbtools-galera
  cluster:
    description: Only the drills of this cluster; it counts as C(no_drill) when there is none.
    type: str
  max_age:
    description: The oldest age, in seconds, the last successful drill of a cluster may have.
    type: int
  fail_on:
    description:
      - Fail, with the summary line as the message, when any of these conditions holds.
      - V(drill_stale), the last successful drill of a cluster is older than O(max_age), or there is none (needs O(max_age)).
      - V(drill_failed), the newest drill of a cluster failed.
      - V(no_drill), no drill record was found (of O(cluster), when given).
    type: list
    elements: str
    choices: [drill_stale, drill_failed, no_drill]
    default: []
  merge:
    description: Earlier results of this module to combine, by a label (the host); no directory is read.
    type: dict
seealso:
  - module: dbtools.galera.galera_restore_drill
  - module: dbtools.galera.galera_backup_info
"""

EXAMPLES = r"""
- name: Fail when the last successful drill of cluster prod is older than 35 days
  dbtools.galera.galera_drill_info:
    cluster: prod
    max_age: 3024000
    fail_on: [drill_stale, drill_failed]
"""

RETURN = r"""
drills:
  description: The drill records read, as written (newest result per cluster and host).
  returned: always
  type: list
  elements: dict
clusters:
  description: Per cluster, C(last) (the newest drill), C(last_ok) (the newest successful one) and C(age_seconds) of it.
  returned: always
  type: dict
alerts:
  description: The conditions that hold, out of V(drill_stale), V(drill_failed) and V(no_drill).
  returned: always
  type: list
  elements: str
failing:
  description: The conditions of O(fail_on) that hold; the module failed when this is not empty.
  returned: always
  type: list
  elements: str
problems:
  description: Unreadable records, merged results that are missing.
  returned: always
  type: list
  elements: str
summary:
  description: One line, starting C(OK), C(WARNING) or C(CRITICAL).
  returned: always
  type: str
  sample: "OK: cluster prod last successful drill 52.0 h ago (max 840.0 h), backup prod_db3_20261201T030000Z-1a2b3c4d, 95.2 s on drill1"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/lib/dbtools-galera"),
            cluster=dict(type="str"),
            max_age=dict(type="int"),
            fail_on=dict(type="list", elements="str", default=[], choices=list(_catalog.DRILL_CONDITIONS)),
            merge=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["max_age"] is not None and p["max_age"] <= 0:
        module.fail_json(msg=f"max_age must be a positive number of seconds, got {p['max_age']}")
    if "drill_stale" in p["fail_on"] and p["max_age"] is None:
        module.fail_json(msg="fail_on names drill_stale but max_age is not set: give max_age, in seconds")
    problems = []
    if p["merge"] is not None:
        records = []
        for label in sorted(p["merge"]):
            result = p["merge"][label]
            if not isinstance(result, dict) or not isinstance(result.get("drills"), list):
                problems.append(f"{label}: no result to merge (unreachable, or its task failed or was skipped)")
                continue
            records.extend(result["drills"])
            problems.extend(f"{label}: {text}" for text in result.get("problems") or [])
        path = None
    else:
        found = _catalog.read_drills(p["path"])
        records, path = found["drills"], p["path"]
        problems.extend(found["problems"])
    if p["cluster"] is not None:
        records = [r for r in records if str(r.get("cluster")) == p["cluster"]]
    verdict = _catalog.drill_freshness(records, max_age=p["max_age"], fail_on=p["fail_on"],
                                       clusters=[p["cluster"]] if p["cluster"] is not None else None,
                                       problems=problems)
    verdict.update(changed=False, drills=records, path=path)
    if verdict["failing"]:
        module.fail_json(msg=verdict["summary"], **verdict)
    module.exit_json(**verdict)


if __name__ == "__main__":
    main()

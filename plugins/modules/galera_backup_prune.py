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
  - Keeps the O(keep) newest restorable backups together with every backup their chains need (the
    full backup and the incremental backups in between), so the newest restorable backup is always
    kept. Every other backup of the cluster is removed.
  - An incremental backup whose chain is broken (a backup it needs is missing) cannot be restored.
    It is removed when it is older than the oldest kept backup, kept and reported otherwise.
  - Also removes the cluster's failed-run records C(<id>.failed.json) that are older than the oldest
    kept backup; the newest failed record of the cluster is always kept.
  - Directories ending C(.partial) or C(.partial.verify) (backups in progress), directories without
    a valid C(manifest.json) and the backups of other clusters are never touched. Only direct
    children of O(path) whose names are backup ids are ever deleted.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be removed and removes nothing.
  diff_mode:
    support: full
    details: Before and after lists of the cluster's backup ids and failed-run records.
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
    description: How many restorable backups to keep, newest first, at least V(1).
    type: int
    required: true
notes:
  - A backup is removed by deleting its C(manifest.json) first, so a removal cut short leaves a
    directory that no longer counts as a backup rather than a damaged backup that does.
seealso:
  - module: dbtools.galera.galera_backup_info
"""

EXAMPLES = r"""
- name: Keep the three newest restorable backups of the cluster and what they need
  dbtools.galera.galera_backup_prune:
    path: /var/backups/galera
    cluster: dbtools
    keep: 3

- name: Show what retention would remove
  dbtools.galera.galera_backup_prune:
    path: /var/backups/galera
    cluster: dbtools
    keep: 1
  check_mode: true
  diff: true
  register: would

- name: Print the ids
  ansible.builtin.debug:
    msg: "would remove {{ would.removed }}"
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
broken:
  description: The ids of the cluster's backups that cannot be restored (a backup of their chain is missing).
  returned: always
  type: list
  elements: str
  sample: []
problems:
  description: Unreadable or invalid manifests and records, and paths that were not deleted because
    they did not look like backups of this directory.
  returned: always
  type: list
  elements: str
  sample: []
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog


def safe_child(base, found, name):
    """True when ``found`` is the real, direct child ``name`` of ``base`` (never trust a manifest's id)."""
    return (os.path.basename(found) == name and not os.path.islink(found)
            and os.path.realpath(os.path.dirname(found)) == os.path.realpath(base))


def plan_failures(failures, keep_backups):
    """The failed records to remove: older than the oldest kept backup, never the newest record."""
    if not failures or not keep_backups:
        return []
    oldest_kept = min(_catalog.backup_time(b) for b in keep_backups)
    ordered = sorted(failures, key=lambda f: (_catalog.parse_time(f.get("failed_at")) or _catalog.backup_time(f),
                                              str(f.get("id"))))
    return [f for f in ordered[:-1]
            if (_catalog.parse_time(f.get("failed_at")) or _catalog.backup_time(f)) < oldest_kept]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            cluster=dict(type="str", required=True),
            keep=dict(type="int", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    base = p["path"]
    if p["keep"] < 1:
        module.fail_json(msg=f"keep must be at least 1, got {p['keep']}: retention always keeps the newest "
                             "restorable backup. Nothing was deleted.")

    found = _catalog.read_dir(base)
    problems = list(found["problems"])
    if not found["exists"]:
        module.warn(f"{base} does not exist: there is nothing to prune. Nothing was deleted.")
    backups = [b for b in found["backups"] if _catalog.cluster_name(b) == p["cluster"]]
    failures = [f for f in found["failures"] if _catalog.cluster_name(f) == p["cluster"]]
    by_id = {b["id"]: b for b in backups}
    plan = _catalog.plan_retention(backups, p["keep"])

    remove = []
    for backup_id in plan["remove"]:
        backup = by_id[backup_id]
        folder = backup.get("path") or ""
        name = os.path.basename(folder)
        if _catalog.valid_id(name) and name == backup_id and safe_child(base, folder, name) and os.path.isdir(folder):
            remove.append(backup)
        else:
            problems.append(f"{folder} was not deleted: it is not a backup directory directly under {base}")
    remove.sort(key=lambda b: (_catalog.backup_time(b), b["id"]), reverse=True)  # incrementals before their parents

    remove_failures = []
    for record in plan_failures(failures, [by_id[i] for i in plan["keep"] if i not in plan["broken"]]):
        record_path = record.get("path") or ""
        name = os.path.basename(record_path)
        if (name.endswith(_catalog.FAILED_SUFFIX) and _catalog.valid_id(name[: -len(_catalog.FAILED_SUFFIX)])
                and safe_child(base, record_path, name) and os.path.isfile(record_path)):
            remove_failures.append(record)
        else:
            problems.append(f"{record_path} was not deleted: it is not a failed-run record directly under {base}")

    removed_ids = [b["id"] for b in remove]
    removed_failure_ids = [f["id"] for f in remove_failures]
    kept = list(plan["keep"])
    result = dict(changed=bool(remove or remove_failures), removed=removed_ids, removed_failures=removed_failure_ids,
                  kept=kept, broken=plan["broken"], problems=problems)
    if module._diff:
        before = sorted([b["id"] for b in backups] + [f["id"] + _catalog.FAILED_SUFFIX for f in failures])
        gone = set(removed_ids) | {i + _catalog.FAILED_SUFFIX for i in removed_failure_ids}
        result["diff"] = dict(before_header=f"{base} ({p['cluster']})", after_header=f"{base} ({p['cluster']})",
                              before="".join(i + "\n" for i in before),
                              after="".join(i + "\n" for i in before if i not in gone))
    if module.check_mode:
        module.exit_json(**result)

    done, done_failures = [], []
    for backup in remove:
        folder = backup["path"]
        try:
            manifest = os.path.join(folder, _catalog.MANIFEST)
            if os.path.lexists(manifest):
                os.remove(manifest)
            shutil.rmtree(folder)
        except OSError as exc:
            result.update(removed=done, removed_failures=done_failures, changed=bool(done))
            module.fail_json(msg=f"cannot delete {folder}: {exc.strerror or exc}. Removed before it: "
                                 f"{', '.join(done) or 'nothing'}; nothing after it was deleted. Check the "
                                 "permissions of the backup directory.", **result)
        done.append(backup["id"])
    for record in remove_failures:
        try:
            os.remove(record["path"])
        except OSError as exc:
            result.update(removed=done, removed_failures=done_failures, changed=bool(done or done_failures))
            module.fail_json(msg=f"cannot delete {record['path']}: {exc.strerror or exc}. The backups were "
                                 "pruned; failed-run records after it were not deleted.", **result)
        done_failures.append(record["id"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()

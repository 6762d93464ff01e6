# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The galera_restore role's rules on the controller: settings, the plan of a restore, the verdict
of its verification, in Python (plugins/module_utils/_recovery.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.dbtools.galera.plugins.module_utils import _recovery


def restore_settings_errors(settings, hosts=None):
    if not isinstance(settings, dict):
        raise AnsibleFilterError("restore_settings_errors: the input must be the dict of settings")
    return _recovery.check_settings(settings, list(hosts) if hosts is not None else None)


def restore_plan(facts, hosts, settings, kind="cluster", target=""):
    if not isinstance(facts, dict):
        raise AnsibleFilterError("restore_plan: the input must be a dict of inventory host to inspection result")
    if not isinstance(settings, dict):
        raise AnsibleFilterError("restore_plan: settings must be a dict")
    if kind == "cluster":
        return _recovery.plan_cluster(facts, list(hosts or []), settings)
    if kind == "rebuild":
        return _recovery.plan_rebuild(facts, list(hosts or []), target or "", settings)
    raise AnsibleFilterError(f"restore_plan: kind must be cluster or rebuild, got {kind!r}")


def restore_verdict(nodes, expected, recorded, skip=(), ignore_schemas=()):
    if not isinstance(nodes, dict):
        raise AnsibleFilterError("restore_verdict: the input must be a dict of inventory host to verify result")
    return _recovery.table_verdict(list(expected or []), dict(recorded or {}), nodes, list(skip or []),
                                   list(ignore_schemas or []))


class FilterModule:
    def filters(self):
        return {"restore_settings_errors": restore_settings_errors, "restore_plan": restore_plan,
                "restore_verdict": restore_verdict}

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The galera_backup role's plan: settings, cluster health and the node choice, in Python."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.dbtools.galera.plugins.module_utils import _plan


def backup_plan(members, hosts, alive, settings, node="", expected_size=0, owner="", awx_job_id=None,
                controller=None):
    if not isinstance(members, dict):
        raise AnsibleFilterError("backup_plan: the input must be a dict of inventory host to galera_info result")
    if not isinstance(settings, dict):
        raise AnsibleFilterError("backup_plan: settings must be a dict")
    return _plan.plan(members, list(hosts or []), list(alive or []), settings, node=node or "",
                      expected_size=int(expected_size or 0), owner=owner or "", awx_job_id=awx_job_id,
                      controller=controller)


def backup_settings_errors(settings):
    if not isinstance(settings, dict):
        raise AnsibleFilterError("backup_settings_errors: the input must be the dict of settings")
    return _plan.check_settings(settings)


class FilterModule:
    def filters(self):
        return {"backup_plan": backup_plan, "backup_settings_errors": backup_settings_errors}

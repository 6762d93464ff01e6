# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The binlog archive's node choice, in Python (``_binlog.choose_node``)."""

from __future__ import annotations

import socket
import time

from ansible.errors import AnsibleFilterError

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog


def binlog_archive_node(probes, hosts=None, owner="", awx_job_id=None, controller=None):
    if not isinstance(probes, dict):
        raise AnsibleFilterError("binlog_archive_node: the input must be a dict of inventory host to probe result")
    plan = _binlog.choose_node(probes, list(hosts or sorted(probes)))
    # The preconditions across the nodes that answered (a node that is down is named by the choice).
    plan["preflight"] = _binlog.cluster_verdict({
        host: probe.get("settings") for host, probe in probes.items()
        if isinstance(probe, dict) and probe.get("probed") and isinstance(probe.get("settings"), dict)})
    if not owner:
        if awx_job_id not in (None, ""):
            owner = f"binlog_archive:awx-job-{awx_job_id}"
        else:
            owner = f"binlog_archive:{controller or socket.gethostname()}:{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    plan["owner"] = owner
    return plan


class FilterModule:
    def filters(self):
        return {"binlog_archive_node": binlog_archive_node}

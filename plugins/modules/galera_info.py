#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_info
short_description: Facts about a Galera node, its cluster and the desync lease
version_added: 0.1.0
description:
  - Reads the node's state, the cluster's size and status, the desync count, receive queue and
    flow-control counters, the provider and server flavour and version, the gcache size, the
    cluster members, the current desync lease and an estimate of how long gcache holds the
    current write rate (past that, a node that falls behind needs a full SST instead of IST).
  - Reports where gcache keeps its files (C(gcache.dir), else the data directory), the free and total
    bytes of that filesystem and how long its free space lasts at the measured write rate. A desynced
    node keeps every write-set it has not applied there, in C(gcache.page.*) files, for as long as
    the desync lasts.
  - Reports the node's binary-log settings for point-in-time recovery (RV(binlog)), what is missing on this node and
    the settings to add (docs/pitr.md), and who holds the binlog archive's lease.
  - Read-only; never creates the lease table.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  lease_database:
    description: The database of the desync lease table.
    type: str
    default: dbtools_galera
  sample_seconds:
    description:
      - Seconds over which the write rate is measured for the gcache estimate. V(0) skips the
        measurement (RV(gcache.window_seconds) is then null).
    type: float
    default: 1.0
seealso:
  - module: dbtools.galera.galera_desync
"""

EXAMPLES = r"""
- name: Read the node's Galera facts
  dbtools.galera.galera_info:
  register: galera

- name: Show who holds the desync lease
  ansible.builtin.debug:
    msg: "{{ galera.lease | default('no desync lease', true) }}"
"""

RETURN = r"""
node:
  description: The node's wsrep figures.
  returned: always
  type: dict
  sample: {"node_name": "galera-node1", "local_state": 4, "local_state_comment": "Synced", "cluster_status": "Primary",
           "cluster_size": 3, "ready": true, "desync": false, "desync_count": 0, "recv_queue": 0,
           "flow_control_sent": 0, "flow_control_paused_ns": 0}
cluster:
  description: Name, state uuid, size, status, configuration id and members of the cluster.
  returned: always
  type: dict
  sample: {"name": "dbtools", "state_uuid": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef", "size": 3, "status": "Primary",
           "members": [{"name": "galera-node1", "address": "172.18.0.2:3306", "uuid": "..."}]}
server:
  description:
    - Server flavour (mariadb, percona-xtradb-cluster, mysql-wsrep), version, provider, data directory
      and C(data_bytes), the size of table data and indexes (an estimate of a physical backup's size).
  returned: always
  type: dict
  sample: {"flavor": "mariadb", "version": "10.11.19-MariaDB-0+deb12u1", "provider_name": "Galera",
           "provider_version": "26.4.23(r...)"}
writes:
  description:
    - Client writes committed on this node, C(wsrep_local_commits), and their rate over
      O(sample_seconds) (null when not measured). The node taking client writes has the highest rate.
  returned: always
  type: dict
  sample: {"local_commits": 18234, "local_commits_per_second": 152.5}
queue:
  description: Receive/send queue and flow-control figures, and the flow-control settings.
  returned: always
  type: dict
  sample: {"recv_queue": 0, "recv_queue_avg": 0.01, "recv_queue_max": 3, "send_queue": 0,
           "flow_control_sent": 0, "flow_control_recv": 0, "flow_control_paused": 0.0, "fc_limit": 16,
           "fc_factor": 1.0, "default_max_recv_queue": 8}
gcache:
  description:
    - C(size_bytes) from C(gcache.size); C(write_bytes_per_second) measured over O(sample_seconds);
      C(window_seconds), how long gcache holds that rate (null when nothing was written).
    - C(dir), the filesystem's free and total bytes, and how long the free space holds that rate.
  returned: always
  type: dict
  contains:
    size_bytes:
      description: The gcache ring buffer size in bytes (C(gcache.size)).
      type: int
      sample: 268435456
    write_bytes_per_second:
      description: Write-set bytes replicated and received per second, null when not measured.
      type: float
      sample: 52000.0
    window_seconds:
      description: Seconds of writes at that rate that gcache holds (null when nothing was written).
      type: float
      sample: 5162.2
    page_size_bytes:
      description: The size of one overflow page file (C(gcache.page_size)).
      type: int
      sample: 134217728
    dir:
      description: The directory of gcache's ring buffer and page files, C(gcache.dir), else the data directory.
      type: str
      sample: /var/lib/mysql/
    dir_on_this_host:
      description:
        - Whether the module runs on the node (a local socket, or the server's hostname is this machine's),
          so that the filesystem figures below are the node's. When false they are null.
      type: bool
      sample: true
    dir_free_bytes:
      description: Bytes free in the filesystem of RV(gcache.dir) (for an unprivileged writer such as mysqld).
      type: int
      sample: 81336020992
    dir_total_bytes:
      description: Size in bytes of the filesystem of RV(gcache.dir).
      type: int
      sample: 270553174016
    dir_free_seconds:
      description:
        - Seconds of writes at RV(gcache.write_bytes_per_second) that the free space of RV(gcache.dir)
          holds, the most a desync of this node can last before its disk fills (null when unknown).
      type: float
      sample: 1564154.2
lease:
  description: The desync lease, or null when there is none (or no lease table).
  returned: always
  type: dict
binlog:
  description:
    - The binary-log settings point-in-time recovery needs on this node, C(enabled) (C(log_bin)), C(format), C(log_slave_updates),
      C(gtid_mode) (C(wsrep_gtid_mode)), C(cluster_domain) (C(wsrep_gtid_domain_id)), C(local_domain) (C(gtid_domain_id)),
      C(server_id), C(basename), C(encrypted).
    - C(ready), this node's verdict; C(missing), what is missing, one text each; C(settings), the lines to add under
      C([mariadb]). That C(wsrep_gtid_domain_id) is the same and C(gtid_domain_id) distinct on every node is judged across
      the nodes by the C(dbtools.galera.binlog_archive) playbook.
    - C(archive_lease), the binlog archive's lease (who archives now), or null.
  returned: always
  type: dict
  sample: {"enabled": true, "format": "ROW", "log_slave_updates": true, "gtid_mode": true, "cluster_domain": 1,
           "local_domain": 11, "server_id": 1, "ready": true, "missing": [], "settings": [], "archive_lease": null}
status:
  description: Every C(wsrep%) status variable, typed.
  returned: always
  type: dict
provider_options:
  description: C(wsrep_provider_options), parsed and typed.
  returned: always
  type: dict
"""

import time

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog, _binlog_archive, _lease, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run


def members(node, status):
    try:
        rows = node.query("SELECT node_name, node_incoming_address, node_uuid FROM mysql.wsrep_cluster_members "
                          "ORDER BY node_name", record=False)
        return [dict(name=r[0], address=r[1], uuid=r[2]) for r in rows]
    except Exception:  # older servers and PXC have no such table: fall back to the addresses
        addresses = str(status.get("wsrep_incoming_addresses") or "")
        return [dict(name=None, address=a.strip(), uuid=None) for a in addresses.split(",") if a.strip()]


def written_bytes(status):
    return (status.get("wsrep_replicated_bytes") or 0) + (status.get("wsrep_received_bytes") or 0)


def data_bytes(node):
    """Bytes of table data and indexes: an estimate of a physical backup's size."""
    rows = node.query("SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
                      "WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys')", record=False)
    return int(rows[0][0])


def gcache_facts(node, variables, provider, size, rate, window) -> dict:
    """gcache's size and write window, and the room left on the filesystem its pages spill into."""
    directory = _wsrep.gcache_dir(variables, provider)
    local = _wsrep.on_this_host(node.conn, variables)
    space = _wsrep.filesystem_space(directory) if local else None
    free = space["free_bytes"] if space else None
    return dict(size_bytes=size, write_bytes_per_second=rate, window_seconds=window,
                page_size_bytes=_wsrep.parse_size(provider.get("gcache.page_size")),
                dir=directory, dir_on_this_host=local, dir_free_bytes=free,
                dir_total_bytes=space["total_bytes"] if space else None,
                dir_free_seconds=round(free / rate, 1) if free is not None and rate else None)


def binlog_facts(node, database: str, flavor: str) -> dict:
    """The ``binlog`` field: the PITR settings verdict of this node and the archive lease."""
    facts = _binlog.node_settings(_binlog_archive.read_variables(node), flavor)
    facts["archive_lease"] = _binlog_archive.archive_lease(node, database).read()
    return facts


def main():
    module = build_module(
        dict(
            lease_database=dict(type="str", default="dbtools_galera"),
            sample_seconds=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["sample_seconds"] < 0:
        module.fail_json(msg=f"sample_seconds must not be negative, got {p['sample_seconds']}. Nothing was changed.")

    def work(node):
        status, variables, snap = node.read()
        reason = _wsrep.is_galera(variables, status)
        if reason:
            raise GaleraError(f"{reason}; galera_info needs a Galera node.")
        provider = _wsrep.parse_provider_options(variables.get("wsrep_provider_options"))
        rate = window = commits_rate = None
        gcache_size = _wsrep.parse_size(provider.get("gcache.size"))
        if p["sample_seconds"] > 0:
            start, commits, t0 = written_bytes(status), status.get("wsrep_local_commits") or 0, time.monotonic()
            time.sleep(p["sample_seconds"])
            status = node.status()
            elapsed = time.monotonic() - t0
            rate = max(written_bytes(status) - start, 0) / elapsed
            commits_rate = round(max((status.get("wsrep_local_commits") or 0) - commits, 0) / elapsed, 2)
            if rate > 0 and gcache_size:
                window = round(gcache_size / rate, 1)
            rate = round(rate, 1)
        snap = _wsrep.snapshot(status, variables)
        return dict(
            changed=False,
            node=snap,
            cluster=dict(
                name=variables.get("wsrep_cluster_name"),
                state_uuid=status.get("wsrep_cluster_state_uuid"),
                size=status.get("wsrep_cluster_size"),
                status=status.get("wsrep_cluster_status"),
                conf_id=status.get("wsrep_cluster_conf_id"),
                members=members(node, status),
            ),
            server=dict(
                flavor=_wsrep.detect_flavor(variables),
                version=variables.get("version"),
                version_comment=variables.get("version_comment"),
                provider_name=status.get("wsrep_provider_name"),
                provider_version=status.get("wsrep_provider_version"),
                hostname=variables.get("hostname"),
                datadir=variables.get("datadir"),
                data_bytes=data_bytes(node),
            ),
            writes=dict(
                local_commits=status.get("wsrep_local_commits"),
                local_commits_per_second=commits_rate,
            ),
            queue=dict(
                recv_queue=status.get("wsrep_local_recv_queue"),
                recv_queue_avg=status.get("wsrep_local_recv_queue_avg"),
                recv_queue_max=status.get("wsrep_local_recv_queue_max"),
                send_queue=status.get("wsrep_local_send_queue"),
                flow_control_sent=status.get("wsrep_flow_control_sent"),
                flow_control_recv=status.get("wsrep_flow_control_recv"),
                flow_control_paused=status.get("wsrep_flow_control_paused"),
                flow_control_paused_ns=status.get("wsrep_flow_control_paused_ns"),
                fc_limit=provider.get("gcs.fc_limit", _wsrep.DEFAULT_FC_LIMIT),
                fc_factor=provider.get("gcs.fc_factor", _wsrep.DEFAULT_FC_FACTOR),
                recv_q_hard_limit=_wsrep.parse_size(provider.get("gcs.recv_q_hard_limit")),
                default_max_recv_queue=_wsrep.default_max_recv_queue(provider),
            ),
            gcache=gcache_facts(node, variables, provider, gcache_size, rate, window),
            lease=_lease.Lease(node, p["lease_database"]).read(),
            binlog=binlog_facts(node, p["lease_database"], _wsrep.detect_flavor(variables)),
            status=status,
            provider_options=provider,
        )

    run(module, work)


if __name__ == "__main__":
    main()

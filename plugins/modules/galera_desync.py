#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_desync
short_description: Desync a Galera node for a backup, and resync it safely
version_added: 0.1.0
description:
  - With O(state=desynced), takes the cluster-wide desync lease and sets C(wsrep_desync=ON), so the
    node stops sending flow control while a backup slows it down. The rest of the cluster keeps
    writing; the node falls behind, then catches up.
  - Refuses, changing nothing, when the node is not Synced, not in a Primary component or not
    ready, when desyncing it would leave fewer than O(min_cluster_size) synced members, when another
    owner holds the lease (another node is desynced by us) or when the node is already desynced by
    someone else.
  - With O(state=synced), waits for the receive queue to drain to O(max_recv_queue), sets
    C(wsrep_desync=OFF), waits for the node to be Synced and releases the lease. Turning it off with
    a long queue would put the node in JOINED state, where it sends flow control again.
  - Never clears a desync it did not set (another owner's lease, a DBA's C(SET GLOBAL wsrep_desync=ON),
    an SST donor) unless O(force=true).
  - C(wsrep_desync) is global and not reference-counted (the first OFF wins for every holder), which
    is why ownership is recorded in the lease.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  state:
    description:
      - V(desynced) desyncs the node, V(synced) resyncs it.
    type: str
    choices: [desynced, synced]
    required: true
  owner:
    description:
      - Who holds the desync. The same owner may repeat O(state=desynced) (no change) and is the only
        one who may resync without O(force).
      - Give each job its own owner (for example the AWX job id); two jobs with the same owner are
        taken for one.
    type: str
    default: dbtools.galera
  force:
    description:
      - With O(state=synced), clear a desync that is not O(owner)'s (another owner's lease, a manual
        desync). The result names the previous owner.
    type: bool
    default: false
  lease:
    description:
      - Use the cluster-wide lease, a row in O(lease_database).C(desync_lease), so at most one node
        of the cluster is desynced by us at any moment, across playbooks and controllers.
      - V(false) skips it. Then nothing stops two desynced nodes and nothing records who set the
        desync, so O(state=synced) needs O(force=true) to clear it. Not recommended.
    type: bool
    default: true
  lease_database:
    description:
      - The database of the lease table, created with the table when missing (the connecting user
        then needs C(CREATE) on it; else create it as an administrator first).
    type: str
    default: dbtools_galera
  lease_ttl:
    description:
      - Seconds the lease is valid. An expired lease may be taken over by another owner, whose
        run first resyncs the expired holder's node.
    type: int
    default: 3600
  min_cluster_size:
    description:
      - The number of other members that must stay in the cluster while this node is desynced.
        Refuses when C(wsrep_cluster_size - 1) is smaller.
    type: int
    default: 2
  max_recv_queue:
    description:
      - With O(state=synced), the receive queue length to drain to before C(wsrep_desync=OFF).
      - Defaults to half the node's flow-control resume point, C(gcs.fc_limit * gcs.fc_factor) read
        from C(wsrep_provider_options), 8 with Galera's defaults. A busy node rarely reads exactly 0.
    type: int
  drain_timeout:
    description:
      - Seconds to wait for the queue to drain. When it does not drain in time the node is resynced
        anyway (it is never left desynced) with a warning; it then catches up in JOINED state.
    type: int
    default: 600
  timeout:
    description:
      - Seconds to wait for Synced after C(wsrep_desync=OFF). On timeout the module fails and keeps
        the lease until a later run sees the node Synced.
    type: int
    default: 300
  poll_interval:
    description:
      - Seconds between two reads of the node's status while waiting.
    type: float
    default: 0.5
  watchdog:
    description:
      - With O(state=desynced), start an on-node watchdog, a detached process that outlives the module
        and the connection. If the lease expires while the node is still desynced under it (the
        controller died, the job was cancelled), it drains the queue, resyncs the node and releases the
        lease. A normal O(state=synced) releases the lease, which disarms it.
      - It is started after the lease is taken and before C(wsrep_desync=ON), so no desync of ours ever
        runs without it. What it needs (C(/run/dbtools-galera), C(/var/log/dbtools-galera)) is checked
        before anything is changed; when it cannot start, the module fails and changes nothing. A
        failure after C(wsrep_desync=ON) is rolled back (resync, lease released).
      - It holds the connection options in memory only, never on disk or a command line, and logs to
        syslog, C(/var/log/dbtools-galera/watchdog.log) and the C(desync_events) table of O(lease_database).
      - It runs where the module runs. Run the module on the node (the default local socket); with
        O(login_host) pointing elsewhere the watchdog depends on the machine the module ran on, and the
        free-space guard (O(watchdog_min_free_bytes)) cannot look at the node's disk.
      - Needs O(lease=true).
    type: bool
    default: true
  watchdog_hold_pid_file:
    description:
      - A pid file of the process the desync is for (the backup tool). While that process lives the
        watchdog renews the lease, so a long backup keeps its desync without guessing its duration,
        for at most O(watchdog_max_hold) seconds. When it ends, the lease runs out after O(lease_ttl)
        unless resynced before.
      - Only an unexpired lease is renewed. Once it expired, another owner may be taking it over.
    type: path
  watchdog_max_hold:
    description: Seconds after which the watchdog stops renewing the lease for a live holder process.
    type: int
    default: 21600
  watchdog_max_recv_queue:
    description:
      - Queue guard. When the receive queue of the desynced node passes this many write-sets, the
        watchdog stops the holder process, drains and resyncs. V(0) disables this limit.
    type: int
    default: 0
  watchdog_hard_limit_fraction:
    description:
      - Queue guard. When the receive queue's estimated size (write-sets x average write-set size)
        reaches this fraction of C(gcs.recv_q_hard_limit), past which the server aborts, or available
        memory falls under 5% while write-sets are queued, the watchdog stops the holder process,
        drains and resyncs. V(0) disables the fraction (the memory guard stays).
      - The watchdog does the same when the cluster loses members so that, with this node desynced,
        fewer than O(min_cluster_size) synced members remain.
    type: float
    default: 0.5
  watchdog_min_free_bytes:
    description:
      - Free-space guard. A desynced node keeps every write-set it has not applied in gcache, which
        spills into C(gcache.page.*) files in C(gcache.dir) (by default the data directory) for as long
        as the desync lasts; C(gcs.recv_q_hard_limit) is effectively unlimited by default, so the disk
        is what runs out.
      - When the free space of C(gcache.dir)'s filesystem falls under the larger of this many bytes and
        O(watchdog_min_free_fraction) of its size, the watchdog stops the holder process, drains,
        resyncs and records the event. With the defaults, 5% or 1 GiB, whichever is larger.
      - Checked before the desync too. A node already under the floor is refused, and nothing is changed.
      - Only looked at when the module runs on the node (a local socket, or the server's hostname is
        this machine's). V(0) together with O(watchdog_min_free_fraction=0) disables the guard.
    type: int
    default: 1073741824
  watchdog_min_free_fraction:
    description:
      - Free-space guard, see O(watchdog_min_free_bytes). A fraction of the filesystem's size, from
        V(0) to V(1).
    type: float
    default: 0.05
  pxc_maint_mode:
    description:
      - Percona XtraDB Cluster only. With O(state=desynced), set C(pxc_maint_mode=MAINTENANCE) just before
        C(wsrep_desync=ON) when it is C(DISABLED), so load balancers that follow it (ProxySQL's PXC support)
        stop routing to the node. The server answers after its C(pxc_maint_transition_period) (10 s by default).
        A value set by someone else is left as it is. RV(pxc_maint_mode) says what was done.
      - With O(state=synced), set it back to C(DISABLED) after the resync when it is C(MAINTENANCE), whatever
        the resync did. Ask for it only when the desync set it (RV(pxc_maint_mode.changed)).
      - The watchdog sets it back to C(DISABLED) after a resync it makes itself, when this desync set it.
      - Refused, changing nothing, on a server without the variable (MariaDB, MySQL-wsrep).
      - Not tested here (no PXC packages in the test images); the statements are
        C(SET GLOBAL pxc_maint_mode = 'MAINTENANCE') and C(SET GLOBAL pxc_maint_mode = 'DISABLED').
    type: bool
    default: false
    version_added: 0.3.0
  watchdog_haproxy:
    description:
      - HAProxy instances the watchdog puts the node back in (C(set server ... state ready)) after a resync
        it makes itself, because the controller died before it could. The items of M(dbtools.galera.galera_lb)'s
        O(dbtools.galera.galera_lb#module:haproxy); pass only instances this desync's caller took the node out of.
      - The watchdog runs on the node, so it only reaches instances with a O(watchdog_haproxy[].address) the
        node can connect to. An instance with a O(watchdog_haproxy[].socket) (a Unix socket on HAProxy's host) is
        warned about and left out. With O(state=desynced) every reachable instance is read once before the
        desync, and one the node cannot reach is warned about; neither refuses the desync.
      - Holds no secret (the runtime API has no login).
    type: list
    elements: dict
    default: []
    version_added: 0.3.0
    suboptions:
      name:
        description: A label for messages. Defaults to the socket or address.
        type: str
      socket:
        description: Path of the runtime API's Unix socket (out of the watchdog's reach unless HAProxy runs on the node).
        type: str
      address:
        description: C(host:port) of a TCP runtime API (C(stats socket ipv4@host:port level admin)), as the node reaches it.
        type: str
      backend:
        description: The backend that balances the Galera nodes.
        type: str
        required: true
      server:
        description: The name of this node's C(server) line in that backend.
        type: str
        required: true
      shutdown_sessions:
        description: Not used here (only on drain, see M(dbtools.galera.galera_lb)).
        type: bool
        default: false
      host:
        description: Not used here (the role's C(delegate_to) for the same item).
        type: str
      become:
        description: Not used here (the role's C(become) for the same item).
        type: bool
notes:
  - Set the desync before any global read lock or C(BACKUP STAGE). The server refuses to change
    C(wsrep_desync) while one is held.
  - A C(/*! WSREP_DESYNC */) query comment mentioned in some field notes is a syntax error on
    MariaDB 10.11. This module uses C(wsrep_desync).
  - Load balancers should take a node in C(Donor/Desynced) state out of rotation. M(dbtools.galera.galera_lb)
    does it for HAProxy, O(pxc_maint_mode) for load balancers that follow C(pxc_maint_mode); the
    P(dbtools.galera.galera_backup#role) role runs them around the desync (C(docs/lb.md)).
  - Taking over an expired lease held on another node first replaces the lease row (so no third
    owner can step in), then connects to that node over TCP at the address the lease records
    (never through a socket, neither O(login_unix_socket) nor the C(socket) of O(config_file)), checks
    that it answers with the recorded C(wsrep_node_name), drains and resyncs it. When that fails, the
    old row is put back and the module fails without desyncing this node. The login options must
    therefore work over TCP on the other nodes.
  - Where systemd runs, the watchdog moves itself into its own transient scope
    (C(dbtools-galera-watchdog-*.scope), through C(busctl)), so systemd-logind's
    C(KillUserProcesses=yes) does not kill it when the SSH session ends. Without systemd, without
    C(busctl) or without the right to start a scope (not root), it stays in the session's cgroup and
    says so in its log; then run the module as root, or enable lingering for the user
    (C(loginctl enable-linger)), or set C(KillUserProcesses=no).
seealso:
  - module: dbtools.galera.galera_wait_synced
  - module: dbtools.galera.galera_info
"""

EXAMPLES = r"""
- name: Desync the backup node (on the node, through the local socket)
  dbtools.galera.galera_desync:
    state: desynced
    owner: "backup-{{ awx_job_id | default('manual') }}"

- name: Resync it once the backup is done (waits for the queue to drain first)
  dbtools.galera.galera_desync:
    state: synced
    owner: "backup-{{ awx_job_id | default('manual') }}"
    drain_timeout: 1800

- name: Clear a desync a DBA forgot, from the controller over the network
  dbtools.galera.galera_desync:
    state: synced
    force: true
    login_host: db3.example.com
    login_user: admin
    login_password: "{{ vault_db_admin_password }}"
"""

RETURN = r"""
desynced:
  description: Whether C(wsrep_desync) is ON after the module ran (predicted in check mode).
  returned: success
  type: bool
  sample: true
node:
  description: C(wsrep_node_name) of the node.
  returned: success
  type: str
  sample: galera-node3
local_state_comment:
  description: C(wsrep_local_state_comment) before and after.
  returned: success
  type: dict
  sample: {"before": "Synced", "after": "Donor/Desynced"}
before:
  description: The node's wsrep figures before the module ran.
  returned: success
  type: dict
  sample: {"local_state_comment": "Synced", "desync": false, "desync_count": 0, "recv_queue": 0,
           "cluster_size": 3, "cluster_status": "Primary", "ready": true, "flow_control_sent": 0}
after:
  description:
    - The node's wsrep figures after the module ran, in the shape of RV(before).
    - In check mode, predicted (C(desync), C(desync_count), C(local_state), C(local_state_comment)).
  returned: success
  type: dict
recv_queue:
  description: C(wsrep_local_recv_queue) after the module ran.
  returned: success
  type: int
  sample: 0
max_recv_queue:
  description: The drain threshold in effect (given, or derived from the flow-control settings).
  returned: success
  type: int
  sample: 8
max_recv_queue_seen:
  description: The longest receive queue read while draining.
  returned: when the module drained the queue
  type: int
lease:
  description:
    - The cluster-wide lease after the module ran, or null when there is none.
    - In check mode, the lease the run would leave; a lease it would take has null times.
  returned: success
  type: dict
  sample: {"node": "galera-node3", "owner": "backup-42", "acquired_at": "2026-11-24 21:00:00",
           "expires_at": "2026-11-24 22:00:00", "seconds_left": 3599}
drain_seconds:
  description: Seconds spent waiting for the receive queue to drain.
  returned: success
  type: float
sync_seconds:
  description: Seconds from C(wsrep_desync=OFF) to Synced.
  returned: success
  type: float
drained:
  description: Whether the queue drained within O(drain_timeout) before the resync.
  returned: when the module resynced the node
  type: bool
flow_control_sent:
  description:
    - Flow-control messages this node sent during the desync cycle (should be 0), from the moment
      C(wsrep_desync) was set ON to the last status read (10 ms apart at first) that still saw it not
      Synced, so the drain and the JOINED catch-up count, flow control of the Synced node afterwards
      does not.
  returned: success; null when unknown (no lease, or counters reset)
  type: int
watchdog:
  description:
    - The watchdog armed for this desync (its pid, state file and log file, and whether this run
      started it or found it running), or null.
  returned: success
  type: dict
  sample: {"pid": 4242, "state_file": "/run/dbtools-galera/watchdog-3f2a9c1d0e4b5a68.json",
           "log_file": "/var/log/dbtools-galera/watchdog.log", "started": true}
previous_owner:
  description: The owner of a desync cleared with O(force), or of an expired lease taken over.
  returned: success
  type: str
pxc_maint_mode:
  description:
    - With O(pxc_maint_mode), C(pxc_maint_mode) before and after the module ran, and whether it changed it;
      otherwise null.
  returned: success
  type: dict
  sample: {"before": "DISABLED", "after": "MAINTENANCE", "changed": true}
  version_added: 0.3.0
  contains:
    before:
      description: The value before the module ran.
      type: str
    after:
      description: The value after the module ran (predicted in check mode).
      type: str
    changed:
      description: Whether the module changed it.
      type: bool
queries:
  description: The SQL statements that changed or locked something, without secrets.
  returned: always
  type: list
  elements: str
  sample: ["SET GLOBAL wsrep_desync = ON"]
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _desync
from ansible_collections.dbtools.galera.plugins.module_utils._desync import Desyncer
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run


def main():
    module = build_module(
        dict(
            state=dict(type="str", required=True, choices=["desynced", "synced"]),
            owner=dict(type="str", default="dbtools.galera"),
            force=dict(type="bool", default=False),
            lease=dict(type="bool", default=True),
            max_recv_queue=dict(type="int"),
            watchdog=dict(type="bool", default=True),
            watchdog_hold_pid_file=dict(type="path"),
            **_desync.OPTIONS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    problem = _desync.option_problem(p)
    if problem:
        module.fail_json(msg=f"{problem}. Nothing was changed.")

    def work(node):
        desyncer = Desyncer(p, node, module.check_mode, module.warn)
        result = desyncer.desynced() if p["state"] == "desynced" else desyncer.synced()
        if not module._diff:
            result.pop("diff", None)
        result.pop("lease_before", None)
        return result

    run(module, work)


if __name__ == "__main__":
    main()

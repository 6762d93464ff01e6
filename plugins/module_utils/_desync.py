# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Desync and resync of one Galera node under the cluster-wide lease (private).

``Desyncer`` holds the whole procedure so the galera_desync module stays a thin
wrapper; every refusal raises ``Refused`` before anything is written.
"""

from __future__ import annotations

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _lease, _watchdog, _wsrep


class Refused(Exception):
    """A precondition failed; nothing was changed. ``msg`` says why and what to do."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def host_port(address: str | None, default_port: int = 3306):
    """``host[:port]`` (IPv6 in brackets) to (host, port)."""
    if not address:
        return None, default_port
    address = address.split(",")[0].strip()
    if address.startswith("["):
        host, _sep, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    elif address.count(":") == 1:
        host, _sep, port = address.partition(":")
    else:
        host, port = address, ""
    try:
        return host, int(port) if port and int(port) > 0 else default_port
    except ValueError:
        return host, default_port


class Desyncer:
    def __init__(self, params: dict, node: _wsrep.Node, check_mode: bool, warn):
        self.p = params
        self.node = node
        self.check_mode = check_mode
        self.warn = warn
        self.lease = _lease.Lease(node, params["lease_database"]) if params["lease"] else None
        self.result = dict(changed=False, drain_seconds=None, sync_seconds=None, flow_control_sent=None,
                           previous_owner=None, watchdog=None)

    # -- reading -----------------------------------------------------------------------
    def read(self):
        status, variables, snap = self.node.read()
        reason = _wsrep.is_galera(variables, status)
        if reason:
            raise Refused(f"{reason}. galera_desync only works on a MariaDB Galera, Percona XtraDB "
                          "Cluster or MySQL-wsrep node; point login_host/login_unix_socket at one.")
        self.status, self.variables, self.snap = status, variables, snap
        self.node_name = variables.get("wsrep_node_name") or variables.get("hostname")
        provider = _wsrep.parse_provider_options(variables.get("wsrep_provider_options"))
        if self.p.get("max_recv_queue") is None:
            self.max_recv_queue = _wsrep.default_max_recv_queue(provider)
        else:
            self.max_recv_queue = self.p["max_recv_queue"]
        return snap

    def lease_row(self):
        return self.lease.read() if self.lease else None

    # -- resync ------------------------------------------------------------------------
    def drain_and_resync(self, node=None) -> dict:
        """Wait for the receive queue to drain, set wsrep_desync=OFF, wait for Synced.

        A queue that does not drain within drain_timeout does not leave the node
        desynced: it is resynced anyway (it then catches up in JOINED) with a warning.
        """
        node = node or self.node
        p = self.p
        out = dict(drained=False, synced=False, drain_seconds=0.0, sync_seconds=0.0, max_recv_queue_seen=0)
        drain = _wsrep.Poller(p["drain_timeout"], p["poll_interval"])
        queue = None
        row = None
        for _poll in drain:
            row = node.status()
            queue = row.get("wsrep_local_recv_queue", 0)
            out["max_recv_queue_seen"] = max(out["max_recv_queue_seen"], queue or 0)
            if queue is not None and queue <= self.max_recv_queue:
                out["drained"] = True
                break
        out["drain_seconds"] = round(drain.elapsed, 3)
        if not out["drained"]:
            self.warn(f"the receive queue did not drain to {self.max_recv_queue} within drain_timeout="
                      f"{p['drain_timeout']}s (last {queue}); resyncing anyway, so the node catches up in "
                      "JOINED state and may send flow control meanwhile. Raise drain_timeout for long backups.")
        node.set_desync(False)
        out.update(self.wait_synced(node, last_desynced=row))
        return out

    def wait_synced(self, node=None, last_desynced: dict | None = None) -> dict:
        """Poll until the node is Synced, bounded by timeout.

        The desync cycle's flow control is counted up to the last status read that still saw the
        node not Synced (``last_desynced``, the drain's last read, when the first read after the
        resync already sees Synced): a busy Synced node sends flow control of its own every few
        milliseconds, which is not the cycle's doing. After a drained resync Joined lasts moments,
        so the reads start 10 ms apart and slow down to poll_interval.
        """
        node = node or self.node
        sync = _wsrep.Poller(self.p["timeout"], self.p["poll_interval"], first_interval=0.01)
        status = {}
        for _poll in sync:
            status = node.status()
            if status.get("wsrep_local_state") == _wsrep.SYNCED:
                break
            last_desynced = status
        state = status.get("wsrep_local_state")
        synced = state == _wsrep.SYNCED
        edge = last_desynced if last_desynced is not None else status
        return dict(synced=synced, sync_seconds=round(sync.elapsed, 3), last_state=_wsrep.STATE_NAMES.get(state, state),
                    flow_control_sent_before_synced=edge.get("wsrep_flow_control_sent") if synced else None)

    def _resync_remote(self, row: dict) -> None:
        """Resync the node of an expired lease held on another node, before taking it over."""
        host, port = host_port(row.get("node_address"), self.p.get("login_port") or 3306)
        if not host:
            raise Refused(f"the desync lease expired ({_lease.describe(row)}) but it records no address for node "
                          f"{row['node']}, so its desync cannot be checked. Run galera_desync state=synced "
                          f"force=true on {row['node']}, then retry.")
        params = dict(self.p, login_host=host, login_port=port, login_unix_socket=None)
        try:
            conn = _connection.connect(params)
        except _connection.GaleraConnectionError as exc:
            raise Refused(f"the desync lease expired ({_lease.describe(row)}) and node {row['node']} must be "
                          f"resynced before another node is desynced, but it cannot be reached: {exc.msg}. "
                          f"Run galera_desync state=synced force=true on {row['node']}, then retry.") from exc
        try:
            remote = _wsrep.Node(conn)
            if remote.variables().get("wsrep_desync") is True:
                out = self.drain_and_resync(remote)
                self.node.queries.extend(remote.queries)
                if not out["synced"]:
                    raise Refused(f"node {row['node']} of the expired lease was resynced but is not Synced yet "
                                  f"({out['last_state']}); retry when it is.")
                self.warn(f"took over the expired desync lease of owner '{row['owner']}': resynced node "
                          f"{row['node']} first")
        finally:
            conn.close()

    # -- the two states ------------------------------------------------------------------
    def desynced(self) -> dict:
        p = self.p
        before = self.read()
        row = self.lease_row()
        state = _lease.judge(row, p["owner"], self.node_name) if self.lease else None
        self.result.update(before=before, lease_before=row)

        if before["desync"] is True:
            if state == _lease.OURS or not self.lease:
                if state == _lease.OURS and not self.check_mode:
                    self.arm_watchdog()
                return self._finish(changed=False)
            raise Refused(
                f"node {self.node_name} is already desynced (wsrep_desync=ON) and not by owner '{p['owner']}': "
                f"{_lease.describe(row) if row else 'no desync lease exists, so it was set outside dbtools.galera (a DBA or another tool)'}. "
                "Leave it to its owner, or pick another node."
            )
        if state == _lease.HELD:
            raise Refused(f"another desync holds the cluster-wide lease: {_lease.describe(row)}. Only one node "
                          "of a cluster may be desynced at a time; wait for it to end or for the lease to expire.")

        reasons = _wsrep.desync_refusals(before, p["min_cluster_size"])
        if reasons:
            raise Refused(f"refusing to desync node {self.node_name}: " + "; ".join(reasons) + ". Nothing was changed.")

        if self.check_mode:
            return self._finish(changed=True, predicted_desync=True)

        if state == _lease.EXPIRED:
            if row["node"] != self.node_name:
                self._resync_remote(row)
            self.result["previous_owner"] = row["owner"]
        if self.lease:
            try:
                self.lease.acquire(
                    p["owner"], self.node_name, _wsrep.client_address(self.variables),
                    self.variables.get("wsrep_cluster_name"), p["lease_ttl"], before.get("flow_control_sent"),
                    replace=row if state == _lease.EXPIRED else None,
                )
            except _lease.LeaseConflict as exc:
                raise Refused(exc.msg + ". Only one node of a cluster may be desynced at a time.") from exc
        try:
            self.node.set_desync(True)
        except Exception:
            if self.lease:
                self.lease.release(p["owner"], self.node_name)
            raise
        self.arm_watchdog()
        after = self.read()
        if self.lease and after.get("flow_control_sent") is not None:
            # The cycle starts now, not when the lease was taken a moment ago on a still Synced node.
            self.lease.mark_desynced(p["owner"], self.node_name, after["flow_control_sent"])
        return self._finish(changed=True)

    def arm_watchdog(self) -> None:
        """Start the on-node watchdog that resyncs the node if this desync is never ended."""
        if not self.p.get("watchdog"):
            return
        if not self.lease:
            self.warn("watchdog: true needs the lease (lease: true) to know the desync is ours; no watchdog armed.")
            return
        pid = _watchdog.arm(self.p, self.p["owner"], self.node_name)
        self.result["watchdog"] = dict(pid=pid, state_file=_watchdog.paths(self.p["owner"], self.node_name)["state"],
                                       log_file=_watchdog.LOG_FILE)

    def synced(self) -> dict:
        p = self.p
        before = self.read()
        row = self.lease_row()
        state = _lease.judge(row, p["owner"], self.node_name) if self.lease else None
        self.result.update(before=before, lease_before=row)
        ours = state == _lease.OURS

        if before["desync"] is not True:
            if before["local_state"] != _wsrep.SYNCED and (before.get("desync_count") or 0) > 0 and not ours:
                self.warn(f"node {self.node_name} is {before['local_state_comment']} for another reason "
                          f"(wsrep_desync_count={before.get('desync_count')}: an SST donor, a global read lock "
                          "or BACKUP STAGE); left alone.")
            if not ours:
                return self._finish(changed=False)
            # Our desync was already turned off (a previous run timed out waiting): finish the job.
            if self.check_mode:
                return self._finish(changed=True, predicted_desync=False)
            self._wait_synced_then_release(None)
            return self._finish(changed=True)

        if not ours:
            if not self.lease:
                owner_text = ("lease: false, so nothing records who set wsrep_desync=ON; "
                              "set force: true to clear it")
            elif row and row["node"] == self.node_name:
                owner_text = f"it belongs to another owner: {_lease.describe(row)}"
            else:
                owner_text = ("no desync lease names this node, so wsrep_desync=ON was set outside "
                              "dbtools.galera (a DBA or another tool)")
            if not p["force"]:
                raise Refused(f"refusing to resync node {self.node_name}: {owner_text}. It is not ours to clear; "
                              "use force: true to clear it anyway. Nothing was changed.")
            self.result["previous_owner"] = row["owner"] if row and row["node"] == self.node_name else "unknown"
            self.warn(f"force: clearing a desync that is not owner '{p['owner']}''s ({owner_text}).")

        if self.check_mode:
            return self._finish(changed=True, predicted_desync=False)

        self._wait_synced_then_release(row if (ours or (row and row["node"] == self.node_name)) else None,
                                       resync=True)
        return self._finish(changed=True)

    def _wait_synced_then_release(self, row, resync: bool = False):
        p = self.p
        if resync:
            out = self.drain_and_resync()
        else:
            out = dict(drained=True, drain_seconds=0.0, max_recv_queue_seen=None, **self.wait_synced())
        self.result.update(drain_seconds=out["drain_seconds"], sync_seconds=out["sync_seconds"],
                           drained=out["drained"], max_recv_queue_seen=out["max_recv_queue_seen"])
        after = self.read()
        fc_start = (row or self.result.get("lease_before") or {}).get("flow_control_sent_at_desync")
        fc_end = out["flow_control_sent_before_synced"]
        if fc_end is None:
            fc_end = after.get("flow_control_sent")
        if fc_start is not None and fc_end is not None and fc_end >= fc_start:
            self.result["flow_control_sent"] = fc_end - fc_start
        if not out["synced"]:
            raise Refused(f"node {self.node_name} has wsrep_desync=OFF but did not reach Synced within "
                          f"timeout={p['timeout']}s (it is {out['last_state']}, receive queue "
                          f"{after.get('recv_queue')}). It is catching up; the lease is kept until it is Synced. "
                          "Rerun galera_desync state=synced (or galera_wait_synced) to finish.")
        if self.lease:
            lease_row = self.result.get("lease_before")
            if lease_row and lease_row["node"] == self.node_name and lease_row["owner"] != p["owner"]:
                self.lease.remove(lease_row)
            else:
                self.lease.release(p["owner"], self.node_name)

    def _finish(self, changed: bool, predicted_desync=None) -> dict:
        after = self.snap
        if predicted_desync is not None:
            after = dict(after, desync=predicted_desync)
        lease_after = self.lease_row() if not self.check_mode else self.result.get("lease_before")
        self.result.update(
            changed=changed,
            after=after,
            desynced=bool(after.get("desync")),
            local_state_comment=dict(before=self.result["before"]["local_state_comment"],
                                     after=after["local_state_comment"]),
            recv_queue=after.get("recv_queue"),
            max_recv_queue=self.max_recv_queue,
            lease=lease_after,
            node=self.node_name,
            diff=dict(
                before=_diff_view(self.result["before"], self.result.get("lease_before")),
                after=_diff_view(after, lease_after if not self.check_mode else None) if not self.check_mode
                else dict(_diff_view(after, None), lease="(taken by this owner)" if predicted_desync else "none"),
            ),
        )
        return self.result


def _diff_view(snap: dict, lease_row) -> dict:
    return dict(
        wsrep_desync="ON" if snap.get("desync") else "OFF",
        local_state_comment=snap.get("local_state_comment"),
        lease=_lease.describe(lease_row) if lease_row else "none",
    )

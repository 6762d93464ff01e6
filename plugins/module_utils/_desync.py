# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Desync and resync of one Galera node under the cluster-wide lease (private).

``Desyncer`` holds the whole procedure so the galera_desync module stays a thin wrapper. Every
refusal raises ``GaleraError`` before anything is written. The order of a desync is what makes it
safe to fail at any step:

1. read the node and the lease, judge (refusals change nothing);
2. prepare the watchdog (run directory, log): a failure changes nothing;
3. take the lease (certification picks one owner); an expired lease of another node is replaced
   first, then that node is resynced over TCP at its recorded address after checking its
   ``wsrep_node_name``; if that fails the old row is put back and we refuse;
4. start the watchdog (it sees our lease on a node not desynced yet);
5. with ``pxc_maint_mode``, ``pxc_maint_mode=MAINTENANCE`` (Percona XtraDB Cluster: its load balancers
   stop routing to the node), then ``wsrep_desync=ON``; any failure from here on is rolled back
   (resync, ``pxc_maint_mode`` back to DISABLED, release the lease).

``state=synced`` sets ``pxc_maint_mode=DISABLED`` after the resync whatever happened, when asked (the
role asks when its desync set MAINTENANCE). ``watchdog_haproxy`` is handed to the watchdog, which puts
the node back in those HAProxy instances after a resync it makes itself (``_lb``).
"""

from __future__ import annotations

import time

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _lb, _lease, _resync, _watchdog, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

PREDICTED = "(taken by this owner)"
_READ = object()  # _finish: read the lease for the result

# The options of a desync under the lease with its watchdog: galera_desync's, and those of
# galera_backup_job's O(desync_options) (the role's desync, in the same call that starts the backup).
OPTIONS = dict(
    lease_database=dict(type="str", default="dbtools_galera"),
    lease_ttl=dict(type="int", default=3600),
    min_cluster_size=dict(type="int", default=2),
    drain_timeout=dict(type="int", default=600),
    timeout=dict(type="int", default=300),
    poll_interval=dict(type="float", default=0.5),
    watchdog_max_hold=dict(type="int", default=21600),
    watchdog_max_recv_queue=dict(type="int", default=0),
    watchdog_hard_limit_fraction=dict(type="float", default=0.5),
    watchdog_min_free_bytes=dict(type="int", default=1 << 30),
    watchdog_min_free_fraction=dict(type="float", default=0.05),
    pxc_maint_mode=dict(type="bool", default=False),
    watchdog_haproxy=dict(type="list", elements="dict", default=[], options=_lb.ITEM_SPEC),
)
NON_NEGATIVE = ("min_cluster_size", "max_recv_queue", "drain_timeout", "timeout", "watchdog_max_hold",
                "watchdog_max_recv_queue", "watchdog_hard_limit_fraction", "watchdog_min_free_bytes",
                "watchdog_min_free_fraction")


def option_problem(p: dict) -> str | None:
    """What is wrong with desync options (OPTIONS or a part of them, with ``owner``), or None."""
    negative = [f"{n}={p[n]}" for n in NON_NEGATIVE if p.get(n) is not None and p[n] < 0]
    if negative:
        return "these options must not be negative: " + ", ".join(negative)
    if "lease_ttl" in p and p["lease_ttl"] < 1:
        return f"lease_ttl must be at least 1 second, got {p['lease_ttl']}"
    if p["poll_interval"] <= 0:
        return f"poll_interval must be positive, got {p['poll_interval']}"
    if p.get("watchdog_min_free_fraction", 0) > 1:
        return ("watchdog_min_free_fraction is a fraction of the filesystem, from 0 to 1, got "
                f"{p['watchdog_min_free_fraction']}")
    return _lease.owner_error(p["owner"])


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


def predict(snap: dict, desync: bool) -> dict:
    """The node's figures after ``wsrep_desync`` is set ON (from Synced) or OFF and the node caught up."""
    after = dict(snap, desync=desync)
    count = snap.get("desync_count") or 0
    if desync:
        count += 1
    elif snap.get("desync"):
        count = max(count - 1, 0)
    state = _wsrep.DONOR_DESYNCED if desync or count else _wsrep.SYNCED
    after.update(desync_count=count, local_state=state, local_state_comment=_wsrep.STATE_NAMES[state])
    return after


class Desyncer:
    def __init__(self, params: dict, node: _wsrep.Node, check_mode: bool, warn, watchdog=_watchdog,
                 clock=time.monotonic, sleep=time.sleep):
        self.p = params
        self.node = node
        self.check_mode = check_mode
        self.warn = warn
        self.watchdog = watchdog
        self.clock = clock
        self.sleep = sleep
        self.lease = _lease.Lease(node, params["lease_database"]) if params["lease"] else None
        self.result = dict(changed=False, drain_seconds=None, sync_seconds=None, flow_control_sent=None,
                           previous_owner=None, watchdog=None, pxc_maint_mode=None)
        self.lease_after = None
        self.pxc_set = False  # this run set pxc_maint_mode=MAINTENANCE
        # Checked before anything is read or changed: a wrong item refuses the whole call.
        self.watchdog_lb = _lb.instances(params.get("watchdog_haproxy"), "watchdog_haproxy")

    # -- reading -----------------------------------------------------------------------
    def read(self):
        status, variables, snap = self.node.read()
        reason = _wsrep.is_galera(variables, status)
        if reason:
            raise GaleraError(f"{reason}. galera_desync only works on a MariaDB Galera, Percona XtraDB "
                              "Cluster or MySQL-wsrep node; point login_host/login_unix_socket at one. "
                              "Nothing was changed.")
        self.status, self.variables, self.snap = status, variables, snap
        self.node_name = variables.get("wsrep_node_name") or variables.get("hostname")
        self.max_recv_queue = _resync.max_recv_queue(self.p.get("max_recv_queue"), variables)
        return snap

    def lease_row(self):
        return self.lease.read() if self.lease else None

    def steps(self, warn=None) -> _resync.Resync:
        return _resync.Resync(self.p["drain_timeout"], self.p["timeout"], self.p["poll_interval"],
                              self.max_recv_queue, warn or self.warn, self.clock, self.sleep)

    def watchdog_wanted(self) -> bool:
        if not self.p.get("watchdog"):
            return False
        if not self.lease:
            self.warn("watchdog: true needs the lease (lease: true) to know the desync is ours; no watchdog armed.")
            return False
        return True

    def disk_refusal(self) -> str | None:
        """The free-space guard, applied before the desync: it would trip at once."""
        if not self.p.get("watchdog") or not self.lease or not _wsrep.on_this_host(self.node.conn, self.variables):
            return None
        provider = _wsrep.parse_provider_options(self.variables.get("wsrep_provider_options"))
        directory = _wsrep.gcache_dir(self.variables, provider)
        reason = _watchdog.disk_guard_reason(_wsrep.filesystem_space(directory), directory,
                                             self.p.get("watchdog_min_free_bytes") or 0,
                                             self.p.get("watchdog_min_free_fraction") or 0)
        return f"{reason}. Free space there or lower the guard" if reason else None

    # -- state=desynced ----------------------------------------------------------------
    def desynced(self) -> dict:
        p = self.p
        before = self.read()
        row = self.lease_row()
        state = _lease.judge(row, p["owner"], self.node_name) if self.lease else None
        self.result.update(before=before, lease_before=row)

        if before["desync"] is True:
            if state == _lease.OURS or not self.lease:
                if state == _lease.OURS and not self.check_mode and self.watchdog_wanted():
                    self.result["watchdog"] = self.watchdog.arm(self.watchdog_params(), p["owner"], self.node_name)
                value = self.pxc_read()
                if value is not None:
                    self.pxc_result(value, value)
                return self._finish(changed=False, lease_after=row)
            if state == _lease.EXPIRED and row["node"] == self.node_name:
                whose = (f"its lease expired ({_lease.describe(row)}); its watchdog resyncs it, or clear it with "
                         "galera_desync state=synced force=true")
            elif row:
                whose = _lease.describe(row)
            else:
                whose = "no desync lease exists, so it was set outside dbtools.galera (a DBA or another tool)"
            raise GaleraError(
                f"node {self.node_name} is already desynced (wsrep_desync=ON) and not by owner '{p['owner']}': "
                f"{whose}. Leave it to its owner, or pick another node. Nothing was changed.", holder=row,
            )
        if state == _lease.HELD:
            raise GaleraError(f"another desync holds the cluster-wide lease: {_lease.describe(row)}. Only one node "
                              "of a cluster may be desynced at a time; wait for it to end or for the lease to expire. "
                              "Nothing was changed.", holder=row)

        reasons = _wsrep.desync_refusals(before, p["min_cluster_size"])
        disk = self.disk_refusal()
        if disk:
            reasons.append(disk)
        if reasons:
            raise GaleraError(f"refusing to desync node {self.node_name}: " + "; ".join(reasons) +
                              ". Nothing was changed.")

        previous = row if state == _lease.EXPIRED else None
        if previous:
            self.result["previous_owner"] = previous["owner"]
        pxc_before = self.pxc_read()
        self.pxc_set = pxc_before == _lb.PXC_DISABLED
        if pxc_before is not None:
            self.pxc_result(pxc_before, _lb.PXC_MAINTENANCE if self.pxc_set else pxc_before)
        self.check_watchdog_lb()
        if self.check_mode:
            lease_after = self.predicted_lease() if self.lease else None
            return self._finish(changed=True, predicted_desync=True, lease_after=lease_after)

        wants_watchdog = self.watchdog_wanted()
        if wants_watchdog:
            self.watchdog.prepare(p["owner"], self.node_name)
        if self.lease:
            self.take_lease(previous)
        try:
            if previous and previous["node"] != self.node_name:
                self.resync_previous(previous)
                self.recheck()
            if wants_watchdog:
                self.result["watchdog"] = self.watchdog.arm(self.watchdog_params(), p["owner"], self.node_name)
        except BaseException as exc:
            if not (isinstance(exc, GaleraError) and exc.get("_keep_lease")):
                self.release_quietly()
            raise
        try:
            if self.pxc_set:
                _lb.set_pxc_maint_mode(self.node, _lb.PXC_MAINTENANCE)
            self.node.set_desync(True)
        except BaseException:
            self.pxc_disable_quietly()
            self.release_quietly()
            raise
        try:
            after = self.read()
            if self.lease and not self.lease.mark_desynced(p["owner"], self.node_name, after.get("flow_control_sent")):
                raise GaleraError(f"the desync lease is no longer owner '{p['owner']}''s (lease_ttl={p['lease_ttl']}s "
                                  "is too short, or it was taken over)")
        except Exception as exc:  # pylint: disable=broad-except
            self.roll_back(exc)
        return self._finish(changed=True)

    def predicted_lease(self) -> dict:
        return dict(node=self.node_name, owner=self.p["owner"], node_address=_wsrep.client_address(self.variables),
                    cluster_name=self.variables.get("wsrep_cluster_name"), acquired_at=None, expires_at=None,
                    flow_control_sent_at_desync=self.snap.get("flow_control_sent"), expired=False,
                    seconds_left=self.p["lease_ttl"])

    def watchdog_params(self) -> dict:
        return dict(self.p, _gcache_local=_wsrep.on_this_host(self.node.conn, self.variables),
                    _pxc_maint_mode_ours=self.pxc_set)

    # -- load balancers ------------------------------------------------------------------
    def pxc_read(self) -> str | None:
        """pxc_maint_mode now when asked for (refusing a node without it), else None."""
        if not self.p.get("pxc_maint_mode"):
            return None
        value = _lb.pxc_maint_mode(self.node)
        reason = _lb.pxc_refusal(_wsrep.detect_flavor(self.variables), value, self.node_name)
        if reason:
            raise GaleraError(f"{reason}. Nothing was changed.")
        return value

    def pxc_result(self, before: str, after: str) -> None:
        self.result["pxc_maint_mode"] = dict(before=before, after=after, changed=before != after)

    def pxc_disable_quietly(self) -> None:
        """pxc_maint_mode back to DISABLED after a failure of the desync; a failure here is warned."""
        if not self.pxc_set:
            return
        try:
            _lb.set_pxc_maint_mode(self.node, _lb.PXC_DISABLED)
            self.pxc_result(_lb.PXC_DISABLED, _lb.PXC_DISABLED)
        except Exception as exc:  # pylint: disable=broad-except
            self.warn(f"could not set pxc_maint_mode back to DISABLED after the failure ({exc}); set it by hand")

    def pxc_after_resync(self) -> None:
        """state=synced with pxc_maint_mode: MAINTENANCE back to DISABLED, whatever the resync did."""
        try:
            value = _lb.pxc_maint_mode(self.node)
            if value != _lb.PXC_MAINTENANCE:
                if value is not None:
                    self.pxc_result(value, value)
                return
            if not self.check_mode:
                _lb.set_pxc_maint_mode(self.node, _lb.PXC_DISABLED)
            self.pxc_result(value, _lb.PXC_DISABLED)
            self.result["changed"] = True
        except Exception as exc:  # pylint: disable=broad-except
            self.warn(f"could not set pxc_maint_mode back to DISABLED on node {self.node_name} ({exc}); "
                      "set it by hand: SET GLOBAL pxc_maint_mode = 'DISABLED'")

    def check_watchdog_lb(self) -> None:
        """Warn, before the desync, about HAProxy instances the watchdog will not be able to put the node back in."""
        if not self.watchdog_lb:
            return
        if not (self.p.get("watchdog") and self.lease):
            self.warn("watchdog_haproxy is only used by the watchdog (watchdog: true, lease: true); ignored.")
            return
        usable, sockets = _lb.watchdog_split(self.watchdog_lb)
        for inst in sockets:
            self.warn(f"the watchdog cannot put the node back in {inst.label} if the controller dies: a Unix "
                      "socket is only reachable on HAProxy's own host. Give that instance a TCP stats socket "
                      "(address) the node reaches, or put the node back by hand after such a failure.")
        for inst in usable:
            try:
                _lb.read_state(inst)
            except GaleraError as exc:
                self.warn(f"the watchdog cannot reach HAProxy from node {self.node_name}: {exc.msg} If the controller "
                          "dies, the watchdog resyncs the node but cannot put it back there.")

    def take_lease(self, previous: dict | None) -> None:
        p = self.p
        try:
            self.lease.acquire(
                p["owner"], self.node_name, _wsrep.client_address(self.variables),
                self.variables.get("wsrep_cluster_name"), p["lease_ttl"], self.snap.get("flow_control_sent"),
                replace=previous,
            )
        except GaleraError as exc:
            if exc.get("conflict"):
                raise GaleraError(exc.msg + ". Only one node of a cluster may be desynced at a time. Nothing was "
                                  "changed.", **exc.details) from exc
            raise

    def release_quietly(self) -> None:
        """Give the lease back after a failure before the desync; a failure here is not the story."""
        if not self.lease:
            return
        try:
            self.lease.release(self.p["owner"], self.node_name)
        except Exception:  # pylint: disable=broad-except
            self.warn(f"could not release the desync lease after the failure; it expires after "
                      f"lease_ttl={self.p['lease_ttl']}s")

    def roll_back(self, cause) -> None:
        """A failure after wsrep_desync=ON: resync and release the lease, then fail naming the cause."""
        text = cause.msg if isinstance(cause, GaleraError) else str(cause)
        try:
            out = self.steps().drain_and_resync(self.node)
        except Exception as exc:  # pylint: disable=broad-except
            where = (f"the watchdog (pid {self.result['watchdog']['pid']}) resyncs it when the lease expires "
                     f"(lease_ttl={self.p['lease_ttl']}s)" if self.result.get("watchdog") else
                     "no watchdog runs: run galera_desync state=synced")
            raise GaleraError(f"node {self.node_name} was desynced but then {text}; the rollback failed too ({exc}), "
                              f"so it may still be desynced under this owner's lease: {where}.", changed=True) from exc
        self.pxc_disable_quietly()
        self.release_quietly()
        raise GaleraError(f"node {self.node_name} was desynced but then {text}; it was rolled back "
                          f"({out['last_state']}, lease released). Nothing was changed.",
                          changed=not out["synced"])

    def resync_previous(self, previous: dict) -> None:
        """Resync the node of the expired lease we just replaced; put its row back if we cannot."""
        node_name = previous["node"]
        host, port = host_port(previous.get("node_address"), self.p.get("login_port") or 3306)
        try:
            if not host:
                raise GaleraError("the lease records no address for it")
            with _connection.Session(self.p, address=(host, port)) as session:
                remote = _wsrep.Node(session.connection())
                try:
                    self._resync_remote(remote, previous, host, port)
                finally:
                    self.node.queries.extend(remote.queries)
        except Exception as exc:  # pylint: disable=broad-except
            text = exc.msg if isinstance(exc, GaleraError) else f"{type(exc).__name__}: {exc}"
            try:
                restored = self.lease.restore(previous, self.p["owner"], self.node_name)
            except Exception as again:  # pylint: disable=broad-except
                restored = False
                text += f"; putting the old lease back failed too ({again})"
            put_back = ("the lease was put back, still naming it" if restored else
                        f"the lease could not be put back, so it stays this owner's until it expires "
                        f"(lease_ttl={self.p['lease_ttl']}s) and no other node is desynced meanwhile")
            raise GaleraError(
                f"the desync lease expired ({_lease.describe(previous)}) and node {node_name} must be resynced "
                f"before another node is desynced, but {text}; {put_back}. Run galera_desync state=synced "
                f"force=true on {node_name}, then retry. This node was not desynced.", holder=previous,
                _keep_lease=True,
            ) from exc

    def _resync_remote(self, remote, previous: dict, host: str, port: int) -> None:
        variables = remote.variables()
        name = variables.get("wsrep_node_name")
        if name != previous["node"]:
            raise GaleraError(f"{host}:{port}, its recorded address, answers as node {name!r}, not {previous['node']!r}")
        if variables.get("wsrep_desync") is not True:
            return
        max_queue = _resync.max_recv_queue(self.p.get("max_recv_queue"), variables)
        out = _resync.Resync(self.p["drain_timeout"], self.p["timeout"], self.p["poll_interval"], max_queue,
                             self.warn, self.clock, self.sleep).drain_and_resync(remote)
        if not out["synced"]:
            raise GaleraError(f"it was resynced but is not Synced yet ({out['last_state']}); retry when it is")
        self.warn(f"took over the expired desync lease of owner '{previous['owner']}': resynced node "
                  f"{previous['node']} first")

    def recheck(self) -> None:
        """After resyncing another node (which may take minutes), judge this one again."""
        before = self.read()
        reasons = _wsrep.desync_refusals(before, self.p["min_cluster_size"])
        if before.get("desync"):
            reasons.append("it was desynced meanwhile (wsrep_desync=ON)")
        if reasons:
            raise GaleraError(f"refusing to desync node {self.node_name} after resyncing node of the expired lease: "
                              + "; ".join(reasons) + ". This node was not desynced.")

    # -- state=synced ------------------------------------------------------------------
    def synced(self) -> dict:
        """Resync (see ``_synced``); with pxc_maint_mode, then DISABLED whatever happened."""
        try:
            return self._synced()
        finally:
            if self.p.get("pxc_maint_mode"):
                self.pxc_after_resync()

    def _synced(self) -> dict:
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
                if (before["local_state"] != _wsrep.SYNCED and not (before.get("desync_count") or 0)
                        and not self.check_mode):
                    self.wait_catching_up()
                return self._finish(changed=False, lease_after=row)
            # Our desync was already turned off (a previous run timed out waiting): finish the job.
            if self.check_mode:
                return self._finish(changed=True, predicted_desync=False, lease_after=None)
            self._resync_and_release(row, resync=False)
            return self._finish(changed=True, lease_after=self.lease_after)

        same_node_row = row if row and row["node"] == self.node_name else None
        if not ours:
            if not self.lease:
                owner_text = ("lease: false, so nothing records who set wsrep_desync=ON; "
                              "set force: true to clear it")
            elif same_node_row:
                owner_text = f"it belongs to another owner: {_lease.describe(row)}"
            else:
                owner_text = ("no desync lease names this node, so wsrep_desync=ON was set outside "
                              "dbtools.galera (a DBA or another tool)")
            if not p["force"]:
                raise GaleraError(f"refusing to resync node {self.node_name}: {owner_text}. It is not ours to clear; "
                                  "use force: true to clear it anyway. Nothing was changed.", holder=row)
            self.result["previous_owner"] = same_node_row["owner"] if same_node_row else "unknown"
            self.warn(f"force: clearing a desync that is not owner '{p['owner']}''s ({owner_text}).")

        if self.check_mode:
            return self._finish(changed=True, predicted_desync=False,
                                lease_after=None if same_node_row else row)
        self._resync_and_release(same_node_row, resync=True)
        return self._finish(changed=True, lease_after=self.lease_after)

    def wait_catching_up(self) -> None:
        """wsrep_desync is OFF and nothing else holds the node, yet it is not Synced: another hand (the watchdog,
        a moment ago) resynced it and it is catching up. state=synced means Synced: wait for it, bounded by
        timeout, so nothing puts the node back in rotation before."""
        waited = self.steps().wait_synced(self.node)
        self.read()
        self.result["sync_seconds"] = waited["sync_seconds"]
        if not waited["synced"]:
            raise GaleraError(f"node {self.node_name} has wsrep_desync=OFF but did not reach Synced within "
                              f"timeout={self.p['timeout']}s (it is {waited['last_state']}). It is catching up; "
                              "rerun galera_desync state=synced (or galera_wait_synced).", changed=False)

    def _resync_and_release(self, row, resync: bool) -> None:
        p = self.p
        steps = self.steps()
        if resync:
            out = steps.drain_and_resync(self.node, first_status=self.status)
        else:
            out = dict(drained=True, drain_seconds=0.0, max_recv_queue_seen=None, **steps.wait_synced(self.node))
        self.result.update(drain_seconds=out["drain_seconds"], sync_seconds=out["sync_seconds"],
                           drained=out["drained"], max_recv_queue_seen=out["max_recv_queue_seen"])
        after = self.read()
        fc_start = (row or {}).get("flow_control_sent_at_desync")
        fc_end = out["flow_control_sent_before_synced"]
        if fc_end is None:
            fc_end = after.get("flow_control_sent")
        if fc_start is not None and fc_end is not None and fc_end >= fc_start:
            self.result["flow_control_sent"] = fc_end - fc_start
        if not out["synced"]:
            raise GaleraError(f"node {self.node_name} has wsrep_desync=OFF but did not reach Synced within "
                              f"timeout={p['timeout']}s (it is {out['last_state']}, receive queue "
                              f"{after.get('recv_queue')}). It is catching up; the lease is kept until it is Synced. "
                              "Rerun galera_desync state=synced (or galera_wait_synced) to finish.",
                              changed=resync)
        self.lease_after = self.result["lease_before"]
        if not self.lease or not row:
            return
        try:
            if row["owner"] != p["owner"]:
                self.lease.remove(row)
            else:
                self.lease.release(p["owner"], self.node_name)
        except Exception as exc:  # pylint: disable=broad-except
            raise GaleraError(
                f"node {self.node_name} was resynced and is Synced, but its desync lease could not be released: "
                f"{exc}. Until it is, no other node can be desynced: rerun galera_desync state=synced to release "
                f"it, or it expires at {row['expires_at']} UTC (its watchdog then releases it).",
                changed=True, desynced=False,
            ) from exc
        self.lease_after = None

    # -- the result ----------------------------------------------------------------------
    def _finish(self, changed: bool, predicted_desync=None, lease_after=_READ) -> dict:
        after = self.snap if predicted_desync is None else predict(self.snap, predicted_desync)
        if lease_after is _READ:
            lease_after = self.lease_row()
        before = self.result["before"]
        if self.check_mode and predicted_desync:
            diff_after = dict(_diff_view(after, None), lease=PREDICTED if self.lease else "none")
        else:
            diff_after = _diff_view(after, lease_after)
        self.result.update(
            changed=changed,
            after=after,
            desynced=bool(after.get("desync")),
            local_state_comment=dict(before=before["local_state_comment"], after=after["local_state_comment"]),
            recv_queue=after.get("recv_queue"),
            max_recv_queue=self.max_recv_queue,
            lease=lease_after,
            node=self.node_name,
            diff=dict(before=_diff_view(before, self.result.get("lease_before")), after=diff_after),
        )
        return self.result


def _diff_view(snap: dict, lease_row) -> dict:
    return dict(
        wsrep_desync="ON" if snap.get("desync") else "OFF",
        local_state_comment=snap.get("local_state_comment"),
        lease=_lease.describe(lease_row) if lease_row else "none",
    )

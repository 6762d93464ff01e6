# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The waiting steps of a desync cycle (private): drain, resync, wait for Synced, wait for ready.

``galera_desync`` (through ``_desync.Desyncer``), the on-node watchdog and ``galera_wait_synced``
share them, so each rule is written once. Clock and sleep are injectable: unit tests run a whole
drain against a fake node in milliseconds.
"""

from __future__ import annotations

import time

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError


def max_recv_queue(given: int | None, variables: dict) -> int:
    """The drain threshold: ``given``, else half the node's flow-control resume point."""
    if given is not None:
        return given
    return _wsrep.default_max_recv_queue(_wsrep.parse_provider_options(variables.get("wsrep_provider_options")))


# A drained queue must stay drained for this many reads this far apart before wsrep_desync=OFF: a node
# that only just caught up (right after a heavy backup step) can fall behind again within moments, and
# OFF with a growing queue means JOINED, where it sends flow control.
SETTLE_READS = 3
SETTLE_INTERVAL = 0.05


class Resync:
    """Drain, ``wsrep_desync=OFF``, wait for Synced, with the module's timeouts."""

    def __init__(self, drain_timeout: float, timeout: float, poll_interval: float, max_recv_queue: int, warn,
                 clock=time.monotonic, sleep=time.sleep):
        self.drain_timeout = drain_timeout
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_recv_queue = max_recv_queue
        self.warn = warn
        self.clock = clock
        self.sleep = sleep

    def drain_and_resync(self, node, first_status: dict | None = None) -> dict:
        """Wait for the receive queue to drain, set wsrep_desync=OFF, wait for Synced.

        A queue that does not drain within drain_timeout does not leave the node desynced: it is
        resynced anyway (it then catches up in JOINED) with a warning. ``first_status`` is a status
        read made a moment ago: the first look at the queue uses it instead of reading again.
        """
        out = dict(drained=False, synced=False, drain_seconds=0.0, sync_seconds=0.0, max_recv_queue_seen=0)
        started = self.clock()
        queue = None
        row = None
        settled = 0
        while True:
            if first_status is not None:
                row, first_status = first_status, None
            else:
                row = node.status()
            queue = row.get("wsrep_local_recv_queue", 0)
            out["max_recv_queue_seen"] = max(out["max_recv_queue_seen"], queue or 0)
            below = queue is not None and queue <= self.max_recv_queue
            settled = settled + 1 if below else 0
            if settled >= SETTLE_READS:
                out["drained"] = True
                break
            elapsed = self.clock() - started
            if elapsed >= self.drain_timeout:
                out["drained"] = below
                break
            self.sleep(min(SETTLE_INTERVAL if below else self.poll_interval, self.drain_timeout - elapsed))
        out["drain_seconds"] = round(self.clock() - started, 3)
        if not out["drained"]:
            self.warn(f"the receive queue did not drain to {self.max_recv_queue} within drain_timeout="
                      f"{self.drain_timeout}s (last {queue}); resyncing anyway, so the node catches up in "
                      "JOINED state and may send flow control meanwhile. Raise drain_timeout for long backups.")
        node.set_desync(False)
        out.update(self.wait_synced(node, last_desynced=row))
        return out

    def wait_synced(self, node, last_desynced: dict | None = None) -> dict:
        """Poll until the node is Synced, bounded by timeout.

        The desync cycle's flow control is counted up to the last status read that still saw the
        node not Synced (``last_desynced``, the drain's last read, when the first read after the
        resync already sees Synced): a busy Synced node sends flow control of its own every few
        milliseconds, which is not the cycle's doing. After a drained resync Joined lasts moments,
        so the reads start 10 ms apart and slow down to poll_interval.
        """
        sync = _wsrep.Poller(self.timeout, self.poll_interval, self.clock, self.sleep, first_interval=0.01)
        status = {}
        for _poll in sync:
            status = node.status()
            if status.get("wsrep_local_state") == _wsrep.SYNCED:
                break
            last_desynced = status
        state = status.get("wsrep_local_state")
        synced = state == _wsrep.SYNCED
        edge = last_desynced if last_desynced is not None else status
        return dict(synced=synced, sync_seconds=round(sync.elapsed, 3),
                    last_state=_wsrep.STATE_NAMES.get(state, state), last_status=status,
                    flow_control_sent_before_synced=edge.get("wsrep_flow_control_sent") if synced else None)


def wait_until_ready(session, timeout: float, poll_interval: float, max_queue: int | None, min_cluster_size: int,
                     clock=time.monotonic, sleep=time.sleep) -> dict:
    """Poll the node behind ``session`` until it is Synced, Primary, ready and caught up.

    A server not reachable yet (starting, joining) is polled again until the timeout; a refused
    login fails at once. Returns the figures; on timeout raises GaleraError naming every condition
    still false with its value, the figures in its details.
    """
    poller = _wsrep.Poller(timeout, poll_interval, clock, sleep)
    node = None
    snap = None
    threshold = max_queue
    max_seen = 0
    unmet = ["the node was never read"]
    for _poll in poller:
        try:
            if node is None:
                node = _wsrep.Node(session.connection())
            status, variables, snap = node.read()
        except GaleraError as exc:
            if not exc.get("unreachable"):
                raise
            unmet = [f"the server is not reachable: {exc.msg}"]
            continue
        except Exception as exc:  # pymysql errors: a lost connection is retried, a refusal is not
            if not _connection.lost_connection(exc):
                raise
            session.drop()
            node = None
            unmet = [f"the connection was lost: {exc}"]
            continue
        reason = _wsrep.is_galera(variables, status)
        if reason:
            raise GaleraError(f"{reason}; galera_wait_synced needs a Galera node.", status=snap, changed=False)
        if threshold is None:
            threshold = max_recv_queue(None, variables)
        max_seen = max(max_seen, snap.get("recv_queue") or 0)
        unmet = _wsrep.wait_conditions(snap, threshold, min_cluster_size)
        if not unmet:
            break
    result = dict(changed=False, elapsed=round(poller.elapsed, 3), polls=poller.polls,
                  max_recv_queue_seen=max_seen, max_recv_queue=threshold, status=snap)
    if unmet:
        raise GaleraError(f"node not in sync after {result['elapsed']}s ({poller.polls} polls): " + "; ".join(unmet),
                          **result)
    return result

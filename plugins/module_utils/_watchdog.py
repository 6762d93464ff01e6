# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The on-node resync watchdog (private to this collection).

galera_desync forks it when it desyncs a node. It is a detached process (new session, no
terminal, standard streams on /dev/null) that outlives the module and the connection, and
holds the module's parameters in memory only: no credentials on disk or on a command line.

Every few seconds it reads the lease and the node:
- the lease is gone or not ours any more: the desync ended normally; it exits (disarmed);
- a holder process is named (the backup tool's pid file) and alive: it renews the lease, so a
  long backup keeps its desync without anyone guessing the duration, up to ``max_hold``;
- the receive queue passes the guard (a count, or a fraction of gcs.recv_q_hard_limit in
  estimated bytes), memory runs low, or the cluster lost members so that fewer than
  min_cluster_size synced ones remain: it stops the holder, drains, resyncs, releases the lease;
- the lease expired (the controller died, the job was cancelled): it drains, resyncs and
  releases the lease.
What it does goes to syslog, to /var/log/dbtools-galera/watchdog.log and to the lease
database's desync_events table; its last view of the node is in a JSON state file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import syslog
import time
import traceback

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _lease, _wsrep

RUN_DIR = "/run/dbtools-galera"
LOG_FILE = "/var/log/dbtools-galera/watchdog.log"
CHECK_INTERVAL = 2.0


def key(owner: str, node: str) -> str:
    return hashlib.sha256(f"{owner}\0{node}".encode()).hexdigest()[:16]


def paths(owner: str, node: str) -> dict:
    k = key(owner, node)
    return dict(pid=os.path.join(RUN_DIR, f"watchdog-{k}.pid"), state=os.path.join(RUN_DIR, f"watchdog-{k}.json"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(path: str | None) -> int | None:
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def running(owner: str, node: str) -> int | None:
    """The pid of the live watchdog for this owner and node, if any."""
    pid = read_pid(paths(owner, node)["pid"])
    return pid if pid and pid_alive(pid) else None


def guard_reason(snap: dict, status: dict, provider: dict, max_queue: int, fraction: float, meminfo: dict,
                 min_cluster_size: int = 0):
    """Why the desync must be cut short now, or None (pure, unit-tested)."""
    queue = snap.get("recv_queue") or 0
    size = snap.get("cluster_size") or 0
    if min_cluster_size and size - 1 < min_cluster_size:
        return (f"the cluster shrank to {size} member(s): with this node desynced fewer than "
                f"min_cluster_size={min_cluster_size} synced members remain")
    if max_queue and queue > max_queue:
        return f"receive queue {queue} passed the guard of {max_queue} write-sets"
    hard = _wsrep.parse_size(provider.get("gcs.recv_q_hard_limit"))
    received = status.get("wsrep_received") or 0
    received_bytes = status.get("wsrep_received_bytes") or 0
    if hard and fraction and received and queue:
        estimate = queue * received_bytes / received
        if estimate >= fraction * hard:
            return (f"receive queue {queue} write-sets (about {int(estimate)} bytes) reached {fraction:.0%} of "
                    f"gcs.recv_q_hard_limit ({hard} bytes), past which the server aborts")
    total, available = meminfo.get("MemTotal"), meminfo.get("MemAvailable")
    if queue and total and available is not None and available < 0.05 * total:
        return f"memory is short ({available} of {total} bytes available) while the receive queue is {queue}"
    return None


def read_meminfo() -> dict:
    out = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, _sep, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[name] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return out


class Watchdog:
    def __init__(self, params: dict, owner: str, node_name: str):
        self.p = dict(params)
        self.owner = owner
        self.node_name = node_name
        self.files = paths(owner, node_name)
        self.started = time.monotonic()
        self.conn = None

    # -- logging ---------------------------------------------------------------------------
    def log(self, message: str, event: str | None = None, node=None) -> None:
        line = f"dbtools.galera watchdog [{self.node_name} owner={self.owner}] {message}"
        try:
            syslog.syslog(syslog.LOG_WARNING if event else syslog.LOG_INFO, line)
        except Exception:
            pass
        try:
            os.makedirs(os.path.dirname(LOG_FILE), mode=0o750, exist_ok=True)
            with open(LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line + "\n")
        except OSError:
            pass
        if event and node is not None:
            try:
                _lease.Lease(node, self.p["lease_database"]).record_event(self.node_name, self.owner, event, message)
            except Exception:
                pass

    def write_state(self, **state) -> None:
        state.update(pid=os.getpid(), owner=self.owner, node=self.node_name,
                     updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        tmp = self.files["state"] + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, self.files["state"])

    # -- the loop ----------------------------------------------------------------------------
    def node(self):
        if self.conn is None:
            self.conn = _connection.connect(self.p)
            # A backup's BACKUP STAGE BLOCK_COMMIT holds every commit, the lease renewal too: give
            # up after a few seconds and look again, rather than hang until the backup ends.
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION lock_wait_timeout = 5")
        return _wsrep.Node(self.conn)

    def run(self) -> None:
        self.log(f"armed: lease ttl {self.p['lease_ttl']} s, holder pid file "
                 f"{self.p.get('watchdog_hold_pid_file') or 'none'}")
        while True:
            try:
                if self.check():
                    return
            except Exception as exc:  # a restarting server, a lost connection: try again
                self.conn = None
                self.write_state(error=str(exc))
            time.sleep(CHECK_INTERVAL)

    def check(self) -> bool:
        """One look at the lease and the node; True when the watchdog's work is over."""
        node = self.node()
        lease = _lease.Lease(node, self.p["lease_database"])
        row = lease.read()
        if _lease.judge(row, self.owner, self.node_name) != _lease.OURS:
            self.log("lease released or no longer ours: the desync ended normally; disarmed")
            try:
                os.unlink(self.files["state"])
            except OSError:
                pass
            return True
        status, variables, snap = node.read()
        provider = _wsrep.parse_provider_options(variables.get("wsrep_provider_options"))
        holder = read_pid(self.p.get("watchdog_hold_pid_file"))
        holding = bool(holder and pid_alive(holder))
        held_for = time.monotonic() - self.started
        max_hold = self.p.get("watchdog_max_hold") or 0
        if holding and max_hold and held_for > max_hold:
            holding = False
        reason = None
        if snap.get("desync"):
            reason = guard_reason(snap, status, provider, self.p.get("watchdog_max_recv_queue") or 0,
                                  self.p.get("watchdog_hard_limit_fraction") or 0, read_meminfo(),
                                  self.p.get("min_cluster_size") or 0)
        self.write_state(lease=row, recv_queue=snap.get("recv_queue"), desync=snap.get("desync"),
                         local_state_comment=snap.get("local_state_comment"), holder_pid=holder, holding=holding,
                         guard=reason)
        if reason:
            self.log(f"guard: {reason}; stopping the holder and resyncing", "guard", node)
            if holding:
                try:
                    os.kill(holder, signal.SIGTERM)
                except OSError:
                    pass
            self.resync(node, lease, f"guard: {reason}")
            return True
        if holding and row["seconds_left"] < self.p["lease_ttl"] / 2:
            lease.renew(self.owner, self.node_name, self.p["lease_ttl"])
            return False
        if row["expired"]:
            self.resync(node, lease, "the lease expired with the node still desynced (the controller died or the "
                                     "job was cancelled)" if snap.get("desync") else "the lease expired")
            return True
        return False

    def resync(self, node, lease, why: str) -> None:
        # Imported here: _desync imports this module to arm the watchdog.
        from ansible_collections.dbtools.galera.plugins.module_utils._desync import Desyncer

        desyncer = Desyncer(self.p, node, False, self.log)
        desyncer.read()
        if desyncer.snap.get("desync"):
            out = desyncer.drain_and_resync()
            self.log(f"{why}: drained in {out['drain_seconds']} s (drained={out['drained']}, longest queue "
                     f"{out['max_recv_queue_seen']}), resynced, {out['last_state']} after {out['sync_seconds']} s",
                     "watchdog_resync", node)
        else:
            self.log(f"{why}: the node was not desynced any more; releasing the lease", "watchdog_release", node)
        lease.release(self.owner, self.node_name)
        self.write_state(resynced=True, reason=why)


def arm(params: dict, owner: str, node_name: str) -> int | None:
    """Start the watchdog for this desync unless one already runs; return its pid."""
    existing = running(owner, node_name)
    if existing:
        return existing
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    files = paths(owner, node_name)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        os.waitpid(first, 0)
        return int(data or 0) or None
    # First child: a new session, then fork again so the watchdog is no session leader.
    try:
        os.close(read_end)
        os.setsid()
        second = os.fork()
        if second:
            os.write(write_end, str(second).encode())
            os._exit(0)
        os.close(write_end)
        _detach()
        with open(os.open(files["pid"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                  encoding="ascii") as handle:
            handle.write(str(os.getpid()))
        try:
            Watchdog(params, owner, node_name).run()
        finally:
            try:
                os.unlink(files["pid"])
            except OSError:
                pass
    except BaseException:  # never return into the module's code from a child
        try:
            with open(LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(traceback.format_exc())
        except OSError:
            pass
    os._exit(0)


def _detach() -> None:
    os.chdir("/")
    os.umask(0o077)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 256)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

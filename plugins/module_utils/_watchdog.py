# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The on-node resync watchdog (private to this collection).

galera_desync starts it right after it takes the lease and before ``wsrep_desync=ON``, so a
desync never exists without it: it first sees a lease that is ours on a node not desynced yet,
which is normal. It is a detached process (new session, no terminal, standard streams on
/dev/null, its own systemd scope where systemd runs, so logind's KillUserProcesses does not end
it with the SSH session) that outlives the module and the connection, and holds the module's
parameters in memory only: no credentials on disk or on a command line.

Every few seconds it reads the lease and the node:
- the lease is gone or not ours any more: the desync ended normally; it exits (disarmed). While
  another owner takes an expired lease over (the row names another node and ours is still
  desynced) it waits a while: a takeover that cannot resync this node puts the row back;
- a holder process is named (the backup tool's pid file) and alive: it renews the lease while it
  has not expired, so a long backup keeps its desync without anyone guessing the duration, up to
  ``max_hold``; an expired lease is never revived (another owner may be taking it over);
- a guard trips (receive queue past a count or a fraction of gcs.recv_q_hard_limit, free space
  of the gcache directory's filesystem under a threshold, memory short, fewer than
  min_cluster_size synced members left): it stops the holder, drains, resyncs, releases the lease;
- the lease expired (the controller died, the job was cancelled): it drains, resyncs and
  releases the lease.
After a resync of its own (and after another owner's takeover resynced the node) it puts the node
back in rotation as the controller would have: ``pxc_maint_mode=DISABLED`` when this desync set
MAINTENANCE, and ``ready`` in every HAProxy instance of ``watchdog_haproxy`` it can reach from the
node (a TCP stats socket; a Unix socket on another host is out of its reach, see docs/lb.md).
What it does goes to syslog, to /var/log/dbtools-galera/watchdog.log and to the lease database's
desync_events table; its last view of the node is in a JSON state file. A failing log or state
write is reported where it can be and never stops the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import syslog
import time

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _lb, _lease, _proc, _resync, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

RUN_DIR = "/run/dbtools-galera"
LOG_FILE = "/var/log/dbtools-galera/watchdog.log"
# The log rotates itself (no logrotate needed): past LOG_MAX_BYTES it becomes watchdog.log.1, replacing the
# previous one, so the two files never hold more than twice that.
LOG_MAX_BYTES = 1 << 20
CHECK_INTERVAL = 2.0
# Putting the node back in HAProxy: tries, CHECK_INTERVAL apart (a load balancer restarting meanwhile).
LB_TRIES = 3
# Memory guard: available memory under this fraction of the total while write-sets queue up.
MIN_MEMORY_FRACTION = 0.05
# Defaults of the free-space guard on gcache.dir's filesystem: whichever is larger.
DEFAULT_MIN_FREE_BYTES = 1 << 30
DEFAULT_MIN_FREE_FRACTION = 0.05


def key(owner: str, node: str) -> str:
    return hashlib.sha256(f"{owner}\0{node}".encode()).hexdigest()[:16]


def paths(owner: str, node: str) -> dict:
    k = key(owner, node)
    return dict(pid=os.path.join(RUN_DIR, f"watchdog-{k}.pid"), state=os.path.join(RUN_DIR, f"watchdog-{k}.json"),
                unit=f"dbtools-galera-watchdog-{k}")


def pid_alive(pid) -> bool:
    return _proc.pid_alive(pid)


def read_pid(path: str | None) -> int | None:
    """The pid in a pid file (a bare number, or our JSON identity record); None when unreadable."""
    ident = read_identity(path)
    return ident["pid"] if ident else None


def read_identity(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except (OSError, ValueError):
        return None
    if text.isdigit():
        return dict(pid=int(text)) if int(text) > 0 else None
    try:
        ident = json.loads(text)
    except ValueError:
        return None
    return ident if isinstance(ident, dict) and isinstance(ident.get("pid"), int) else None


def running(owner: str, node: str) -> int | None:
    """The pid of the live watchdog for this owner and node, if any (a reused pid does not count)."""
    ident = read_identity(paths(owner, node)["pid"])
    if not ident:
        return None
    alive = _proc.same_process_alive(ident)
    if alive is None:
        alive = pid_alive(ident["pid"])
    return ident["pid"] if alive else None


def rotate_log(path: str, max_bytes: int) -> bool:
    """Move ``path`` to ``path.1`` (replacing it) once it holds ``max_bytes`` or more; True when it did."""
    try:
        if os.path.getsize(path) < max_bytes:
            return False
        os.replace(path, path + ".1")
    except OSError:  # none yet, or another watchdog rotated it first
        return False
    return True


# -- guards (pure, unit-tested) --------------------------------------------------------------------

def min_free_threshold(total: int | None, min_bytes: int, min_fraction: float) -> int:
    """The free-space floor: the larger of ``min_bytes`` and ``min_fraction`` of the filesystem."""
    by_fraction = int((total or 0) * (min_fraction or 0))
    return max(int(min_bytes or 0), by_fraction)


def disk_guard_reason(space: dict | None, directory: str | None, min_bytes: int, min_fraction: float):
    """Why the gcache directory's filesystem is too full for a desync to go on, or None."""
    if not space:
        return None
    floor = min_free_threshold(space.get("total_bytes"), min_bytes, min_fraction)
    free = space.get("free_bytes")
    if floor and free is not None and free < floor:
        return (f"the filesystem of gcache.dir {directory} has {free} bytes free, under the guard of {floor} "
                f"(watchdog_min_free_bytes={min_bytes}, watchdog_min_free_fraction={min_fraction} of "
                f"{space.get('total_bytes')}); a desynced node keeps every unapplied write-set in gcache pages there")
    return None


def memory_guard_reason(meminfo: dict, queue: int):
    total, available = meminfo.get("MemTotal"), meminfo.get("MemAvailable")
    if queue and total and available is not None and available < MIN_MEMORY_FRACTION * total:
        return f"memory is short ({available} of {total} bytes available) while the receive queue is {queue}"
    return None


def guard_reason(snap: dict, status: dict, provider: dict, max_queue: int, fraction: float, meminfo: dict,
                 min_cluster_size: int = 0, disk: dict | None = None):
    """Why the desync must be cut short now, or None (pure, unit-tested).

    ``disk``: ``dict(space=filesystem_space(...), dir=..., min_bytes=..., min_fraction=...)``, or
    None when the gcache directory cannot be looked at from here.
    """
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
    if disk:
        reason = disk_guard_reason(disk.get("space"), disk.get("dir"), disk.get("min_bytes") or 0,
                                   disk.get("min_fraction") or 0)
        if reason:
            return reason
    return memory_guard_reason(meminfo, queue)


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


def disk_view(params: dict, variables: dict, provider: dict) -> dict | None:
    """What the free-space guard looks at, or None when the node's files are not on this machine."""
    if not params.get("_gcache_local"):
        return None
    directory = _wsrep.gcache_dir(variables, provider)
    return dict(dir=directory, space=_wsrep.filesystem_space(directory),
                min_bytes=params.get("watchdog_min_free_bytes") or 0,
                min_fraction=params.get("watchdog_min_free_fraction") or 0)


# -- the process -----------------------------------------------------------------------------------

class Watchdog:
    def __init__(self, params: dict, owner: str, node_name: str, session=None, clock=time.monotonic,
                 sleep=time.sleep, meminfo=read_meminfo):
        self.p = dict(params)
        self.owner = owner
        self.node_name = node_name
        self.files = paths(owner, node_name)
        self.clock = clock
        self.sleep = sleep
        self.meminfo = meminfo
        self.started = clock()
        self.lost_since = None
        # A backup's BACKUP STAGE BLOCK_COMMIT holds every commit, the lease renewal too: give up
        # after a few seconds and look again, rather than hang until the backup ends.
        self.session = session or _connection.Session(self.p, init=("SET SESSION lock_wait_timeout = 5",))

    # -- logging ---------------------------------------------------------------------------
    def log(self, message: str, event: str | None = None, node=None) -> None:
        """To syslog, the log file and (for events) the desync_events table; never raises."""
        line = f"dbtools.galera watchdog [{self.node_name} owner={self.owner}] {message}"
        try:
            syslog.syslog(syslog.LOG_WARNING if event else syslog.LOG_INFO, line)
        except Exception:  # no syslog socket: the file and the table still have it
            pass
        try:
            os.makedirs(os.path.dirname(LOG_FILE), mode=0o750, exist_ok=True)
            rotate_log(LOG_FILE, LOG_MAX_BYTES)
            with open(LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line + "\n")
        except OSError:
            pass
        if event and node is not None:
            try:
                _lease.Lease(node, self.p["lease_database"]).record_event(self.node_name, self.owner, event, message)
            except Exception:  # the server may be the problem; syslog and the file have it
                pass

    def write_state(self, **state) -> bool:
        """Replace the JSON state file; on failure log it and carry on (False)."""
        state.update(pid=os.getpid(), owner=self.owner, node=self.node_name,
                     updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        tmp = self.files["state"] + ".tmp"
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
                json.dump(state, handle, default=str)
            os.replace(tmp, self.files["state"])
        except (OSError, TypeError, ValueError) as exc:
            self.log(f"cannot write the state file {self.files['state']}: {exc}; going on without it")
            return False
        return True

    # -- the loop ----------------------------------------------------------------------------
    def node(self):
        return _wsrep.Node(self.session.connection())

    def run(self) -> None:
        self.log(f"armed: lease ttl {self.p['lease_ttl']} s, holder pid file "
                 f"{self.p.get('watchdog_hold_pid_file') or 'none'}")
        while True:
            if self.step():
                return
            self.sleep(CHECK_INTERVAL)

    def step(self) -> bool:
        """One check that never raises: a failure (a restarting server, a lost connection, a bug)
        is logged and the next check tries again, so the desync is never left unwatched."""
        try:
            return self.check()
        except Exception as exc:  # pylint: disable=broad-except
            self.session.drop()
            self.log(f"check failed, trying again in {CHECK_INTERVAL} s: {exc}")
            self.write_state(error=str(exc))
            return False

    def check(self) -> bool:
        """One look at the lease and the node; True when the watchdog's work is over."""
        node = self.node()
        lease = _lease.Lease(node, self.p["lease_database"])
        row = lease.read()
        status, variables, snap = node.read()
        if _lease.judge(row, self.owner, self.node_name) != _lease.OURS:
            return self.not_ours(row, snap)
        self.lost_since = None
        provider = _wsrep.parse_provider_options(variables.get("wsrep_provider_options"))
        holder = read_pid(self.p.get("watchdog_hold_pid_file"))
        holding = bool(holder and pid_alive(holder))
        max_hold = self.p.get("watchdog_max_hold") or 0
        if holding and max_hold and self.clock() - self.started > max_hold:
            holding = False
        reason = None
        if snap.get("desync"):
            reason = guard_reason(snap, status, provider, self.p.get("watchdog_max_recv_queue") or 0,
                                  self.p.get("watchdog_hard_limit_fraction") or 0, self.meminfo(),
                                  self.p.get("min_cluster_size") or 0, disk_view(self.p, variables, provider))
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
            self.resync(node, lease, f"guard: {reason}", variables)
            return True
        if holding and not row["expired"] and row["seconds_left"] < self.p["lease_ttl"] / 2:
            # Refused when it expired meanwhile: the next look sees it expired (or taken).
            lease.renew(self.owner, self.node_name, self.p["lease_ttl"])
            return False
        if row["expired"]:
            why = ("the lease expired with the node still desynced (the controller died or the job was cancelled)"
                   if snap.get("desync") else "the lease expired before the node was desynced")
            self.resync(node, lease, why, variables)
            return True
        return False

    def takeover_grace(self) -> float:
        return float(self.p.get("drain_timeout") or 0) + float(self.p.get("timeout") or 0) + 60.0

    def not_ours(self, row, snap) -> bool:
        """The lease is not ours: disarm, unless a takeover of our expired lease is under way."""
        taking_over = bool(row) and row["node"] != self.node_name and snap.get("desync")
        if taking_over:
            if self.lost_since is None:
                self.lost_since = self.clock()
                self.log(f"the lease was taken over ({_lease.describe(row)}) while this node is still desynced: "
                         "waiting for the new owner to resync it, or to put the lease back")
            if self.clock() - self.lost_since < self.takeover_grace():
                self.write_state(lease=row, desync=snap.get("desync"), recv_queue=snap.get("recv_queue"),
                                 local_state_comment=snap.get("local_state_comment"), taken_over=True)
                return False
            self.log("the lease stayed with another owner and this node is still desynced, but that desync is no "
                     "longer ours to clear; disarmed", "watchdog_disarm_desynced", self.node())
        elif row and row["node"] != self.node_name:
            # Our expired lease was taken over and the new owner resynced this node: nobody else puts it back.
            self.log(f"the lease was taken over ({_lease.describe(row)}) and this node is no longer desynced; "
                     "disarmed")
            self.back_in_rotation(self.node())
        else:
            self.log("lease released or no longer ours: the desync ended normally; disarmed")
        try:
            os.unlink(self.files["state"])
        except OSError:
            pass
        return True

    def resync(self, node, lease, why: str, variables: dict) -> None:
        queue = _resync.max_recv_queue(self.p.get("max_recv_queue"), variables)
        steps = _resync.Resync(self.p.get("drain_timeout") or 0, self.p.get("timeout") or 0,
                               self.p.get("poll_interval") or 0.5, queue, self.log, self.clock, self.sleep)
        if node.variables().get("wsrep_desync"):
            out = steps.drain_and_resync(node)
            self.log(f"{why}: drained in {out['drain_seconds']} s (drained={out['drained']}, longest queue "
                     f"{out['max_recv_queue_seen']}), resynced, {out['last_state']} after {out['sync_seconds']} s",
                     "watchdog_resync", node)
        else:
            self.log(f"{why}: the node was not desynced (any more); releasing the lease", "watchdog_release", node)
        lease.release(self.owner, self.node_name)
        self.write_state(resynced=True, reason=why)
        self.back_in_rotation(node)

    def back_in_rotation(self, node) -> None:
        """pxc_maint_mode back to DISABLED (when this desync set it) and the node ready in every HAProxy
        instance of watchdog_haproxy the node reaches, a few tries each; logged, never raises."""
        if self.p.get("_pxc_maint_mode_ours"):
            try:
                if _lb.pxc_maint_mode(node) == _lb.PXC_MAINTENANCE:
                    _lb.set_pxc_maint_mode(node, _lb.PXC_DISABLED)
                    self.log("pxc_maint_mode set back to DISABLED", "watchdog_lb_ready", node)
            except Exception as exc:  # pylint: disable=broad-except
                self.log(f"could not set pxc_maint_mode back to DISABLED: {exc}; set it by hand", "watchdog_lb_failed",
                         node)
        try:
            usable, sockets = _lb.watchdog_split(_lb.instances(self.p.get("watchdog_haproxy"), "watchdog_haproxy"))
        except GaleraError as exc:  # checked by galera_desync already
            self.log(f"watchdog_haproxy is wrong: {exc.msg}", "watchdog_lb_failed", node)
            return
        for inst in sockets:
            self.log(f"cannot put the node back in {inst.label}: a Unix socket on HAProxy's host is out of reach "
                     "from here; put it back by hand (galera_lb state=ready)", "watchdog_lb_failed", node)
        for attempt in range(1, LB_TRIES + 1):
            if not usable:
                return
            try:
                out = _lb.apply(usable, _lb.READY)
                self.log(f"back in rotation: {_lb.summary(out)}", "watchdog_lb_ready", node)
                return
            except GaleraError as exc:
                failed = [i for i, r in zip(usable, exc.get("instances") or []) if r.get("error")]
                if attempt == LB_TRIES:
                    self.log(f"could not put the node back in rotation after {LB_TRIES} tries: {exc.msg} Put it back "
                             "by hand (galera_lb state=ready).", "watchdog_lb_failed", node)
                    return
                self.log(f"putting the node back in rotation failed, trying again in {CHECK_INTERVAL} s: {exc.msg}")
                usable = failed
                self.sleep(CHECK_INTERVAL)


# -- starting it -----------------------------------------------------------------------------------

def prepare(owner: str, node_name: str) -> dict:
    """Everything that can fail before the watchdog forks: its run directory and its log file.

    Raises GaleraError (nothing changed yet) naming the fix. Returns its paths.
    """
    files = paths(owner, node_name)
    try:
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        probe = os.path.join(RUN_DIR, f".probe-{os.getpid()}")
        with open(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii"):
            pass
        os.unlink(probe)
        os.makedirs(os.path.dirname(LOG_FILE), mode=0o750, exist_ok=True)
        with open(LOG_FILE, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise GaleraError(
            f"cannot prepare the desync watchdog: {exc}. It needs to write {RUN_DIR} and {LOG_FILE}: run the module "
            "as root (become: true), or set watchdog: false (then nothing resyncs the node if the run dies). "
            "Nothing was changed.", errno=None,
        ) from exc
    return files


def arm(params: dict, owner: str, node_name: str) -> dict:
    """Start the watchdog for this desync unless one already runs.

    Returns ``dict(pid, state_file, log_file, started)``. Raises GaleraError when it cannot start.
    Call ``prepare`` first; the caller decides what to undo on failure.
    """
    files = prepare(owner, node_name)
    existing = running(owner, node_name)
    if existing:
        return dict(pid=existing, state_file=files["state"], log_file=LOG_FILE, started=False)

    def setup():
        with open(os.open(files["pid"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                  encoding="ascii") as handle:
            json.dump(_proc.identity(), handle)

    def child():
        watchdog = Watchdog(params, owner, node_name)
        try:
            unit = f"{files['unit']}-{os.getpid()}.scope"
            watchdog.log(f"process {os.getpid()}: " + _proc.move_to_scope(
                unit, os.getpid(), f"dbtools.galera desync watchdog for {node_name}"))
            watchdog.run()
        except BaseException as exc:  # pylint: disable=broad-except
            watchdog.log(f"stopped by an unexpected error: {exc!r}")
        finally:
            try:
                os.unlink(files["pid"])
            except OSError:
                pass

    try:
        pid = _proc.spawn_detached(child, setup)
    except OSError as exc:
        raise GaleraError(f"cannot start the desync watchdog: {exc}. Run the module as root (become: true), or set "
                          "watchdog: false (then nothing resyncs the node if the run dies).") from exc
    return dict(pid=pid, state_file=files["state"], log_file=LOG_FILE, started=True)

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Reading and judging a Galera node's wsrep state (private to this collection).

Parsing and decisions are pure functions over plain dicts, so they are unit-tested
without a server; ``Node`` wraps a PyMySQL connection to read the live values.
"""

from __future__ import annotations

import math
import os
import socket
import time

# wsrep_local_state values (identical on MariaDB, Percona XtraDB Cluster and MySQL-wsrep).
JOINING = 1
DONOR_DESYNCED = 2
JOINED = 3
SYNCED = 4
STATE_NAMES = {0: "Undefined", JOINING: "Joining", DONOR_DESYNCED: "Donor/Desynced", JOINED: "Joined", SYNCED: "Synced"}

# Galera's own defaults, used when wsrep_provider_options does not name a value.
DEFAULT_FC_LIMIT = 16
DEFAULT_FC_FACTOR = 1.0

_BOOL_WORDS = {"ON": True, "OFF": False, "YES": True, "NO": False, "TRUE": True, "FALSE": False}

# Status variables whose value is not a number even when it looks like one.
_TEXT_STATUS = frozenset((
    "wsrep_cluster_state_uuid", "wsrep_local_state_uuid", "wsrep_gcomm_uuid", "wsrep_cluster_status",
    "wsrep_local_state_comment", "wsrep_incoming_addresses", "wsrep_provider_name", "wsrep_provider_vendor",
    "wsrep_provider_version", "wsrep_cluster_conf_id", "wsrep_evs_state", "wsrep_evs_delayed",
    "wsrep_evs_evict_list", "wsrep_cluster_capabilities", "wsrep_provider_capabilities", "wsrep_last_committed_gtid",
    "wsrep_node_name", "wsrep_cluster_weight", "wsrep_open_connections", "wsrep_thread_count",
    "wsrep_cluster_name", "wsrep_node_address", "wsrep_node_incoming_address", "wsrep_cluster_address",
    "version", "version_comment", "hostname", "datadir", "wsrep_provider",
))
_INT_STATUS_FORCE = frozenset(("wsrep_cluster_conf_id", "wsrep_cluster_weight", "wsrep_open_connections",
                               "wsrep_thread_count"))


def parse_value(name: str, raw):
    """Type one status/variable value: int, float, bool (ON/OFF) or str."""
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", "replace")
    text = str(raw).strip()
    if name in _INT_STATUS_FORCE:
        try:
            return int(text)
        except ValueError:
            return text
    if name in _TEXT_STATUS:
        return text
    upper = text.upper()
    if upper in _BOOL_WORDS:
        return _BOOL_WORDS[upper]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def parse_rows(rows) -> dict:
    """SHOW STATUS / SHOW VARIABLES rows to a dict of typed values, names in lower case."""
    return {str(name).lower(): parse_value(str(name).lower(), value) for name, value in rows}


def parse_provider_options(text: str | None) -> dict:
    """``wsrep_provider_options`` ("a.b = 1; c = x; ...") to a dict of typed values."""
    result = {}
    for item in (text or "").split(";"):
        if "=" not in item:
            continue
        key, _sep, value = item.partition("=")
        key = key.strip()
        if key:
            result[key] = parse_value(key, value.strip())
    return result


def parse_size(value) -> int | None:
    """A Galera size option ("128M", "1G", 1048576) in bytes."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(float(text))
    except ValueError:
        return None


def flow_control_resume_point(provider_options: dict) -> float:
    """Queue length below which a node that sent flow control lets the cluster go on.

    Galera pauses at ``gcs.fc_limit`` and resumes below ``gcs.fc_limit * gcs.fc_factor``.
    """
    limit = provider_options.get("gcs.fc_limit", DEFAULT_FC_LIMIT)
    factor = provider_options.get("gcs.fc_factor", DEFAULT_FC_FACTOR)
    if not isinstance(limit, (int, float)) or isinstance(limit, bool):
        limit = DEFAULT_FC_LIMIT
    if not isinstance(factor, (int, float)) or isinstance(factor, bool):
        factor = DEFAULT_FC_FACTOR
    return float(limit) * float(factor)


def default_max_recv_queue(provider_options: dict) -> int:
    """Drain threshold: half the flow-control resume point.

    A busy node rarely reads exactly 0, and the queue can grow between our last read and
    ``wsrep_desync=OFF``; half the resume point leaves room for that before the node, now
    JOINED, would send flow control.
    """
    return max(0, int(flow_control_resume_point(provider_options) // 2))


def detect_flavor(variables: dict) -> str:
    """``mariadb``, ``percona-xtradb-cluster`` or ``mysql-wsrep``."""
    comment = str(variables.get("version_comment", "")).lower()
    version = str(variables.get("version", "")).lower()
    if "percona xtradb cluster" in comment or "pxc" in comment:
        return "percona-xtradb-cluster"
    if "mariadb" in version or "mariadb" in comment:
        return "mariadb"
    return "mysql-wsrep"


def is_galera(variables: dict, status: dict) -> str | None:
    """None when the server is a running Galera node, else why it is not."""
    if "wsrep_on" not in variables:
        return "the server has no wsrep support (no wsrep_on variable): it is not a Galera node"
    if variables.get("wsrep_on") is not True:
        return "wsrep_on is OFF: the server runs without Galera replication"
    provider = str(variables.get("wsrep_provider", "none")).strip().lower()
    if provider in ("", "none"):
        return "wsrep_provider is 'none': no Galera library is loaded"
    if "wsrep_local_state" not in status:
        return "the server reports no wsrep_local_state: the Galera provider is not running"
    return None


def snapshot(status: dict, variables: dict) -> dict:
    """The few figures every module reports about a node, in one shape."""
    state = status.get("wsrep_local_state")
    return dict(
        node_name=variables.get("wsrep_node_name"),
        local_state=state,
        local_state_comment=status.get("wsrep_local_state_comment") or STATE_NAMES.get(state, "Unknown"),
        cluster_status=status.get("wsrep_cluster_status"),
        cluster_size=status.get("wsrep_cluster_size"),
        ready=status.get("wsrep_ready"),
        connected=status.get("wsrep_connected"),
        desync=variables.get("wsrep_desync"),
        desync_count=status.get("wsrep_desync_count"),
        recv_queue=status.get("wsrep_local_recv_queue"),
        flow_control_sent=status.get("wsrep_flow_control_sent"),
        flow_control_paused_ns=status.get("wsrep_flow_control_paused_ns"),
        cluster_state_uuid=status.get("wsrep_cluster_state_uuid"),
        last_committed=status.get("wsrep_last_committed"),
    )


def client_address(variables: dict) -> str | None:
    """``host:port`` where clients reach this node's SQL server, for other nodes to connect to.

    ``wsrep_node_incoming_address`` unless it is AUTO, else the host of ``wsrep_node_address``
    (or the hostname) with the server's port.
    """
    incoming = str(variables.get("wsrep_node_incoming_address") or "").strip()
    if incoming and incoming.upper() != "AUTO" and not incoming.endswith(":0"):
        return incoming
    address = str(variables.get("wsrep_node_address") or "").strip() or str(variables.get("hostname") or "")
    if not address:
        return None
    if address.startswith("["):
        host = address[: address.index("]") + 1]
    elif address.count(":") == 1:
        host = address.split(":", maxsplit=1)[0]
    else:
        host = address
    return f"{host}:{variables.get('port') or 3306}"


def gcache_dir(variables: dict, provider_options: dict) -> str | None:
    """Where gcache keeps its ring buffer and page files: ``gcache.dir``, else the data directory."""
    configured = provider_options.get("gcache.dir")
    if isinstance(configured, str) and configured.strip():
        return configured.strip()
    datadir = variables.get("datadir")
    return str(datadir) if datadir else None


def filesystem_space(path: str | None) -> dict | None:
    """Free (for an unprivileged writer such as mysqld) and total bytes of ``path``'s filesystem."""
    if not path:
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return dict(free_bytes=st.f_bavail * st.f_frsize, total_bytes=st.f_blocks * st.f_frsize)


def on_this_host(conn, variables: dict) -> bool:
    """Whether the server behind ``conn`` runs on this machine, so its paths are ours to statvfs.

    A Unix socket connection is local; else the server's ``hostname`` must be this machine's.
    """
    if getattr(conn, "unix_socket", None):
        return True
    hostname = str(variables.get("hostname") or "").split(".", maxsplit=1)[0]
    return bool(hostname) and hostname == socket.gethostname().split(".", maxsplit=1)[0]


def local_gcomm_uuid(datadir: str | None) -> str | None:
    """The group-communication uuid of the Galera node whose data directory is ``datadir`` on THIS
    machine (``my_uuid`` of its ``gvwstate.dat``), or None when that file is not there or not readable.

    A server reached through a login (socket, host and port) is the node whose files are here only if
    its ``wsrep_gcomm_uuid`` is this one: a login pointing at another node (a load balancer, a wrong
    host) reports another uuid.
    """
    if not datadir:
        return None
    try:
        with open(os.path.join(datadir, "gvwstate.dat"), encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "my_uuid":
                    return value.strip() or None
    except OSError:
        return None
    return None


def desync_refusals(snap: dict, min_cluster_size: int) -> list:
    """Why a node must not be desynced now (safety invariant 1); [] when it may be."""
    reasons = []
    if snap.get("cluster_status") != "Primary":
        reasons.append(f"the node is not in a Primary component (wsrep_cluster_status={snap.get('cluster_status')})")
    if snap.get("ready") is not True:
        reasons.append(f"the node is not ready (wsrep_ready={_onoff(snap.get('ready'))})")
    if snap.get("local_state") != SYNCED:
        reasons.append(f"the node is not Synced (wsrep_local_state_comment={snap.get('local_state_comment')})")
    size = snap.get("cluster_size") or 0
    if size - 1 < min_cluster_size:
        reasons.append(
            f"desyncing it would leave {max(size - 1, 0)} synced member(s) of {size}, "
            f"fewer than min_cluster_size={min_cluster_size}"
        )
    return reasons


def wait_conditions(snap: dict, max_recv_queue: int, min_cluster_size: int) -> list:
    """Conditions of galera_wait_synced still false, each naming its value; [] when met."""
    false = []
    if snap.get("local_state") != SYNCED:
        false.append(f"wsrep_local_state_comment is {snap.get('local_state_comment')}, not Synced")
    if snap.get("cluster_status") != "Primary":
        false.append(f"wsrep_cluster_status is {snap.get('cluster_status')}, not Primary")
    if snap.get("ready") is not True:
        false.append(f"wsrep_ready is {_onoff(snap.get('ready'))}, not ON")
    queue = snap.get("recv_queue")
    if queue is None or queue > max_recv_queue:
        false.append(f"wsrep_local_recv_queue is {queue}, above max_recv_queue={max_recv_queue}")
    size = snap.get("cluster_size") or 0
    if size < min_cluster_size:
        false.append(f"wsrep_cluster_size is {size}, below min_cluster_size={min_cluster_size}")
    return false


def _onoff(value):
    if value is True:
        return "ON"
    if value is False:
        return "OFF"
    return value


class Node:
    """A live Galera node behind a PyMySQL connection."""

    def __init__(self, conn):
        self.conn = conn
        self.queries = []

    def query(self, sql: str, args=None, record: bool = True):
        if record:
            self.queries.append(sql)
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def status(self) -> dict:
        return parse_rows(self.query("SHOW GLOBAL STATUS LIKE 'wsrep%'", record=False))

    def variables(self) -> dict:
        rows = self.query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name LIKE 'wsrep%' "
            "OR Variable_name IN ('version', 'version_comment', 'hostname', 'datadir', 'port')",
            record=False,
        )
        return parse_rows(rows)

    def read(self):
        """(status, variables, snapshot) of the node right now."""
        variables = self.variables()
        status = self.status()
        return status, variables, snapshot(status, variables)

    def set_desync(self, on: bool) -> None:
        self.query("SET GLOBAL wsrep_desync = %s" % ("ON" if on else "OFF"))


class Poller:
    """A monotonic-clock polling loop: ``for elapsed in Poller(timeout, interval)``.

    Yields at once, then every ``interval`` seconds until ``timeout`` has passed. With
    ``first_interval``, the sleeps start there and double up to ``interval``: a state that
    usually changes within moments is seen close to when it changed, a slow one is not
    polled harder than ``interval``.
    """

    def __init__(self, timeout: float, interval: float, clock=time.monotonic, sleep=time.sleep,
                 first_interval: float | None = None):
        self.timeout = timeout
        self.interval = interval
        self.first_interval = min(first_interval, interval) if first_interval else interval
        self.clock = clock
        self.sleep = sleep
        self.polls = 0
        self.started = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started if self.started is not None else 0.0

    def __iter__(self):
        self.started = self.clock()
        interval = self.first_interval
        while True:
            self.polls += 1
            yield self.elapsed
            remaining = self.timeout - self.elapsed
            if remaining <= 0:
                return
            self.sleep(min(interval, remaining))
            interval = min(interval * 2, self.interval)

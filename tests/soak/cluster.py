"""The local Docker cluster as the soak sees and drives it from the host (no product code).

SQL from the host as the test administrator (short timeouts: a node cut from the network must not stall
the sampler), with ``docker exec ... mariadb`` over the node's socket as the fallback for a node the host
cannot reach; the sysbench write load on the writer; the soak's marks; the cross-node CHECKSUM TABLE;
the tmpfs that holds the soak's backup directories; the password account; and the sampler that records
every node's state twice a second for the report.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import threading
import time

import pymysql

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))

from local_cluster import ADMIN_PASSWORD, ADMIN_USER, NETWORK, container_ip  # noqa: E402  pylint: disable=wrong-import-position

NODES = ("galera-node1", "galera-node2", "galera-node3")
WRITER = "galera-node1"
STATUS_NAMES = ("wsrep_local_state_comment", "wsrep_cluster_status", "wsrep_ready", "wsrep_cluster_size",
                "wsrep_cluster_state_uuid", "wsrep_flow_control_sent", "wsrep_local_recv_queue",
                "wsrep_last_committed", "wsrep_local_state", "wsrep_desync_count")
STATUS_SQL = ("SHOW GLOBAL STATUS WHERE Variable_name IN (" + ",".join(f"'{n}'" for n in STATUS_NAMES) + ")")
DESYNC_SQL = "SHOW GLOBAL VARIABLES LIKE 'wsrep_desync'"
LEASE_SQL = ("SELECT node, owner, expires_at <= UTC_TIMESTAMP(6), TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), expires_at), "
             "DATE_FORMAT(expires_at, '%Y-%m-%d %H:%i:%s') FROM dbtools_galera.desync_lease")
TABLES = ("sbtest.sbtest1", "sbtest.sbtest2", "sbtest.sbtest3", "sbtest.sbtest4", "soak.marks", "soak.ticks")
SYSBENCH_ROWS = 20000


def docker(*argv, check: bool = True, input_text: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check, input=input_text,
                          timeout=timeout)


def node_exec(node: str, *argv, check: bool = True, input_text: str | None = None, timeout: float = 600):
    flags = ["-i"] if input_text is not None else []
    return docker("exec", *flags, node, *argv, check=check, input_text=input_text, timeout=timeout)


def node_sql(node: str, query: str, timeout: float = 60) -> list:
    """Rows of a query run by root over the node's socket (works on a node the host cannot reach)."""
    done = node_exec(node, "mariadb", "-N", "-B", "-e", query, check=False, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{node}: {query[:80]!r}: {done.stderr.strip()[-300:]}")
    return [line.split("\t") for line in done.stdout.splitlines()]


def now() -> float:
    return time.time()


# ---------------------------------------------------------------------------------------------
# SQL from the host

class Conn:
    """One node's admin connection, reopened on demand; ``None`` results when the node cannot be reached."""

    def __init__(self, node: str):
        self.node = node
        self.conn = None
        self.tcp_failed_at = 0.0

    def _open(self):
        if self.conn is None:
            self.conn = pymysql.connect(host=container_ip(self.node), user=ADMIN_USER, password=ADMIN_PASSWORD,
                                        autocommit=True, connect_timeout=2, read_timeout=10, write_timeout=10)
        return self.conn

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self.conn = None

    def query(self, sql: str, args=None) -> list:
        try:
            with self._open().cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except Exception:
            self.close()
            raise

    def status(self) -> dict | None:
        """wsrep status and wsrep_desync; over TCP, else through docker exec; None when the server is down."""
        if time.monotonic() - self.tcp_failed_at > 5:
            try:
                out = dict((k.lower(), v) for k, v in self.query(STATUS_SQL))
                out["wsrep_desync"] = self.query(DESYNC_SQL)[0][1]
                out["via"] = "tcp"
                return out
            except Exception:  # pylint: disable=broad-except
                self.tcp_failed_at = time.monotonic()
        try:
            rows = node_sql(self.node, STATUS_SQL + "; " + DESYNC_SQL, timeout=20)
        except (RuntimeError, subprocess.SubprocessError):
            return None
        out = {r[0].lower(): r[1] for r in rows if len(r) == 2}
        out["via"] = "exec"
        return out


class Cluster:
    def __init__(self):
        self.conns = {n: Conn(n) for n in NODES}
        self.lock = threading.Lock()

    def close(self):
        for conn in self.conns.values():
            conn.close()

    def statuses(self) -> dict:
        return {n: c.status() for n, c in self.conns.items()}

    def lease(self, prefer: str = WRITER):
        """The lease row (dict) read on a Primary node the host reaches; None when there is none; "unknown"
        when no node could be asked."""
        order = [prefer] + [n for n in NODES if n != prefer]
        for node in order:
            try:
                rows = self.conns[node].query(LEASE_SQL)
            except pymysql.err.ProgrammingError as exc:
                if exc.args and exc.args[0] in (1049, 1146):
                    return None
                continue
            except Exception:  # pylint: disable=broad-except
                continue
            if not rows:
                return None
            r = rows[0]
            return dict(node=r[0], owner=r[1], expired=bool(r[2]), seconds_left=int(r[3]), expires_at=r[4])
        return "unknown"

    def admin(self, node: str, sql: str, args=None) -> list:
        return self.conns[node].query(sql, args)


# ---------------------------------------------------------------------------------------------
# The sampler

class Sampler(threading.Thread):
    """Every ``interval`` s: every node's status and the lease, with the wall time."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.cluster = Cluster()
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t0 = time.monotonic()
            nodes = self.cluster.statuses()
            lease = self.cluster.lease()
            self.samples.append(dict(t=now(), nodes=nodes, lease=lease))
            self.halt.wait(max(0.05, self.interval - (time.monotonic() - t0)))

    def stop(self) -> list:
        self.halt.set()
        self.join(timeout=60)
        self.cluster.close()
        return self.samples


def desync_figures(samples: list) -> dict:
    """Per node: seconds with wsrep_desync=ON (and of those, under our lease), seconds not Synced, flow control
    sent while desynced; the owners of the leases seen."""
    out = {n: dict(desynced_seconds=0.0, desynced_by_us_seconds=0.0, not_synced_seconds=0.0,
                   flow_control_sent_while_desynced=0, unreachable_seconds=0.0) for n in NODES}
    owners = []
    for prev, cur in zip(samples, samples[1:]):
        dt = cur["t"] - prev["t"]
        lease = prev["lease"] if isinstance(prev["lease"], dict) else None
        if lease and lease["owner"] not in owners:
            owners.append(lease["owner"])
        for node in NODES:
            a, b = prev["nodes"].get(node), cur["nodes"].get(node)
            if not a:
                out[node]["unreachable_seconds"] += dt
                continue
            on = str(a.get("wsrep_desync")) in ("ON", "1")
            if on:
                out[node]["desynced_seconds"] += dt
                if lease and lease["node"] == node:
                    out[node]["desynced_by_us_seconds"] += dt
            if a.get("wsrep_local_state_comment") != "Synced":
                out[node]["not_synced_seconds"] += dt
            if b and on and str(b.get("wsrep_desync")) in ("ON", "1"):  # both reads saw it desynced
                try:
                    delta = int(b["wsrep_flow_control_sent"]) - int(a["wsrep_flow_control_sent"])
                except (KeyError, TypeError, ValueError):
                    delta = 0
                out[node]["flow_control_sent_while_desynced"] += max(0, delta)  # a restart resets the counter
    for figures in out.values():
        for key in ("desynced_seconds", "desynced_by_us_seconds", "not_synced_seconds", "unreachable_seconds"):
            figures[key] = round(figures[key], 1)
    return dict(nodes=out, lease_owners=owners)


# ---------------------------------------------------------------------------------------------
# The write load

class Load:
    """sysbench oltp_write_only on the writer, started again whenever it ends (the writer restarted)."""

    def __init__(self, rate: int, threads: int):
        self.rate, self.threads = rate, threads
        self.proc = None
        self.pid = None
        self.active = threading.Event()
        self.thread = None
        self.restarts = 0

    def _start_one(self):
        script = ("echo $$; exec sysbench oltp_write_only --mysql-socket=/run/mysqld/mysqld.sock --mysql-user=root "
                  f"--mysql-db=sbtest --tables=4 --table-size={SYSBENCH_ROWS} --threads={self.threads} "
                  f"--rate={self.rate} --time=0 --report-interval=0 --mysql-ignore-errors=all run")
        self.proc = subprocess.Popen(["docker", "exec", WRITER, "sh", "-c", script],  # pylint: disable=consider-using-with
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline().strip()
        self.pid = int(line) if line.isdigit() else None
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    @staticmethod
    def _drain(proc):
        for _line in proc.stdout:
            pass

    def _loop(self):
        while self.active.is_set():
            if self.proc is None or self.proc.poll() is not None:
                if self.proc is not None:
                    self.restarts += 1
                    time.sleep(1)
                if not self.active.is_set():
                    break
                try:
                    self._start_one()
                except (OSError, ValueError):
                    time.sleep(1)
            time.sleep(0.5)

    def start(self):
        self.active.set()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.active.clear()
        if self.thread:
            self.thread.join(timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            if self.pid:
                docker("exec", WRITER, "kill", "-INT", str(self.pid), check=False)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.pid:
                    docker("exec", WRITER, "kill", "-KILL", str(self.pid), check=False)
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None


def prepare_sbtest():
    if node_sql(WRITER, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'sbtest'")[0][0] != "4":
        node_sql(WRITER, "CREATE DATABASE IF NOT EXISTS sbtest")
        node_exec(WRITER, "sysbench", "oltp_write_only", "--mysql-socket=/run/mysqld/mysqld.sock", "--mysql-user=root",
                  "--mysql-db=sbtest", "--tables=4", f"--table-size={SYSBENCH_ROWS}", "prepare")


def prepare_marks(cluster: Cluster):
    cluster.admin(WRITER, "CREATE DATABASE IF NOT EXISTS soak")
    cluster.admin(WRITER, "CREATE TABLE IF NOT EXISTS soak.marks (cycle INT NOT NULL PRIMARY KEY, seed VARCHAR(64) "
                          "NOT NULL, at DATETIME(6) NOT NULL) ENGINE=InnoDB")
    cluster.admin(WRITER, "CREATE TABLE IF NOT EXISTS soak.ticks (cycle INT NOT NULL, seq INT NOT NULL, "
                          "at DATETIME(6) NOT NULL, PRIMARY KEY (cycle, seq)) ENGINE=InnoDB")
    cluster.admin(WRITER, "DELETE FROM soak.marks")
    cluster.admin(WRITER, "DELETE FROM soak.ticks")


class Ticker(threading.Thread):
    """The soak's own writes beside sysbench: one row (cycle, seq) on the writer every 50 ms, autocommit. A
    commit the server acknowledged must be on every node afterwards and in every later backup: nothing lost."""

    def __init__(self, cycle: int):
        super().__init__(daemon=True)
        self.cycle = cycle
        self.acked = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self):
        conn = Conn(WRITER)
        seq = 0
        while not self.halt.is_set():
            seq += 1
            try:
                conn.query("INSERT INTO soak.ticks (cycle, seq, at) VALUES (%s, %s, UTC_TIMESTAMP(6))", (self.cycle, seq))
                self.acked.append(seq)
            except Exception:  # pylint: disable=broad-except
                self.errors += 1  # not acknowledged: it may or may not be there
                self.halt.wait(1)
            self.halt.wait(0.05)
        conn.close()

    def stop(self) -> list:
        self.halt.set()
        self.join(timeout=60)
        return self.acked


def ticks(cluster: Cluster, node: str) -> dict:
    """{cycle: set of seq} of soak.ticks on ``node``."""
    out = {}
    for cycle, seq in cluster.admin(node, "SELECT cycle, seq FROM soak.ticks"):
        out.setdefault(int(cycle), set()).add(int(seq))
    return out


def mark(cluster: Cluster, cycle: int, seed) -> None:
    cluster.admin(WRITER, "INSERT INTO soak.marks (cycle, seed, at) VALUES (%s, %s, UTC_TIMESTAMP(6))", (cycle, str(seed)))


def quiesce(cluster: Cluster, timeout: float = 120) -> dict:
    """After the load stopped: until every node has applied the same last write-set, its queue empty."""
    deadline = time.monotonic() + timeout
    seen = {}
    steady = 0
    while time.monotonic() < deadline:
        seen = cluster.statuses()
        committed = {n: (s or {}).get("wsrep_last_committed") for n, s in seen.items()}
        queues = {n: (s or {}).get("wsrep_local_recv_queue") for n, s in seen.items()}
        if None not in committed.values() and len(set(committed.values())) == 1 and set(queues.values()) == {"0"}:
            steady += 1
            if steady >= 2:
                return dict(ok=True, last_committed=next(iter(committed.values())))
        else:
            steady = 0
        time.sleep(0.5)
    return dict(ok=False, statuses=seen)


def checksums(cluster: Cluster) -> dict:
    """CHECKSUM TABLE of the sysbench tables, the marks and the ticks on every node."""
    out = {}
    for node in NODES:
        rows = cluster.admin(node, "CHECKSUM TABLE " + ", ".join(TABLES))
        out[node] = {r[0]: int(r[1]) if r[1] is not None else None for r in rows}
    return out


# ---------------------------------------------------------------------------------------------
# The soak's filesystem on each node, its account

CLONE_NEWNS = 0x00020000
MNT_DETACH = 2


def _in_mount_namespace(node: str, action: str, path: str, options: str = "") -> None:
    """Mount a tmpfs at ``path`` (or unmount it) in the node container's mount namespace, from the host:
    the containers may not mount, and their root filesystem is the host's disk, which must never fill up."""
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", node).stdout.strip())
    code = (
        "import ctypes, os, sys\n"
        f"libc = ctypes.CDLL({ctypes.util.find_library('c')!r}, use_errno=True)\n"
        f"fd = os.open('/proc/{pid}/ns/mnt', os.O_RDONLY)\n"
        f"assert libc.setns(fd, {CLONE_NEWNS}) == 0, os.strerror(ctypes.get_errno())\n"
        f"path = {path!r}\n"
        f"if {action!r} == 'mount':\n"
        "    os.makedirs(path, exist_ok=True)\n"
        "    if os.path.ismount(path): sys.exit(0)\n"
        f"    r = libc.mount(b'tmpfs', path.encode(), b'tmpfs', 0, {options!r}.encode())\n"
        "else:\n"
        "    if not os.path.ismount(path): sys.exit(0)\n"
        f"    r = libc.umount2(path.encode(), {MNT_DETACH})\n"
        "assert r == 0, os.strerror(ctypes.get_errno())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{node}: {action} {path}: {done.stderr.strip()[-400:]}")


def mount_tmpfs(node: str, path: str, size: str) -> None:
    # 0711: the restore test's server (mysql) must pass through to the verification directory beside the backups.
    _in_mount_namespace(node, "mount", path, f"size={size},mode=0711")


def umount_tmpfs(node: str, path: str) -> None:
    _in_mount_namespace(node, "umount", path)
    node_exec(node, "rmdir", path, check=False)


def network_subnet() -> str:
    inspect = json.loads(docker("network", "inspect", NETWORK).stdout)[0]
    return inspect["IPAM"]["Config"][0]["Subnet"]


def create_account(user: str, password: str) -> None:
    """The soak's login: exactly the least privileges of docs/grants.md (tests/tools/grants.py), with a password."""
    version = node_sql(WRITER, "SELECT VERSION()")[0][0]
    env = dict(os.environ, SOAK_ACCOUNT_PASSWORD=password)
    sql = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tools", "grants.py"), "sql", "--version", version,
                          "--user", user, "--host", "localhost", "--host", network_subnet(),
                          "--password-env", "SOAK_ACCOUNT_PASSWORD"], capture_output=True, text=True, check=True,
                         env=env).stdout
    done = node_exec(WRITER, "mariadb", input_text=sql, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"creating the soak's account failed: {done.stderr.strip()[-300:]}")


def drop_account(user: str) -> None:
    node_sql(WRITER, f"DROP USER IF EXISTS '{user}'@'localhost'; "
                     f"DROP USER IF EXISTS '{user}'@'{grants_host(network_subnet())}'")


def grants_host(subnet: str) -> str:
    import grants  # pylint: disable=import-outside-toplevel
    return grants.host_part(subnet)

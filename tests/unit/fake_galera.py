# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fake Galera cluster for unit tests: nodes that model wsrep_desync, the local state,
wsrep_desync_count, the receive queue, the flow-control counter, and a replicated lease table with
certification conflicts and expiry, behind PyMySQL-like connections that understand exactly the
SQL the collection sends. Time is a fake clock: sleeping advances it and drains the queues, so a
whole desync cycle runs in milliseconds.

Connections go through ``Cluster.connect(**pymysql_kwargs)``, installed in place of
``pymysql.connect`` by ``install``: a ``unix_socket`` reaches the local node (as a
``[client] socket=`` of ~/.my.cnf would), ``host``/``port`` reach the node with that address.
"""

from __future__ import annotations

import re

import pymysql

from ansible_collections.dbtools.galera.plugins.module_utils import _connection

EPOCH = 1_800_000_000  # the fake clock's 0, as a UTC wall time (2027-01-15 08:00:00)
FC_LIMIT = 16


def stamp(seconds: float) -> str:
    import datetime  # pylint: disable=import-outside-toplevel
    moment = datetime.datetime.fromtimestamp(EPOCH + seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def unstamp(text: str) -> float:
    import datetime  # pylint: disable=import-outside-toplevel
    moment = datetime.datetime.strptime(text.split(".")[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp() - EPOCH


def mysql_error(errno: int, text: str, cls=pymysql.err.OperationalError):
    return cls(errno, text)


class Clock:
    def __init__(self, cluster):
        self.now = 0.0
        self.cluster = cluster

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for node in self.cluster.nodes.values():
            node.tick(seconds)


class Node:
    """One fake Galera node (the server side)."""

    def __init__(self, cluster, name: str, port: int = 3306):
        self.cluster = cluster
        self.name = name
        self.host = name
        self.port = port
        self.hostname = name
        self.desync = False
        self.other_desyncs = 0          # desyncs not from wsrep_desync: BACKUP STAGE, FTWRL, an SST donor
        self.queue = 0
        self.drain_per_second = 1000.0  # write-sets applied per second while the node applies
        self.fc_sent = 0
        self.catching_up = []           # states still to go through after wsrep_desync=OFF (per status read)
        self.stuck = False              # never reaches Synced after OFF
        self.cluster_status = "Primary"
        self.ready = True
        self.datadir = "/nonexistent/fake-datadir/"
        self.provider_options = "gcs.fc_limit = 16; gcs.fc_factor = 1.0; gcache.size = 256M"
        self.fail = {}                  # SQL fragment -> exception raised when a statement contains it
        self.reads = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def desync_count(self) -> int:
        return (1 if self.desync else 0) + self.other_desyncs

    @property
    def local_state(self) -> int:
        if self.desync or self.other_desyncs:
            return 2
        if self.stuck:
            return 3
        if self.catching_up:
            return self.catching_up[0]
        return 4

    def tick(self, seconds: float) -> None:
        self.queue = max(0, int(self.queue - self.drain_per_second * seconds))

    def status_rows(self):
        self.reads += 1
        state = self.local_state
        if not self.desync and not self.other_desyncs and self.queue > FC_LIMIT:
            self.fc_sent += 1  # a node that is not desynced pauses the cluster while it lags
        if self.catching_up and not self.desync:
            self.catching_up.pop(0)
        comment = {1: "Joining", 2: "Donor/Desynced", 3: "Joined", 4: "Synced"}[state]
        return [
            ("wsrep_local_state", str(state)), ("wsrep_local_state_comment", comment),
            ("wsrep_cluster_status", self.cluster_status), ("wsrep_cluster_size", str(self.cluster.size)),
            ("wsrep_ready", "ON" if self.ready else "OFF"), ("wsrep_connected", "ON"),
            ("wsrep_desync_count", str(self.desync_count)), ("wsrep_local_recv_queue", str(self.queue)),
            ("wsrep_flow_control_sent", str(self.fc_sent)), ("wsrep_flow_control_paused_ns", "0"),
            ("wsrep_cluster_state_uuid", "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"), ("wsrep_last_committed", "100"),
            ("wsrep_received", "1000"), ("wsrep_received_bytes", "2048000"),
            ("wsrep_provider_name", "Galera"),
        ]

    def variable_rows(self):
        return [
            ("wsrep_on", "ON"), ("wsrep_provider", "/usr/lib/galera/libgalera_smm.so"),
            ("wsrep_desync", "ON" if self.desync else "OFF"), ("wsrep_node_name", self.name),
            ("wsrep_cluster_name", "dbtools"), ("wsrep_node_incoming_address", self.address),
            ("wsrep_node_address", self.host), ("wsrep_provider_options", self.provider_options),
            ("hostname", self.hostname), ("datadir", self.datadir), ("port", str(self.port)),
            ("version", "10.11.19-MariaDB"), ("version_comment", "mariadb.org binary distribution"),
        ]

    def set_desync(self, on: bool) -> None:
        if on == self.desync:
            return
        self.desync = on
        if not on:
            self.catching_up = [2, 3]  # Donor/Desynced until the OFF event leaves the queue, then Joined


class Cluster:
    """The fake cluster: nodes, the replicated lease schema and a clock."""

    def __init__(self, names=("galera-node1", "galera-node2", "galera-node3")):
        self.nodes = {name: Node(self, name) for name in names}
        self.clock = Clock(self)
        self.schema = {"database", "desync_lease", "desync_events"}
        self.lease = None               # {"cluster_name", "node", "node_address", "owner", "acquired", "expires", "fc"}
        self.events = []
        self.ddl = []
        self.local = None               # the node a Unix socket reaches
        self.tcp_password = None        # when set, TCP logins need it (the socket needs none)
        self.before_commit = []         # callables run (once each) before the next lease commit: a racing writer
        self.connections = []

    @property
    def size(self) -> int:
        return sum(1 for n in self.nodes.values() if n.cluster_status == "Primary")

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def connect(self, **kwargs):
        if kwargs.get("unix_socket"):
            if self.local is None:
                raise mysql_error(2002, "Can't connect to local server through socket")
            node = self.local
        else:
            host, port = kwargs.get("host"), kwargs.get("port", 3306)
            node = next((n for n in self.nodes.values() if (n.host, n.port) == (host, port)), None)
            if node is None:
                raise mysql_error(2003, f"Can't connect to server on '{host}' (111)")
            if self.tcp_password is not None and kwargs.get("password") != self.tcp_password:
                raise mysql_error(1045, f"Access denied for user '{kwargs.get('user')}'@'x' (using password: YES)")
        conn = Connection(self, node, kwargs)
        self.connections.append(conn)
        return conn

    def lease_row(self) -> dict | None:
        return dict(self.lease) if self.lease else None

    def put_lease(self, owner: str, node: str, acquired: float, expires: float, node_address: str | None = None,
                  fc: int | None = 0) -> None:
        if node_address is None and node in self.nodes:
            node_address = self.nodes[node].address
        self.lease = dict(cluster_name="dbtools", node=node, node_address=node_address, owner=owner, acquired=acquired,
                          expires=expires, fc=fc)


class Cursor:
    def __init__(self, conn):
        self.conn = conn
        self.rows = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, args=None):
        self.rows = self.conn.execute(" ".join(str(sql).split()), tuple(args or ()))
        return len(self.rows)

    def fetchall(self):
        return tuple(self.rows)


class Connection:
    """What the collection uses of a PyMySQL connection, talking to one fake node."""

    def __init__(self, cluster: Cluster, node: Node, kwargs: dict):
        self.cluster = cluster
        self.server = node
        self.kwargs = kwargs
        self.unix_socket = kwargs.get("unix_socket")
        self.host = kwargs.get("host")
        self.open = True
        self.txn = None
        self.affected = 0
        self.statements = []
        self.sync_wait = 0

    def cursor(self):
        if not self.open:
            raise pymysql.err.InterfaceError(0, "")
        return Cursor(self)

    def begin(self):
        self.execute("BEGIN", ())

    def commit(self):
        self.execute("COMMIT", ())

    def rollback(self):
        self.txn = None

    def affected_rows(self):
        return self.affected

    def close(self):
        self.open = False

    # -- the "server" -------------------------------------------------------------------------
    def _lease_view(self):
        return self.txn["lease"] if self.txn is not None else self.cluster.lease

    def _write_lease(self, value):
        if self.txn is not None:
            self.txn["lease"] = value
            self.txn["wrote"] = True
        else:
            self.cluster.lease = value

    def execute(self, sql: str, args: tuple):
        self.statements.append(sql)
        for fragment, exc in list(self.server.fail.items()):
            if fragment in sql:
                if getattr(exc, "skip", 0):
                    exc.skip -= 1
                    continue
                if getattr(exc, "once", False):
                    del self.server.fail[fragment]
                raise exc
        node, cluster = self.server, self.cluster
        now = cluster.clock.now
        self.affected = 0
        if sql == "BEGIN":
            self.txn = {"lease": dict(cluster.lease) if cluster.lease else None, "wrote": False}
            return ()
        if sql == "COMMIT":
            txn, self.txn = self.txn, None
            if txn and txn["wrote"]:
                if cluster.before_commit:  # another node's write certified first: ours loses
                    cluster.before_commit.pop(0)()
                    raise mysql_error(1213, "Deadlock found when trying to get lock; try restarting transaction")
                cluster.lease = txn["lease"]
            return ()
        if sql.startswith("SHOW GLOBAL STATUS"):
            return node.status_rows()
        if sql.startswith("SHOW GLOBAL VARIABLES"):
            return node.variable_rows()
        if sql.startswith("SET GLOBAL wsrep_desync"):
            node.set_desync(sql.endswith("ON"))
            return ()
        if sql.startswith("SET SESSION wsrep_sync_wait"):
            self.sync_wait = 0 if sql.endswith("DEFAULT") else int(sql.rsplit(" ", 1)[1])
            return ()
        if sql.startswith("SET SESSION"):
            return ()
        if sql.startswith("SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA"):
            tables = [t for t in ("desync_lease", "desync_events") if t in cluster.schema and t in args]
            return ((1 if "database" in cluster.schema else 0, ",".join(tables) or None),)
        if sql.startswith("CREATE DATABASE"):
            cluster.ddl.append(sql)
            cluster.schema.add("database")
            return ()
        if sql.startswith("CREATE TABLE"):
            cluster.ddl.append(sql)
            if "database" not in cluster.schema:
                raise mysql_error(1049, "Unknown database")
            cluster.schema.add("desync_events" if "desync_events" in sql else "desync_lease")
            return ()
        if "desync_events" in sql and sql.startswith("INSERT"):
            self._need("desync_events")
            cluster.events.append(dict(zip(("node", "owner", "event", "detail"), args)))
            self.affected = 1
            return ()
        if "desync_lease" in sql:
            self._need("desync_lease")
            return self._lease_sql(sql, args, now)
        raise AssertionError(f"the fake server does not know: {sql}")

    def _need(self, table):
        if "database" not in self.cluster.schema:
            raise mysql_error(1049, "Unknown database 'dbtools_galera'")
        if table not in self.cluster.schema:
            raise mysql_error(1146, f"Table 'dbtools_galera.{table}' doesn't exist", pymysql.err.ProgrammingError)

    def _lease_sql(self, sql: str, args: tuple, now: float):
        row = self._lease_view()
        if sql.startswith("SELECT lease_key"):
            if not row:
                return ()
            return (("desync", row["cluster_name"], row["node"], row["node_address"], row["owner"],
                     stamp(row["acquired"]), stamp(row["expires"]), row["fc"], 1 if row["expires"] <= now else 0,
                     int(row["expires"] - now)),)
        if sql.startswith("DELETE"):
            match = row is not None
            if match and "owner = %s" in sql:
                match = (row["owner"], row["node"]) == (args[1], args[2])
            if match:
                self._write_lease(None)
                self.affected = 1
            return ()
        if sql.startswith("INSERT"):
            if row is not None:
                raise mysql_error(1062, "Duplicate entry 'desync' for key 'PRIMARY'", pymysql.err.IntegrityError)
            if "INTERVAL %s SECOND" in sql:   # acquire: now .. now + ttl
                _key, cluster_name, node, address, owner, ttl, fc = args
                new = dict(cluster_name=cluster_name, node=node, node_address=address, owner=owner, acquired=now,
                           expires=now + ttl, fc=fc)
            else:                             # restore: the old row's times
                _key, cluster_name, node, address, owner, acquired, expires, fc = args
                new = dict(cluster_name=cluster_name, node=node, node_address=address, owner=owner,
                           acquired=unstamp(acquired), expires=unstamp(expires), fc=fc)
            self._write_lease(new)
            self.affected = 1
            return ()
        if sql.startswith("UPDATE"):
            if row is None or (row["owner"], row["node"]) != tuple(args[-2:]):
                return ()
            if "expires_at > UTC_TIMESTAMP" in sql and row["expires"] <= now:
                return ()
            row = dict(row)
            if re.search(r"SET expires_at", sql):
                row["expires"] = now + int(args[0])
            else:
                row["fc"] = args[0]
            self._write_lease(row)
            self.affected = 1
            return ()
        raise AssertionError(f"the fake server does not know: {sql}")


def once(exc, skip: int = 0):
    """An injected failure raised once (after ``skip`` statements that match), then never again."""
    exc.once = True
    exc.skip = skip
    return exc


def lost():
    return mysql_error(2013, "Lost connection to server during query")


def install(monkeypatch, local: str = "galera-node3") -> Cluster:
    """A fresh fake cluster in place of ``pymysql.connect``; its Unix socket reaches ``local``."""
    fake = Cluster()
    fake.local = fake.node(local)
    monkeypatch.setattr(_connection.pymysql, "connect", fake.connect)
    return fake

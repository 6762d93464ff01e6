# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The cluster-wide desync lease (private to this collection).

One row in an InnoDB table replicated by Galera names the node desynced by us, its
owner and the lease's expiry. Acquiring writes the row in one transaction on the
target node: two owners acquiring on two nodes at once write the same primary key,
Galera certification lets exactly one commit and fails the other with ER_LOCK_DEADLOCK.

Every failure raises ``GaleraError``; a lost race or a taken lease carries ``conflict=True`` and
the ``holder`` row in its details. DDL on Galera is a cluster-wide (TOI) operation, so the
schema is created only when a read found it missing, and then only the part that is missing.
"""

from __future__ import annotations

import re

from ansible_collections.dbtools.galera.plugins.module_utils._connection import (
    ER_DBACCESS_DENIED,
    ER_LOCK_DEADLOCK,
    ER_LOCK_WAIT_TIMEOUT,
    ER_SPECIFIC_ACCESS_DENIED,
    ER_TABLEACCESS_DENIED,
    mysql_errno,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

LEASE_KEY = "desync"
TABLE = "desync_lease"
EVENTS_TABLE = "desync_events"
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_ACCESS_ERRNOS = (ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED)
ER_BAD_DB = 1049
ER_NO_SUCH_TABLE = 1146

FREE = "free"
OURS = "ours"
HELD = "held"
EXPIRED = "expired"


def valid_database_name(name: str) -> bool:
    return bool(name and _IDENTIFIER.match(name))


def owner_error(owner: str) -> str | None:
    """Why ``owner`` cannot name a lease holder (the lease table's owner column), or None."""
    if not owner.strip() or len(owner) > 255:
        return "owner must be a non-empty string of at most 255 characters"
    return None


def judge(row: dict | None, owner: str, node: str) -> str:
    """FREE (no lease), OURS (this owner on this node), EXPIRED, or HELD by another."""
    if not row:
        return FREE
    if row["owner"] == owner and row["node"] == node:
        return OURS
    if row.get("expired"):
        return EXPIRED
    return HELD


def describe(row: dict | None) -> str:
    if not row:
        return "no lease"
    return (f"node {row['node']} desynced by owner '{row['owner']}' since {row['acquired_at']} UTC, "
            f"lease expires {row['expires_at']} UTC")


def describe_holder(row: dict | None, what: str) -> str:
    """``describe`` for a lease of another key: who holds it (``what``: "archiving" ...), where, until when."""
    if not row:
        return "no lease"
    return (f"owner '{row['owner']}' {what} on node {row['node']} since {row['acquired_at']} UTC, "
            f"lease expires {row['expires_at']} UTC")


LEASE_COLUMNS = (
    " lease_key VARCHAR(32) NOT NULL PRIMARY KEY,"
    " cluster_name VARCHAR(255) NULL,"
    " node VARCHAR(255) NOT NULL,"
    " node_address VARCHAR(255) NULL,"
    " owner VARCHAR(255) NOT NULL,"
    " acquired_at DATETIME(6) NOT NULL,"
    " expires_at DATETIME(6) NOT NULL,"
    " flow_control_sent_at_desync BIGINT NULL"
)
EVENTS_COLUMNS = (
    " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " at DATETIME(6) NOT NULL,"
    " node VARCHAR(255) NOT NULL,"
    " owner VARCHAR(255) NOT NULL,"
    " event VARCHAR(32) NOT NULL,"
    " detail TEXT NULL"
)
_MISSING_ERRNOS = (ER_BAD_DB, ER_NO_SUCH_TABLE)


class Lease:
    """The lease table of one cluster, seen through a ``_wsrep.Node``."""

    def __init__(self, node, database: str, key: str = LEASE_KEY, label: str = "desync lease",
                 holding: str | None = None, opt_out: str | None = None):
        """``key``: the row (``LEASE_KEY`` for the desync lease); ``label`` names the lease in
        messages, ``holding`` what its holder does ("archiving"; None: the desync wording of
        ``describe``), ``opt_out`` the fix offered when the table cannot be used (None: ``lease: false``)."""
        if not valid_database_name(database):
            raise GaleraError(
                f"lease_database {database!r} is not a plain database name (letters, digits, _ and $, at most 64). "
                "Nothing was changed."
            )
        if not isinstance(key, str) or not _IDENTIFIER.match(key) or len(key) > 32:
            raise ValueError(f"lease key {key!r} is not a plain name of at most 32 characters")
        self.node = node
        self.database = database
        self.key = key
        self.label = label
        self.holding = holding
        self.opt_out = opt_out
        self.table = f"`{database}`.`{TABLE}`"
        # None: not known yet; True: the last read found no table; False: it exists.
        self.table_missing = None

    def describe(self, row: dict | None) -> str:
        return describe(row) if self.holding is None else describe_holder(row, self.holding)

    def _privilege_error(self, exc, action: str) -> GaleraError:
        fix = self.opt_out or ("or set lease: false to run without the cluster-wide lease (not recommended: "
                               "nothing then stops two desynced nodes)")
        return GaleraError(
            f"cannot {action} the {self.label} table {self.database}.{TABLE}: {exc.args[-1]}. "
            f"Grant the connecting user CREATE, SELECT, INSERT, UPDATE, DELETE ON `{self.database}`.* "
            f"(or create the table as an administrator first), {fix}.",
            errno=mysql_errno(exc),
        )

    def missing(self) -> list:
        """What of the schema does not exist: among ``database``, TABLE and EVENTS_TABLE (one read)."""
        rows = self.node.query(
            "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s), "
            "(SELECT GROUP_CONCAT(TABLE_NAME) FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN (%s, %s))",
            (self.database, self.database, TABLE, EVENTS_TABLE), record=False,
        )
        has_db, tables = rows[0] if rows else (0, None)
        present = set(str(tables or "").split(","))
        out = [] if has_db else ["database"]
        out.extend(t for t in (TABLE, EVENTS_TABLE) if t not in present)
        return out

    def ensure(self) -> list:
        """Create what is missing of the schema; return what was created.

        DDL replicates cluster-wide in total order (TOI), so nothing is sent when all exists.
        """
        try:
            created = self.missing()
            if "database" in created:
                self.node.query(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            if TABLE in created:
                self.node.query(f"CREATE TABLE IF NOT EXISTS {self.table} ({LEASE_COLUMNS}) ENGINE=InnoDB")
            if EVENTS_TABLE in created:
                self.node.query(f"CREATE TABLE IF NOT EXISTS `{self.database}`.`{EVENTS_TABLE}` ({EVENTS_COLUMNS}) "
                                "ENGINE=InnoDB")
        except GaleraError:
            raise
        except Exception as exc:  # pymysql errors: classified by errno
            if mysql_errno(exc) in _ACCESS_ERRNOS:
                raise self._privilege_error(exc, "create") from exc
            raise
        self.table_missing = False
        return created

    def read(self, for_update: bool = False) -> dict | None:
        """The current lease row (with an ``expired`` flag), or None. None too when no table."""
        sql = (f"SELECT lease_key, cluster_name, node, node_address, owner, "
               f"DATE_FORMAT(acquired_at, '%%Y-%%m-%%d %%H:%%i:%%s'), DATE_FORMAT(expires_at, '%%Y-%%m-%%d %%H:%%i:%%s'), "
               f"flow_control_sent_at_desync, expires_at <= UTC_TIMESTAMP(6), "
               f"TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), expires_at) "
               f"FROM {self.table} WHERE lease_key = %s" + (" FOR UPDATE" if for_update else ""))
        try:
            rows = self.node.query(sql, (self.key,), record=False)
        except Exception as exc:
            errno = mysql_errno(exc)
            if errno in _MISSING_ERRNOS:
                self.table_missing = True
                return None
            if errno in _ACCESS_ERRNOS:
                raise self._privilege_error(exc, "read") from exc
            raise
        self.table_missing = False
        if not rows:
            return None
        r = rows[0]
        return dict(cluster_name=r[1], node=r[2], node_address=r[3], owner=r[4], acquired_at=r[5],
                    expires_at=r[6], flow_control_sent_at_desync=r[7], expired=bool(r[8]),
                    seconds_left=int(r[9]))

    def _transaction(self, body):
        """Run ``body()`` in one causally consistent transaction; certification losses are conflicts."""
        conn = self.node.conn
        for attempt in (1, 2):
            try:
                # Causal read: see every lease committed anywhere in the cluster before ours.
                self.node.query("SET SESSION wsrep_sync_wait = 1", record=False)
                conn.begin()
                out = body()
                conn.commit()
                return out
            except GaleraError:
                _rollback(conn)
                raise
            except Exception as exc:
                _rollback(conn)
                errno = mysql_errno(exc)
                if errno in _MISSING_ERRNOS and attempt == 1:
                    self.ensure()  # dropped since it was read: create what is missing, try once more
                    continue
                if errno in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT):
                    # Another node's write certified first: report who holds the lease now.
                    holder = self.read()
                    raise GaleraError(
                        f"another owner acquired the {self.label} at the same moment: {self.describe(holder)}",
                        conflict=True, holder=holder,
                    ) from exc
                if errno in _ACCESS_ERRNOS:
                    raise self._privilege_error(exc, "write") from exc
                raise
            finally:
                _restore_sync_wait(self.node)
        raise AssertionError("unreachable")  # pragma: no cover

    def acquire(self, owner: str, node: str, node_address: str | None, cluster_name: str | None,
                ttl: int, flow_control_sent: int | None, replace: dict | None = None) -> dict:
        """Write our lease in one transaction; raise GaleraError(conflict=True) when another owner has it.

        ``replace`` is the expired row we decided to take over: the write only succeeds if that
        row is still what the table holds (same owner, node and acquisition time). The schema is
        created first only when the last read found it missing. Returns the row as written
        (times are the server's, read back by ``read``).
        """
        if self.table_missing is not False:
            self.ensure()

        def body():
            current = self.read(for_update=True)
            state = judge(current, owner, node)
            if state == OURS:
                return current
            if state == HELD or (state == EXPIRED and not same_row(current, replace)):
                raise GaleraError(f"the {self.label} is taken: {self.describe(current)}", conflict=True,
                                  holder=current)
            if current:
                self.node.query(f"DELETE FROM {self.table} WHERE lease_key = %s", (self.key,))
            self.node.query(
                f"INSERT INTO {self.table} (lease_key, cluster_name, node, node_address, owner, acquired_at, "
                f"expires_at, flow_control_sent_at_desync) VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6), "
                f"UTC_TIMESTAMP(6) + INTERVAL %s SECOND, %s)",
                (self.key, cluster_name, node, node_address, owner, int(ttl), flow_control_sent),
            )
            return dict(cluster_name=cluster_name, node=node, node_address=node_address, owner=owner,
                        flow_control_sent_at_desync=flow_control_sent, expired=False, seconds_left=int(ttl))

        return self._transaction(body)

    def restore(self, old: dict, owner: str, node: str) -> bool:
        """Put back ``old`` (a row we replaced) while our own row is still there; True when done.

        A takeover that could not resync the old holder's node leaves the lease naming that node,
        still desynced, rather than ours.
        """
        def body():
            current = self.read(for_update=True)
            if judge(current, owner, node) != OURS:
                return False
            self.node.query(f"DELETE FROM {self.table} WHERE lease_key = %s AND owner = %s AND node = %s",
                            (self.key, owner, node))
            self.node.query(
                f"INSERT INTO {self.table} (lease_key, cluster_name, node, node_address, owner, acquired_at, "
                f"expires_at, flow_control_sent_at_desync) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (self.key, old.get("cluster_name"), old["node"], old.get("node_address"), old["owner"],
                 old["acquired_at"], old["expires_at"],
                 old.get("flow_control_sent_at_desync")),
            )
            return True

        return self._transaction(body)

    def renew(self, owner: str, node: str, ttl: int) -> bool:
        """Push our unexpired lease's expiry to now + ttl; False when it is not ours or expired.

        An expired lease is never revived: another owner may be taking it over at this moment.
        """
        self.node.query(
            f"UPDATE {self.table} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND "
            f"WHERE lease_key = %s AND owner = %s AND node = %s AND expires_at > UTC_TIMESTAMP(6)",
            (int(ttl), self.key, owner, node),
        )
        return self.node.conn.affected_rows() == 1

    def mark_desynced(self, owner: str, node: str, flow_control_sent: int | None) -> bool:
        """Record the node's flow-control counter at the moment it was desynced under our lease.

        False when the lease is not ours any more (it expired and was taken, or was released).
        """
        self.node.query(
            f"UPDATE {self.table} SET flow_control_sent_at_desync = %s "
            f"WHERE lease_key = %s AND owner = %s AND node = %s",
            (None if flow_control_sent is None else int(flow_control_sent), self.key, owner, node),
        )
        return self.node.conn.affected_rows() == 1

    def release(self, owner: str, node: str) -> bool:
        """Delete our own lease row only; True when one was deleted."""
        try:
            self.node.query(
                f"DELETE FROM {self.table} WHERE lease_key = %s AND owner = %s AND node = %s",
                (self.key, owner, node),
            )
        except Exception as exc:
            if mysql_errno(exc) in _MISSING_ERRNOS:
                return False
            raise
        return self.node.conn.affected_rows() == 1

    def record_event(self, node: str, owner: str, event: str, detail: str) -> None:
        """Append to the desync_events table what the watchdog did, for operators to find."""
        sql = (f"INSERT INTO `{self.database}`.`{EVENTS_TABLE}` (at, node, owner, event, detail) "
               f"VALUES (UTC_TIMESTAMP(6), %s, %s, %s, %s)")
        args = (node, owner, event, detail[:65000])
        try:
            self.node.query(sql, args)
        except Exception as exc:
            if mysql_errno(exc) not in _MISSING_ERRNOS:
                raise
            self.ensure()
            self.node.query(sql, args)

    def remove(self, row: dict) -> bool:
        """Delete exactly this (expired or forced) row of another owner."""
        self.node.query(
            f"DELETE FROM {self.table} WHERE lease_key = %s AND owner = %s AND node = %s",
            (self.key, row["owner"], row["node"]),
        )
        return self.node.conn.affected_rows() == 1


def same_row(current: dict | None, expected: dict | None) -> bool:
    """Whether the table still holds ``expected`` (same owner, node and acquisition time)."""
    if not current or not expected:
        return False
    keys = ("owner", "node", "acquired_at")
    return all(current.get(k) == expected.get(k) for k in keys)


def _rollback(conn):
    try:
        conn.rollback()
    except Exception:  # the connection may be gone; nothing is left open on the server then
        pass


def _restore_sync_wait(node):
    try:
        node.query("SET SESSION wsrep_sync_wait = DEFAULT", record=False)
    except Exception:
        pass

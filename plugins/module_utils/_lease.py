# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The cluster-wide desync lease (private to this collection).

One row in an InnoDB table replicated by Galera names the node desynced by us, its
owner and the lease's expiry. Acquiring writes the row in one transaction on the
target node: two owners acquiring on two nodes at once write the same primary key,
Galera certification lets exactly one commit and fails the other with ER_LOCK_DEADLOCK.
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


class LeaseError(Exception):
    """The lease could not be read or written; ``msg`` names the cause and the fix."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


class LeaseConflict(LeaseError):
    """Another owner won the lease; ``holder`` is its row."""

    def __init__(self, msg: str, holder: dict | None):
        super().__init__(msg)
        self.holder = holder


def valid_database_name(name: str) -> bool:
    return bool(name and _IDENTIFIER.match(name))


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


class Lease:
    """The lease table of one cluster, seen through a ``_wsrep.Node``."""

    def __init__(self, node, database: str):
        if not valid_database_name(database):
            raise LeaseError(
                f"lease_database {database!r} is not a plain database name (letters, digits, _ and $, at most 64)"
            )
        self.node = node
        self.database = database
        self.table = f"`{database}`.`{TABLE}`"

    def _privilege_error(self, exc, action: str) -> LeaseError:
        return LeaseError(
            f"cannot {action} the desync lease table {self.database}.{TABLE}: {exc.args[-1]}. "
            f"Grant the connecting user CREATE, SELECT, INSERT, UPDATE, DELETE ON `{self.database}`.* "
            "(or create the table as an administrator first), or set lease: false to run without the "
            "cluster-wide lease (not recommended: nothing then stops two desynced nodes)."
        )

    def ensure(self) -> None:
        """Create the schema and table when missing (DDL replicates cluster-wide)."""
        try:
            self.node.query(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            self.node.query(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " lease_key VARCHAR(32) NOT NULL PRIMARY KEY,"
                " cluster_name VARCHAR(255) NULL,"
                " node VARCHAR(255) NOT NULL,"
                " node_address VARCHAR(255) NULL,"
                " owner VARCHAR(255) NOT NULL,"
                " acquired_at DATETIME(6) NOT NULL,"
                " expires_at DATETIME(6) NOT NULL,"
                " flow_control_sent_at_desync BIGINT NULL"
                ") ENGINE=InnoDB"
            )
            self.node.query(
                f"CREATE TABLE IF NOT EXISTS `{self.database}`.`{EVENTS_TABLE}` ("
                " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
                " at DATETIME(6) NOT NULL,"
                " node VARCHAR(255) NOT NULL,"
                " owner VARCHAR(255) NOT NULL,"
                " event VARCHAR(32) NOT NULL,"
                " detail TEXT NULL"
                ") ENGINE=InnoDB"
            )
        except Exception as exc:  # pymysql errors: classified by errno
            if mysql_errno(exc) in _ACCESS_ERRNOS:
                raise self._privilege_error(exc, "create") from exc
            raise

    def read(self, for_update: bool = False) -> dict | None:
        """The current lease row (with an ``expired`` flag), or None. None too when no table."""
        sql = (f"SELECT lease_key, cluster_name, node, node_address, owner, "
               f"DATE_FORMAT(acquired_at, '%%Y-%%m-%%d %%H:%%i:%%s'), DATE_FORMAT(expires_at, '%%Y-%%m-%%d %%H:%%i:%%s'), "
               f"flow_control_sent_at_desync, expires_at <= UTC_TIMESTAMP(6), "
               f"TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), expires_at) "
               f"FROM {self.table} WHERE lease_key = %s" + (" FOR UPDATE" if for_update else ""))
        try:
            rows = self.node.query(sql, (LEASE_KEY,), record=False)
        except Exception as exc:
            errno = mysql_errno(exc)
            if errno in (ER_BAD_DB, ER_NO_SUCH_TABLE):
                return None
            if errno in _ACCESS_ERRNOS:
                raise self._privilege_error(exc, "read") from exc
            raise
        if not rows:
            return None
        r = rows[0]
        return dict(cluster_name=r[1], node=r[2], node_address=r[3], owner=r[4], acquired_at=r[5],
                    expires_at=r[6], flow_control_sent_at_desync=r[7], expired=bool(r[8]),
                    seconds_left=int(r[9]))

    def acquire(self, owner: str, node: str, node_address: str | None, cluster_name: str | None,
                ttl: int, flow_control_sent: int | None, replace: dict | None = None) -> dict:
        """Write our lease in one transaction; raise LeaseConflict when another owner has it.

        ``replace`` is the expired row we decided to take over: the write only succeeds if
        that row is still what the table holds.
        """
        self.ensure()
        conn = self.node.conn
        try:
            # Causal read: see every lease committed anywhere in the cluster before ours.
            self.node.query("SET SESSION wsrep_sync_wait = 1", record=False)
            conn.begin()
            current = self.read(for_update=True)
            state = judge(current, owner, node)
            if state == OURS:
                conn.rollback()
                return current
            replaced = replace is not None and current is not None and (current["owner"], current["node"]) == (replace["owner"], replace["node"])
            if state == HELD or (state == EXPIRED and not replaced):
                conn.rollback()
                raise LeaseConflict(f"the desync lease is taken: {describe(current)}", current)
            if current:
                self.node.query(f"DELETE FROM {self.table} WHERE lease_key = %s", (LEASE_KEY,))
            self.node.query(
                f"INSERT INTO {self.table} (lease_key, cluster_name, node, node_address, owner, acquired_at, "
                f"expires_at, flow_control_sent_at_desync) VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6), "
                f"UTC_TIMESTAMP(6) + INTERVAL %s SECOND, %s)",
                (LEASE_KEY, cluster_name, node, node_address, owner, int(ttl), flow_control_sent),
            )
            conn.commit()
        except LeaseError:
            raise
        except Exception as exc:
            _rollback(conn)
            errno = mysql_errno(exc)
            if errno in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT):
                # Another node's acquire certified first: report who holds the lease now.
                holder = self.read()
                raise LeaseConflict(
                    f"another owner acquired the desync lease at the same moment: {describe(holder)}", holder
                ) from exc
            if errno in _ACCESS_ERRNOS:
                raise self._privilege_error(exc, "write") from exc
            raise
        finally:
            _restore_sync_wait(self.node)
        return self.read()

    def renew(self, owner: str, node: str, ttl: int) -> bool:
        """Push our lease's expiry to now + ttl; False when the lease is not ours."""
        self.node.query(
            f"UPDATE {self.table} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND "
            f"WHERE lease_key = %s AND owner = %s AND node = %s",
            (int(ttl), LEASE_KEY, owner, node),
        )
        return self.node.conn.affected_rows() == 1

    def mark_desynced(self, owner: str, node: str, flow_control_sent: int) -> bool:
        """Record the node's flow-control counter at the moment it was desynced under our lease."""
        self.node.query(
            f"UPDATE {self.table} SET flow_control_sent_at_desync = %s "
            f"WHERE lease_key = %s AND owner = %s AND node = %s",
            (int(flow_control_sent), LEASE_KEY, owner, node),
        )
        return self.node.conn.affected_rows() == 1

    def release(self, owner: str, node: str) -> bool:
        """Delete our own lease row only; True when one was deleted."""
        try:
            self.node.query(
                f"DELETE FROM {self.table} WHERE lease_key = %s AND owner = %s AND node = %s",
                (LEASE_KEY, owner, node),
            )
        except Exception as exc:
            if mysql_errno(exc) in (ER_BAD_DB, ER_NO_SUCH_TABLE):
                return False
            raise
        return self.node.conn.affected_rows() == 1

    def record_event(self, node: str, owner: str, event: str, detail: str) -> None:
        """Append to the desync_events table what the watchdog did, for operators to find."""
        self.node.query(
            f"INSERT INTO `{self.database}`.`{EVENTS_TABLE}` (at, node, owner, event, detail) "
            f"VALUES (UTC_TIMESTAMP(6), %s, %s, %s, %s)",
            (node, owner, event, detail[:65000]),
        )

    def remove(self, row: dict) -> bool:
        """Delete exactly this (expired or forced) row of another owner."""
        self.node.query(
            f"DELETE FROM {self.table} WHERE lease_key = %s AND owner = %s AND node = %s",
            (LEASE_KEY, row["owner"], row["node"]),
        )
        return self.node.conn.affected_rows() == 1


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

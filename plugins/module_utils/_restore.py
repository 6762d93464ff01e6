# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Turning a backup back into a data directory, and checking what a server sees in it (private).

Used by the backup's own verification (prepare, restore test) and by the restore entry points:
extract a backup (decrypting and decompressing as it streams), prepare a full backup and its
incrementals in order, start a throwaway server on a copy (no network, no Galera, no binary log,
running as the server's own user, ``secure_file_priv`` confined to a private directory, clients
without option files), and read its tables and checksums with every identifier quoted.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
import time

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog, _connection, _crypto, _manifest, _paths, _tools
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

STREAM_BASE = "backup.xbstream"
DUMP_BASE = "dump.sql"
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
TABLES_FILE = "tables.json"


# ---------------------------------------------------------------------------------------------
# Reading a backup's files

def stream_file(backup_dir: str, base: str) -> str | None:
    """``<base>.zst.enc``, ``<base>.zst`` or ``<base>`` in a backup directory, the first that exists."""
    for suffix in (".zst.enc", ".zst", ""):
        path = os.path.join(backup_dir, base + suffix)
        if os.path.isfile(path):
            return path
    return None


def decode_stages(path: str, key_file: str | None, record: dict | None = None) -> list:
    """The argv stages that turn a stored stream back into its plain bytes (read from stdin);
    ``record``: the manifest's encryption record, whose settings are checked and used when given."""
    stages = []
    if path.endswith(".enc"):
        if not key_file:
            raise GaleraError(f"{path} is encrypted: give its key (galera_backup_encrypt_key or "
                              "galera_backup_encrypt_key_file). Nothing was changed.")
        stages.append(_crypto.decrypt_argv(_tools.find("openssl") or "openssl", key_file, record))
    if path.endswith((".zst", ".zst.enc")):
        stages.append([_tools.find("zstd") or "zstd", "-dcq"])
    return stages


def check_stages(path: str, key_file: str | None, record: dict | None = None) -> list:
    """The argv stages that test a stored stream (read from stdin): decrypt when encrypted, then ``zstd -t``."""
    stages = decode_stages(path, key_file, record)[:-1] if path.endswith((".zst", ".zst.enc")) else []
    return stages + [[_tools.find("zstd") or "zstd", "-tq"]]


def read_manifest(backup_dir: str) -> dict:
    try:
        manifest = _manifest.read_json(os.path.join(backup_dir, _manifest.MANIFEST))
    except (OSError, ValueError) as exc:
        raise GaleraError(f"{backup_dir} has no readable {_manifest.MANIFEST} ({exc}): it is not a complete "
                          "backup. Nothing was changed.") from exc
    if not isinstance(manifest, dict):
        raise GaleraError(f"{backup_dir}/{_manifest.MANIFEST} is not a JSON object. Nothing was changed.")
    return manifest


def check_keys(members: list, key: bytes | None) -> None:
    """Refuse, before anything is extracted, a key that is not the key of every encrypted member.

    ``members``: [(backup directory, manifest)], the full backup first.
    """
    for path, manifest in members:
        record = manifest.get("encryption") or None
        if record is None:
            continue
        if key is None:
            raise GaleraError(f"backup {os.path.basename(path)} is encrypted (key id {record.get('key_id')}): give its "
                              "key (galera_backup_encrypt_key or galera_backup_encrypt_key_file). Nothing was changed.")
        if not _crypto.key_matches(record, key):
            raise GaleraError(f"backup {os.path.basename(path)} is encrypted with another key (key id "
                              f"{record.get('key_id')}): wrong key. Nothing was changed.")


def verify_macs(backup_dir: str, manifest: dict, key: bytes | None) -> str:
    """Check the MAC of every encrypted file of a backup: "verified", "legacy" (older backups have no
    MAC) or "none" (not encrypted)."""
    record = manifest.get("encryption") or None
    if record is None:
        return "none"
    return _crypto.verify_backup(backup_dir, record, key)


def extract(backup_dir: str, dest: str, key_file: str | None, log: str, record: dict | None = None) -> None:
    """A physical backup's files into ``dest`` (which must exist): the stream extracted, or ``data/`` copied."""
    stream = stream_file(backup_dir, STREAM_BASE)
    if stream:
        extractor = _tools.find("extract")
        if not extractor:
            raise GaleraError("neither mbstream nor xbstream is installed: install mariadb-backup (or "
                              "percona-xtrabackup). Nothing was changed.")
        stages = decode_stages(stream, key_file, record) + [[extractor, "-x", "-C", dest]]
        _tools.Pipeline(stages, log, stdin=stream).wait(f"extracting {os.path.basename(backup_dir)}")
    elif os.path.isdir(os.path.join(backup_dir, "data")):
        shutil.copytree(os.path.join(backup_dir, "data"), dest, symlinks=True, dirs_exist_ok=True)
    else:
        raise GaleraError(f"{backup_dir} holds no backup stream and no data directory: it is not a physical backup")


def prepare_chain(tool: str, members: list, target: str, scratch: str, key_file: str | None, log: str,
                  progress=None, records=None) -> int:
    """Extract and prepare a full backup and its incrementals, in order, into ``target``.

    ``members``: backup directories, the full backup first. ``tool``: mariabackup or xtrabackup. Returns
    the number of members applied. xtrabackup must not roll back uncommitted transactions until the last
    member is applied (``--apply-log-only``); mariabackup needs no such option.
    """
    tool_path = _tools.find(tool)
    if not tool_path:
        raise GaleraError(f"{tool} is not installed here: install {_tools.install_hint([tool])}. Nothing was changed.")
    last = len(members) - 1
    for index, member in enumerate(members):
        if progress:
            progress(f"extracting {os.path.basename(member)} ({index + 1} of {len(members)})")
        if index == 0:
            dest = target
        else:
            dest = os.path.join(scratch, f"incremental.{index}")
            os.makedirs(dest, mode=0o700, exist_ok=True)
        extract(member, dest, key_file, log, (records or {}).get(member))
        argv = [tool_path, "--prepare", f"--target-dir={target}"]
        if index > 0:
            argv.append(f"--incremental-dir={dest}")
        if tool == "xtrabackup" and index < last:
            argv.append("--apply-log-only")
        if progress:
            progress(f"preparing {os.path.basename(member)} ({index + 1} of {len(members)})")
        _tools.Pipeline([argv], log).wait(f"{tool} --prepare of {os.path.basename(member)}")
        if index > 0:
            shutil.rmtree(dest, ignore_errors=True)
    return len(members)


# ---------------------------------------------------------------------------------------------
# Ownership and reach

def chown_tree(path: str, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(top, name), uid, gid)


def reachable_by(path: str, uid: int, gid: int) -> str | None:
    """None when user ``uid`` may traverse every directory down to ``path``, else the blocking directory."""
    groups = {gid}
    try:
        name = pwd.getpwuid(uid).pw_name
        groups.update(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    except KeyError:
        pass
    current = "/"
    for part in [p for p in path.split("/") if p] + [None]:
        if not os.path.exists(current):
            return None  # from here on, the collection creates the directories (0711 or 0755)
        if not _may_traverse(os.stat(current), uid, groups):
            return current
        if part is None:
            return None
        current = os.path.join(current, part)
    return None


def _may_traverse(info, uid: int, groups: set) -> bool:
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


# ---------------------------------------------------------------------------------------------
# A throwaway server

class Throwaway:
    """A server on a copy of a data directory: socket only, wsrep off, no binary log, run as ``user``.

    ``scratch`` (owned by ``user``, 0700) holds its socket, pid file, error log and the only directory
    ``SELECT ... INTO OUTFILE`` may write to. Clients connect as root with the grant tables skipped: the
    copy's own accounts are never needed, and no option file is read on either side.
    """

    def __init__(self, scratch: str, datadir: str, user: str, uid: int, gid: int):
        self.scratch, self.datadir, self.user, self.uid, self.gid = scratch, datadir, user, uid, gid
        # A socket path has at most 107 bytes: the socket lives in a short private directory of its own.
        self.socket_dir = None
        self.socket = None
        self.pid_file = os.path.join(scratch, "server.pid")
        self.error_log = os.path.join(scratch, "server.err")
        self.files = os.path.join(scratch, "files")
        self.pipeline = None

    def argv(self) -> list:
        server = _tools.find("server")
        if not server:
            raise GaleraError("no mariadbd/mysqld is installed here to start the restored copy: install "
                              "mariadb-server, or use galera_backup_verify=prepare. Nothing was changed.")
        return [server, "--no-defaults", f"--user={self.user}", f"--datadir={self.datadir}",
                f"--socket={self.socket}", "--skip-networking", f"--pid-file={self.pid_file}",
                f"--log-error={self.error_log}", "--innodb-buffer-pool-size=64M", "--skip-log-bin",
                "--wsrep-on=OFF", f"--secure-file-priv={self.files}", "--skip-grant-tables",
                "--skip-slave-start", "--innodb-fast-shutdown=1", "--max-connections=20"]

    def start(self, timeout: float = 180) -> None:
        self.socket_dir = tempfile.mkdtemp(prefix="dbtools-galera-srv.")
        os.chown(self.socket_dir, self.uid, self.gid)
        self.socket = os.path.join(self.socket_dir, "server.sock")
        os.makedirs(self.files, mode=0o700, exist_ok=True)
        for path in (self.scratch, self.files):
            os.chown(path, self.uid, self.gid)
        chown_tree(self.datadir, self.uid, self.gid)
        self.pipeline = _tools.Pipeline([self.argv()], os.path.join(self.scratch, "server.out"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pipeline.procs[0].poll() is not None:
                raise GaleraError(f"the restored copy's server exited while starting: "
                                  f"{_tools.tail(self.error_log) or _tools.tail(self.pipeline.log) or 'no message'}")
            if os.path.exists(self.socket):
                try:
                    self.connect().close()
                    return
                except GaleraError:
                    pass
            time.sleep(0.3)
        self.stop()
        raise GaleraError(f"the restored copy's server did not answer within {int(timeout)} s: "
                          f"{_tools.tail(self.error_log) or 'no message'}")

    def connect(self):
        try:
            return _connection.pymysql.connect(unix_socket=self.socket, user="root", autocommit=True,
                                               connect_timeout=10, charset="utf8mb4", read_default_file=None)
        except _connection.pymysql.err.MySQLError as exc:
            raise GaleraError(f"cannot connect to the restored copy: {exc}") from exc

    def client_argv(self) -> list:
        """The SQL client for loading a dump: no option files, the copy's socket."""
        return [_tools.find("client") or "mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root",
                "--binary-mode", "--max-allowed-packet=1G"]

    def stop(self) -> None:
        if self.pipeline is None:
            if self.socket_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            return
        proc = self.pipeline.procs[0]
        if proc.poll() is None:
            try:
                conn = self.connect()
                with conn.cursor() as cur:
                    cur.execute("SHUTDOWN")
                conn.close()
            except (GaleraError, _connection.pymysql.err.MySQLError):
                proc.terminate()
            try:
                proc.wait(timeout=120)
            except Exception:  # subprocess.TimeoutExpired
                proc.kill()
                proc.wait()
        self.pipeline = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def init_datadir(datadir: str, user: str, scratch: str, log: str) -> None:
    """A fresh, empty data directory for loading a logical backup into."""
    installer = _tools.find("install_db")
    server = _tools.find("server")
    if installer and os.path.basename(installer).startswith("mariadb"):
        argv = [installer, "--no-defaults", f"--datadir={datadir}", f"--user={user}",
                "--auth-root-authentication-method=socket", "--skip-test-db"]
    elif server:
        argv = [server, "--no-defaults", "--initialize-insecure", f"--datadir={datadir}", f"--user={user}"]
    else:
        raise GaleraError("neither mariadb-install-db nor mysqld is installed to create a data directory for "
                          "the restore test: install mariadb-server. Nothing was changed.")
    _tools.Pipeline([argv], log).wait("creating an empty data directory for the restore test")


# ---------------------------------------------------------------------------------------------
# What a server holds

def list_tables(conn) -> list:
    """[[schema, table, bytes]] of the user's base tables, largest first."""
    sql = ("SELECT TABLE_SCHEMA, TABLE_NAME, COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) "
           "FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN "
           "('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 3 DESC, 1, 2")
    with conn.cursor() as cur:
        cur.execute(sql)
        return [[str(r[0]), str(r[1]), int(r[2] or 0)] for r in cur.fetchall()]


def table_checksums(conn, wanted=None) -> tuple:
    """The tables present (``list_tables``) and ``{"schema.table": {checksum, rows}}`` of those of ``wanted``
    (``(schema, table)`` pairs; every table present when None) that are present."""
    present = list_tables(conn)
    names = {(s, t) for s, t, _b in present}
    checksums = {}
    for schema, table in sorted(names) if wanted is None else wanted:
        if (schema, table) in names:
            figure = checksum_table(conn, schema, table)
            checksums[f"{schema}.{table}"] = dict(checksum=figure["checksum"], rows=figure["rows"])
    return present, checksums


def checksum_table(conn, schema: str, table: str) -> dict:
    name = f"{_tools.quote_identifier(schema)}.{_tools.quote_identifier(table)}"
    with conn.cursor() as cur:
        cur.execute(f"CHECKSUM TABLE {name} EXTENDED")
        row = cur.fetchone()
        cur.execute(f"SELECT COUNT(*) FROM {name}")
        count = cur.fetchone()[0]
    checksum = row[1] if row else None
    if checksum is None:
        raise GaleraError(f"CHECKSUM TABLE {schema}.{table} returned NULL: the table cannot be read")
    return dict(schema=schema, table=table, checksum=int(checksum), rows=int(count))


def table_report(conn, expected: list, sample: int) -> dict:
    """Compare the tables a server holds with ``expected`` ([[schema, table, ...]], largest first) and
    checksum the ``sample`` largest (0: all). Raises GaleraError naming the missing tables."""
    present = {(s, t) for s, t, _b in list_tables(conn)}
    missing = [f"{s}.{t}" for s, t, *_rest in expected if (s, t) not in present]
    if missing:
        raise GaleraError(f"tables of the source are missing from the restored copy: {', '.join(missing[:20])}"
                          f"{' (and more)' if len(missing) > 20 else ''}")
    chosen = expected if not sample else expected[:sample]
    # Keyed "schema.table" as format 1 always was; each entry names its schema and table too (a schema
    # name may hold a dot).
    checksums = {}
    for schema, table, *_rest in chosen:
        checksums[f"{schema}.{table}"] = checksum_table(conn, schema, table)
    return dict(tables=len(present), checksums=checksums)


# ---------------------------------------------------------------------------------------------
# Restoring a chain into a data directory

def check_datadir_text(path) -> str:
    """A data directory to restore into: absolute, normalised, printable, never / or a system tree root."""
    text = str(path or "")
    if not text.startswith("/") or not _paths.printable(text) or any(
            part in ("", ".", "..") for part in text.rstrip("/").split("/")[1:]) or text.rstrip("/") in ("",):
        raise GaleraError(f"datadir={text!r} must be an absolute, normalised path of an empty (or absent) data "
                          "directory, not /. Nothing was changed.")
    norm = os.path.normpath(text)
    trees = [t for t in _paths.SYSTEM_TREES if t != "/var/lib/mysql/"]
    if norm in _paths.SYSTEM_DIRS - {"/var/lib/mysql"} or any((norm + "/").startswith(t) for t in trees):
        raise GaleraError(f"datadir={norm} is a system directory, not a data directory. Nothing was changed.")
    return norm


def chain_members(path: str, backup_id: str | None, cluster: str | None = None) -> list:
    """[(directory, manifest)] of a backup's chain in ``path``, the full backup first; refuses a broken one.

    No ``backup_id``: the newest restorable backup (of ``cluster`` when given).
    """
    catalog = _catalog.read_dir(path)
    by_id = {b["id"]: b for b in catalog["backups"]}
    if not backup_id:
        newest = _catalog.newest_good(catalog["backups"], cluster or None)
        if newest is None:
            raise GaleraError(f"no restorable backup{' of cluster ' + cluster if cluster else ''} in {path} (found: "
                              f"{', '.join(sorted(by_id)) or 'none'}). Nothing was changed.")
        backup_id = newest["id"]
    if backup_id not in by_id:
        raise GaleraError(f"no complete backup {backup_id} in {path} (found: "
                          f"{', '.join(sorted(by_id)) or 'none'}). Nothing was changed.")
    backup = by_id[backup_id]
    reason = _catalog.broken_reason(backup, by_id)
    if reason:
        raise GaleraError(f"backup {backup_id} cannot be restored: {reason}. Nothing was changed.")
    if backup.get("method") not in _tools.PHYSICAL:
        raise GaleraError(f"backup {backup_id} is a logical {backup.get('method')} dump: load it into a running server "
                          "instead. Nothing was changed.")
    return [(by_id[i]["path"], by_id[i]) for i in _catalog.chain_of(backup, by_id)]


def restore_into(params: dict, check_mode: bool) -> dict:
    datadir = check_datadir_text(params["datadir"])
    if os.path.lexists(datadir) and (not os.path.isdir(datadir) or os.listdir(datadir)):
        held = len(os.listdir(datadir)) if os.path.isdir(datadir) else "a file, not"
        raise GaleraError(f"{datadir} is not an empty directory (it holds {held} entries): restore only into an empty "
                          "or absent directory (stop the server and move its data aside first). Nothing was changed.")
    try:
        entry = pwd.getpwnam(params["owner"])
    except KeyError:
        raise GaleraError(f"owner={params['owner']!r} names no user here. Nothing was changed.") from None
    members = chain_members(params["path"], params.get("id"), params.get("cluster"))
    key = None
    if params.get("encrypt_key"):
        key = _crypto.key_from_text(params["encrypt_key"])
    elif params.get("encrypt_key_file"):
        key = _crypto.read_key(params["encrypt_key_file"])
    check_keys(members, key)
    found = {verify_macs(path, manifest, key) for path, manifest in members}
    integrity = "legacy" if _crypto.LEGACY in found else "verified" if _crypto.VERIFIED in found else "none"
    head = members[-1][1]
    position = head.get("position") or {}
    result = dict(changed=True, chain=[m["id"] for _p, m in members], integrity=integrity,
                  position=dict(cluster_uuid=position.get("cluster_uuid"), seqno=position.get("seqno")),
                  datadir=datadir)
    if check_mode:
        return result
    created = not os.path.lexists(datadir)
    scratch = tempfile.mkdtemp(prefix="dbtools-galera-restore.")
    key_file = params.get("encrypt_key_file")
    try:
        if key is not None and not key_file:
            key_file = os.path.join(scratch, "backup.key")
            _crypto.write_key_file(key_file, key)
        os.makedirs(datadir, mode=0o750, exist_ok=True)
        try:
            prepare_chain(head["method"], [p for p, _m in members], datadir, scratch, key_file,
                          os.path.join(scratch, "prepare.log"),
                          records={p: m.get("encryption") or None for p, m in members})
            chown_tree(datadir, entry.pw_uid, entry.pw_gid)
        except BaseException:
            for name in os.listdir(datadir):
                full = os.path.join(datadir, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)
                else:
                    os.unlink(full)
            if created:
                os.rmdir(datadir)
            raise
    except GaleraError as exc:
        raise GaleraError(f"restoring {result['chain'][-1]} into {datadir} failed: {exc.msg}. The backups were not changed; "
                          f"the data directory was emptied again.") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["msg"] = (f"restored {' <- '.join(result['chain'])} into {datadir} at Galera position "
                     f"{result['position']['cluster_uuid']}:{result['position']['seqno']}")
    return result

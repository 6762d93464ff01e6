# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The binary-log archiver's steps on a node (private): the galera_binlog_archive module's work.

The rules are in ``_binlog`` (pure); the areas where segments are kept in ``_binlog_store``. Here:
the catalogue tables, the lease, ``FLUSH BINARY LOGS``, reading the node's binlog files, writing
segments (compressed, encrypted with the backup key), committing, publishing the index, retention,
the archive check, the replay plan and fetching the files a replay needs.

The catalogue. The cluster's archive index lives in two small InnoDB tables of the lease database,
replicated by Galera, so whichever node archives next reads the same cursor (a causal read,
``wsrep_sync_wait``): ``binlog_archive`` (one row per archive: its state, the index without its
segments, JSON) and ``binlog_segments`` (one row per segment or gap). A run changes them in one
transaction that also checks the state's ``revision`` (compare-and-set), under the lease
``binlog_archive`` (``_lease``, the same machinery as the desync lease, its own row): two archivers
never interleave. The index is the catalogue's rows; ``index.json`` in every area is a copy written
after each commit, for restores that have no cluster to ask. Order of a run: files copied and
verified in every area, THEN the catalogue commit (the archive point), THEN the copies of the
index. A run that dies before the commit leaves files no index names (the next run writes the same
names again from the same node, and an area's orphans are reported, never taken for the archive); a
run that dies after it leaves an area's index behind, rewritten by the next run. An area whose index
is AHEAD of the catalogue (it names GTIDs past the catalogue's cursor) means the cluster went back
in time (restored from a backup) or another cluster writes there: refused, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from ansible_collections.dbtools.galera.plugins.module_utils import (
    _binlog,
    _binlog_store,
    _catalog,
    _connection,
    _crypto,
    _lease,
    _manifest,
    _metrics,
    _paths,
    _stores,
    _tools,
    _wsrep,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

NOTHING = _binlog.NOTHING
STATE_TABLE = "binlog_archive"
SEGMENTS_TABLE = "binlog_segments"
STATE_COLUMNS = (" archive VARCHAR(128) NOT NULL PRIMARY KEY, revision BIGINT NOT NULL,"
                 " updated_at DATETIME(6) NOT NULL, state MEDIUMTEXT NOT NULL")
SEGMENT_COLUMNS = (" archive VARCHAR(128) NOT NULL, first_seqno BIGINT UNSIGNED NOT NULL,"
                   " last_seqno BIGINT UNSIGNED NOT NULL, kind VARCHAR(8) NOT NULL, name VARCHAR(255) NULL,"
                   " body MEDIUMTEXT NOT NULL, PRIMARY KEY (archive, first_seqno)")
SCAN_CACHE = ".scan-{node}.json"
LOGIN_KEYS = ("login_user", "login_password", "login_host", "login_port", "login_unix_socket", "config_file",
              "ca_cert", "client_cert", "client_key", "check_hostname", "connect_timeout")
_CHUNK = 1 << 20
_ACCESS_ERRNOS = (_connection.ER_DBACCESS_DENIED, _connection.ER_TABLEACCESS_DENIED,
                  _connection.ER_SPECIFIC_ACCESS_DENIED)


def now_text() -> str:
    return _binlog.utc_text(time.time())


# ---------------------------------------------------------------------------------------------
# The catalogue (two replicated tables)

class Catalogue:
    """The archive index in the cluster's own tables (see the module's docstring)."""

    def __init__(self, node: _wsrep.Node, database: str, archive: str):
        if not _lease.valid_database_name(database):
            raise GaleraError(f"lease_database {database!r} is not a plain database name. {NOTHING}")
        self.node, self.database, self.archive = node, database, str(archive)
        self.state = f"`{database}`.`{STATE_TABLE}`"
        self.segments = f"`{database}`.`{SEGMENTS_TABLE}`"

    def _privilege(self, exc, action: str) -> GaleraError:
        return GaleraError(f"cannot {action} the binlog archive's catalogue {self.database}.{STATE_TABLE}: "
                           f"{exc.args[-1]}. Grant the archiver's login CREATE, SELECT, INSERT, UPDATE, DELETE ON "
                           f"`{self.database}`.* (or create the tables as an administrator). {NOTHING}",
                           errno=_connection.mysql_errno(exc))

    def ensure(self) -> None:
        """Create the tables when missing (DDL replicates in total order: only when needed)."""
        try:
            rows = self.node.query("SELECT GROUP_CONCAT(TABLE_NAME) FROM information_schema.TABLES WHERE "
                                   "TABLE_SCHEMA = %s AND TABLE_NAME IN (%s, %s)",
                                   (self.database, STATE_TABLE, SEGMENTS_TABLE), record=False)
            present = set(str((rows[0][0] if rows else "") or "").split(","))
            if STATE_TABLE in present and SEGMENTS_TABLE in present:
                return
            self.node.query(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            if STATE_TABLE not in present:
                self.node.query(f"CREATE TABLE IF NOT EXISTS {self.state} ({STATE_COLUMNS}) ENGINE=InnoDB")
            if SEGMENTS_TABLE not in present:
                self.node.query(f"CREATE TABLE IF NOT EXISTS {self.segments} ({SEGMENT_COLUMNS}) ENGINE=InnoDB")
        except GaleraError:
            raise
        except Exception as exc:
            if _connection.mysql_errno(exc) in _ACCESS_ERRNOS:
                raise self._privilege(exc, "create") from exc
            raise

    def read(self) -> dict | None:
        """The index (state and segments), read causally; None when this archive has none yet (or no tables)."""
        try:
            self.node.query("SET SESSION wsrep_sync_wait = 1", record=False)
            rows = self.node.query(f"SELECT revision, state FROM {self.state} WHERE archive = %s",
                                   (self.archive,), record=False)
            if not rows:
                return None
            segments = self.node.query(f"SELECT body FROM {self.segments} WHERE archive = %s ORDER BY first_seqno",
                                       (self.archive,), record=False)
        except Exception as exc:
            errno = _connection.mysql_errno(exc)
            if errno in (1049, 1146):
                return None
            if errno in _ACCESS_ERRNOS:
                raise self._privilege(exc, "read") from exc
            raise
        finally:
            try:
                self.node.query("SET SESSION wsrep_sync_wait = DEFAULT", record=False)
            except Exception:  # pylint: disable=broad-except  # the connection may be gone
                pass
        index = json.loads(rows[0][1])
        index["revision"] = int(rows[0][0])
        index["segments"] = [json.loads(r[0]) for r in segments]
        return index

    def commit(self, old_revision: int, index: dict, added=(), removed=()) -> None:
        """Write ``index`` (its state, ``added`` and ``removed`` segments) in one transaction, only
        when the stored revision is still ``old_revision`` (0: none yet)."""
        state = {k: v for k, v in index.items() if k != "segments"}
        conn = self.node.conn
        try:
            conn.begin()
            if old_revision:
                self.node.query(f"UPDATE {self.state} SET revision = %s, updated_at = UTC_TIMESTAMP(6), state = %s "
                                f"WHERE archive = %s AND revision = %s",
                                (int(index["revision"]), json.dumps(state, sort_keys=True), self.archive,
                                 int(old_revision)))
                if conn.affected_rows() != 1:
                    raise GaleraError(f"the binlog archive's catalogue changed during this run (revision "
                                      f"{old_revision} is gone): another archiver ran without the lease? Nothing was "
                                      "committed; run again.")
            else:
                self.node.query(f"INSERT INTO {self.state} (archive, revision, updated_at, state) VALUES "
                                f"(%s, %s, UTC_TIMESTAMP(6), %s)",
                                (self.archive, int(index["revision"]), json.dumps(state, sort_keys=True)))
            for segment in removed:
                self.node.query(f"DELETE FROM {self.segments} WHERE archive = %s AND first_seqno = %s",
                                (self.archive, int(segment["first"])))
            for segment in added:
                self.node.query(f"INSERT INTO {self.segments} (archive, first_seqno, last_seqno, kind, name, body) "
                                f"VALUES (%s, %s, %s, %s, %s, %s)",
                                (self.archive, int(segment["first"]), int(segment["last"]), segment["kind"],
                                 segment.get("name"), json.dumps(segment, sort_keys=True)))
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except Exception:  # pylint: disable=broad-except
                pass
            errno = _connection.mysql_errno(exc) if isinstance(exc, Exception) else None
            if errno in (_connection.ER_LOCK_DEADLOCK, _connection.ER_LOCK_WAIT_TIMEOUT):
                raise GaleraError("the binlog archive's catalogue was written by another node at the same moment "
                                  "(certification conflict): nothing was committed; run again.") from exc
            raise


def archive_lease(node: _wsrep.Node, database: str) -> _lease.Lease:
    return _lease.Lease(node, database, key=_binlog.LEASE_KEY, label="binlog archive lease", holding="archiving",
                        opt_out="or create the lease table as an administrator; the archiver never runs without it")


# ---------------------------------------------------------------------------------------------
# The node: settings, health, binlog files

def read_variables(node: _wsrep.Node) -> dict:
    rows = node.query("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ", ".join(["%s"] * len(_binlog.SETTING_NAMES))
                      + ") OR Variable_name LIKE 'wsrep%%'", tuple(_binlog.SETTING_NAMES), record=False)
    return _wsrep.parse_rows(rows)


def health(status: dict, variables: dict) -> str | None:
    """Why this node should not archive now, or None."""
    reason = _wsrep.is_galera(variables, status)
    if reason:
        return reason
    snap = _wsrep.snapshot(status, variables)
    if snap.get("cluster_status") != "Primary":
        return f"not in a Primary component ({snap.get('cluster_status')})"
    if snap.get("local_state") != _wsrep.SYNCED:
        return f"not Synced ({snap.get('local_state_comment')})"
    if not snap.get("ready"):
        return "wsrep_ready is OFF"
    return None


def binlog_files(node: _wsrep.Node, variables: dict) -> list:
    """``[(name, path, size)]`` of the node's binlog files in order (``SHOW BINARY LOGS``); the last
    one is being written."""
    base = variables.get("log_bin_basename")
    if not base:
        raise GaleraError(f"the binary log is off on {variables.get('wsrep_node_name')} (no log_bin_basename). "
                          f"{NOTHING}")
    directory = os.path.dirname(str(base))
    try:
        rows = node.query("SHOW BINARY LOGS", record=False)
    except Exception as exc:
        if _connection.mysql_errno(exc) in (1227, 1045, 1142):
            raise GaleraError(f"SHOW BINARY LOGS was refused ({exc.args[-1]}): grant the archiver's login BINLOG "
                              f"MONITOR (or SUPER). {NOTHING}") from exc
        raise
    out = []
    for row in rows:
        name = str(row[0])
        if "/" in name or name in (".", ".."):
            raise GaleraError(f"SHOW BINARY LOGS names {name!r}: not a file name. {NOTHING}")
        out.append((name, os.path.join(directory, name), int(row[1])))
    return out


def load_cache(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) and data.get("format") == 1 else {}
    except (OSError, ValueError):
        return {}


def scan_files(files: list, domain: int, after: int | None, cache_path: str | None) -> list:
    """``_binlog.scan`` summaries of ``files`` (all closed but the last, scanned up to its current
    size). Closed files are immutable: their summaries (without ``after``) are cached in
    ``cache_path`` by name, size and mtime; the file holding ``after``+1 is scanned again with it."""
    cache = load_cache(cache_path) if cache_path else {}
    entries = cache.get("files") if isinstance(cache.get("files"), dict) else {}
    keep, out = {}, []
    for number, (name, path, size) in enumerate(files):
        active = number == len(files) - 1
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise GaleraError(f"binlog file {path} ({name}) cannot be read: {exc.strerror or exc}. The archiver "
                              "reads the binlog files on the node: run it there as root (become).") from None
        key = [stat.st_size, int(stat.st_mtime)]
        cached = entries.get(name) if not active else None
        if cached and cached.get("key") == key and cached.get("domain") == domain:
            info = dict(cached["info"])
        else:
            info = _binlog.scan(path, domain, limit=size if active else None)
        if not active and info.get("closed"):
            keep[name] = dict(key=key, domain=domain, info=info)
        if after is not None and info.get("first") is not None and info["first"] <= after < info["last"]:
            info = _binlog.scan(path, domain, after=after, limit=size if active else None)
        elif after is not None and info.get("first") is not None and info["first"] > after:
            info = dict(info, offset=info["first_offset"], offset_first=info["first"], offset_time=info["first_time"])
        info.update(active=active, path=path)
        out.append(info)
    if cache_path and keep:
        try:
            _manifest.write_json_atomic(cache_path, dict(format=1, files=keep))
        except OSError:
            pass  # a cache: reading everything again next time is slower, not wrong
    return out


# ---------------------------------------------------------------------------------------------
# Writing one segment

def _blocks(src, end: int):
    """The blocks of ``src`` up to byte ``end`` (or its end, when shorter)."""
    left = end
    while left > 0:
        block = src.read(min(_CHUNK, left))
        if not block:
            return
        left -= len(block)
        yield block


def produce(source: str, end: int, target: str, compress: bool, key_file: str | None, record: dict | None,
            key: bytes | None, name: str) -> dict:
    """Write bytes [0, ``end``) of binlog ``source`` into the new file ``target``: zstd-compressed
    and openssl-encrypted as asked, through argv pipelines (no shell). Returns ``dict(bytes, sha256,
    source_sha256, mac)``; ``mac`` the HMAC of the encrypted file named ``name`` (``_crypto``)."""
    chain = []
    if compress:
        chain.append(_tools.zstd_argv(3, 1))
    if key_file:
        openssl = _tools.find("openssl")
        if not openssl:
            raise GaleraError(f"openssl is not installed on this node: it encrypts the archive. Install openssl. "
                              f"{NOTHING}")
        chain.append(_crypto.encrypt_argv(openssl, key_file))
    source_digest, digest = hashlib.sha256(), hashlib.sha256()
    mac = _crypto.Mac(key, record, name) if record is not None else None
    written = 0
    errors = [tempfile.TemporaryFile() for _stage in chain]  # pylint: disable=consider-using-with
    procs, failure = [], []
    try:
        with open(source, "rb") as src, open(target, "xb") as out:
            os.chmod(target, 0o600)
            if not chain:
                for block in _blocks(src, end):
                    source_digest.update(block)
                    digest.update(block)
                    out.write(block)
                    written += len(block)
            else:
                stdin = subprocess.PIPE
                for number, argv in enumerate(chain):
                    # pylint: disable-next=ansible-bad-function  # a pipeline: run_command cannot chain processes
                    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                            stderr=errors[number], close_fds=True)
                    if number:
                        procs[-1].stdout.close()  # the next process owns the pipe now
                    procs.append(proc)
                    stdin = proc.stdout

                def feed():
                    try:
                        for block in _blocks(src, end):
                            source_digest.update(block)
                            procs[0].stdin.write(block)
                    except BaseException as exc:  # pylint: disable=broad-except  # reported by the caller
                        failure.append(exc)
                    finally:
                        try:
                            procs[0].stdin.close()
                        except OSError:
                            pass
                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                for block in iter(lambda: procs[-1].stdout.read(_CHUNK), b""):
                    digest.update(block)
                    if mac is not None:
                        mac.update(block)
                    out.write(block)
                    written += len(block)
                feeder.join()
            out.flush()
            os.fsync(out.fileno())
        codes = [proc.wait() for proc in procs]
        if failure or any(codes):
            texts = []
            for handle in errors:
                handle.seek(0)
                texts.append(handle.read().decode("utf-8", "replace").strip()[-300:])
            raise GaleraError(f"compressing/encrypting {source} failed (exit {codes}): "
                              f"{'; '.join(t for t in texts if t) or failure[:1]}. {NOTHING}")
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        try:
            os.unlink(target)
        except OSError:
            pass
        raise
    finally:
        for handle in errors:
            handle.close()
    return dict(bytes=written, sha256=digest.hexdigest(), source_sha256=source_digest.hexdigest(),
                mac=mac.hexdigest() if mac is not None else None)


def load_key(params: dict) -> bytes | None:
    if not params.get("encrypt"):
        return None
    if params.get("encrypt_key"):
        return _crypto.key_from_text(params["encrypt_key"])
    if params.get("encrypt_key_file"):
        return _crypto.read_key(params["encrypt_key_file"])
    raise GaleraError(f"encrypt is on but neither encrypt_key nor encrypt_key_file is given. {NOTHING}")


# ---------------------------------------------------------------------------------------------
# The steps

class Archiver:
    """One archive step on one node (``step``: probe, archive, check, plan, refresh)."""

    def __init__(self, node: _wsrep.Node, params: dict, check_mode: bool = False, warn=None, clock=time.time):
        self.node, self.p, self.check_mode = node, params, check_mode
        self.warn = warn or (lambda text: None)
        self.clock = clock
        status, variables = node.status(), read_variables(node)
        self.status, self.variables = status, variables
        self.node_name = str(variables.get("wsrep_node_name") or variables.get("hostname") or "")
        self.cluster = str(params.get("cluster") or variables.get("wsrep_cluster_name") or "")
        self.cluster_uuid = status.get("wsrep_cluster_state_uuid")
        self.flavor = _wsrep.detect_flavor(variables)
        self.settings = _binlog.node_settings(variables, self.flavor)
        self.domain = self.settings.get("cluster_domain")
        self.directory = _paths.check_dir_text(params["dir"], "galera_backup_dir")
        uid = _paths.account(params.get("file_owner") or "root", "galera_backup_file_owner", "user")
        gid = _paths.account(params.get("file_group") or "root", "galera_backup_file_group", "group")
        self.local = _binlog_store.LocalArea(self.directory, self.cluster, uid=uid, gid=gid)
        self.catalogue = Catalogue(node, params.get("lease_database") or "dbtools_galera", self.cluster)

    # -- helpers
    def now(self) -> str:
        return _binlog.utc_text(self.clock())

    def areas(self) -> list:
        return _binlog_store.open_areas(self.p.get("copies") or [], self.cluster)

    def lag(self, index: dict | None) -> float | None:
        through = _binlog.parse_time((index or {}).get("archived_through"))
        return None if through is None else round(max(0.0, self.clock() - through.timestamp()), 1)

    def require_ready(self) -> None:
        if not self.settings["ready"]:
            raise GaleraError(f"point-in-time recovery is not possible on {self.node_name}: "
                              f"{'; '.join(self.settings['missing'])}. Add to the server's configuration ([mariadb]) "
                              f"and restart: {'; '.join(self.settings['settings'])}. {NOTHING}",
                              binlog=self.settings)

    def index_or_new(self) -> dict:
        index = self.catalogue.read()
        if index is None:
            return _binlog.new_index(self.cluster, self.cluster_uuid, self.domain)
        _binlog.check_index(index, self.cluster, self.cluster_uuid, f"the catalogue {self.catalogue.state}")
        if index["domain"] != self.domain:
            raise GaleraError(f"the archive holds cluster domain {index['domain']} but wsrep_gtid_domain_id is "
                              f"{self.domain} on {self.node_name}: the cluster's GTID domain changed, so its "
                              f"history no longer continues the archive. Archive under another name (cluster) or set "
                              f"the domain back. {NOTHING}")
        return index

    def files(self, after: int | None) -> list:
        """The node's binlog files, scanned; the scan cache lives in the local area when
        galera_backup_dir exists (a probe creates the area for it, nothing else)."""
        cache = None
        if os.path.isdir(self.directory) and not self.check_mode:
            self.local.ensure()
            cache = os.path.join(self.local.path, SCAN_CACHE.format(node=_binlog.sanitize(self.node_name)))
        return scan_files(binlog_files(self.node, self.variables), self.domain, after, cache)

    # -- probe
    def probe(self) -> dict:
        """Read-only: this node's health, binlog settings, what its binlogs hold, the catalogue's state."""
        why = health(self.status, self.variables)
        out = dict(changed=False, probed=True, node=self.node_name, cluster=self.cluster,
                   cluster_uuid=self.cluster_uuid, healthy=why is None, health=why, settings=self.settings,
                   coverage=[], holes=[], files=[], archive=None, oldest_backup=None)
        if self.domain is not None and self.settings["enabled"]:
            index = self.catalogue.read()
            if index is not None:
                out["archive"] = {k: index.get(k) for k in ("revision", "last", "last_gtid", "node", "start",
                                                            "archived_through", "domain")}
            scans = self.files(None)
            out["coverage"] = _binlog.coverage(scans)
            out["holes"] = _binlog.history_holes(scans)
            out["files"] = [{k: s.get(k) for k in ("name", "start", "first", "last", "closed", "closed_at", "active")}
                            for s in scans]
        floor = _binlog.backup_floor(_catalog.read_dir(self.directory)["backups"], self.cluster, self.domain or 0)
        out["oldest_backup"] = floor
        return out

    # -- archive
    def archive(self) -> dict:
        """Flush, archive every closed file after the cursor into every area, commit, publish, prune."""
        self.require_ready()
        why = health(self.status, self.variables)
        if why:
            raise GaleraError(f"{self.node_name} cannot archive now: {why}. Another node archives (the playbook "
                              f"chooses a healthy one). {NOTHING}")
        key = load_key(self.p)
        areas = self.areas()
        lease = archive_lease(self.node, self.catalogue.database)
        owner = self.p["owner"]
        result = dict(changed=False, node=self.node_name, cluster=self.cluster, archived=[], gap=None, hole=None,
                      removed=[], stores=[a.name for a in areas], flushed=False)
        if self.check_mode:
            holder = lease.read()
            if holder and _lease.judge(holder, owner, self.node_name) == _lease.HELD:
                raise GaleraError(f"the binlog archive lease is taken: {lease.describe(holder)}. Only one archiver "
                                  f"runs at a time. {NOTHING}", conflict=True, holder=holder)
            index = self.catalogue.read() or _binlog.new_index(self.cluster, self.cluster_uuid, self.domain)
            planned = self.plan_run(index, False)
            result.update(would_archive=[dict(file=s.get("file"), kind=s["kind"], first=s["first"], last=s["last"])
                                         for s in planned["segments"]], hole=planned["hole"], gap=planned["gap"],
                          unlogged=crossed(planned), lag_seconds=self.lag(index))
            return result
        self.catalogue.ensure()
        holder = lease.read()
        replace = holder if holder and _lease.judge(holder, owner, self.node_name) == _lease.EXPIRED else None
        lease.acquire(owner, self.node_name, None, self.cluster, int(self.p.get("lease_ttl") or 600), None,
                      replace=replace)
        try:
            result.update(self._archive(lease, areas, key, result))
        finally:
            try:
                lease.release(owner, self.node_name)
            except Exception as exc:  # pylint: disable=broad-except  # the lease expires by itself
                self.warn(f"the binlog archive lease was not released ({exc}); it expires after lease_ttl")
        return result

    def _archive(self, lease, areas, key, result) -> dict:
        index = self.index_or_new()
        old_revision = int(index.get("revision") or 0)
        for area in areas:
            self._check_area_index(area, index)
        self.node.query("FLUSH BINARY LOGS")
        result["flushed"] = True
        closed, planned = self.plan_run(index, True)
        self.local.ensure()
        added = []
        work = tempfile.mkdtemp(prefix=".work-", dir=self.local.path)
        try:
            key_file = None
            if key is not None:
                key_file = os.path.join(work, "key")
                _crypto.write_key_file(key_file, key)
            by_name = {f["name"]: f for f in closed}
            for segment in planned["segments"]:
                if segment["kind"] == "gap":
                    segment.update(reason=f"no node of the cluster had these GTIDs any more when {self.node_name} "
                                          f"archived (binlogs purged, or a node filled by SST)", found_at=self.now())
                    added.append(segment)
                    continue
                info = by_name[segment["file"]]
                added.append(self._store_segment(segment, info, areas, key, key_file, work))
                lease.renew(self.p["owner"], self.node_name, int(self.p.get("lease_ttl") or 600))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        new = _binlog.add_segments(index, added, self.node_name, planned["through"], self.now())
        if new.get("start") is None and index.get("start") is None and not added:
            new["start"] = None
        self.catalogue.commit(old_revision, new, added=added)
        result.update(changed=bool(added) or result["flushed"], archived=[
            {k: s.get(k) for k in ("kind", "name", "file", "first", "last", "first_gtid", "last_gtid", "bytes",
                                   "head_skipped", "first_time", "last_time")} for s in added],
            gap=planned["gap"], hole=planned["hole"], unlogged=crossed(planned), already_archived=planned["skipped"])
        removed = self._retention(new, areas)
        current = self.catalogue.read() or new
        self._publish(current, areas)
        result.update(removed=removed, index=summary(current), lag_seconds=self.lag(current),
                      archived_through=current.get("archived_through"))
        checked = _binlog.check(current)
        result["gaps"] = checked["gaps"]
        result["rpo"] = rpo_line(current, self.lag(current), len(added))
        return result

    def plan_run(self, index: dict, with_files: bool):
        """What this run archives (``_binlog.plan_files``) from this node's closed files; with no
        cursor yet, from where its unbroken history begins. ``(closed files, plan)`` with
        ``with_files``, else the plan."""
        after = _binlog.cursor(index)
        start = None
        if after is None:
            start = _binlog.unbroken_from([f for f in self.files(None) if not f["active"]], self.p.get("unlogged"))
        closed = [f for f in self.files(after if after is not None else start) if not f["active"]]
        planned = _binlog.plan_files(closed, index, self.node_name, self.p.get("gap"), self.now(),
                                     self.p.get("unlogged"), start)
        return (closed, planned) if with_files else planned

    def _store_segment(self, segment: dict, info: dict, areas: list, key, key_file, work: str) -> dict:
        compress = self.p.get("compress", "zstd") == "zstd"
        name = _binlog.segment_name(segment["first"], self.node_name, segment["file"], compress, key is not None)
        record = _crypto.new_record(key) if key is not None else None
        temp = os.path.join(work, name)
        made = produce(info["path"], int(segment["end"]), temp, compress, key_file, record, key, name)
        if record is not None:
            _crypto.record_file_mac(record, name, made["mac"])
            _crypto.seal(record, key)
        self.local.put(temp, name, made["sha256"])
        stores = []
        for area in areas:
            area.put(temp, name, made["sha256"])
            stores.append(area.name)
        return dict(segment, name=name, bytes=made["bytes"], sha256=made["sha256"],
                    source_sha256=made["source_sha256"], compress="zstd" if compress else None, encryption=record,
                    stores=stores, archived_at=self.now(), source_bytes=int(segment["end"]))

    def _check_area_index(self, area, index: dict) -> None:
        data = area.read_index()
        if data is None:
            return
        try:
            theirs = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise GaleraError(f"{area.url(_binlog.INDEX)} is not readable JSON: the archive there is not touched. "
                              f"Move it away, then run again. {NOTHING}") from None
        _binlog.check_index(theirs, self.cluster, self.cluster_uuid, area.url(_binlog.INDEX))
        mine = _binlog.cursor(index)
        if theirs.get("last") is not None and (mine is None or int(theirs["last"]) > mine):
            raise GaleraError(f"{area.url(_binlog.INDEX)} holds GTIDs up to {theirs.get('last_gtid')}, past the "
                              f"cluster's archive catalogue ({index.get('last_gtid') or 'empty'}): the cluster went "
                              f"back in time (restored from a backup: a new history) or its catalogue "
                              f"({self.catalogue.state}) was lost. Move that archive aside (it still restores the "
                              f"old history), then run again. {NOTHING}")

    def _publish(self, index: dict, areas: list) -> None:
        data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode("utf-8")
        self.local.write_index(data)
        for area in areas:
            area.write_index(data)

    def _retention(self, index: dict, areas: list) -> list:
        """Drop the segments no kept backup needs (``_binlog.plan_retention``) from the catalogue,
        then from every area; returns the names removed."""
        if not self.p.get("retention", True):
            return []
        floors = [self.p.get("keep_from")] if self.p.get("keep_from") is not None else []
        local = _binlog.backup_floor(_catalog.read_dir(self.directory)["backups"], self.cluster, self.domain)
        if local["seq"] is not None:
            floors.append(local["seq"])
        for area in areas:
            store = getattr(area, "store", None)
            if store is None:
                continue
            listing = store.list()
            manifests = [m for m in listing["manifests"].values() if isinstance(m, dict)]
            seq = _binlog.backup_floor(manifests, self.cluster, self.domain)["seq"]
            if seq is not None:
                floors.append(seq)
        floors = [int(f) for f in floors if f is not None]
        if not floors:
            return []
        planned = _binlog.plan_retention(index, min(floors))
        if not planned["remove"]:
            return []
        new = _binlog.apply_retention(index, planned, self.now())
        self.catalogue.commit(int(index["revision"]), new, removed=planned["remove"])
        names = [s["name"] for s in planned["remove"] if s.get("name")]
        self.local.delete([n for n in names if n in self.local.listing()])
        for area in areas:
            area.delete([n for n in names if n in area.listing()])
        return names

    # -- refresh (every node, after a run): the newest index here, own old segments pruned
    def refresh(self) -> dict:
        index = self.catalogue.read()
        out = dict(changed=False, node=self.node_name, removed=[])
        if index is None or not os.path.isdir(self.local.path):
            return out
        _binlog.check_index(index, self.cluster, self.cluster_uuid, f"the catalogue {self.catalogue.state}")
        listing = self.local.listing()
        named = {s.get("name") for s in index["segments"]}
        start = index.get("start")
        stale = [n for n in listing if _binlog.is_segment_name(n) and n not in named and start is not None
                 and _binlog.segment_first(n) is not None and _binlog.segment_first(n) <= start]
        current = self.local.read_index()
        data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode("utf-8")
        if self.check_mode:
            out.update(changed=bool(stale) or current != data, removed=stale)
            return out
        if current != data:
            self.local.write_index(data)
            out["changed"] = True
        if stale:
            out.update(changed=True, removed=self.local.delete(stale))
        return out

    # -- check: is the archive whole where it is kept?
    def check(self) -> dict:
        index = self.catalogue.read()
        if index is None:
            raise GaleraError(f"the cluster {self.cluster} has no binlog archive yet (no catalogue row in "
                              f"{self.catalogue.state}): run dbtools.galera.binlog_archive first.")
        places = []
        for area in [self.local] + self.areas():
            listing = area.listing()
            if area is self.local:
                wanted = [s for s in index["segments"] if s.get("kind") == "file" and s.get("node") == self.node_name]
            else:
                wanted = [s for s in index["segments"] if s.get("kind") == "file" and area.name in (s.get("stores") or [])]
            missing = [s for s in wanted if s.get("name") not in listing]
            damaged = []
            if self.p.get("verify") == "sha256":
                damaged = [s["name"] for s in wanted if s not in missing and area.sha256(s["name"]) != s.get("sha256")]
            places.append(dict(name=area.name, url=area.url(), segments=len(wanted),
                               missing=[s["name"] for s in missing], damaged=damaged))
        present_everywhere = None
        gone = {n for place in places for n in place["missing"] + place["damaged"]}
        if gone:
            present_everywhere = {s.get("name") for s in index["segments"]} - gone
        checked = _binlog.check(index, present_everywhere)
        lag = self.lag(index)
        result = dict(changed=False, index=summary(index), places=places, gaps=checked["gaps"], ok=checked["ok"],
                      lag_seconds=lag, archived_through=index.get("archived_through"))
        result["summary"] = check_line(self.cluster, index, checked, lag, places)
        return result

    # -- plan: what a restore to a point would replay
    def plan(self) -> dict:
        index = self.catalogue.read()
        if index is None:
            raise GaleraError(f"the cluster {self.cluster} has no binlog archive. {NOTHING}")
        source = self.p.get("source") or _binlog_store.LOCAL
        areas = {a.name: a for a in self.areas()}
        area = self.local if source == _binlog_store.LOCAL else areas.get(source)
        if area is None:
            raise GaleraError(f"source {source!r} is neither 'local' nor a galera_backup_copies name "
                              f"({', '.join(areas) or 'none'}). {NOTHING}")
        listing = area.listing()
        planned = _binlog.replay_plan(index, self.p.get("start"), self.p.get("stop_gtid"), self.p.get("stop_time"),
                                      present=set(listing))
        return dict(changed=False, plan=planned, source=area.url())

    # -- replay: the restore to a point, on the restored first node
    def replay(self) -> dict:
        """Apply the archived writes from the backup's GTID position (``start``) up to ``until``
        (``latest``, a GTID or a UTC time) through this node's SQL client: the index and the files
        come from ``source`` (the node's own copy or a galera_backup_copies name), never from the
        catalogue tables (a restored cluster holds the backup's old copy of them). Refuses, naming
        the GTID range, when the archive has a gap between the backup and the target."""
        area, until, planned, result = plan_replay(self.p, self.cluster, self.local, self.areas())
        if self.check_mode:
            return result
        key = load_key(self.p) if any(s.get("encryption") for s in planned["segments"]) else None
        started = time.monotonic()
        self.local.ensure()
        work = tempfile.mkdtemp(prefix=".replay-", dir=self.local.path)
        applied, last, last_time = 0, None, None
        try:
            fetched = fetch(area, planned, os.path.join(work, "files"), key)
            cnf = os.path.join(work, "client.cnf")
            _tools.write_private(cnf, _tools.option_file_text({k: self.p.get(k) for k in LOGIN_KEYS}))
            log = os.path.join(work, "replay.log")
            for item in fetched:
                span = _binlog.replay_range(item["path"], planned["domain"], int(item["skip_through"]),
                                            item.get("stop"), until["stop_time"])
                if span["count"]:
                    apply_file(item, planned["domain"], span, cnf, log)
                    applied += span["count"]
                    last, last_time = span["last"], span["last_time"]
                if _binlog.replay_done(planned, span, last):
                    break
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = round(time.monotonic() - started, 1)
        # The replay re-applies the archive lease an archiver of the old history took (its release is in
        # a binlog file archived later, or never): this cluster has no archiver yet, so that row goes.
        lease = archive_lease(self.node, self.catalogue.database)
        replayed_lease = lease.read()
        if replayed_lease:
            lease.remove(replayed_lease)
        result["cleared_lease"] = replayed_lease
        rows = self.node.query("SELECT @@GLOBAL.gtid_binlog_pos", record=False)
        position = str(rows[0][0]) if rows else ""
        result.update(changed=applied > 0, applied=applied, last=last, last_time=last_time, seconds=seconds,
                      events_per_second=round(applied / seconds, 1) if seconds > 0 else None, gtid_binlog_pos=position)
        if planned["stop"] is not None and applied and last != planned["stop"]:
            raise GaleraError(f"the replay stopped at {planned['domain']}-x-{last}, not at the target "
                              f"{planned['stop']}: the archived files do not hold what the index says.",
                              **{k: v for k, v in result.items() if k != "msg"})
        result["msg"] = (f"replayed {applied} transaction(s) of cluster domain {planned['domain']} after "
                         f"{planned['start']} up to {last} ({last_time}) in {seconds} s from {area.url()}; "
                         f"gtid_binlog_pos now {position}")
        return result

    def metrics(self, result: dict) -> dict:
        """The ``archive`` group of the node_exporter textfile; never fails the run."""
        if not self.p.get("metrics_dir"):
            return {}
        try:
            done = _metrics.write(self.p["metrics_dir"], self.cluster, self.node_name, archive=dict(
                lag_seconds=result.get("lag_seconds"), gaps=len(result.get("gaps") or []), checked_at=self.now()))
        except GaleraError as exc:
            return dict(warnings=[f"metrics not written: {exc.msg}"])
        return dict(metrics=done["path"])


def plan_replay(params: dict, cluster: str, local, areas: list) -> tuple:
    """What a restore to a point replays (``step=replay``), from the index and the file listing of
    ``params["source"]`` (``local``: the node's own copy, else a galera_backup_copies name), never
    from the catalogue tables. Returns ``(area, until, plan, result)``; raises GaleraError naming the
    GTID gap when the archive cannot bring the backup's position to the target."""
    try:
        until = _binlog.parse_until(params.get("until") or "latest")
    except ValueError as exc:
        raise GaleraError(f"galera_restore_until: {exc}. {NOTHING}") from None
    source = params.get("source") or _binlog_store.LOCAL
    area = local if source == _binlog_store.LOCAL else {a.name: a for a in areas}.get(source)
    if area is None:
        raise GaleraError(f"source {source!r} is neither 'local' nor a galera_backup_copies name. {NOTHING}")
    data = area.read_index()
    if data is None:
        raise GaleraError(f"{area.url(_binlog.INDEX)} does not exist: there is no binlog archive of {cluster} there "
                          f"to replay. {NOTHING}")
    try:
        index = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise GaleraError(f"{area.url(_binlog.INDEX)} is not readable JSON. {NOTHING}") from None
    _binlog.check_index(index, cluster, None, area.url(_binlog.INDEX))
    planned = _binlog.replay_plan(index, params.get("start"), until["stop_gtid"], until["stop_time"],
                                  present=set(area.listing()))
    stop = planned["stop"] if planned["stop"] is not None else planned["stop_time"]
    result = dict(changed=False, plan=planned, source=area.url(), until=until["text"], applied=0, seconds=0.0,
                  events_per_second=None, gtid_binlog_pos=None,
                  msg=(f"would replay {', '.join(planned['files']) or 'nothing'} from {area.url()}: the transactions "
                       f"of cluster domain {planned['domain']} after {planned['start']} up to {stop}"))
    return area, until, planned, result


def replay_plan_offline(params: dict) -> dict:
    """``step=replay`` in check mode without a server (a restore's first node is stopped then): the
    plan, from ``cluster`` (required) and the index and listing of ``source``."""
    cluster = params.get("cluster")
    if not cluster:
        raise GaleraError(f"step=replay in check mode needs cluster (the archive's name). {NOTHING}")
    local = _binlog_store.LocalArea(_paths.check_dir_text(params["dir"], "galera_backup_dir"), cluster)
    return plan_replay(params, cluster, local, _binlog_store.open_areas(params.get("copies") or [], cluster))[3]


# ---------------------------------------------------------------------------------------------
# Reports

def crossed(planned: dict) -> list:
    """The unlogged ranges (``_binlog.unlogged_ranges``) the segments of ``planned`` go across."""
    return [dict(u) for s in planned["segments"] for u in s.get("unlogged") or []]


def summary(index: dict) -> dict:
    """The index in a few fields, for results and reports."""
    segments = index.get("segments") or []
    return dict(cluster=index.get("cluster"), domain=index.get("domain"), revision=index.get("revision"),
                start=index.get("start"), last=index.get("last"), last_gtid=index.get("last_gtid"),
                last_time=index.get("last_time"), archived_through=index.get("archived_through"),
                node=index.get("node"), segments=sum(1 for s in segments if s.get("kind") == "file"),
                gaps=sum(1 for s in segments if s.get("kind") == "gap"),
                bytes=sum(int(s.get("bytes") or 0) for s in segments))


def rpo_line(index: dict, lag: float | None, added: int) -> str:
    lag_text = "unknown" if lag is None else f"{lag:.0f} s"
    return (f"binlog archive of {index.get('cluster')}: {added} new segment(s), up to {index.get('last_gtid')} "
            f"({index.get('last_time')}); every write committed before {index.get('archived_through')} is archived: "
            f"lag (RPO) {lag_text}")


def check_line(cluster: str, index: dict, checked: dict, lag: float | None, places: list) -> str:
    level = "CRITICAL" if checked["gaps"] else "OK"
    text = (f"{level}: binlog archive of {cluster} from {index.get('start')} to {index.get('last_gtid')}, "
            f"{summary(index)['segments']} segment(s), lag {'unknown' if lag is None else f'{lag:.0f} s'}")
    for gap in checked["gaps"]:
        text += f"; {gap['text']}"
    for place in places:
        if place["missing"] or place["damaged"]:
            text += f"; {place['name']}: {len(place['missing'])} missing, {len(place['damaged'])} damaged"
    return text


# ---------------------------------------------------------------------------------------------
# Fetching what a replay needs (for the restore to a point)

def fetch(area, plan: dict, dest: str, key: bytes | None = None) -> list:
    """Download the segments of ``plan`` (``_binlog.replay_plan``) from ``area`` into ``dest``,
    verify each (its sha256, and the MAC of an encrypted one before anything decrypts it), decrypt
    and decompress it to a plain binlog file whose sha256 must be the archived source's. Returns,
    per segment in replay order, ``dict(path, name, file, skip_through, stop, offset)``: ``path`` is
    a binlog file ``mariadb-binlog`` reads; apply only the cluster domain's groups after
    ``skip_through`` (``_binlog.scan(path, domain, after=skip_through)["offset"]``) up to ``stop``."""
    os.makedirs(dest, mode=0o700, exist_ok=True)
    out = []
    secrets_dir = tempfile.mkdtemp(prefix=".key-", dir=dest)
    try:
        key_file = None
        if key is not None:
            key_file = os.path.join(secrets_dir, "key")
            _crypto.write_key_file(key_file, key)
        for segment in plan["segments"]:
            name = segment["name"]
            stored = os.path.join(dest, name)
            area.fetch(name, stored)
            if _stores.sha256_file(stored) != segment.get("sha256"):
                raise GaleraError(f"{area.url(name)} does not match the archive's index (sha256): it was changed or "
                                  f"damaged. Do not replay it. {NOTHING}")
            chain = []
            record = segment.get("encryption")
            if record:
                if key_file is None:
                    raise GaleraError(f"{name} is encrypted: give the backup key. {NOTHING}")
                _crypto.verify_file(stored, name, record, key, allow_legacy=False)
                chain.append(_crypto.decrypt_argv(_tools.find("openssl") or "openssl", key_file, record))
            if segment.get("compress") == "zstd":
                chain.append([_tools.find("zstd") or "zstd", "-q", "-d", "-c"])
            plain = os.path.join(dest, f"{int(segment['first']):020d}_{_binlog.sanitize(segment.get('file') or name)}")
            _run_chain(chain, stored, plain)
            if segment.get("source_sha256") and _stores.sha256_file(plain) != segment["source_sha256"]:
                raise GaleraError(f"{name} decoded does not give the archived binlog (sha256): wrong key or damaged. "
                                  f"{NOTHING}")
            out.append(dict(path=plain, name=name, file=segment.get("file"), skip_through=segment["skip_through"],
                            stop=segment.get("stop"), offset=segment.get("offset")))
    finally:
        shutil.rmtree(secrets_dir, ignore_errors=True)
    return out


def apply_file(item: dict, domain: int, span: dict, cnf: str, log: str) -> None:
    """Apply bytes [``span.start``, ``span.stop``) of the fetched binlog ``item["path"]``, the cluster
    domain's groups only, through the SQL client: ``mariadb-binlog | filter | mariadb``, no shell."""
    binlog = [_tools.find("binlog") or "mariadb-binlog", f"--do-domain-ids={int(domain)}",
              f"--start-position={int(span['start'])}", f"--stop-position={int(span['stop'])}", item["path"]]
    client = _tools.Pipeline([[_tools.find("client") or "mariadb", f"--defaults-extra-file={cnf}", "--binary-mode",
                               "--batch"]], log, stdin=subprocess.PIPE)
    source = _tools.Pipeline([binlog], log, stdout=subprocess.PIPE)
    try:
        for raw in source.stdout:
            if _binlog.replay_keeps(raw.decode("utf-8", "surrogateescape")):
                client.stdin.write(raw)
        client.stdin.close()
    except BrokenPipeError:
        pass  # the client stopped reading: its exit status and log say why
    except BaseException:
        client.kill()
        source.kill()
        raise
    source.wait(f"reading {item['name']} with mariadb-binlog failed")
    client.wait(f"replaying {item['name']} through the SQL client failed")


def _run_chain(chain: list, source: str, target: str) -> None:
    if not chain:
        shutil.copyfile(source, target)
        return
    with open(source, "rb") as src, open(target, "xb") as out:
        procs, stdin = [], src
        for argv in chain:
            # pylint: disable-next=ansible-bad-function  # a pipeline: run_command cannot chain processes
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                    stderr=subprocess.DEVNULL, close_fds=True)
            if procs:
                procs[-1].stdout.close()
            procs.append(proc)
            stdin = proc.stdout
        shutil.copyfileobj(procs[-1].stdout, out, _CHUNK)
        codes = [p.wait() for p in procs]
    if any(codes):
        os.unlink(target)
        raise GaleraError(f"decoding {source} failed (exit {codes}): wrong key or a damaged file. {NOTHING}")

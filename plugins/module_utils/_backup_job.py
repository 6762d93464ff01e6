# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The node-side steps of one backup run, as the galera_backup role sequences them (private).

- ``preflight`` (the node is still Synced): every check that can refuse, in one call, changing
  nothing: settings and paths, the directory (never an existing one changed), accounts, tools, the
  tools' login lands on this node, the key, the incremental's parent, free space for the backup and
  for gcache while desynced. Returns the run: its id, paths and facts for the next steps.
- ``start``: with the role, first desyncs the node under the lease (its watchdog holds on to the run's
  pid file), then creates what the run needs (the directory when missing, the private run directory
  with the option file and key file, the ``.partial`` with its run record), sweeps what provably dead
  runs of this cluster left, and starts the detached runner (``_backup_runner``).
- ``wait``: reports progress until the runner is done; fails with the runner's error.
- ``abort``: stops the runner's whole process group (the rescue, before the resync).
- ``finish``: with the role, first ends the desync (drain, resync, Synced: the same process, so its start
  costs the node nothing while it is Synced), then publishes a good backup (manifest written last, atomic
  rename that never replaces anything) or discards this run's own partial and records the failure;
  always removes the run's private files.

A streamed backup (``galera_backup_stream_to``, see ``_backup_runner``) keeps only its local record
here: the partial holds meta/, tables.json, backup.log and SHA256SUMS, never the data. Pre-flight
checks the destination answers and needs room for the record only; ``finish`` sends the record's
files, verifies every file at the destination, writes the manifest there last, then publishes the
record here (its manifest says ``streamed_to``) and applies retention at the destination with that
entry's rules. An incremental's parent is then chosen among the backups AT the destination (the
chain must be restorable from there); a local backup never builds on a streamed one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils import (
    _backup_runner,
    _binlog,
    _catalog,
    _crypto,
    _manifest,
    _metrics,
    _paths,
    _plan,
    _proc,
    _restore,
    _restore_job,
    _retention,
    _stores,
    _tools,
    _wsrep,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

RUN_BASE = _paths.RUN_BASE
RUN_PREFIX = "run-"
STATE = "state.json"
CNF = "client.cnf"
KEY = "backup.key"
PID = "runner.pid"
VERIFY_BASE_NAME = ".dbtools-galera-verify"
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_.+@/-]*")
START_TIMEOUT = 30.0
NOTHING = "Nothing was changed."
LOGIN_KEYS = ("login_user", "login_password", "login_host", "login_port", "login_unix_socket", "config_file",
              "ca_cert", "client_cert", "client_key", "check_hostname", "connect_timeout")
# A streamed backup's local record (manifest, meta/, tables.json, backup.log, SHA256SUMS): the least room
# pre-flight asks for in galera_backup_dir instead of the backup's size (else twice the newest record's).
STREAM_RECORD_BYTES = 64 * 1024
STREAMED = "streamed_to"  # the manifest's record of where a streamed backup's data is


# ---------------------------------------------------------------------------------------------
# Settings

def login_of(params: dict) -> dict:
    return {k: params.get(k) for k in LOGIN_KEYS}


# ---------------------------------------------------------------------------------------------
# Paths of a run (derived, never taken from the controller as they are)

def run_base() -> str:
    """Where run directories live (``_paths.run_base``); ``RUN_BASE`` is read at each call."""
    return _paths.run_base(RUN_BASE)


def run_paths(directory: str, backup_id: str, run_id: str, base: str, verify_base: str) -> dict:
    run_dir = os.path.join(base, RUN_PREFIX + run_id)
    return dict(dir=directory, id=backup_id, run_id=run_id, partial=os.path.join(directory, backup_id + ".partial"),
                final=os.path.join(directory, backup_id), run_dir=run_dir, state_file=os.path.join(run_dir, STATE),
                pid_file=os.path.join(run_dir, PID), cnf=os.path.join(run_dir, CNF),
                failed=os.path.join(directory, backup_id + _manifest.FAILED_SUFFIX),
                verify_base=verify_base, scratch=os.path.join(verify_base, backup_id + ".partial.verify"))


def checked_run(run: dict) -> dict:
    """The run dict a later step received back from the controller, with every path re-derived."""
    if not isinstance(run, dict):
        raise GaleraError("run must be the dict that step=preflight returned")
    run_id, backup_id = run.get("run_id"), run.get("id")
    if not isinstance(run_id, str) or not _manifest.RUN_ID_PATTERN.fullmatch(run_id) or not _manifest.valid_id(backup_id) \
            or not backup_id.endswith("-" + run_id):
        raise GaleraError(f"run names id {backup_id!r} and run {run_id!r}: not a run of step=preflight")
    directory = _paths.check_dir_text(run.get("dir"), "galera_backup_dir")
    verify_base = _paths.check_dir_text(run.get("verify_base"), "galera_backup_verify_dir")
    base = run.get("run_base")
    if base not in (RUN_BASE, os.path.join(tempfile.gettempdir(), "dbtools-galera")):
        raise GaleraError(f"run names run_base {base!r}: not a run of step=preflight")
    derived = run_paths(directory, backup_id, run_id, base, verify_base)
    return dict(run, **derived)


# ---------------------------------------------------------------------------------------------
# preflight

def preflight(params: dict) -> dict:
    s = dict(params["backup"])
    info = params["node_info"] or {}
    errors = _plan.check_settings(s)
    if errors:
        raise GaleraError("The backup settings are wrong: " + "; ".join(errors) + ". " + NOTHING)
    server = info.get("server") or {}
    cluster = info.get("cluster") or {}
    node = info.get("node") or {}
    tool = _plan.resolve_method(s["method"], server.get("flavor"))
    physical = tool in _tools.PHYSICAL
    if s["verify"] == "prepare" and not physical:
        raise GaleraError(f"galera_backup_verify=prepare needs a physical backup, not {tool}. {NOTHING}")
    if s["type"] == "incremental" and not physical:
        raise GaleraError(f"galera_backup_type=incremental needs mariabackup or xtrabackup, not {tool}. {NOTHING}")
    entry = _backup_runner.stream_entry(s)
    if entry is not None:
        check_stream_settings(entry, tool, s)
    checks = []

    # The directory: its text, where it is, who owns it.
    directory = _paths.check_dir_text(s["dir"], "galera_backup_dir")
    datadir = os.path.normpath(server.get("datadir") or "/var/lib/mysql")
    gcache = info.get("gcache") or {}
    gcache_dir = gcache.get("dir") or datadir
    apart = {"the server's data directory": datadir, "the gcache directory": gcache_dir}
    _paths.check_apart(directory, "galera_backup_dir", apart)
    uid = _paths.account(s["file_owner"], "galera_backup_file_owner", "user")
    gid = _paths.account(s["file_group"], "galera_backup_file_group", "group")
    exists = _paths.check_existing_dir(directory, "galera_backup_dir", uid)
    checks.append(f"{directory} {'exists, owned by ' + s['file_owner'] if exists else 'will be created 0700'}")

    # The scratch directory of prepare/restore verification: reachable by the server's user.
    verify_base = _paths.check_dir_text(s.get("verify_dir") or default_verify_dir(directory), "galera_backup_verify_dir")
    _paths.check_apart(verify_base, "galera_backup_verify_dir", dict(apart, **{"galera_backup_dir": directory}))
    server_user = server_account(datadir)
    if s["verify"] == "restore" and not physical and not PLAIN_PATH.fullmatch(verify_base):
        raise GaleraError(f"galera_backup_verify_dir={verify_base} holds spaces or shell characters, which "
                          f"mariadb-install-db (a shell script) cannot handle when the restore test creates an empty "
                          f"server for a {tool} dump. Set galera_backup_verify_dir to a plain path. {NOTHING}")
    if s["verify"] in ("prepare", "restore"):
        _paths.check_existing_dir(verify_base, "galera_backup_verify_dir", 0)
        if s["verify"] == "restore":
            blocked = _restore.reachable_by(os.path.dirname(verify_base), server_user["uid"], server_user["gid"])
            if blocked:
                raise GaleraError(f"the restore test runs its throwaway server as {server_user['name']}, who cannot "
                                  f"enter {blocked} on the way to {verify_base}. Set galera_backup_verify_dir to a "
                                  f"directory {server_user['name']} can reach (its parent must be searchable), or use "
                                  f"galera_backup_verify=prepare. {NOTHING}")

    # The tools.
    needed = _tools.needed(tool, s["compress"], s["verify"], bool(s["encrypt"]))
    lacking = _tools.missing(needed)
    if lacking:
        raise GaleraError(f"this node lacks {', '.join(lacking)} needed for galera_backup_method={tool} "
                          f"(compress {s['compress']}, verify {s['verify']}). Install {_tools.install_hint(lacking)}, "
                          f"or choose another method. {NOTHING}")

    # The key (read now: a missing or empty key refuses before anything changes).
    key = load_key(s)

    # Where the tools' own login lands (a load balancer or a wrong socket would back up another node).
    login = login_of(params)
    whoami = tools_login(login)
    if whoami["node_name"] != node.get("node_name"):
        raise GaleraError(f"the backup tools' login reaches node {whoami['node_name']!r}, not "
                          f"{node.get('node_name')!r} whose files would be copied (a load balancer, a wrong socket or "
                          f"host?). Point galera_backup_login_unix_socket / galera_backup_login_host at this node's "
                          f"server. {NOTHING}")
    # ... and it must be the server whose data directory is on THIS machine: a login pointing at another
    # node would be consistent with itself (galera_info reached that node too) while the tools copy the
    # files here. The node's group-communication uuid is in its own gvwstate.dat.
    here = _wsrep.local_gcomm_uuid(whoami.get("datadir") or datadir)
    if here and whoami.get("gcomm_uuid") and here != whoami["gcomm_uuid"]:
        raise GaleraError(f"the login settings of this host reach node {whoami['node_name']!r}, whose Galera uuid "
                          f"({whoami['gcomm_uuid']}) is not the one of the node whose data directory is on this host "
                          f"({here}, in {os.path.join(whoami.get('datadir') or datadir, 'gvwstate.dat')}): the "
                          f"backup would desync one node and copy another's files. Point this host's "
                          f"galera_backup_login_host / galera_login_host (or the socket) at its own server. {NOTHING}")
    checks.append(f"the tools' login lands on {whoami['node_name']}, the server of this host")

    # A streamed backup's destination answers (its backups: the parents an incremental may build on).
    store, at_store = None, []
    if entry is not None:
        store, at_store = open_stream_checked(s, entry)
        checks.append(f"streams to {entry['name']} ({store.url('')}), which answers and holds {len(at_store)} "
                      f"backup(s)")
        others = [str(e.get("name")) for e in s.get("copies") or [] if e.get("name") != entry["name"]]
        if others:
            checks.append(f"galera_backup_copies' other entries ({', '.join(others)}) are not copied to: a streamed "
                          f"backup has no local data to copy")

    # An incremental's parent: this node's newest good backup of the cluster with the same tool and key.
    parent, chain, parent_reason, backup_type, incremental_lsn = None, [], "", "full", None
    if s["type"] == "incremental":
        if store is not None:
            candidates = at_store  # the chain must be restorable from the destination
        else:
            catalog = _catalog.read_dir(directory) if exists else dict(backups=[])
            candidates = [b for b in catalog["backups"] if not b.get(STREAMED)]  # no data here to build on
        found, parent_reason = _catalog.choose_parent(
            candidates, cluster.get("name"), node.get("node_name"), tool, int(s["max_incrementals"]) + 1,
            key_matches=lambda record: _crypto.key_matches(record or None, key),
            cluster_uuid=cluster.get("state_uuid"))
        if found is not None:
            parent, chain, backup_type = found["id"], list(found["chain"]), "incremental"
            incremental_lsn = found["position"]["to_lsn"]

    # Free space for the backup (and the verification copy), and for gcache while desynced.
    data_bytes = int(server.get("data_bytes") or 0)
    verify_copy = s["verify"] in ("prepare", "restore")
    need = int(data_bytes * float(s["free_space_factor"])) if store is None else record_room(directory, exists)
    free = _paths.free_bytes(directory)
    if verify_copy and _paths.same_filesystem(directory, verify_base):
        need += int(data_bytes * 1.1)
    elif verify_copy:
        verify_free = _paths.free_bytes(verify_base)
        if verify_free < data_bytes * 1.1:
            raise GaleraError(f"{verify_base} has {_catalog.human_bytes(verify_free)} free, but the verification copy "
                              f"needs about {_catalog.human_bytes(data_bytes * 1.1)}. Free space or set "
                              f"galera_backup_verify_dir elsewhere. {NOTHING}")
    if free < need and store is not None:
        raise GaleraError(f"{directory} has {_catalog.human_bytes(free)} free, but even a streamed backup keeps its "
                          f"local record there (manifest, metadata, the table list and the tool's log: about "
                          f"{_catalog.human_bytes(need)}). Free space or choose another galera_backup_dir. {NOTHING}")
    if free < need:
        raise GaleraError(f"{directory} has {_catalog.human_bytes(free)} free, but the backup needs about "
                          f"{_catalog.human_bytes(need)} ({_catalog.human_bytes(data_bytes)} of table data and indexes "
                          f"x {s['free_space_factor']}{' + a verification copy' if verify_copy else ''}). Free space, "
                          f"choose another galera_backup_dir, or lower galera_backup_retention. {NOTHING}")
    checks.append(f"{_catalog.human_bytes(free)} free for about {_catalog.human_bytes(need)}")
    reserve = max(int(s.get("min_free_bytes") or 0),
                  int(float(s.get("min_free_fraction") or 0) * int(gcache.get("dir_total_bytes") or 0)))
    gcache_check = gcache_estimate(gcache, gcache_dir, int(s["max_duration"]), reserve)
    if gcache_check["refuse"]:
        raise GaleraError(gcache_check["text"] + f" {NOTHING}")
    checks.append(gcache_check["text"])

    run_id = _manifest.new_run_id()
    started = time.time()
    backup_id = _manifest.backup_id(cluster.get("name"), params["node"], datetime.fromtimestamp(started, timezone.utc),
                                    run_id)
    base = run_base()
    run = dict(run_paths(directory, backup_id, run_id, base, verify_base),
               run_base=base, tool=tool, physical=physical, type=backup_type, parent=parent, chain=chain,
               parent_reason=parent_reason, incremental_lsn=incremental_lsn,
               cluster=dict(name=cluster.get("name"), state_uuid=cluster.get("state_uuid"), size=cluster.get("size")),
               node=dict(name=params["node"], wsrep_node_name=node.get("node_name"), datadir=datadir),
               server=dict(flavor=server.get("flavor"), version=server.get("version"),
                           provider_version=server.get("provider_version")),
               server_user=server_user, owner=params.get("owner"), host=socket.gethostname(),
               binlog=bool(whoami.get("log_bin")), pitr=pitr_check(info, bool(whoami.get("log_bin")), checks),
               started_at=_backup_runner.utc_text(started),
               started_epoch=started, created_dir=not exists, encrypted=key is not None,
               lease=True, checks=checks, data_bytes=data_bytes, gcache=gcache_check)
    if store is not None:
        run["stream"] = dict(name=entry["name"], type=entry["type"], url=store.url(backup_id))
    return run


def record_room(directory: str, exists: bool) -> int:
    """The room a streamed backup's local record needs here: twice what the newest record takes on disk
    (the tool's log and the table list grow with the number of tables), at least STREAM_RECORD_BYTES."""
    catalogue = _catalog.read_dir(directory) if exists else dict(backups=[])
    records = [b for b in catalogue["backups"] if b.get(STREAMED) and b.get("path")]
    if not records:
        return STREAM_RECORD_BYTES
    newest = max(records, key=_catalog.backup_time)["path"]
    used = 0
    for top, dirs, files in os.walk(newest):
        for name in dirs + files:
            try:
                used += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                pass
    return max(STREAM_RECORD_BYTES, 2 * used)


def check_stream_settings(entry: dict, tool: str, s: dict) -> None:
    """Refuses what a streamed backup cannot be (pure)."""
    name = entry["name"]
    if tool not in _tools.PHYSICAL + ("mysqldump",) or s["compress"] != "zstd":
        raise GaleraError(f"galera_backup_stream_to={name} sends one compressed stream to the store: it needs "
                          f"galera_backup_compress=zstd and mariabackup, xtrabackup or mysqldump, not {tool} with "
                          f"compress {s['compress']}. {NOTHING}")
    if s["verify"] in ("prepare", "restore"):
        raise GaleraError(f"galera_backup_verify={s['verify']} needs the backup on this node, and a streamed backup "
                          f"is not here. Use galera_backup_verify=checksum with galera_backup_stream_to (the stream "
                          f"is tested as it passes and verified at {name}), and drill restores from {name} "
                          f"(dbtools.galera.restore_drill). {NOTHING}")


def open_stream_checked(s: dict, entry: dict) -> tuple:
    """(store, its complete backups) of the destination of a streamed backup; GaleraError when it does
    not answer (wrong address, credentials, host key), nothing changed."""
    try:
        _entry, store = _backup_runner.open_stream(s)
        backups, _problems = _restore_job.catalogue(store)
    except GaleraError as exc:
        raise GaleraError(f"galera_backup_stream_to={entry['name']}: "
                          f"{exc.msg.replace(_stores.UNTOUCHED, NOTHING)}", **exc.details) from None
    return store, backups


def default_verify_dir(directory: str) -> str:
    """``.dbtools-galera-verify`` beside the backup directory (same filesystem, usually), unless that path
    is not plain (the restore test's helper scripts do not quote paths): then /var/tmp's."""
    beside = os.path.join(os.path.dirname(directory), VERIFY_BASE_NAME)
    return beside if PLAIN_PATH.fullmatch(beside) else os.path.join("/var/tmp", VERIFY_BASE_NAME.lstrip("."))


def server_account(datadir: str) -> dict:
    """The server's own user: the owner of its data directory (mysql on every packaged server)."""
    try:
        info = os.stat(datadir)
        entry = pwd.getpwuid(info.st_uid)
        return dict(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
    except (OSError, KeyError):
        try:
            entry = pwd.getpwnam("mysql")
            return dict(name="mysql", uid=entry.pw_uid, gid=entry.pw_gid)
        except KeyError:
            raise GaleraError(f"cannot tell the server's user: {datadir} is not readable here and there is no "
                              f"'mysql' user. {NOTHING}") from None


def load_key(s: dict) -> bytes | None:
    if not s.get("encrypt"):
        return None
    if s.get("encrypt_key"):
        return _crypto.key_from_text(s["encrypt_key"])
    return _crypto.read_key(s["encrypt_key_file"])


def tools_login(login: dict) -> dict:
    """Run the SQL client through the tools' own option file: which node, datadir and binary log it reaches."""
    scratch = tempfile.mkdtemp(prefix="dbtools-galera-login.")
    try:
        cnf = os.path.join(scratch, CNF)
        _tools.write_private(cnf, _tools.option_file_text(login))
        argv = _tools.client_argv(cnf, "SELECT @@wsrep_node_name, @@datadir, @@log_bin, (SELECT VARIABLE_VALUE FROM "
                                       "information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_GCOMM_UUID')")
        try:
            # pylint: disable-next=ansible-bad-function  # pre-flight helper without the AnsibleModule (it gets params only)
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise GaleraError(f"cannot run the SQL client {argv[0]}: {exc}. {NOTHING}") from exc
        if done.returncode != 0:
            raise GaleraError(f"the backup tools cannot log in with the role's login settings: "
                              f"{done.stderr.strip()[-400:] or done.returncode}. Check galera_backup_login_* (the "
                              f"tools read them from an option file). {NOTHING}")
        fields = (done.stdout.strip().splitlines() or [""])[-1].split("\t")
        return dict(node_name=fields[0] if fields else None, datadir=fields[1] if len(fields) > 1 else None,
                    log_bin=len(fields) > 2 and fields[2] == "1", gcomm_uuid=fields[3] if len(fields) > 3 else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pitr_check(info: dict, log_bin: bool, checks: list) -> dict:
    """Whether this backup can start a point-in-time recovery (galera_info's ``binlog`` verdict of the
    node), said in ``checks``; never refuses (a backup without the binary log is still a backup).
    Returns what ``binlog_position`` needs: ``domain`` (the cluster's GTID domain) and ``dir``."""
    facts = info.get("binlog") if isinstance(info.get("binlog"), dict) else {}
    base = facts.get("basename")
    out = dict(ready=bool(facts.get("ready")) and log_bin, domain=facts.get("cluster_domain"),
               dir=os.path.dirname(base) if isinstance(base, str) and os.path.isabs(base) else None,
               missing=list(facts.get("missing") or ([] if log_bin else ["the binary log is off (log_bin)"])))
    if out["ready"]:
        checks.append(f"binary log on with wsrep GTIDs (cluster domain {out['domain']}): the manifest records the GTID "
                      f"position a point-in-time recovery replays from")
    else:
        missing = out["missing"] or ["binlog settings unknown"]
        checks.append("this backup cannot start a point-in-time recovery: " + "; ".join(missing))
    return out


def binlog_position(run: dict, binlog) -> dict | None:
    """The manifest's ``position.binlog`` with its GTID: the tool's, else computed from the binlog
    file and offset the tool recorded (mariabackup writes none on a node whose server_id is not the
    GTIDs'; mysqldump prints its GTID at the end of the dump), with ``gtid_source`` saying which, and
    ``cluster_domain``/``cluster_seqno``: where a replay of the cluster's writes starts after."""
    if not isinstance(binlog, dict):
        return binlog
    out = dict(binlog)
    pitr = run.get("pitr") if isinstance(run.get("pitr"), dict) else {}
    if out.get("gtid"):
        out["gtid_source"] = f"{run.get('tool')}"
    elif out.get("file") and out.get("position") and pitr.get("dir"):
        path = os.path.join(pitr["dir"], os.path.basename(str(out["file"])))
        try:
            out["gtid"] = _binlog.position_gtid(path, int(out["position"]))
            out["gtid_source"] = f"computed from {os.path.basename(path)} at {int(out['position'])}"
        except (GaleraError, OSError, ValueError) as exc:
            out["gtid_source"] = f"unknown: {getattr(exc, 'msg', None) or exc}"
    if pitr.get("domain") is not None:
        out["cluster_domain"] = pitr["domain"]
        out["cluster_seqno"] = _binlog.seq_of(out.get("gtid"), pitr["domain"])
    return out


def gcache_estimate(gcache: dict, gcache_dir: str, max_duration: int, min_free: int) -> dict:
    """Whether the write-sets a desynced node keeps can fit where gcache spills, for max_duration.

    A desynced node keeps every write-set it has not applied; past ``gcache.size`` they go to
    ``gcache.page.*`` files in ``gcache.dir``. The worst case is an applier that applies nothing for the
    whole ``max_duration``: rate x duration must fit in that filesystem's free space (less what the
    watchdog keeps free). ``gcache``: galera_info's gcache facts.
    """
    rate = float(gcache.get("write_bytes_per_second") or 0)
    size = int(gcache.get("size_bytes") or 0)
    try:
        free = int(gcache["dir_free_bytes"]) if gcache.get("dir_free_bytes") is not None else _paths.free_bytes(gcache_dir)
    except OSError:
        free = None
    worst = rate * max_duration
    spill = max(0.0, worst - size)
    room = None if free is None else max(0, free - min_free)
    if free is not None and free < min_free:
        # The watchdog's free-space guard would end the desync at its first look, whatever the write rate.
        text = (f"{gcache_dir} (gcache.dir, where a desynced node's gcache pages go) is on a filesystem with "
                f"{_catalog.human_bytes(free)} free, under the watchdog's reserve of {_catalog.human_bytes(min_free)} "
                f"(the larger of galera_backup_min_free_bytes and galera_backup_min_free_fraction of the filesystem): "
                f"the watchdog would stop the backup at once. Free space there, or lower the reserve")
        return dict(refuse=True, text=text, rate=rate, free=free, worst=int(worst), seconds=0)
    if rate <= 0:
        text = (f"no cluster writes were measured: a desynced node's queue stays short (gcache {gcache_dir}, "
                f"{_catalog.human_bytes(free) if free is not None else 'free space unknown'} free)")
        return dict(refuse=False, text=text, rate=rate, free=free, worst=0, seconds=None)
    seconds = None if room is None else int((room + size) / rate)
    refuse = room is not None and spill > room
    if refuse:
        text = (f"the cluster writes {_catalog.human_bytes(rate)}/s; desynced for up to galera_backup_max_duration="
                f"{max_duration} s, this node may have to keep {_catalog.human_bytes(worst)} of write-sets, past gcache "
                f"({_catalog.human_bytes(size)}) in {gcache_dir}, whose filesystem has "
                f"{_catalog.human_bytes(free)} free ({_catalog.human_bytes(room)} above the watchdog's reserve): room "
                f"for about {seconds} s. Lower galera_backup_max_duration to what the backup needs (at most "
                f"{seconds}), or free space there (gcache.dir)")
    else:
        text = (f"writes {_catalog.human_bytes(rate)}/s: gcache and {gcache_dir} can hold about "
                f"{seconds if seconds is not None else '?'} s of a stalled applier "
                f"(galera_backup_max_duration={max_duration} s)")
    return dict(refuse=refuse, text=text, rate=rate, free=free, worst=int(worst), seconds=seconds)


# ---------------------------------------------------------------------------------------------
# start

def start(params: dict, desync=None) -> dict:
    """Create what the run needs and start its runner. ``desync``, when given, is a callable that desyncs
    the node under the lease with a watchdog holding on to the run's pid file (``galera_desync``'s rules)
    and returns its result: the role's desync and start are then one call, after the checks of this step
    and before anything is created. When a later part fails, the error carries the desync's result
    (``desync``), so the caller knows the node is desynced and resyncs it."""
    run = checked_run(params["run"])
    s = dict(params["backup"])
    if (run.get("stream") or {}).get("name", "") != (s.get("stream_to") or ""):
        raise GaleraError(f"the run was prepared with galera_backup_stream_to={(run.get('stream') or {}).get('name', '')!r}, "
                          f"this step got {s.get('stream_to') or ''!r}: pass the same settings to every step. {NOTHING}")
    uid = _paths.account(s["file_owner"], "galera_backup_file_owner", "user")
    gid = _paths.account(s["file_group"], "galera_backup_file_group", "group")
    # Checked again: the directory may have changed since preflight; still nothing is created yet.
    exists = _paths.check_existing_dir(run["dir"], "galera_backup_dir", uid)
    key = load_key(s)
    if desync is None:
        return spawn(run, s, params, exists, uid, gid, key, params.get("watchdog_state"))
    desynced = desync(run["pid_file"])
    try:
        result = spawn(run, s, params, exists, uid, gid, key,
                       (desynced.get("watchdog") or {}).get("state_file") or params.get("watchdog_state"))
    except GaleraError as exc:
        exc.details.setdefault("desync", desynced)
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise GaleraError(f"cannot start the backup run on this node: {exc}. The node is desynced: the role resyncs "
                          "it; nothing was backed up.", desync=desynced) from exc
    return dict(result, desync=desynced)


def spawn(run: dict, s: dict, params: dict, exists: bool, uid: int, gid: int, key, watchdog_state) -> dict:
    """What ``start`` creates, and the detached runner; everything created is removed when it fails."""
    created = False if exists else _paths.make_dir(run["dir"], uid, gid, 0o700)
    swept = sweep(run, params)
    os.makedirs(run["run_base"], mode=0o700, exist_ok=True)
    os.mkdir(run["run_dir"], 0o700)
    try:
        _tools.write_private(run["cnf"], _tools.option_file_text(login_of(params)))
        key_file = None
        if key is not None:
            if s.get("encrypt_key"):
                key_file = os.path.join(run["run_dir"], KEY)
                _crypto.write_key_file(key_file, key)
                run["key_file_private"] = key_file
            else:
                key_file = s["encrypt_key_file"]
        if s["verify"] in ("prepare", "restore"):
            if not os.path.isdir(run["verify_base"]):
                _paths.make_dir(run["verify_base"], 0, 0, 0o711)
        os.mkdir(run["partial"], 0o700)
        runner = _backup_runner.Runner(run, s, login_of(params), key, key_file, run["cnf"], watchdog_state)

        def write_pid():
            with open(os.open(run["pid_file"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                      encoding="ascii") as handle:
                handle.write(str(os.getpid()))

        try:
            pid = _proc.spawn_detached(runner.main, setup=write_pid)
        except OSError as exc:
            raise GaleraError(f"cannot start the backup run on this node: {exc}. The node is resynced by the role; "
                              "nothing was backed up.") from exc
    except BaseException:
        shutil.rmtree(run["run_dir"], ignore_errors=True)
        if os.path.isdir(run["partial"]):
            shutil.rmtree(run["partial"], ignore_errors=True)
        raise
    deadline = time.monotonic() + START_TIMEOUT
    state = None
    while time.monotonic() < deadline:
        state = read_state(run)
        if state and state.get("process"):
            break
        time.sleep(0.05)
    if not state or not state.get("process"):
        raise GaleraError(f"the backup runner (pid {pid}) did not report within {int(START_TIMEOUT)} s")
    return dict(changed=True, run=public_run(run), pid=pid, created_dir=created, swept=swept,
                msg=f"started {run['tool']} for {run['id']} (runner pid {pid})")


def public_run(run: dict) -> dict:
    """The run without what the controller need not carry (nothing secret is ever in it)."""
    return {k: v for k, v in run.items() if k not in ("key_file_private",)}


def sweep(run: dict, params: dict) -> dict:
    """Remove what provably dead runs of this cluster left: partials (by their run records) and run
    directories (by their state files); see _retention for the rule."""
    margin = int(params["backup"].get("partial_margin") or params["backup"]["lease_ttl"])
    cluster, uuid = run["cluster"]["name"], run["cluster"]["state_uuid"]
    removed = _retention.sweep_local_partials(run["dir"], cluster, uuid, margin)
    if os.path.isdir(run["verify_base"]):
        # Verification copies (plain text when the backup is encrypted) of runs that died.
        removed += _retention.sweep_local_partials(run["verify_base"], cluster, uuid, margin)
    dirs = []
    base = run["run_base"]
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for name in names:
        if not name.startswith(RUN_PREFIX) or name == RUN_PREFIX + run["run_id"]:
            continue
        path = os.path.join(base, name)
        try:
            state = _manifest.read_json(os.path.join(path, STATE))
        except (OSError, ValueError):
            continue  # not provably a run of ours: left alone
        if not isinstance(state, dict) or not _manifest.same_cluster(state, run["cluster"]["name"],
                                                                     run["cluster"]["state_uuid"]):
            continue
        alive = _proc.same_process_alive(state.get("process"))
        age = time.time() - os.lstat(path).st_mtime
        if alive is False and age > margin:
            shutil.rmtree(path, ignore_errors=True)
            dirs.append(path)
    return dict(partials=removed, run_dirs=dirs)


# ---------------------------------------------------------------------------------------------
# wait, abort

def read_state(run: dict) -> dict | None:
    try:
        state = _manifest.read_json(run["state_file"])
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("run_id") == run["run_id"] else None


def watchdog_view(path: str | None) -> dict:
    try:
        state = _manifest.read_json(path) if path else {}
    except (OSError, ValueError):
        state = {}
    lease = state.get("lease") or {}
    return dict(recv_queue=state.get("recv_queue"), lease_expires=lease.get("expires_at"),
                lease_seconds_left=lease.get("seconds_left"), guard=state.get("guard"))


def wait(params: dict) -> dict:
    run = checked_run(params["run"])
    deadline = time.monotonic() + float(params.get("timeout") or 10)
    state = None
    while True:
        state = read_state(run)
        if state is not None and state.get("done"):
            break
        if state is not None and state.get("process") and _proc.same_process_alive(state["process"]) is False:
            raise GaleraError(f"the backup runner (pid {state['process'].get('pid')}) ended without a result "
                              f"(killed?) during '{state.get('step')}'")
        if state is None and not os.path.isdir(run["run_dir"]):
            raise GaleraError(f"run {run['run_id']} has no run directory {run['run_dir']}: it was never started on "
                              f"this node, or its files were removed")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    progress = dict(step=(state or {}).get("step", "starting"), bytes=(state or {}).get("bytes", 0),
                    elapsed=(state or {}).get("elapsed"), **watchdog_view(params.get("watchdog_state")))
    if state and state.get("done") and state.get("result") != "ok":
        raise GaleraError(state.get("error") or "the backup failed", progress=progress, step=state.get("step"))
    done = bool(state and state.get("done"))
    return dict(changed=False, done=done, running=not done, progress=progress,
                out=state.get("out") if done else None)


def abort(params: dict) -> dict:
    """Stop the runner and everything it started (its process group), if it still runs."""
    run = checked_run(params["run"])
    state = read_state(run)
    stopped = False
    if state and state.get("process") and _proc.same_process_alive(state["process"]):
        stopped = _proc.kill_group(int(state["process"]["pid"]))
        if not stopped:
            raise GaleraError(f"the backup runner's process group {state['process']['pid']} did not stop")
    return dict(changed=stopped, stopped=stopped)


# ---------------------------------------------------------------------------------------------
# finish

def _rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails instead of replacing ``dst`` (renameat2 RENAME_NOREPLACE where the kernel has it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, noreplace = -100, 1
        if renameat2(at_fdcwd, src.encode(), at_fdcwd, dst.encode(), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (22, 38):  # EINVAL / ENOSYS: the filesystem or kernel lacks it
            raise OSError(err, os.strerror(err), dst)
    if os.path.lexists(dst):
        raise FileExistsError(17, "File exists", dst)
    os.rename(src, dst)


def _ours(run: dict) -> bool:
    try:
        record = _manifest.read_json(os.path.join(run["partial"], _manifest.RUN_RECORD))
    except (OSError, ValueError):
        return False
    return _manifest.valid_run_record(record) and record["run_id"] == run["run_id"]


def _give(path: str, uid: int, gid: int) -> None:
    """Files 0600 and directories 0700, owned by the configured owner (the backup's own tree only)."""
    for top, dirs, files in os.walk(path):
        for name in dirs:
            full = os.path.join(top, name)
            os.lchown(full, uid, gid)
            os.chmod(full, 0o700)
        for name in files:
            full = os.path.join(top, name)
            if not os.path.islink(full):
                os.lchown(full, uid, gid)
                os.chmod(full, 0o600)
    os.lchown(path, uid, gid)
    os.chmod(path, 0o700)


def finish(params: dict, resync=None) -> dict:
    """Publish a good backup or discard the run; always remove the run's private files.

    ``resync``, when given, is a callable that drains, resyncs and waits for Synced (``galera_desync``'s
    rules) and returns its result: this step then ends the desync itself, after a still-running runner is
    stopped and before anything is published, so the work after Synced is a few file operations in a
    process that started while the node was still desynced (a new module's start on a Synced node under
    load makes its applier lag). A resync that fails does not stop the publish or discard; this raises
    its error afterwards, with what happened to the backup.
    """
    run = checked_run(params["run"])
    s = dict(params["backup"])
    failure = params.get("failure") or ""
    state = read_state(run) or {}
    result = dict(changed=False, published=None, failure_record=None, manifest=None, kept_partial=None)
    resync_error = None
    try:
        if state.get("process") and _proc.same_process_alive(state["process"]):
            if not failure:
                raise GaleraError(f"the backup runner is still running ({state.get('step')}): wait for it first")
            _proc.kill_group(int(state["process"]["pid"]))
            state = read_state(run) or state
        if resync is not None:
            try:
                result["resync"] = resync()
            except GaleraError as exc:
                resync_error = exc
                result["resync"] = dict(exc.details, failed=True, msg=exc.msg)
            params = dict(params, resync=result["resync"])
        good = not failure and state.get("done") and state.get("result") == "ok"
        if good:
            result.update(publish(run, s, state, params))
            # Retention only after a good backup, so the newest restorable one (this) is always kept.
            policy = _retention.policy_from_options(int(s["retention"]), s.get("keep_tiers") or None,
                                                    s.get("keep_max_age") or None)
            result["retention"] = _retention.prune(run["dir"], run["cluster"]["name"], policy, False,
                                                   state_uuid=run["cluster"]["state_uuid"],
                                                   margin=int(s.get("partial_margin") or s["lease_ttl"]))
            if run.get("stream"):
                result.update(stream_retention(run, s))
        else:
            reason = failure or state.get("error") or "the run did not finish"
            result.update(discard(run, s, state, params, reason))
    except GaleraError as exc:
        if "resync" in result:
            exc.details.setdefault("resync", result["resync"])
        raise
    finally:
        shutil.rmtree(run["run_dir"], ignore_errors=True)
        shutil.rmtree(run["scratch"], ignore_errors=True)
    if s.get("metrics_dir"):
        metrics = write_metrics(run, s, params, result)
        result.setdefault("warnings", []).extend(metrics.pop("warnings", []))
        result.update(metrics)
    if resync_error is not None:
        done = (f"the backup was published as {result['published']}" if result.get("published")
                else "this run's partial backup was discarded" if result.get("discarded") else "nothing was published")
        raise GaleraError(f"{resync_error.msg} ({done}.)", **{k: v for k, v in result.items() if k != "warnings"})
    return result


def write_metrics(run: dict, s: dict, params: dict, result: dict) -> dict:
    """The node_exporter textfile of this cluster and node, after every run; never fails the run."""
    try:
        done = _metrics.write(s["metrics_dir"], run["cluster"]["name"], run["node"]["name"],
                              result=result.get("manifest") or result.get("failure"),
                              catalogue=_catalog.read_dir(run["dir"]), desync=params.get("desync") or {},
                              resync=params.get("resync") or {})
    except GaleraError as exc:
        return dict(warnings=[f"metrics not written: {exc.msg}"])
    out = dict(metrics=done["path"])
    if done.get("problems"):
        out["warnings"] = [f"metrics: {text}" for text in done["problems"]]
    return out


def publish(run: dict, s: dict, state: dict, params: dict) -> dict:
    if not _ours(run):
        raise GaleraError(f"{run['partial']} is not this run's (its run record is missing or names another run): "
                          "nothing was published or deleted")
    uid = _paths.account(s["file_owner"], "galera_backup_file_owner", "user")
    gid = _paths.account(s["file_group"], "galera_backup_file_group", "group")
    state = dict(state, out=dict(state["out"], binlog=binlog_position(run, state["out"].get("binlog"))))
    manifest = _manifest.build(run, state["out"], params.get("desync") or {}, params.get("resync") or {},
                               finished_at=_backup_runner.utc_text(), settings=s)
    if run.get("stream"):
        # At the destination first (verified, manifest last): the record here only follows a backup there.
        manifest[STREAMED] = dict(name=run["stream"]["name"], type=run["stream"]["type"], url=run["stream"]["url"],
                                  files=[state["out"]["stream"]["file"]])
        _manifest.write_json_atomic(os.path.join(run["partial"], _manifest.MANIFEST), manifest)
        publish_stream(run, s, state, params)
    os.unlink(os.path.join(run["partial"], _manifest.RUN_RECORD))
    _manifest.write_json_atomic(os.path.join(run["partial"], _manifest.MANIFEST), manifest)
    _give(run["partial"], uid, gid)
    try:
        _rename_noreplace(run["partial"], run["final"])
    except OSError as exc:
        raise GaleraError(f"cannot publish {run['partial']} as {run['final']}: {exc.strerror or exc}. The verified "
                          f"backup stays in {run['partial']} (with its manifest); move it by hand.") from exc
    return dict(changed=True, published=run["final"], manifest=manifest)


def discard(run: dict, s: dict, state: dict, params: dict, reason: str) -> dict:
    out = dict(changed=False, failure_record=None, discarded=None)
    started = os.path.isdir(run["partial"])
    if started and _ours(run):
        shutil.rmtree(run["partial"])
        out.update(changed=True, discarded=run["partial"])
    elif started:
        out["kept_partial"] = run["partial"]
    if started or (params.get("desync") or {}).get("changed"):
        resync = params.get("resync") or {}
        record = _manifest.failure_record(run, reason, params.get("failed_step") or state.get("step"),
                                          resynced=resync.get("desynced") is False)
        out["failure"] = record
        try:
            _manifest.write_json_atomic(run["failed"], record)
            out.update(changed=True, failure_record=run["failed"])
        except OSError as exc:
            out["failure_record_error"] = f"{run['failed']}: {exc.strerror or exc}"
    if run.get("stream"):
        out.update(discard_stream(run, s))
    return out


# ---------------------------------------------------------------------------------------------
# A streamed backup at its destination

def publish_stream(run: dict, s: dict, state: dict, params: dict) -> None:
    """Send the local record's files to the destination, verify every file there, write the manifest
    there last. On failure the run is discarded here and there, recorded as failed, and this raises."""
    where = f"{run['stream']['name']} ({run['stream']['url']})"
    try:
        entry, store = _backup_runner.open_stream(s)
        if entry is None or entry["name"] != run["stream"]["name"]:
            raise GaleraError(f"this step got galera_backup_stream_to={s.get('stream_to') or ''!r}, not the run's "
                              f"{run['stream']['name']!r}")
        local = _stores.LocalBackup(run["partial"], streamed=[state["out"]["stream"]["file"]], backup_id=run["id"])
        store.publish_stream(local)
    except GaleraError as exc:
        done = discard(run, s, state, params, f"verifying and publishing the streamed backup at {where}: {exc.msg}")
        raise GaleraError(f"the streamed backup {run['id']} was not published at {where}: {exc.msg} It was discarded "
                          f"(here and, where it could be, there) and the failure recorded"
                          f"{' in ' + done['failure_record'] if done.get('failure_record') else ''}.",
                          discarded=done.get("discarded"), failure_record=done.get("failure_record"),
                          stream_discarded=done.get("stream_discarded")) from None


def discard_stream(run: dict, s: dict) -> dict:
    """Remove this run's staging place at the destination (only when its run record is this run's)."""
    where = f"{run['stream']['name']} ({run['stream']['url']})"
    try:
        _entry, store = _backup_runner.open_stream(s)
        removed = store is not None and store.abort_stream(run["id"], run["run_id"])
    except GaleraError as exc:
        return dict(stream_discarded=False,
                    warnings=[f"the unfinished streamed backup at {where} was not removed ({exc.msg}); it does not "
                              "count as a backup, and retention there removes it once its run record proves it "
                              "abandoned"])
    return dict(stream_discarded=bool(removed))


def stream_retention(run: dict, s: dict) -> dict:
    """Retention at the destination after a good streamed backup, with that galera_backup_copies entry's
    rules (keep, keep_tiers, max_age; the role's by default), as galera_backup_copy applies it to copies.
    A failure there is a warning: the backup is good and published."""
    where = f"{run['stream']['name']} ({run['stream']['url']})"
    try:
        entry, store = _backup_runner.open_stream(s)
        policy = _retention.policy_from_options(int(entry.get("keep") or s["retention"]),
                                                entry.get("keep_tiers") or s.get("keep_tiers") or None,
                                                entry.get("max_age") or s.get("keep_max_age") or None)
        planned = _retention.run(store, run["cluster"]["name"], policy, False,
                                 state_uuid=run["cluster"]["state_uuid"],
                                 margin=int(s["max_duration"]) + int(s["lease_ttl"]), protect=[run["id"]])
    except GaleraError as exc:
        return dict(stream_retention=None, warnings=[f"retention at {where} failed: {exc.msg} The backup is good and "
                                                     "published there."])
    out = dict(stream_retention=dict(removed=planned["remove"], removed_partial=planned["remove_partial"],
                                     kept=planned["kept"], in_flight=planned["in_flight"], refused=planned["refused"],
                                     problems=planned["problems"]))
    warnings = [f"retention at {where}: {text}" for text in planned["problems"]]
    try:
        out["stream_retention"]["removed_records"] = drop_records(run["dir"], planned["remove"], entry["name"])
    except GaleraError as exc:
        warnings.append(f"the local records of backups retention removed at {where} were not all removed: {exc.msg}")
    if warnings:
        out["warnings"] = warnings
    return out


def drop_records(directory: str, removed: list, name: str) -> list:
    """Remove the local records (``<id>/`` here) of the streamed backups that retention just removed at
    the destination ``name``: only ids retention proved this cluster's, only records whose manifest
    says they were streamed to that destination, so the catalogue here never counts a backup gone there."""
    local = _stores.LocalStore(directory)
    manifests = local.list()["manifests"]
    records = [i for i in removed
               if isinstance(manifests.get(i), dict) and (manifests[i].get(STREAMED) or {}).get("name") == name]
    local.delete(records)
    return records

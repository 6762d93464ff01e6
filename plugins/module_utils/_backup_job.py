# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The node-side steps of one backup run, as the galera_backup role sequences them (private).

- ``preflight`` (the node is still Synced): every check that can refuse, in one call, changing
  nothing: settings and paths, the directory (never an existing one changed), accounts, tools, the
  tools' login lands on this node, the key, the incremental's parent, free space for the backup and
  for gcache while desynced. Returns the run: its id, paths and facts for the next steps.
- ``start`` (after the desync): creates what the run needs (the directory when missing, the private
  run directory with the option file and key file, the ``.partial`` with its run record), sweeps
  what provably dead runs of this cluster left, and starts the detached runner (``_backup_runner``).
- ``wait``: reports progress until the runner is done; fails with the runner's error.
- ``abort``: stops the runner's whole process group (the rescue, before the resync).
- ``finish``: publishes a good backup (manifest written last, atomic rename that never replaces
  anything) or discards this run's own partial and records the failure; always removes the run's
  private files.
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

from ansible_collections.dbtools.galera.plugins.module_utils import (
    _backup_runner,
    _catalog,
    _crypto,
    _manifest,
    _paths,
    _plan,
    _proc,
    _restore,
    _retention,
    _tools,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

RUN_BASE = "/run/dbtools-galera"
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


# ---------------------------------------------------------------------------------------------
# Settings

def login_of(params: dict) -> dict:
    return {k: params.get(k) for k in LOGIN_KEYS}


# ---------------------------------------------------------------------------------------------
# Paths of a run (derived, never taken from the controller as they are)

def run_base() -> str:
    """Where run directories live: /run (memory, never on disk) when writable, else the temp directory."""
    try:
        os.makedirs(RUN_BASE, mode=0o700, exist_ok=True)
        if os.access(RUN_BASE, os.W_OK | os.X_OK):
            return RUN_BASE
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), "dbtools-galera")


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

    # The key.
    key = load_key(s)
    key_record_check = None

    # Where the tools' own login lands (a load balancer or a wrong socket would back up another node).
    login = login_of(params)
    whoami = tools_login(login)
    if whoami["node_name"] != node.get("node_name"):
        raise GaleraError(f"the backup tools' login reaches node {whoami['node_name']!r}, not "
                          f"{node.get('node_name')!r} whose files would be copied (a load balancer, a wrong socket or "
                          f"host?). Point galera_backup_login_unix_socket / galera_backup_login_host at this node's "
                          f"server. {NOTHING}")
    checks.append(f"the tools' login lands on {whoami['node_name']}")

    # An incremental's parent: this node's newest good backup of the cluster with the same tool and key.
    parent, chain, parent_reason, backup_type, incremental_lsn = None, [], "", "full", None
    if s["type"] == "incremental":
        catalog = _catalog.read_dir(directory) if exists else dict(backups=[])
        found, parent_reason = _catalog.choose_parent(
            catalog["backups"], cluster.get("name"), node.get("node_name"), tool, int(s["max_incrementals"]) + 1,
            key_matches=lambda record: _crypto.key_matches(record or None, key),
            cluster_uuid=cluster.get("state_uuid"))
        if found is not None:
            parent, chain, backup_type = found["id"], list(found["chain"]), "incremental"
            incremental_lsn = found["position"]["to_lsn"]
            key_record_check = found.get("encryption")

    # Free space for the backup (and the verification copy), and for gcache while desynced.
    data_bytes = int(server.get("data_bytes") or 0)
    verify_copy = s["verify"] in ("prepare", "restore")
    need = int(data_bytes * float(s["free_space_factor"]))
    free = _paths.free_bytes(directory)
    if verify_copy and _paths.same_filesystem(directory, verify_base):
        need += int(data_bytes * 1.1)
    elif verify_copy:
        verify_free = _paths.free_bytes(verify_base)
        if verify_free < data_bytes * 1.1:
            raise GaleraError(f"{verify_base} has {_catalog.human_bytes(verify_free)} free, but the verification copy "
                              f"needs about {_catalog.human_bytes(data_bytes * 1.1)}. Free space or set "
                              f"galera_backup_verify_dir elsewhere. {NOTHING}")
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
    from datetime import datetime, timezone  # noqa: PLC0415
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
               binlog=bool(whoami.get("log_bin")), started_at=_backup_runner.utc_text(started),
               started_epoch=started, created_dir=not exists, encrypted=key is not None,
               lease=True, checks=checks, data_bytes=data_bytes, gcache=gcache_check)
    if key_record_check is not None:
        run["parent_key_checked"] = True
    return run


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
        argv = _tools.client_argv(cnf, "SELECT @@wsrep_node_name, @@datadir, @@log_bin")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise GaleraError(f"cannot run the SQL client {argv[0]}: {exc}. {NOTHING}") from exc
        if done.returncode != 0:
            raise GaleraError(f"the backup tools cannot log in with the role's login settings: "
                              f"{done.stderr.strip()[-400:] or done.returncode}. Check galera_backup_login_* (the "
                              f"tools read them from an option file). {NOTHING}")
        fields = (done.stdout.strip().splitlines() or [""])[-1].split("\t")
        return dict(node_name=fields[0] if fields else None, datadir=fields[1] if len(fields) > 1 else None,
                    log_bin=len(fields) > 2 and fields[2] == "1")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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

def start(params: dict) -> dict:
    run = checked_run(params["run"])
    s = dict(params["backup"])
    uid = _paths.account(s["file_owner"], "galera_backup_file_owner", "user")
    gid = _paths.account(s["file_group"], "galera_backup_file_group", "group")
    # Checked again: the directory may have changed since preflight; still nothing is created yet.
    exists = _paths.check_existing_dir(run["dir"], "galera_backup_dir", uid)
    key = load_key(s)
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
        runner = _backup_runner.Runner(run, s, login_of(params), key, key_file, run["cnf"],
                                       params.get("watchdog_state"))

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


def finish(params: dict) -> dict:
    run = checked_run(params["run"])
    s = dict(params["backup"])
    failure = params.get("failure") or ""
    state = read_state(run) or {}
    result = dict(changed=False, published=None, failure_record=None, manifest=None, kept_partial=None)
    try:
        if state.get("process") and _proc.same_process_alive(state["process"]):
            if not failure:
                raise GaleraError(f"the backup runner is still running ({state.get('step')}): wait for it first")
            _proc.kill_group(int(state["process"]["pid"]))
            state = read_state(run) or state
        good = not failure and state.get("done") and state.get("result") == "ok"
        if good:
            result.update(publish(run, s, state, params))
        else:
            reason = failure or state.get("error") or "the run did not finish"
            result.update(discard(run, s, state, params, reason))
    finally:
        shutil.rmtree(run["run_dir"], ignore_errors=True)
        shutil.rmtree(run["scratch"], ignore_errors=True)
    return result


def publish(run: dict, s: dict, state: dict, params: dict) -> dict:
    if not _ours(run):
        raise GaleraError(f"{run['partial']} is not this run's (its run record is missing or names another run): "
                          "nothing was published or deleted")
    uid = _paths.account(s["file_owner"], "galera_backup_file_owner", "user")
    gid = _paths.account(s["file_group"], "galera_backup_file_group", "group")
    manifest = _manifest.build(run, state["out"], params.get("desync") or {}, params.get("resync") or {},
                               finished_at=_backup_runner.utc_text(), settings=s)
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
        try:
            _manifest.write_json_atomic(run["failed"], record)
            out.update(changed=True, failure_record=run["failed"])
        except OSError as exc:
            out["failure_record_error"] = f"{run['failed']}: {exc.strerror or exc}"
    return out

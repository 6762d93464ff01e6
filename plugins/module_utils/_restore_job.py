# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The node-side steps of rebuilding a cluster or a node from a backup, as the galera_restore role
sequences them (private). Read-only steps first, so every refusal comes before any change:

- ``inspect``: the server's configuration (``my_print_defaults``), whether it runs and its wsrep
  state, the data directory, and the backups at the source (the node's backup directory or an
  off-host store); changes nothing.
- ``check``: for the chosen backup, its chain at the source, the key against every encrypted member,
  the tools, the data directory's parent; changes nothing.
- ``stage``: a detached worker fetches the chain (checksums verified on arrival, then the MACs),
  extracts, decrypts and prepares it into ``<datadir>.dbtools-restore-<run>`` beside the data
  directory and writes ``grastate.dat`` there; the data directory itself is not touched. ``wait``
  reports its progress.
- ``swap``: stops the server (only when told: a confirmed disaster restore), moves the existing data
  directory aside to ``<datadir>.dbtools-<UTC time>`` (never deleted) and renames the staged one into
  its place, or puts an empty one there for a joiner that takes a full SST.
- ``start``: the bootstrap or start command (``_service``), after noting where the error log ends.
- ``joined``: how the node got its state (IST, SST), from its error log since that start.
- ``clear_lease``: the backup's lease row, deleted before the cluster serves.
- ``verify``: the node's Galera state, tables and ``CHECKSUM TABLE`` figures.
- ``cleanup``: the backups this run fetched (and only those), once the restore verified.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from ansible_collections.dbtools.galera.plugins.module_utils import (
    _catalog,
    _connection,
    _copy,
    _crypto,
    _grastate,
    _lease,
    _logical,
    _manifest,
    _metrics,
    _paths,
    _proc,
    _recovery,
    _restore,
    _service,
    _stores,
    _tools,
    _wsrep,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

RUN_BASE = _paths.RUN_BASE
RUN_PREFIX = "restore-"
STATE = "state.json"
KEY = "backup.key"
START_TIMEOUT = 30.0
NOTHING = _recovery.NOTHING
LOCAL = _recovery.LOCAL


# ---------------------------------------------------------------------------------------------
# The options every step shares: the store's suboptions (those of galera_backup_copy's dest)

def store_options() -> dict:
    """The argument spec of a ``source`` store: the fields of a ``galera_backup_copies`` item."""
    return dict(_copy.store_fields(), name=dict(type="str"), keep=dict(type="raw"))


def common_options() -> dict:
    """The options every restore module shares (documented by the doc fragment ``_restore_source``)."""
    return dict(
        dir=dict(type="path", default="/var/backups/galera"),
        source=source_spec(),
        encrypt_key=dict(type="str", no_log=True),
        encrypt_key_file=dict(type="path"),
        work_dir=dict(type="path", default="/var/backups/galera-restore"),
        run_id=dict(type="str"),
        timeout=dict(type="float", default=10),
    )


def source_spec() -> dict:
    return dict(type="dict", options=store_options(),
                required_if=[("type", "ssh", ("host", "path")), ("type", "s3", ("bucket",)),
                             ("type", "local", ("path",))])


# ---------------------------------------------------------------------------------------------
# The source of a restore: the node's backup directory or a store

def open_source(runner, source: dict | None, directory: str | None) -> _stores.Store:
    """The store to read backups from: ``source`` (a galera_backup_copies item), else ``directory``."""
    if source:
        opts = {k: v for k, v in source.items() if k not in ("keep",)}
        return _copy.open_store(runner, opts)
    path = _paths.check_dir_text(directory, "galera_restore_dir")
    return _stores.LocalStore(path, name=LOCAL)


def catalogue(store: _stores.Store) -> tuple:
    """(normalised manifests, problems) of the complete backups a store holds."""
    problems = []
    manifests = []
    for name, manifest in sorted(store.list()["manifests"].items()):
        checked = _manifest.check_manifest(manifest, name, store.url(name), problems)
        if checked is not None:
            manifests.append(checked)
    return _catalog.parse_manifests(manifests, problems), problems


def chain_manifests(manifests: list, backup_id: str) -> list:
    """The manifests of ``backup_id``'s chain, the full backup first; GaleraError naming what is missing."""
    by_id = {m["id"]: m for m in manifests}
    if backup_id not in by_id:
        raise GaleraError(f"backup {backup_id} is not at the source (found: {', '.join(sorted(by_id)[-6:]) or 'none'}). "
                          f"{NOTHING}")
    backup = by_id[backup_id]
    reason = _catalog.broken_reason(backup, by_id)
    if reason:
        raise GaleraError(f"backup {backup_id} cannot be restored: {reason}. Copy the missing backup back to the "
                          f"source, or choose another backup (galera_restore_id). {NOTHING}")
    return [by_id[i] for i in _catalog.chain_of(backup, by_id)]


def load_key(params: dict) -> bytes | None:
    if params.get("encrypt_key"):
        return _crypto.key_from_text(params["encrypt_key"])
    if params.get("encrypt_key_file"):
        return _crypto.read_key(params["encrypt_key_file"])
    return None


# ---------------------------------------------------------------------------------------------
# The server: configuration, process, wsrep state

def read_defaults(runner, defaults_file: str | None) -> dict:
    """The options the server reads (``my_print_defaults --mysqld``), as {name: value}."""
    tool = _tools.find("my_print_defaults") or runner.get_bin_path("my_print_defaults")
    if not tool:
        raise GaleraError("my_print_defaults is not installed here (it comes with the server packages): the "
                          "server's configuration cannot be read. Install mariadb-server or mariadb-client. " + NOTHING)
    argv = [tool] + ([f"--defaults-file={defaults_file}"] if defaults_file else []) + ["--mysqld"]
    rc, out, err = runner.run_command(argv, environ_update=dict(LC_ALL="C"), expand_user_and_vars=False)
    if rc != 0:
        raise GaleraError(f"{' '.join(argv)} failed ({rc}): {err.strip()[-300:]}. {NOTHING}")
    return _recovery.parse_defaults(out.splitlines())


def server_pid(pid_file: str | None) -> int | None:
    """The pid of the live mariadbd/mysqld process ``pid_file`` names, or None."""
    if not pid_file:
        return None
    try:
        with open(pid_file, "r", encoding="ascii", errors="replace") as handle:
            pid = int(handle.read().strip() or 0)
        with open(f"/proc/{pid}/comm", "r", encoding="ascii", errors="replace") as handle:
            comm = handle.read().strip()
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _proc.pid_alive(pid) and comm in ("mariadbd", "mysqld") else None


def process_alive(pid_file: str | None) -> bool:
    """True when ``pid_file`` names a live mariadbd/mysqld process."""
    return server_pid(pid_file) is not None


def server_state(params: dict, config: dict) -> dict:
    """Whether the node's server answers, and its wsrep figures when it does."""
    out = dict(reachable=False, process_alive=process_alive(config.get("pid_file")), error=None)
    try:
        conn = _connection.connect(params)
    except GaleraError as exc:
        out["error"] = exc.msg
        if not exc.get("unreachable"):
            out["process_alive"] = True  # it answered, and refused: it runs
        return out
    try:
        node = _wsrep.Node(conn)
        status, variables, snap = node.read()
        provider = _wsrep.parse_provider_options(variables.get("wsrep_provider_options"))
        out.update(reachable=True, process_alive=True, local_state=snap["local_state"],
                   local_state_comment=snap["local_state_comment"], cluster_status=snap["cluster_status"],
                   cluster_size=snap["cluster_size"], cluster_state_uuid=snap["cluster_state_uuid"],
                   last_committed=snap["last_committed"], cached_downto=status.get("wsrep_local_cached_downto"),
                   gcache_size=_wsrep.parse_size(provider.get("gcache.size")), ready=snap["ready"],
                   cluster_name=variables.get("wsrep_cluster_name"), node_name=variables.get("wsrep_node_name"),
                   datadir=str(variables.get("datadir") or "").rstrip("/") or None)
    except _connection.pymysql.err.MySQLError as exc:
        out["error"] = f"the server answered but its wsrep state cannot be read: {exc}"
    finally:
        conn.close()
    return out


def datadir_state(path: str) -> dict:
    out = dict(path=path, exists=os.path.lexists(path), is_dir=os.path.isdir(path) and not os.path.islink(path),
               entries=None, mount_point=False, grastate=None, owner=None, mode=None)
    if out["is_dir"]:
        info = os.stat(path)
        out.update(entries=len(os.listdir(path)), mount_point=os.path.ismount(path), grastate=_grastate.read(path),
                   owner=_user(info.st_uid), mode=f"{info.st_mode & 0o7777:04o}")
    return out


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def node_config(runner, params: dict) -> dict:
    options = read_defaults(runner, params.get("defaults_file"))
    config = _recovery.server_config(options, params.get("datadir") or "")
    config["datadir"] = _restore.check_datadir_text(config["datadir"])
    if params.get("error_log"):
        config["log_error"] = params["error_log"]
    return config


# ---------------------------------------------------------------------------------------------
# inspect

def inspect(runner, params: dict) -> dict:
    config = node_config(runner, params)
    server = server_state(params, config)
    source = dict(kind=(params.get("source") or {}).get("type") or LOCAL, url=None, backups=[], problems=[])
    try:
        store = open_source(runner, params.get("source"), params.get("dir"))
        manifests, problems = catalogue(store)
        source.update(url=store.url(""), backups=_catalog.summarize(manifests), problems=problems)
    except GaleraError as exc:
        source["problems"].append(exc.msg)
        source["error"] = exc.msg
    if server["reachable"]:
        running = "server " + (server.get("local_state_comment") or "answering")
    else:
        running = "server process alive" if server["process_alive"] else "server stopped"
    msg = (f"{config['datadir']}: {running}; "
           f"{len(source['backups'])} backup(s) at {source['url'] or source['kind']}")
    systemd = _proc.systemd_running()
    unit, given = service_of(params), given_commands(params)
    state = _service.unit_state(runner, unit) if systemd and not all(given.get(a) for a in _service.ACTIONS) else None
    pid = server_pid(config.get("pid_file"))
    serving = dict(pid=pid, pid_file=config.get("pid_file"), unit=_service.unit_of_pid(pid))
    return dict(changed=False, config=config, server=server, datadir=datadir_state(config["datadir"]),
                systemd=systemd, commands=_service.report(given, systemd, unit, state, serving),
                source=source, host=socket.gethostname(), msg=msg)


# ---------------------------------------------------------------------------------------------
# check

def check(runner, params: dict) -> dict:
    """Everything that can refuse the chosen backup on this node, before anything changes."""
    config = node_config(runner, params)
    datadir = config["datadir"]
    store = open_source(runner, params.get("source"), params.get("dir"))
    manifests, _problems = catalogue(store)
    chain = chain_manifests(manifests, params["id"])
    head = chain[-1]
    if head.get("method") not in _tools.PHYSICAL:
        raise GaleraError(f"backup {head['id']} is a logical {head.get('method')} dump: restore it into a running "
                          f"cluster with dbtools.galera.restore_logical. {NOTHING}")
    key = load_key(params)
    _restore.check_keys([(m["id"], m) for m in chain], key)
    position = head.get("position") or {}
    if params.get("grastate", "none") != "none":
        _grastate.check_position(position.get("cluster_uuid"), position.get("seqno"))
    tools = [head["method"], "extract", "zstd"] + (["openssl"] if any(m.get("encryption") for m in chain) else [])
    missing = _tools.missing(tools)
    if missing:
        raise GaleraError(f"{', '.join(missing)} missing on this node: install {_tools.install_hint(missing)}. "
                          f"{NOTHING}")
    parent = os.path.dirname(datadir)
    state = datadir_state(datadir)
    if state["mount_point"]:
        raise GaleraError(f"{datadir} is a mount point: it cannot be moved aside by a rename, and the restore never "
                          f"deletes a data directory. Point the server's datadir at a directory inside the mount "
                          f"(e.g. {datadir}/data) or give galera_restore_datadir such a directory. {NOTHING}")
    if state["exists"] and not state["is_dir"]:
        raise GaleraError(f"{datadir} exists and is not a directory (a link or a file): fix it by hand. {NOTHING}")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise GaleraError(f"{parent} (where the restored data directory is staged beside {datadir}) is missing or "
                          f"not writable: run with become. {NOTHING}")
    size = sum(int(m.get("bytes") or 0) for m in chain)
    warnings = []
    free = _paths.free_bytes(parent)
    if free < size:
        raise GaleraError(f"{parent} has {_catalog.human_bytes(free)} free, less than the backup's compressed size "
                          f"({_catalog.human_bytes(size)}): the prepared data directory cannot fit. {NOTHING}")
    if free < 3 * size:
        warnings.append(f"{parent} has {_catalog.human_bytes(free)} free; the prepared data directory is usually "
                        f"2-4 times the compressed backup ({_catalog.human_bytes(size)})")
    if store.kind != "local":
        work = _paths.check_dir_text(params.get("work_dir"), "galera_restore_work_dir")
        free_work = _paths.free_bytes(work)
        held = all(os.path.isdir(os.path.join(work, m["id"])) for m in chain)
        if free_work < size and not held:
            raise GaleraError(f"galera_restore_work_dir={work} has {_catalog.human_bytes(free_work)} free, the backup "
                              f"to fetch is {_catalog.human_bytes(size)}. {NOTHING}")
    verify = head.get("verify") if isinstance(head.get("verify"), dict) else {}
    return dict(changed=False, id=head["id"], chain=[m["id"] for m in chain], method=head["method"],
                cluster=_manifest.cluster_name(head), position=dict(cluster_uuid=position.get("cluster_uuid"),
                                                                    seqno=position.get("seqno")),
                bytes=size, encrypted=bool(key is not None and any(m.get("encryption") for m in chain)),
                verify_level=verify.get("level"), checksums=verify.get("checksums") or {},
                tables=head.get("tables"), finished_at=head.get("finished_at"), datadir=datadir,
                source=store.url(head["id"]), warnings=warnings,
                msg=f"backup {head['id']} ({len(chain)} in its chain, {_catalog.human_bytes(size)}) can be restored "
                    f"into {datadir} here")


# ---------------------------------------------------------------------------------------------
# Runs: the detached worker of a long step and its state file

def run_base() -> str:
    return _paths.run_base(RUN_BASE)


def run_dir(run_id: str) -> str:
    if not isinstance(run_id, str) or not _manifest.RUN_ID_PATTERN.fullmatch(run_id):
        raise GaleraError(f"run {run_id!r} is not a restore run id (8 hex digits)")
    return os.path.join(run_base(), RUN_PREFIX + run_id)


def read_state(run_id: str) -> dict | None:
    try:
        state = _manifest.read_json(os.path.join(run_dir(run_id), STATE))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("run_id") == run_id else None


class Worker:
    """The detached process of a long step: it writes its progress to a state file and, at the end,
    its result (``out``) or its error, with the step that failed."""

    def __init__(self, run_id: str, kind: str, work):
        self.run_id, self.kind, self.work = run_id, kind, work
        self.dir = run_dir(run_id)
        self.state = dict(run_id=run_id, kind=kind, step="starting", done=False, result=None, error=None,
                          watch=None, watch_bytes=None, phases={}, started=time.time())
        self._phase, self._phase_started = None, 0.0

    def save(self, **changes) -> None:
        self.state.update(changes, updated=time.time(), elapsed=round(time.time() - self.state["started"], 1))
        _manifest.write_json_atomic(os.path.join(self.dir, STATE), self.state)

    def step(self, text: str, phase: str | None = None, watch: str | None = None, watch_bytes=None) -> None:
        if phase and phase != self._phase:
            self.end_phase()
            self._phase, self._phase_started = phase, time.time()
        self.save(step=text, watch=watch, watch_bytes=watch_bytes)

    def end_phase(self) -> None:
        """Add the time since the current phase began to its total (fetch, verify, prepare...)."""
        if self._phase:
            phases = self.state["phases"]
            phases[self._phase] = round(phases.get(self._phase, 0.0) + time.time() - self._phase_started, 1)
            self._phase = None

    def main(self) -> None:
        self.save(process=_proc.identity())
        try:
            out = self.work(self)
            self.end_phase()
            self.save(done=True, result="ok", out=out, step="done", watch=None)
        except BaseException as exc:  # the error goes to the state file; the caller reports it
            self.end_phase()
            message = exc.msg if isinstance(exc, GaleraError) else f"{type(exc).__name__}: {exc}"
            try:
                self.save(done=True, result="failed", error=message, failed_step=self.state.get("step"))
            except OSError:
                pass
        finally:
            key = os.path.join(self.dir, KEY)
            if os.path.exists(key):
                os.unlink(key)


def spawn(run_id: str, kind: str, work, key: bytes | None, key_file: str | None) -> dict:
    """Start ``work(worker, key_file)`` detached; returns once its state file names its process."""
    directory = run_dir(run_id)
    os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)
    os.mkdir(directory, 0o700)
    if key is not None and not key_file:
        key_file = os.path.join(directory, KEY)
        _crypto.write_key_file(key_file, key)
    worker = Worker(run_id, kind, lambda w: work(w, key_file))
    try:
        pid = _proc.spawn_detached(worker.main)
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise GaleraError(f"cannot start the {kind} worker on this node: {exc}. {NOTHING}") from exc
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        state = read_state(run_id)
        if state and state.get("process"):
            return dict(pid=pid, run_id=run_id, state_dir=directory)
        time.sleep(0.05)
    raise GaleraError(f"the {kind} worker (pid {pid}) did not report within {int(START_TIMEOUT)} s")


def _tree_bytes(path: str | None) -> int | None:
    if not path or not os.path.isdir(path):
        return None
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def wait(params: dict) -> dict:
    """Progress of a run until it is done (up to ``timeout`` seconds per call); fails with its error."""
    run_id = params["run_id"]
    deadline = time.monotonic() + float(params.get("timeout") or 10)
    while True:
        state = read_state(run_id)
        if state is None:
            if not os.path.isdir(run_dir(run_id)):
                raise GaleraError(f"restore run {run_id} was never started on this node (no {run_dir(run_id)})")
        elif state.get("done"):
            break
        elif state.get("process") and _proc.same_process_alive(state["process"]) is False:
            raise GaleraError(f"the restore worker (pid {state['process'].get('pid')}) ended without a result "
                              f"(killed?) during '{state.get('step')}'. What it staged is left for inspection; the "
                              "data directory was not changed by this step.", step=state.get("step"))
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    state = state or {}
    progress = dict(step=state.get("step", "starting"), elapsed=state.get("elapsed"),
                    bytes=_tree_bytes(state.get("watch")), of_bytes=state.get("watch_bytes"),
                    phases=dict(state.get("phases") or {}))
    if state.get("done") and state.get("result") != "ok":
        raise GaleraError(state.get("error") or "the restore step failed", progress=progress,
                          failed_step=state.get("failed_step"))
    done = bool(state.get("done"))
    if done:
        shutil.rmtree(run_dir(run_id), ignore_errors=True)
    text = progress["step"]
    if progress["bytes"] is not None:
        text += f": {_catalog.human_bytes(progress['bytes'])}"
        if progress["of_bytes"]:
            text += f" of {_catalog.human_bytes(progress['of_bytes'])}"
    return dict(changed=done, done=done, progress=progress, out=state.get("out") if done else None,
                msg=("done: " if done else "running: ") + text + f" ({progress['elapsed']} s)")


# ---------------------------------------------------------------------------------------------
# stage: fetch, verify, prepare into the staging directory, grastate

def _reuse_fetched(path: str, manifest: dict) -> bool:
    """True when ``path`` already holds this exact backup, every file verified; GaleraError when it holds
    something else (never overwritten or deleted: not provably ours)."""
    if not os.path.isdir(path):
        return False
    try:
        local = _stores.LocalBackup(path)
    except GaleraError as exc:
        raise GaleraError(f"{path} exists and is not a complete copy of the backup ({exc.msg}): move it away, then "
                          f"run again. {NOTHING}") from exc
    if local.sums_sha != str(manifest.get("sha256", "")).lower():
        raise GaleraError(f"{path} holds another backup under the same id (its SHA256SUMS differs from the "
                          f"source's): move it away, then run again. {NOTHING}")
    bad = local.damaged([rel for rel, _sha in local.entries])
    if bad:
        raise GaleraError(f"{path} (fetched earlier) no longer matches its SHA256SUMS ({', '.join(bad[:5])}): "
                          f"move it away, then run again. {NOTHING}")
    return True


def _sweep_partial(path: str) -> None:
    """Remove ``<id>.partial`` left by a fetch whose process has ended (its run record says so)."""
    if not os.path.isdir(path):
        return
    try:
        record = _manifest.read_json(os.path.join(path, _manifest.RUN_RECORD))
    except (OSError, ValueError):
        record = None
    if not _manifest.valid_run_record(record) or record.get("what") != "fetch":
        raise GaleraError(f"{path} exists and is not an unfinished fetch of this collection: move it away. {NOTHING}")
    if _proc.same_process_alive(record.get("process")) is not False:
        raise GaleraError(f"{path} is being fetched by another run (pid {(record.get('process') or {}).get('pid')}): "
                          f"wait for it, or stop it. {NOTHING}")
    shutil.rmtree(path)


def fetch_chain(worker, store, chain: list, work_dir: str) -> tuple:
    """(local paths of the chain's members, ids fetched by this run): from a store into ``work_dir``,
    each verified against SHA256SUMS on arrival; a copy fetched earlier is verified and reused."""
    if store.kind == "local":
        paths = []
        for index, manifest in enumerate(chain):
            worker.step(f"checking {manifest['id']} ({index + 1} of {len(chain)}) against SHA256SUMS", phase="fetch")
            local = store.source(manifest["id"])
            bad = local.damaged([rel for rel, _sha in local.entries])
            if bad:
                raise GaleraError(f"{local.path} does not match its SHA256SUMS ({', '.join(bad[:5])}): the backup is "
                                  f"damaged on this node. Restore from a store copy (galera_restore_source) or "
                                  f"another backup. {NOTHING}")
            paths.append(local.path)
        return paths, []
    if not os.path.isdir(work_dir):
        # 0711: the server's user may pass through to a drill's copy; every backup in it is 0700.
        _paths.make_dir(work_dir, 0, 0, 0o711)
    paths, fetched = [], []
    for index, manifest in enumerate(chain):
        target = os.path.join(work_dir, manifest["id"])
        if _reuse_fetched(target, manifest):
            worker.step(f"{manifest['id']} was fetched before and verifies: reused", phase="fetch")
        else:
            _sweep_partial(target + _manifest.PARTIAL_SUFFIX)
            worker.step(f"fetching {manifest['id']} ({index + 1} of {len(chain)}) from {store.url(manifest['id'])}",
                        phase="fetch", watch=target + _manifest.PARTIAL_SUFFIX, watch_bytes=manifest.get("bytes"))
            store.fetch(manifest["id"], work_dir)
            fetched.append(manifest["id"])
        paths.append(target)
    return paths, fetched


def verify_members(worker, paths: list, chain: list, key: bytes | None) -> str:
    """The MAC of every encrypted file of every member: "verified", "legacy" or "none"."""
    found = set()
    for index, (path, manifest) in enumerate(zip(paths, chain)):
        worker.step(f"checking the MACs of {manifest['id']} ({index + 1} of {len(chain)})", phase="integrity")
        found.add(_restore.verify_macs(path, manifest, key))
    return "legacy" if _crypto.LEGACY in found else "verified" if _crypto.VERIFIED in found else "none"


def server_owner(datadir: str) -> tuple:
    """(name, uid, gid, mode) for the restored data directory: those of the existing one, else mysql's, 0750."""
    try:
        info = os.stat(datadir)
        return _user(info.st_uid), info.st_uid, info.st_gid, info.st_mode & 0o7777
    except OSError:
        pass
    try:
        entry = pwd.getpwnam("mysql")
    except KeyError:
        raise GaleraError(f"{datadir} does not exist and there is no 'mysql' user to own the restored data: create "
                          f"the server's user (install the server packages). {NOTHING}") from None
    return "mysql", entry.pw_uid, entry.pw_gid, 0o750


def read_tables(path: str) -> list:
    try:
        tables = _manifest.read_json(os.path.join(path, _restore.TABLES_FILE))
    except (OSError, ValueError):
        return []
    return [list(t) for t in tables if isinstance(t, (list, tuple)) and len(t) >= 2] if isinstance(tables, list) else []


def stage(runner, params: dict, check_mode: bool) -> dict:
    checked = check(runner, params)
    datadir = checked["datadir"]
    swept = [] if check_mode else sweep_staging(datadir)
    run_id = _manifest.new_run_id()
    staging = _recovery.staging_name(datadir, run_id)
    result = dict(checked, changed=True, run_id=run_id, staging=staging,
                  msg=f"would fetch and prepare {checked['id']} into {staging}" if check_mode else None)
    if check_mode:
        return result
    key = load_key(params)
    store = open_source(runner, params.get("source"), params.get("dir"))
    manifests, _problems = catalogue(store)
    chain = chain_manifests(manifests, checked["id"])
    grastate = params.get("grastate") or "none"
    work_dir = params.get("work_dir")
    owner = server_owner(datadir)

    def work(worker, key_file):
        out = dict(id=checked["id"], chain=checked["chain"], staging=staging, datadir=datadir, fetched=[],
                   position=checked["position"], grastate=grastate, run_id=run_id)
        paths, out["fetched"] = fetch_chain(worker, store, chain, work_dir)
        out["integrity"] = verify_members(worker, paths, chain, key)
        out["tables"] = read_tables(paths[-1])
        scratch = tempfile.mkdtemp(prefix="dbtools-galera-restore.", dir=os.path.dirname(staging))
        os.mkdir(staging, 0o700)
        try:
            # The run record beside (never inside) the staging directory says whose it is.
            _manifest.write_json_atomic(staging + ".run.json", _manifest.run_record(
                run_id, checked["id"], checked["cluster"], checked["position"]["cluster_uuid"], None,
                _stores.this_host(), _proc.identity(), _stores.utc_text(), kind="restore"))
            records = {p: m.get("encryption") or None for p, m in zip(paths, chain)}

            def progress(text):
                worker.step(text, phase="prepare", watch=staging)
            _restore.prepare_chain(checked["method"], paths, staging, scratch, key_file,
                                   os.path.join(scratch, "prepare.log"), progress=progress, records=records)
            worker.step("giving the files to the server's user", phase="prepare")
            _restore.chown_tree(staging, owner[1], owner[2])
            os.chmod(staging, owner[3])
            if grastate != "none":
                _grastate.write(staging, checked["position"]["cluster_uuid"], checked["position"]["seqno"],
                                grastate == "bootstrap", owner[1], owner[2])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            _unlink(staging + ".run.json")
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        out["bytes"] = _tree_bytes(staging)
        return out

    started = spawn(run_id, "stage", work, key, params.get("encrypt_key_file") or None)
    result.update(started, swept=swept, msg=f"fetching and preparing {checked['id']} into {staging} (run {run_id})"
                  + (f"; removed the staged copies of ended runs: {', '.join(swept)}" if swept else ""))
    return result


def sweep_staging(datadir: str) -> list:
    """Remove staged data directories of earlier restore runs that provably ended (``<staging>.run.json``
    names a restore run whose process is gone): what a failed swap or a killed run left beside ``datadir``."""
    parent = os.path.dirname(datadir)
    removed = []
    for name in sorted(os.listdir(parent)):
        run_id = _recovery.staging_run(datadir, name)
        path = os.path.join(parent, name)
        if run_id is None or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            record = _manifest.read_json(path + ".run.json")
        except (OSError, ValueError):
            continue  # not provably ours: left alone
        if not _manifest.valid_run_record(record) or record.get("run_id") != run_id or record.get("what") != "restore":
            continue
        if _proc.same_process_alive(record.get("process")) is not False or read_state(run_id):
            continue
        shutil.rmtree(path)
        _unlink(path + ".run.json")
        removed.append(path)
    return removed


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# swap: stop, move the data directory aside, put the staged one in its place

def swap(runner, params: dict, check_mode: bool) -> dict:
    config = node_config(runner, params)
    datadir = config["datadir"]
    staging = None
    if params.get("run_id"):
        staging = _recovery.staging_name(datadir, params["run_id"])
        if not check_mode and (not os.path.isdir(staging) or os.path.islink(staging)):
            raise GaleraError(f"{staging} (prepared by run {params['run_id']}) is missing: stage the backup first. "
                              f"{NOTHING}")
    state = datadir_state(datadir)
    if state["mount_point"]:
        raise GaleraError(f"{datadir} is a mount point and cannot be moved aside. {NOTHING}")
    server = server_state(params, config)
    result = dict(changed=True, datadir=datadir, staging=staging, stopped=False, aside=None)
    if server["reachable"] or server["process_alive"]:
        if not params.get("stop"):
            raise GaleraError(f"the server on this node runs ({server.get('local_state_comment') or 'process alive'}): "
                              f"it is not stopped without a confirmed disaster restore. {NOTHING}")
        result["stop_command"] = require_command(params, "stop")
        if not check_mode:
            result["stop"] = _service.run(runner, commands_of(params), "stop")
            result["stopped"] = True
            if process_alive(config.get("pid_file")) or server_state(params, config)["reachable"]:
                raise GaleraError(f"the stop command returned but the server still runs: stop it by hand. The data "
                                  f"directory {datadir} was not changed.")
    if state["exists"]:
        result["aside"] = unique_aside(datadir)
    if check_mode:
        result["msg"] = (f"would move {datadir} aside to {result['aside']}" if state["exists"] else
                         f"{datadir} does not exist") + (f" and put {staging} in its place" if staging else
                                                         " and leave an empty data directory (full SST)")
        return result
    name, uid, gid, mode = server_owner(datadir)
    if state["exists"]:
        result["asides"] = move_aside(datadir)
        result["aside"] = result["asides"][0]
    try:
        if staging:
            os.rename(staging, datadir)
            _unlink(staging + ".run.json")
        else:
            os.mkdir(datadir, mode)
            os.chown(datadir, uid, gid)
            os.chmod(datadir, mode)
    except OSError as exc:
        raise GaleraError(f"cannot put the restored data directory in place ({exc.strerror or exc}): {datadir} was "
                          f"moved aside to {result['aside']} and is missing now; the restored copy is in "
                          f"{staging or '(none)'}. Rename {result['aside']} back to {datadir} to return to where you "
                          "were.", aside=result["aside"], staging=staging) from exc
    result["msg"] = ((f"moved {datadir} aside to {' and '.join(result['asides'])}; " if result["aside"] else "") +
                     (f"{staging} is now {datadir}" if staging else f"{datadir} is empty (owned by {name}): the node "
                      "takes a full SST"))
    return result


def move_aside(datadir: str) -> list:
    """Move ``datadir`` to ``<datadir>.dbtools-<UTC time>`` and return the names it went to (one, unless
    the filesystem shows another copy again, below); never deletes it.

    A rename where the filesystem allows it. On an overlay filesystem (a container's image layer) a
    directory of the lower layer cannot be renamed (EXDEV): it is copied aside with its owners, modes
    and times, the copy is checked against the original, then the original is removed, as mv(1) does.
    Some overlay implementations show the image's own copy again at the old path after such a move: that
    one is moved aside too (to a name of its own), so nothing is ever lost, and the path is free.
    """
    moved = []
    for _attempt in range(3):
        if not os.path.lexists(datadir):
            return moved
        aside = unique_aside(datadir)
        try:
            os.rename(datadir, aside)
        except OSError as exc:
            if exc.errno != 18:  # EXDEV
                raise GaleraError(f"cannot move {datadir} aside to {aside}: {exc.strerror or exc}. "
                                  f"{NOTHING if not moved else 'It was moved aside to ' + moved[0] + ' before.'}") from exc
            copy_aside(datadir, aside)
        moved.append(aside)
    raise GaleraError(f"{datadir} appears again each time it is moved aside (moved to {', '.join(moved)}): the "
                      "filesystem keeps showing another copy there. Move it away by hand, then run again.")


def copy_aside(src: str, dst: str) -> None:
    """``src`` copied to ``dst`` (owners, modes, times, links as links), checked, then removed."""
    try:
        shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
        for top, dirs, files in os.walk(src):
            for name in [""] + dirs + files:
                path = os.path.join(top, name) if name else top
                info = os.lstat(path)
                os.lchown(os.path.join(dst, os.path.relpath(path, src)), info.st_uid, info.st_gid)
        shutil.copystat(src, dst)
        if _tree_bytes(src) != _tree_bytes(dst) or _tree_count(src) != _tree_count(dst):
            raise OSError(5, f"the copy in {dst} does not match {src}")
    except OSError as exc:
        shutil.rmtree(dst, ignore_errors=True)  # this run's own partial copy; the original is untouched
        raise GaleraError(f"cannot move {src} aside: it cannot be renamed on this filesystem and copying it to "
                          f"{dst} failed ({exc.strerror or exc}). {NOTHING}") from exc
    shutil.rmtree(src)


def _tree_count(path: str) -> int:
    return sum(len(dirs) + len(files) for _top, dirs, files in os.walk(path))


def unique_aside(datadir: str) -> str:
    base = _recovery.aside_name(datadir)
    candidate, number = base, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = f"{base}.{number}"
    return candidate


def given_commands(params: dict) -> dict:
    return dict(start=params.get("start_command"), stop=params.get("stop_command"),
                bootstrap=params.get("bootstrap_command"))


def service_of(params: dict) -> str:
    return params.get("service") or _service.DEFAULT_UNIT


def commands_of(params: dict) -> dict:
    return _service.commands(given_commands(params), _proc.systemd_running(), service_of(params))


def require_command(params: dict, action: str) -> list:
    return _service.require(commands_of(params), action, _proc.systemd_running(), service_of(params))


# ---------------------------------------------------------------------------------------------
# start, joined

def log_size(path: str | None) -> int | None:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return 0 if path else None


def start(runner, params: dict, check_mode: bool) -> dict:
    config = node_config(runner, params)
    action = params.get("action") or "start"
    cmds = commands_of(params)
    argv = require_command(params, action)
    server = server_state(params, config)
    runs = bool(server["reachable"] or server["process_alive"])
    # In check mode the swap before did not stop the server of a confirmed disaster restore: say so, do not refuse.
    if runs and not check_mode:
        raise GaleraError(f"the server on this node already runs ({server.get('local_state_comment') or 'process alive'}): "
                          f"the restored data directory is not the one it serves. Stop it, then run again. {NOTHING}")
    if action == "bootstrap" and not check_mode:
        saved = _grastate.read(config["datadir"]) or {}
        if saved.get("safe_to_bootstrap") != 1:
            raise GaleraError(f"{config['datadir']}/grastate.dat does not say safe_to_bootstrap: 1: this node was not "
                              f"prepared as the first node of the restore. {NOTHING}")
    result = dict(changed=True, action=action, argv=argv, log_error=config.get("log_error"),
                  log_offset=log_size(config.get("log_error")), started_at=time.time())
    if check_mode:
        result["msg"] = f"would run {' '.join(argv)}" + (" once its running server is stopped" if runs else "")
        return result
    started = time.monotonic()
    result["command"] = _service.run(runner, cmds, action)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["msg"] = f"{' '.join(argv)} returned after {result['seconds']} s"
    return result


def read_log(path: str | None, offset: int | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(offset if offset is not None and offset <= size else 0)
            return handle.read(8 * 1024 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""


def journal(runner, unit: str, since: float | None) -> str:
    tool = runner.get_bin_path("journalctl")
    if not tool or not since:
        return ""
    rc, out, _err = runner.run_command([tool, "-u", unit, "-o", "cat", "--no-pager", f"--since=@{int(since)}"],
                                       expand_user_and_vars=False)
    return out if rc == 0 else ""


def joined(runner, params: dict) -> dict:
    config = node_config(runner, params)
    text = read_log(config.get("log_error"), params.get("log_offset"))
    where = config.get("log_error")
    if not text and _proc.systemd_running():
        text = journal(runner, service_of(params), params.get("started_at"))
        where = f"journal of {service_of(params)}"
    verdict = _recovery.how_joined(_recovery.last_start(text), params.get("position"))
    verdict["log"] = where
    if params.get("started_at"):
        verdict["seconds"] = round(max(time.time() - float(params["started_at"]), 0.0), 1)
    if verdict["method"] == "unknown" and not text:
        verdict["why"] = ("no error log to read: set log_error in the server's configuration or "
                          "galera_restore_error_log")
    detail = ""
    if verdict["method"] == "IST":
        detail = f" ({verdict['writesets']} write-sets {verdict['seqnos']})" if verdict.get("writesets") is not None else ""
    elif verdict["method"] == "SST":
        detail = f" (state {verdict.get('sst_position')} from {verdict.get('donor') or 'a donor'})"
    took = ""
    if verdict.get("log_seconds") is not None:
        took = f", Synced {verdict['log_seconds']} s after the server started (its log)"
    elif "seconds" in verdict:
        took = f", Synced at most {verdict['seconds']} s after the start command began"
    if params.get("action") == "bootstrap":
        return dict(changed=False, joined=verdict, msg=f"bootstrapped a new Primary component{took} (read from {where})")
    return dict(changed=False, joined=verdict, msg=f"joined by {verdict['method']}{detail}{took} (read from {where})")


# ---------------------------------------------------------------------------------------------
# clear_lease, verify

def clear_lease(params: dict, check_mode: bool) -> dict:
    conn = _connection.connect(params)
    try:
        node = _wsrep.Node(conn)
        lease = _lease.Lease(node, params.get("lease_database") or "dbtools_galera")
        row = lease.read()
        result = dict(changed=False, lease=row, cleared_at=None)
        if not row:
            result["msg"] = "the restored data holds no desync lease"
            return result
        result["changed"] = True
        if check_mode:
            result["msg"] = f"would clear the backup's lease row ({_lease.describe(row)})"
            return result
        node.query(f"DELETE FROM {lease.table}")
        result["cleared_at"] = _stores.utc_text()
        result["msg"] = (f"cleared the backup's lease row at {result['cleared_at']} UTC, before any other node joined "
                         f"({_lease.describe(row)})")
        return result
    finally:
        conn.close()


def verify(params: dict) -> dict:
    """This node's Galera state, the tables it holds and their checksums (``tables``: the backup's list;
    every user table when empty)."""
    conn = _connection.connect(params)
    try:
        node = _wsrep.Node(conn)
        status, variables, snap = node.read()
        with conn.cursor() as cur:
            # Read only after everything the cluster committed before this point is applied here.
            cur.execute("SET SESSION wsrep_sync_wait = 1")
        present, checksums = _restore.table_checksums(
            conn, [(str(t[0]), str(t[1])) for t in params.get("tables") or []] or None)
    finally:
        conn.close()
    return dict(changed=False, node=snap, cluster_name=variables.get("wsrep_cluster_name"),
                tables=[[s, t] for s, t, _b in present], checksums=checksums,
                msg=f"{snap['local_state_comment']} in a {snap['cluster_status']} component of {snap['cluster_size']}; "
                    f"{len(present)} tables, {len(checksums)} checksummed")


# ---------------------------------------------------------------------------------------------
# cleanup

def cleanup(params: dict, check_mode: bool) -> dict:
    """Remove the backups this run fetched into the work directory (named by ``fetched``), nothing else."""
    work = _paths.check_dir_text(params.get("work_dir"), "galera_restore_work_dir")
    removed = []
    for backup_id in params.get("fetched") or []:
        if not _manifest.valid_id(backup_id):
            raise GaleraError(f"refused to remove {backup_id!r} from {work}: not a backup id")
        path = os.path.join(work, backup_id)
        if os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(os.path.join(path, _manifest.MANIFEST)):
            if not check_mode:
                _stores.LocalStore(work).delete([backup_id])
            removed.append(path)
    return dict(changed=bool(removed), removed=removed,
                msg=("removed " + ", ".join(removed)) if removed else "no fetched copy to remove")


# ---------------------------------------------------------------------------------------------
# drill: restore the newest backup here, start a standalone server, verify, record

def drill_record_path(record_dir: str, cluster: str) -> str:
    return os.path.join(record_dir, _catalog.drill_file_name(cluster))


def previous_ok(path: str) -> dict | None:
    """The last successful drill an existing record knows (itself, or the success it carries)."""
    try:
        record = _manifest.read_json(path)
    except (OSError, ValueError):
        return None
    if not _catalog.valid_drill(record):
        return None
    if record["result"] == "ok":
        return {k: v for k, v in record.items() if k != "last_ok"}
    return record.get("last_ok") if isinstance(record.get("last_ok"), dict) else None


def drill_start(runner, params: dict, check_mode: bool) -> dict:
    """Choose the newest restorable backup of ``cluster`` at the source and start the drill's worker."""
    record_dir = _paths.check_dir_text(params.get("record_dir"), "galera_restore_drill_dir")
    work_dir = _paths.check_dir_text(params.get("work_dir"), "galera_restore_work_dir")
    store = open_source(runner, params.get("source"), params.get("dir"))
    manifests, problems = catalogue(store)
    cluster = params.get("cluster") or ""
    names = sorted({_manifest.cluster_name(m) or "" for m in manifests})
    if not cluster:
        if len(names) != 1:
            raise GaleraError(f"the source holds backups of {len(names)} clusters ({', '.join(names) or 'none'}): "
                              f"name one with galera_restore_cluster. {NOTHING}")
        cluster = names[0]
    if params.get("id"):
        chosen = params["id"]
    else:
        newest = _catalog.newest_good(manifests, cluster)
        if newest is None:
            raise GaleraError(f"no restorable backup of cluster {cluster} at {store.url('')} "
                              f"({'; '.join(problems[:3]) or 'found: ' + (', '.join(names) or 'nothing')}). {NOTHING}")
        chosen = newest["id"]
    chain = chain_manifests(manifests, chosen)
    head = chain[-1]
    if head.get("method") not in _tools.PHYSICAL:
        raise GaleraError(f"backup {head['id']} is a logical dump: the drill restores physical backups. {NOTHING}")
    key = load_key(params)
    _restore.check_keys([(m["id"], m) for m in chain], key)
    missing = _tools.missing([head["method"], "extract", "zstd", "server"])
    if missing:
        raise GaleraError(f"{', '.join(missing)} missing on this host: install {_tools.install_hint(missing)}. {NOTHING}")
    run_id = _manifest.new_run_id()
    scratch = os.path.join(work_dir, f"drill-{run_id}")
    verify = head.get("verify") if isinstance(head.get("verify"), dict) else {}
    result = dict(changed=True, run_id=run_id, cluster=cluster, id=head["id"], chain=[m["id"] for m in chain],
                  source=store.url(head["id"]), scratch=scratch, record=drill_record_path(record_dir, cluster),
                  verify_level=verify.get("level"))
    if check_mode:
        result["msg"] = f"would restore {head['id']} into {scratch}, verify it and write {result['record']}"
        return result
    host = params.get("node_name") or socket.gethostname()
    try:
        owner = pwd.getpwnam("mysql")
    except KeyError:
        raise GaleraError(f"there is no 'mysql' user on this host to run the restored server as. {NOTHING}") from None
    blocked = _restore.reachable_by(work_dir, owner.pw_uid, owner.pw_gid)
    if blocked:
        raise GaleraError(f"the server's user (mysql) cannot enter {blocked}, on the way to {work_dir} where the drill "
                          f"starts its server: give it search permission (chmod o+x {blocked}) or choose another "
                          f"galera_restore_work_dir. {NOTHING}")
    summary = _catalog.summarize([head])[0]

    def work(worker, key_file):
        started, began = _stores.utc_text(), time.time()
        fetched = []
        out = dict(cluster=cluster, id=head["id"], chain=result["chain"], record=result["record"], host=host)
        try:
            paths, fetched = fetch_chain(worker, store, chain, work_dir)
            out["integrity"] = verify_members(worker, paths, chain, key)
            expected = read_tables(paths[-1])
            if not os.path.isdir(work_dir):
                _paths.make_dir(work_dir, 0, 0, 0o711)
            worker.step("extracting", phase="prepare")
            data = os.path.join(scratch, "data")
            os.makedirs(data, mode=0o700)
            os.chown(scratch, owner.pw_uid, owner.pw_gid)

            def progress(text):
                worker.step(text, phase="prepare", watch=data)
            _restore.prepare_chain(head["method"], paths, data, scratch, key_file, os.path.join(scratch, "prepare.log"),
                                   progress=progress, records={p: m.get("encryption") or None for p, m in zip(paths, chain)})
            worker.step("starting a standalone server on the restored copy (no network, wsrep off)", phase="server")
            server = _restore.Throwaway(os.path.join(scratch, "server"), data, "mysql", owner.pw_uid, owner.pw_gid)
            os.makedirs(server.scratch, mode=0o700, exist_ok=True)
            server.start()
            try:
                worker.step("checking the tables and their checksums", phase="verify")
                conn = server.connect()
                try:
                    recorded = verify.get("checksums") or {}
                    present, checksums = _restore.table_checksums(
                        conn, [(str(r.get("schema")), str(r.get("table"))) for r in recorded.values() if isinstance(r, dict)])
                finally:
                    conn.close()
            finally:
                server.stop()
            verdict = _recovery.table_verdict(expected, recorded, {host: dict(tables=[[s, t] for s, t, _b in present],
                                                                              checksums=checksums)})
            out["verify"] = dict(tables=len(present), expected=len(expected), checksums=verdict["compared_recorded"],
                                 message=verdict["message"])
            if not verdict["ok"]:
                raise GaleraError(verdict["message"])
            worker.end_phase()
            record = _recovery.drill_record(cluster, "ok", started, _stores.utc_text(), time.time() - began, host,
                                            summary, out["verify"], source=result["source"],
                                            phases=dict(worker.state["phases"]))
            out["result"] = "ok"
        except GaleraError as exc:
            worker.end_phase()
            record = _recovery.drill_record(cluster, "failed", started, _stores.utc_text(), time.time() - began, host,
                                            summary, out.get("verify"), error=exc.msg, step=worker.state.get("step"),
                                            source=result["source"], phases=dict(worker.state["phases"]))
            out["result"] = "failed"
            out["error"] = exc.msg
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if fetched and not params.get("keep_fetched"):
                _stores.LocalStore(work_dir).delete(fetched)
        path = result["record"]
        last_ok = previous_ok(path)
        if record["result"] != "ok" and last_ok:
            record["last_ok"] = last_ok
        if not os.path.isdir(record_dir):
            _paths.make_dir(record_dir, 0, 0, 0o755)
        _manifest.write_json_atomic(path, record, mode=0o644)
        out["drill"] = record
        if params.get("metrics_dir"):
            try:
                out["metrics"] = _metrics.write(params["metrics_dir"], cluster, host, drill=dict(
                    result=record["result"], duration_seconds=record["duration_seconds"],
                    finished_at=record["finished_at"]))
            except GaleraError as exc:
                out["metrics_error"] = exc.msg
        if record["result"] != "ok":
            raise GaleraError(f"the drill of {head['id']} failed at '{record['step']}': {record['error']}. Recorded in "
                              f"{path}.")
        return out

    started = spawn(run_id, "drill", work, key, params.get("encrypt_key_file") or None)
    result.update(started, msg=f"drill of {head['id']} started (run {run_id})")
    return result


# ---------------------------------------------------------------------------------------------
# logical: a mysqldump/mydumper backup loaded into the running cluster through this node

LOGIN_KEYS = ("login_user", "login_password", "login_host", "login_port", "login_unix_socket", "config_file",
              "ca_cert", "client_cert", "client_key", "check_hostname", "connect_timeout")


def _dump_lines(path: str, key_file: str | None, record: dict | None, log: str):
    """The plain lines of a stored dump, decrypted and decompressed as they stream; GaleraError when
    decoding fails (read to the end)."""
    stages = _restore.decode_stages(path, key_file, record)
    if not stages:
        with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            yield from handle
        return
    pipeline = _tools.Pipeline(stages, log, stdin=path, stdout=subprocess.PIPE)
    finished = False
    try:
        for raw in pipeline.stdout:
            yield raw.decode("utf-8", "surrogateescape")
        finished = True
    finally:
        pipeline.stdout.close()
        if not finished:
            pipeline.kill()
    pipeline.wait("reading the dump")


def logical_schema_problems(path: str, method: str, key_file, record, log: str, system: bool, require_pk: bool,
                            own) -> list:
    if method == "mydumper":
        problems = []
        data = os.path.join(path, "data")
        for name in sorted(os.listdir(data)):
            found = _logical.mydumper_schema_file(name)
            if not found:
                continue
            full = os.path.join(data, name)
            if name.endswith(".zst"):
                # pylint: disable-next=ansible-bad-function  # called without the module or runner
                text = subprocess.run([_tools.find("zstd") or "zstd", "-dcq", full], capture_output=True,
                                      check=True).stdout.decode("utf-8", "replace")
            else:
                with open(full, "r", encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            problems += _logical.schema_problems(text.splitlines(), found[0], system, require_pk, own)
        return problems
    dump = _restore.stream_file(path, _restore.DUMP_BASE)
    return _logical.schema_problems(_dump_lines(dump, key_file, record, log), None, system, require_pk, own)


def node_role(params: dict) -> dict:
    """This node's Galera state; GaleraError unless it is Synced in a Primary component."""
    conn = _connection.connect(params)
    try:
        status, variables, snap = _wsrep.Node(conn).read()
    finally:
        conn.close()
    if snap.get("cluster_status") != "Primary" or snap.get("local_state") != _wsrep.SYNCED:
        raise GaleraError(f"this node is {snap.get('local_state_comment')} in a {snap.get('cluster_status')} component: "
                          f"a logical backup is loaded through a Synced node of a running cluster. {NOTHING}")
    return dict(snapshot=snap, cluster_name=variables.get("wsrep_cluster_name"))


def logical_start(runner, params: dict, check_mode: bool) -> dict:
    node = node_role(params)
    cluster = params.get("cluster") or node["cluster_name"]
    store = open_source(runner, params.get("source"), params.get("dir"))
    manifests, _problems = catalogue(store)
    if params.get("id"):
        chosen = params["id"]
    else:
        logical = [m for m in manifests if m.get("method") in _tools.LOGICAL]
        newest = _catalog.newest_good(logical, cluster)
        if newest is None:
            raise GaleraError(f"no restorable logical backup of cluster {cluster} at {store.url('')}. {NOTHING}")
        chosen = newest["id"]
    chain = chain_manifests(manifests, chosen)
    head = chain[-1]
    if head.get("method") not in _tools.LOGICAL:
        raise GaleraError(f"backup {head['id']} is a physical {head.get('method')} backup: rebuild nodes from it with "
                          f"dbtools.galera.restore_cluster or dbtools.galera.rebuild_node. {NOTHING}")
    if _manifest.cluster_name(head) != cluster:
        raise GaleraError(f"backup {head['id']} is of cluster {_manifest.cluster_name(head)!r}, this node's cluster is "
                          f"{cluster!r}: give galera_restore_cluster when that is meant. {NOTHING}")
    key = load_key(params)
    _restore.check_keys([(m["id"], m) for m in chain], key)
    tools = ["client", "zstd"] + (["myloader"] if head["method"] == "mydumper" else []) + \
        (["openssl"] if head.get("encryption") else [])
    missing = _tools.missing(tools)
    if missing:
        raise GaleraError(f"{', '.join(missing)} missing on this node: install {_tools.install_hint(missing)}. {NOTHING}")
    run_id = _manifest.new_run_id()
    verify = head.get("verify") if isinstance(head.get("verify"), dict) else {}
    own = [params.get("lease_database") or "dbtools_galera"]
    result = dict(changed=True, run_id=run_id, id=head["id"], method=head["method"], cluster=cluster,
                  source=store.url(head["id"]), verify_level=verify.get("level"),
                  checksums=verify.get("checksums") or {},
                  skipped_schemas=own + ([] if params.get("system") else list(_logical.SYSTEM_SCHEMAS)))
    if check_mode:
        result["msg"] = f"would check the tables of {head['id']} and load it through this node"
        return result
    work_dir = params.get("work_dir")
    login = {k: params.get(k) for k in LOGIN_KEYS}
    system, require_pk = bool(params.get("system")), bool(params.get("require_pk", True))

    def work(worker, key_file):
        out = dict(id=head["id"], method=head["method"], run_id=run_id, fetched=[])
        paths, out["fetched"] = fetch_chain(worker, store, chain, work_dir)
        path = paths[-1]
        out["integrity"] = verify_members(worker, paths, chain, key)
        out["tables"] = [t for t in read_tables(path) if t[0] not in own]
        log = os.path.join(run_dir(run_id), "load.log")
        worker.step("checking that every table is InnoDB with a primary key", phase="check")
        problems = logical_schema_problems(path, head["method"], key_file, head.get("encryption") or None, log,
                                           system, require_pk, own)
        if problems:
            raise GaleraError(f"{head['id']} holds tables Galera cannot replicate safely: "
                              f"{_logical.describe_problems(problems)}. Convert them (InnoDB, a primary key) at the "
                              f"source and take a new backup, or load them by hand. Nothing was loaded.",
                              tables=problems)
        cnf = os.path.join(run_dir(run_id), "client.cnf")
        _tools.write_private(cnf, _tools.option_file_text(login))
        worker.step(f"loading {head['id']} through this node", phase="load")
        if head["method"] == "mydumper":
            argv = [_tools.find("myloader") or "myloader", f"--defaults-file={cnf}",
                    f"--directory={os.path.join(path, 'data')}", f"--threads={int(params.get('threads') or 2)}",
                    "--overwrite-tables", f"--regex={_logical.myloader_regex(system, own)}"]
            _tools.Pipeline([argv], log).wait("myloader could not load the dump")
            out["filtered"] = dict(system_skipped=not system)
        else:
            out["filtered"] = load_dump(path, key_file, head.get("encryption") or None, cnf, log, system, own)
        os.unlink(cnf)
        return out

    started = spawn(run_id, "logical", work, key, params.get("encrypt_key_file") or None)
    result.update(started, msg=f"loading {head['id']} into cluster {cluster} through this node (run {run_id})")
    return result


def load_dump(path: str, key_file, record, cnf: str, log: str, system: bool, own) -> dict:
    """Stream the dump through ``DumpFilter`` into the SQL client; the counts of what was left out."""
    dump = _restore.stream_file(path, _restore.DUMP_BASE)
    client = _tools.Pipeline([[_tools.find("client") or "mariadb", f"--defaults-extra-file={cnf}", "--binary-mode",
                               "--max-allowed-packet=1G", "--batch"]], log, stdin=subprocess.PIPE)
    stages = _restore.decode_stages(dump, key_file, record)
    source = _tools.Pipeline(stages, log, stdin=dump, stdout=subprocess.PIPE) if stages else None
    keep = _logical.DumpFilter(system, own)
    try:
        reader = source.stdout if source else open(dump, "rb")  # pylint: disable=consider-using-with
        try:
            for raw in reader:
                text = keep.line(raw.decode("utf-8", "surrogateescape"))
                if text is not None:
                    client.stdin.write(text.encode("utf-8", "surrogateescape"))
        finally:
            reader.close()
        client.stdin.close()
    except BrokenPipeError:
        pass  # the client stopped reading: its exit status and log say why
    except BaseException:
        client.kill()
        if source:
            source.kill()
        raise
    if source:
        source.wait("decoding the dump")
    client.wait("the SQL client could not load the dump")
    return dict(keep.counts, skipped_schemas=sorted(s for s in keep.skipped_schemas if s))

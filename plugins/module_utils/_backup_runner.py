# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The backup run on the node (private): a detached process that runs the backup tool, checksums
and verifies what it wrote, and reports through a state file.

``galera_backup_job step=start`` forks it (``_proc.spawn_detached``) after the node was desynced; it
outlives the module, so a backup of hours needs no open SSH connection, and it is the process the
watchdog renews the desync lease for: the lease is held until the backup is written AND verified.
It is the leader of its own process group (the tool and its pipeline are in it), so stopping the
run stops all of it. Its state file (0600, written atomically) says the step, the bytes written and,
at the end, the result; the credentials' option file and key file are removed when it ends, whatever
happened, so a dead controller leaves no secret on the node.

With ``galera_backup_stream_to`` the compressed (and encrypted) stream goes straight into that
store (``_stores``' ``open_writer``) instead of a local file: its sha256 and MAC are computed, and
its compression tested (``zstd -t``, after decryption), as it passes; only the small files (meta/,
tables.json, backup.log, SHA256SUMS) stay here, as the backup's local record. ``_backup_job.finish``
then verifies it at the destination and writes its manifest there last.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import threading
import time
import traceback
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils import (
    _connection,
    _copy,
    _crypto,
    _lease,
    _manifest,
    _proc,
    _restore,
    _stores,
    _tools,
    _wsrep,
    _xbstream,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

BLOCK = 1 << 20
STATE_INTERVAL = 2.0
LOG = "backup.log"
STREAM_OUT = _restore.STREAM_BASE + ".zst"
DUMP_OUT = _restore.DUMP_BASE
EXCLUDED = (_manifest.MANIFEST, _manifest.SUMS, _manifest.RUN_RECORD)
STREAM_KINDS = ("ssh", "s3")
# What a galera_backup_copies entry holds besides the store's own options.
ENTRY_ONLY = ("keep", "keep_tiers", "max_age")


def utc_text(moment: float | None = None) -> str:
    moment = time.time() if moment is None else moment
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stream_entry(settings: dict) -> dict | None:
    """The ``galera_backup_copies`` entry that ``galera_backup_stream_to`` names (settings ``stream_to``
    and ``copies``), or None when the backup is not streamed. GaleraError when it names none, or one
    that is not an SSH or S3 store."""
    name = settings.get("stream_to") or ""
    if not name:
        return None
    entries = [e for e in settings.get("copies") or [] if isinstance(e, dict) and e.get("name") == name]
    names = ", ".join(str(e.get("name")) for e in settings.get("copies") or [] if isinstance(e, dict)) or "none"
    if len(entries) != 1:
        raise GaleraError(f"galera_backup_stream_to={name!r} must name exactly one entry of galera_backup_copies by its "
                          f"name ({len(entries)} do; the names are: {names}). Nothing was changed.")
    if entries[0].get("type") not in STREAM_KINDS:
        raise GaleraError(f"galera_backup_stream_to={name!r} names a destination of type {entries[0].get('type')!r}: "
                          f"a backup streams only to an ssh or s3 entry. Nothing was changed.")
    return entries[0]


def open_stream(settings: dict):
    """(entry, store) of the destination a streamed backup goes to; (None, None) when not streamed."""
    entry = stream_entry(settings)
    if entry is None:
        return None, None
    opts = {k: v for k, v in entry.items() if k not in ENTRY_ONLY}
    return entry, _copy.open_store(_stores.CommandRunner(), opts)


class Stopped(Exception):
    """The run was told to stop (SIGTERM from the watchdog's guard or from an abort, or its time limit)."""


class Sink:
    """Where a stream ends: a file written 0600, its sha256 and (encrypted) MAC computed as it passes.

    With ``writer`` (a store's, see ``_stores``) the stream goes there instead of ``path`` (then a URL,
    for messages), and ``check`` (a pipeline reading stdin: decrypt, ``zstd -t``) tests it as it
    passes; ``close`` commits it only when that test passed and ``guard()`` (the run's stop check)
    does not raise; ``abort`` drops it."""

    def __init__(self, path: str, mac=None, writer=None, check=None, rel: str | None = None, guard=None):
        self.path = path
        self.rel = rel or os.path.basename(path)
        self.writer = writer
        self.check = check
        self.guard = guard
        if writer is None:
            self.handle = open(path, "xb")  # pylint: disable=consider-using-with
            os.chmod(path, 0o600)
        else:
            self.handle = writer
        self.sha = hashlib.sha256()
        self.mac = mac
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha.update(data)
        if self.mac is not None:
            self.mac.update(data)
        if self.check is not None and self.check.stdin is not None:
            try:
                self.check.stdin.write(data)
            except BrokenPipeError:  # the test ended early: close() reports how
                stdin, self.check.stdin = self.check.stdin, None
                try:
                    stdin.close()
                except OSError:
                    pass
        self.bytes += len(data)

    def close(self) -> None:
        if self.writer is not None:
            if self.check is not None:
                try:
                    if self.check.stdin is not None:
                        self.check.stdin.close()
                except BrokenPipeError:
                    pass
                try:
                    self.check.wait(f"testing {self.rel} as it was streamed ("
                                    f"{'decrypting and ' if self.mac is not None else ''}decompressing it)")
                except GaleraError:
                    self.writer.abort()
                    raise
            if self.guard is not None:
                self.guard()  # a run told to stop never commits what it streamed (drain aborts it)
            self.writer.close()
        elif not self.handle.closed:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()

    def abort(self) -> None:
        """Drop the stream (a store's writer) or close the file; never raises."""
        if self.check is not None:
            self.check.kill()
        if self.writer is not None:
            self.writer.abort()
        elif not self.handle.closed:
            self.handle.close()

    def drain(self, src) -> None:
        try:
            while True:
                data = src.read(BLOCK)
                if not data:
                    break
                self.write(data)
            self.close()
        except BaseException:
            self.abort()
            raise


class Tee:
    """Copies a plain stream (the tool's output) to the compressor, keeping what the run must read of it."""

    def __init__(self, kind: str):
        self.kind = kind  # "xbstream" or "dump"
        self.result = {}
        self.error = None
        self.head = bytearray()
        self.tail = b""

    def run(self, src, dst) -> None:
        try:
            if self.kind == "xbstream":
                self.result = _xbstream.copy(src, dst)
            else:
                total = 0
                while True:
                    data = src.read(BLOCK)
                    if not data:
                        break
                    if len(self.head) < (1 << 20):
                        self.head.extend(data[: (1 << 20) - len(self.head)])
                    self.tail = (self.tail + data)[-4096:]
                    dst.write(data)
                    total += len(data)
                self.result = dict(bytes=total)
        except BaseException as exc:  # reported by the run, which stops the pipeline
            self.error = exc
        finally:
            try:
                dst.close()
            except OSError:
                pass


class Runner:
    """One backup run. ``run`` is what preflight returned; ``settings`` the role's backup settings."""

    def __init__(self, run: dict, settings: dict, login: dict, key: bytes | None, key_file: str | None,
                 cnf: str, watchdog_state: str | None):
        self.run = run
        self.s = settings
        self.login = login
        self.key = key
        self.key_file = key_file
        self.cnf = cnf
        self.watchdog_state = watchdog_state
        self.partial = run["partial"]
        self.log = os.path.join(self.partial, LOG)
        self.lock = threading.Lock()
        # The cluster (name, state uuid) makes the run directory provably this cluster's: the next run's start
        # sweeps it once its runner is dead (_backup_job.sweep); without it a dead run's directory stayed forever.
        self.state = dict(run_id=run["run_id"], id=run["id"], cluster=run.get("cluster"), step="starting", done=False,
                          result=None, error=None, started_at=utc_text(), bytes=0, process=None)
        self.pipelines = []
        self.stopping = None
        self.sinks = []
        self.record = None
        self.store = None  # the destination of a streamed backup (galera_backup_stream_to)
        self.started = time.monotonic()

    # -- state ---------------------------------------------------------------------------------
    def save(self, **changes) -> None:
        with self.lock:
            self.state.update(changes)
            self.state["updated_at"] = utc_text()
            self.state["elapsed"] = round(time.monotonic() - self.started, 1)
            try:
                _manifest.write_json_atomic(self.run["state_file"], self.state)
            except OSError:
                pass  # the next save tries again; the final result is written from main()

    def step(self, name: str) -> None:
        self.save(step=name)

    def _bytes_written(self) -> int:
        total = sum(sink.bytes for sink in self.sinks)
        if total:
            return total
        size = 0
        for top, _dirs, files in os.walk(self.partial):
            for name in files:
                try:
                    size += os.lstat(os.path.join(top, name)).st_size
                except OSError:
                    pass
        return size

    def _reporter(self) -> None:
        while not self.state["done"]:
            time.sleep(STATE_INTERVAL)
            if not self.state["done"]:
                self.save(bytes=self._bytes_written())

    # -- stopping ------------------------------------------------------------------------------
    def _on_term(self, _signum, _frame) -> None:
        reason = self._watchdog_reason()
        self.stop(f"the run was stopped (SIGTERM){' by the watchdog: ' + reason if reason else ''}")

    def stop(self, why: str) -> None:
        if self.stopping is None:
            self.stopping = why
        for pipeline in list(self.pipelines):
            pipeline.kill()

    def _check_stop(self) -> None:
        if self.stopping:
            raise Stopped(self.stopping)

    def failure_text(self, exc) -> str:
        """The run's error. A tool that failed because the run was told to stop, or after the watchdog's guard
        ended the desync (the tool may fail on its own before the watchdog's SIGTERM arrives: a tool paused past
        the server's connect_timeout loses its login), reports that cause first."""
        text = exc.msg if isinstance(exc, GaleraError) else str(exc)
        if not isinstance(exc, GaleraError):
            return text
        cause = self.stopping
        if not cause:
            reason = self._watchdog_reason()
            cause = f"the watchdog ended the desync: {reason}" if reason and reason not in text else None
        return f"{cause} ({text[:300]})" if cause else text

    def _watchdog_reason(self) -> str:
        try:
            state = _manifest.read_json(self.watchdog_state) if self.watchdog_state else {}
        except (OSError, ValueError):
            return ""
        if state.get("resynced"):
            return str(state.get("reason") or "it resynced the node")
        if state.get("guard"):
            return "guard: " + str(state["guard"])
        return ""

    # -- the run -------------------------------------------------------------------------------
    def main(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        timer = threading.Timer(float(self.s["max_duration"]), self.stop,
                                [f"the backup ran longer than galera_backup_max_duration={self.s['max_duration']} s "
                                 "and was stopped"])
        timer.daemon = True
        try:
            self.state["process"] = _proc.identity()
            self.save()
            self.record = _manifest.run_record(self.run["run_id"], self.run["id"], self.run["cluster"]["name"],
                                               self.run["cluster"]["state_uuid"], self.run.get("owner"),
                                               self.run.get("host"), self.state["process"], self.state["started_at"])
            _manifest.write_json_atomic(os.path.join(self.partial, _manifest.RUN_RECORD), self.record)
            threading.Thread(target=self._reporter, daemon=True).start()
            timer.start()
            if self.run.get("stream"):
                self.step(f"opening the stream to {self.run['stream']['name']} ({self.run['stream']['url']})")
                _entry, self.store = open_stream(self.s)
                self.store.begin_stream(self.run["id"], self.record)
            out = self.backup()
            self.save(done=True, result="ok", step="done", out=out, bytes=out["checksum"]["bytes"])
        except (GaleraError, Stopped) as exc:
            self.abort_stream()
            self.save(done=True, result="failed", error=f"{self.state['step']}: {self.failure_text(exc)}")
        except BaseException as exc:  # a bug: keep the traceback where the operator finds it
            self.abort_stream()
            self.save(done=True, result="failed",
                      error=f"{self.state['step']}: unexpected {type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc()[-4000:])
        finally:
            timer.cancel()
            for pipeline in self.pipelines:
                pipeline.kill()
            self.cleanup_secrets()
            shutil.rmtree(self.run["scratch"], ignore_errors=True)

    def abort_stream(self) -> None:
        """A failed streamed run: drop its streams and its staging place at the destination (what a
        kill leaves, finish's discard or retention there removes later)."""
        if self.store is None:
            return
        for sink in self.sinks:
            sink.abort()
        try:
            self.store.abort_stream(self.run["id"], self.run["run_id"])
        except GaleraError:
            pass

    def cleanup_secrets(self) -> None:
        for path in (self.cnf, self.run.get("key_file_private")):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def backup(self) -> dict:
        out = dict(tool=self.run["tool"], method=self.run["tool"])
        self.step("listing tables")
        tables = self.list_tables()
        _manifest.write_json_atomic(os.path.join(self.partial, _restore.TABLES_FILE), tables)
        out["tables"] = len(tables)
        self.step(f"running {self.run['tool']}")
        started = time.time()
        out.update(self.run_tool())
        out["tool_seconds"] = round(time.time() - started, 1)
        out["tool_started_at"], out["tool_finished_at"] = utc_text(started), utc_text()
        self._check_stop()
        self.step("checking the node stayed desynced under our lease")
        self.check_still_ours()
        self.step("checksumming")
        out["checksum"] = self.checksum(out.get("encryption"))
        verify = dict(level=self.s["verify"], result="ok")
        if self.s["verify"] in ("prepare", "restore"):
            os.makedirs(self.run["scratch"], mode=0o700, exist_ok=True)
            # Marks the verification copy as this run's, so a later run removes it if this one dies.
            _manifest.write_json_atomic(os.path.join(self.run["scratch"], _manifest.RUN_RECORD), self.record)
        if self.s["verify"] in ("prepare", "restore") and self.run["physical"]:
            verify["prepared_members"] = self.prepare()
        if self.s["verify"] == "restore":
            verify.update(self.restore_test(tables))
        out["verify"] = verify
        return out

    # -- tables --------------------------------------------------------------------------------
    def list_tables(self) -> list:
        try:
            conn = _connection.connect(self.login)
        except GaleraError as exc:
            raise GaleraError(f"cannot list the tables: {exc.msg}") from exc
        try:
            return _restore.list_tables(conn)
        finally:
            conn.close()

    def check_still_ours(self) -> None:
        """A backup counts only if the node stayed desynced under our lease for the whole tool run."""
        reason = self._watchdog_reason()
        if reason:
            raise GaleraError(f"the watchdog ended the desync during the backup: {reason}. The node was not "
                              "protected for the whole run, so the backup is discarded")
        if not self.run.get("lease", True):
            return
        conn = _connection.connect(self.login)
        try:
            node = _wsrep.Node(conn)
            desync = node.query("SELECT @@GLOBAL.wsrep_desync", record=False)[0][0]
            row = _lease.Lease(node, self.s["lease_database"]).read()
        finally:
            conn.close()
        if str(desync) not in ("1", "ON"):
            raise GaleraError("the node is no longer desynced (someone set wsrep_desync=OFF during the backup): "
                              "it may have sent flow control, and the run no longer holds it; the backup is discarded")
        owner, node_name = self.run.get("owner"), self.run["node"]["wsrep_node_name"]
        if _lease.judge(row, owner, node_name) != _lease.OURS:
            raise GaleraError(f"the desync lease is no longer this run's ({_lease.describe(row)}): the backup is "
                              "discarded")

    # -- the tool ------------------------------------------------------------------------------
    def _prio(self) -> list:
        return _tools.priority_prefix(self.s["nice"], self.s["ionice_class"], self.s["ionice_level"])

    def _start(self, stages, **kwargs) -> _tools.Pipeline:
        self._check_stop()
        pipeline = _tools.Pipeline(stages, self.log, **kwargs)
        self.pipelines.append(pipeline)
        return pipeline

    def _applied_priority(self, pid: int) -> dict:
        time.sleep(0.3)  # nice and ionice exec the tool: read the process once it is the tool
        applied = dict(nice=None, ionice=None)
        try:
            applied["nice"] = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            pass
        ionice = _tools.find("ionice")
        if ionice:
            try:
                # pylint: disable-next=ansible-bad-function  # the detached backup run: no AnsibleModule
                done = subprocess.run([ionice, "-p", str(pid)], capture_output=True, text=True, timeout=5, check=False)
                if done.returncode == 0:
                    applied["ionice"] = done.stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                pass
        return applied

    def _stream(self, tool_argv, kind: str, out_base: str) -> dict:
        """tool | (tee) | zstd [| openssl] > file, with hashes; returns what the tee kept and the file's facts."""
        encrypted = self.key is not None
        record = _crypto.new_record(self.key) if encrypted else None
        rel = out_base + (".zst.enc" if encrypted else ".zst")
        tool = self._start([self._prio() + tool_argv], stdout=subprocess.PIPE)
        applied = self._applied_priority(tool.pids[0])
        stages = [self._prio() + _tools.zstd_argv(self.s["compress_level"], self.s["threads"])]
        if encrypted:
            stages.append(self._prio() + _crypto.encrypt_argv(_tools.find("openssl") or "openssl", self.key_file))
        compress = self._start(stages, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        tee = Tee(kind)
        copier = threading.Thread(target=tee.run, args=(tool.stdout, compress.stdin), daemon=True)
        copier.start()
        sink = self._sink(rel, _crypto.Mac(self.key, record, rel) if encrypted else None, record)
        self.sinks.append(sink)
        drained = False
        try:
            sink.drain(compress.stdout)
            drained = True
        finally:
            if not drained:
                # Nobody reads the compressor any more (the destination is full, the run was stopped): end
                # the pipeline, else the copier blocks on its stdin, the tool on the copier, and we on both.
                compress.kill()
                tool.kill()
            copier.join()
        tool.wait(f"{self.run['tool']}")
        if tee.error is not None:
            compress.kill()
            if isinstance(tee.error, GaleraError):
                raise tee.error
            raise GaleraError(f"reading the backup stream failed: {tee.error}")
        compress.wait("compressing" + (" and encrypting" if encrypted else ""))
        self._check_stop()
        facts = dict(stream=dict(file=rel, bytes=sink.bytes, sha256=sink.sha.hexdigest(), plain_bytes=tee.result.get("bytes")),
                     priority=applied)
        if encrypted:
            _crypto.record_file_mac(record, rel, sink.mac.hexdigest())
            _crypto.seal(record, self.key)
            facts["encryption"] = record
        facts["tee"] = tee
        return facts

    def _sink(self, rel: str, mac, record: dict | None) -> Sink:
        """A file in the partial, or (streamed) a writer at the destination tested as it passes."""
        if self.store is None:
            return Sink(os.path.join(self.partial, rel), mac)
        check = self._start(_restore.check_stages(rel, self.key_file, record), stdin=subprocess.PIPE)
        writer = self.store.open_writer(self.run["id"], rel, size_hint=self.run.get("data_bytes"))
        return Sink(f"{self.run['stream']['url']}/{rel}", mac, writer=writer, check=check, rel=rel,
                    guard=self._check_stop)

    def run_tool(self) -> dict:
        tool = self.run["tool"]
        tool_path = _tools.find(tool)
        if not tool_path:
            raise GaleraError(f"{tool} is not installed (any more) on this node")
        extra = list(self.s.get("extra_args") or [])
        meta = os.path.join(self.partial, "meta")
        out = {}
        if tool in _tools.PHYSICAL:
            os.makedirs(meta, mode=0o700, exist_ok=True)
            if self.s["compress"] == "zstd":
                argv = _tools.physical_argv(tool_path, self.cnf, True, os.path.join(self.partial, ".tmp"), meta,
                                            self.run.get("incremental_lsn"), self.s["throttle"], extra)
                facts = self._stream(argv, "xbstream", _restore.STREAM_BASE)
                shutil.rmtree(os.path.join(self.partial, ".tmp"), ignore_errors=True)
                for name, data in facts.pop("tee").result.get("files", {}).items():
                    with open(os.path.join(meta, name), "wb") as handle:
                        handle.write(data)
                out.update(facts)
            else:
                data_dir = os.path.join(self.partial, "data")
                argv = _tools.physical_argv(tool_path, self.cnf, False, data_dir, meta,
                                            self.run.get("incremental_lsn"), self.s["throttle"], extra)
                pipeline = self._start([self._prio() + argv])
                out["priority"] = self._applied_priority(pipeline.pids[0])
                pipeline.wait(tool)
                for name in _xbstream.META_FILES:
                    if os.path.isfile(os.path.join(data_dir, name)) and not os.path.exists(os.path.join(meta, name)):
                        shutil.copyfile(os.path.join(data_dir, name), os.path.join(meta, name))
            if "completed OK!" not in _tools.tail(self.log, 20):
                raise GaleraError(f"{tool} did not report 'completed OK!': {_tools.tail(self.log)}")
            out.update(physical_position(meta, self.run.get("incremental_lsn")))
        elif tool == "mydumper":
            data_dir = os.path.join(self.partial, "data")
            argv = _tools.mydumper_argv(tool_path, self.cnf, data_dir, self.s["threads"], self.s["compress"] == "zstd",
                                        os.path.join(self.partial, "mydumper.log"), extra)
            pipeline = self._start([self._prio() + argv])
            out["priority"] = self._applied_priority(pipeline.pids[0])
            pipeline.wait("mydumper")
            out.update(mydumper_position(os.path.join(data_dir, "metadata")))
        else:
            argv = _tools.mysqldump_argv(tool_path, self.cnf, bool(self.run.get("binlog")), extra)
            if self.s["compress"] == "zstd":
                facts = self._stream(argv, "dump", _restore.DUMP_BASE)
                tee = facts.pop("tee")
                out.update(facts)
            else:
                tee = Tee("dump")
                pipeline = self._start([self._prio() + argv], stdout=subprocess.PIPE)
                out["priority"] = self._applied_priority(pipeline.pids[0])
                sink = Sink(os.path.join(self.partial, _restore.DUMP_BASE))
                self.sinks.append(sink)
                tee.run(pipeline.stdout, sink)
                pipeline.wait(os.path.basename(tool_path))
            if tee.error is not None:
                raise GaleraError(f"reading the dump failed: {tee.error}")
            if b"-- Dump completed" not in tee.tail:
                raise GaleraError(f"{os.path.basename(tool_path)}'s output does not end with '-- Dump completed': the "
                                  f"dump is incomplete. {_tools.tail(self.log)}")
            out.update(dump_position(bytes(tee.head)))
        return out

    # -- checksums -----------------------------------------------------------------------------
    def files(self) -> list:
        """Relative paths of every file of the backup that SHA256SUMS lists (sorted)."""
        rels = []
        for top, dirs, names in os.walk(self.partial):
            dirs[:] = sorted(d for d in dirs if not (top == self.partial and d == ".tmp"))
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(top, name), self.partial)
                if rel in EXCLUDED:
                    continue
                rels.append(rel)
        return sorted(rels)

    def checksum(self, encryption: dict | None) -> dict:
        """Write SHA256SUMS, then read every file back: its sha256, the compressed streams' integrity, and
        for encrypted streams the MAC and a decryption with the key."""
        streamed = {s.rel: s for s in self.sinks if s.writer is not None}  # at the destination, not here
        rels = sorted(self.files() + list(streamed))
        written = {s.rel: s.sha.hexdigest() for s in self.sinks if s.writer is None}
        lines = []
        total = 0
        for rel in rels:
            self._check_stop()
            if rel in streamed:
                lines.append(f"{streamed[rel].sha.hexdigest()}  ./{rel}\n")
                total += streamed[rel].bytes
                continue
            path = os.path.join(self.partial, rel)
            if "\n" in rel or "\\" in rel:
                raise GaleraError(f"the backup holds a file whose name cannot be listed in SHA256SUMS: {rel!r}")
            digest = self.read_back(path, rel, encryption)
            if rel in written and written[rel] != digest:
                raise GaleraError(f"{rel} reads back with another sha256 than was written: the disk under "
                                  f"{self.run['dir']} corrupted it. Check that disk; the backup is discarded")
            lines.append(f"{digest}  ./{rel}\n")
            total += os.path.getsize(path)
        sums = os.path.join(self.partial, _manifest.SUMS)
        _tools.write_private(sums, "".join(lines))
        with open(sums, "rb") as handle:
            sums_sha = hashlib.sha256(handle.read()).hexdigest()
        total += os.path.getsize(sums)
        return dict(files=len(lines), bytes=total, sha256=sums_sha)

    def read_back(self, path: str, rel: str, encryption: dict | None) -> str:
        digest = hashlib.sha256()
        check = None
        if rel.endswith(".zst.enc"):
            if encryption is None or self.key is None:
                raise GaleraError(f"{rel} is encrypted but the run has no key to check it with")
            mac = _crypto.Mac(self.key, encryption, rel)
            check = self._start(_restore.check_stages(path, self.key_file, encryption), stdin=subprocess.PIPE)
        elif rel.endswith(".zst"):
            mac = None
            check = self._start(_restore.check_stages(path, None), stdin=subprocess.PIPE)
        else:
            mac = None
        with open(path, "rb") as handle:
            try:
                while True:
                    data = handle.read(BLOCK)
                    if not data:
                        break
                    digest.update(data)
                    if mac is not None:
                        mac.update(data)
                    if check is not None:
                        check.stdin.write(data)
            except BrokenPipeError:
                pass
        if check is not None:
            try:
                check.stdin.close()
            except BrokenPipeError:
                pass
            check.wait(f"checking {rel} ({'decrypting and ' if mac is not None else ''}decompressing it)")
        if mac is not None and not hmac.compare_digest(mac.hexdigest(), str((encryption.get("files") or {}).get(rel))):
            raise GaleraError(f"{rel} does not match its MAC: it changed after it was written. The backup is discarded")
        return digest.hexdigest()

    # -- verification --------------------------------------------------------------------------
    def chain_dirs(self) -> list:
        return [os.path.join(self.run["dir"], backup) for backup in self.run.get("chain") or []]

    def prepare(self) -> int:
        members = self.chain_dirs()
        _restore.check_keys([(m, _restore.read_manifest(m)) for m in members], self.key)
        target = os.path.join(self.run["scratch"], "data")
        os.makedirs(target, mode=0o700, exist_ok=True)
        return _restore.prepare_chain(self.run["tool"], members + [self.partial], target, self.run["scratch"],
                                      self.key_file, os.path.join(self.run["scratch"], "prepare.log"),
                                      progress=lambda text: self.step(f"verify: {text}"))

    def restore_test(self, tables: list) -> dict:
        scratch = self.run["scratch"]
        data = os.path.join(scratch, "data")
        user = self.run["server_user"]
        server = _restore.Throwaway(os.path.join(scratch, "server"), data, user["name"], user["uid"], user["gid"])
        os.makedirs(server.scratch, mode=0o700, exist_ok=True)
        # The server runs as its own user: it must enter the scratch directory (0700, now its own).
        os.chown(scratch, user["uid"], user["gid"])
        if not self.run["physical"]:
            os.makedirs(data, mode=0o700, exist_ok=True)
            _restore.chown_tree(scratch, user["uid"], user["gid"])
            self.step("verify: creating an empty server for the dump")
            _restore.init_datadir(data, user["name"], scratch, os.path.join(scratch, "install.log"))
        self.step("verify: starting the restored copy")
        server.start()
        try:
            if not self.run["physical"]:
                self.step("verify: loading the dump")
                self.load(server)
            self.step("verify: checking tables and checksums")
            conn = server.connect()
            try:
                return _restore.table_report(conn, tables, int(self.s["verify_sample"]))
            finally:
                conn.close()
        finally:
            server.stop()

    def load(self, server) -> None:
        log = os.path.join(self.run["scratch"], "load.log")
        if self.run["tool"] == "mydumper":
            empty = os.path.join(self.run["scratch"], "empty.cnf")
            _tools.write_private(empty, "")
            argv = [_tools.find("myloader") or "myloader", f"--defaults-file={empty}", f"--socket={server.socket}",
                    "--user=root", f"--directory={os.path.join(self.partial, 'data')}",
                    f"--threads={int(self.s['threads'])}", "--overwrite-tables"]
            self._start([argv]).wait("myloader could not load the dump")
            return
        dump = _restore.stream_file(self.partial, _restore.DUMP_BASE)
        stages = _restore.decode_stages(dump, self.key_file) + [server.client_argv()]
        self._start(stages, stdin=dump).wait("the dump could not be loaded")


# ---------------------------------------------------------------------------------------------
# Positions (pure: read from the files the tools wrote)

def _read(path: str) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def physical_position(meta: str, incremental_lsn=None) -> dict:
    """The Galera position, LSNs and binary log position a mariabackup/xtrabackup run recorded."""
    galera = ""
    for name in ("mariadb_backup_galera_info", "xtrabackup_galera_info"):
        text = _read(os.path.join(meta, name)).strip()
        if text:
            galera = text.splitlines()[0].strip()
            break
    checkpoints = {}
    for name in ("mariadb_backup_checkpoints", "xtrabackup_checkpoints"):
        text = _read(os.path.join(meta, name))
        if text:
            for line in text.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    checkpoints[key.strip()] = value.strip()
            break
    binlog = {}
    for name in ("mariadb_backup_binlog_info", "xtrabackup_binlog_info"):
        text = _read(os.path.join(meta, name)).strip()
        if text:
            parts = text.split("\t") if "\t" in text else text.split()
            binlog = dict(file=parts[0] if parts else None, position=_int(parts[1]) if len(parts) > 1 else None,
                          gtid=parts[2].strip() if len(parts) > 2 else None)
            break
    if incremental_lsn:
        if checkpoints.get("backup_type") != "incremental":
            raise GaleraError(f"the tool did not write an incremental backup (backup_type "
                              f"{checkpoints.get('backup_type')!r})")
        if str(checkpoints.get("from_lsn")) != str(incremental_lsn):
            raise GaleraError(f"the incremental starts at LSN {checkpoints.get('from_lsn')}, not at its parent's "
                              f"{incremental_lsn}")
    return dict(galera_info=galera or None, to_lsn=_int(checkpoints.get("to_lsn")),
                from_lsn=_int(checkpoints.get("from_lsn")), binlog=binlog or None)


def mydumper_position(path: str) -> dict:
    text = _read(path)
    if "Finished dump at" not in text:
        raise GaleraError("mydumper's metadata file has no 'Finished dump at': the dump is incomplete")
    binlog = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "log" and "file" not in binlog:
            binlog["file"] = value
        elif key == "pos" and "position" not in binlog:
            binlog["position"] = _int(value)
        elif key == "gtid" and "gtid" not in binlog:
            binlog["gtid"] = value
    return dict(galera_info=None, binlog=binlog or None)


def dump_position(head: bytes) -> dict:
    """The binary log position mariadb-dump --master-data=2 --gtid wrote as comments near the top."""
    binlog = {}
    for raw in head.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line.startswith("-- CHANGE MASTER TO") and "file" not in binlog:
            for part in line[len("-- CHANGE MASTER TO"):].rstrip(";").split(","):
                key, _sep, value = part.strip().partition("=")
                if key.strip() == "MASTER_LOG_FILE":
                    binlog["file"] = value.strip().strip("'")
                elif key.strip() == "MASTER_LOG_POS":
                    binlog["position"] = _int(value)
        elif line.startswith("-- SET GLOBAL gtid_slave_pos=") and "gtid" not in binlog:
            binlog["gtid"] = line.split("=", 1)[1].strip().rstrip(";").strip("'")
    return dict(galera_info=None, binlog=binlog or None)


def _int(value):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None

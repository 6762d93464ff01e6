# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where backups are kept (private): one small interface for every store, the source backup of a
copy, and ``LocalStore``, a backup directory on this host.

A store holds backups by id. What every store answers, in the same shapes:

- ``describe()`` -> dict without secrets; ``url(name)`` -> where ``name`` is, for messages.
- ``list()`` -> ``dict(manifests={name: manifest dict or "invalid"}, partials={name: run record dict
  or None}, other=[names])``: the complete backups (their ``manifest.json``), the unfinished copies
  (with their ``.run.json`` when it is a valid run record) and everything else found there. Nothing
  is judged ours here; ``_retention`` does that.
- ``partial_id(name)`` -> the backup id an unfinished copy ``name`` is of, or None.
- ``inspect(local)`` -> None when the store has no complete copy of ``local`` (a ``LocalBackup``),
  else ``dict(manifest=dict or "invalid" or None, bad=[files], extra=[files])``.
- ``put(local, repair=None, record=None)``: copy ``local`` there and verify it there. The copy is
  marked with the run record ``record`` (``.run.json``) first, counts as a backup only once its
  ``manifest.json`` is in place (written last, or renamed into place), and loses the record when
  complete. ``repair``: the files of a damaged complete copy (from ``inspect``) to send again; the
  copy stops counting as a backup before anything else changes.
- ``fetch(backup_id, dest_dir)`` -> ``dict(id, path, manifest, files, bytes)``: download one backup
  into ``<dest_dir>/<id>``, every file verified against SHA256SUMS (and SHA256SUMS against the
  manifest's ``sha256``) on arrival.
- ``delete(names)``: complete backups, each ``manifest.json`` first (a deletion cut short leaves
  something that no longer counts as a backup); ``delete_partials(names)``: unfinished copies.

A streamed backup (``galera_backup_stream_to``) is written straight into the store, never staged on
this host: ``begin_stream(id, record)`` makes the staging place with the run record,
``open_writer(id, rel)`` returns a writer (``write(bytes)``; ``close()``: the file is complete there,
or GaleraError; ``abort()``: what was written is dropped, never raises) for each stream,
``publish_stream(local)`` sends the small files of the backup's local record (a ``LocalBackup``
with ``streamed`` files), verifies every file there (the streams against the sha256 computed as
they passed) and makes it count, ``manifest.json`` last; ``abort_stream(id, run_id)`` removes the
staging place when its run record is that run's.

A store implements the primitives below (``_entries``, ``_state``, ``_begin``, ``_send``,
``_drop``, ``_publish``, ``_read``, ``_download``, ``_remove``, ``_writer``; optionally
``_discard_uploads``); the interface above, the verification and the listing's classification are
written once, here. Expected failures raise ``GaleraError`` with the cause and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from datetime import datetime, timezone
from types import SimpleNamespace

from ansible_collections.dbtools.galera.plugins.module_utils import _manifest, _proc, _tools
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

MANIFEST = _manifest.MANIFEST
SUMS = _manifest.SUMS
RUN_RECORD = _manifest.RUN_RECORD
CHUNK = 1024 * 1024
UNTOUCHED = "The local backup is untouched."


# ---------------------------------------------------------------------------------------------
# Small helpers

def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_rel(rel: str) -> bool:
    """True for a relative path inside the backup directory, printable, without '..'."""
    if not rel or rel.startswith("/") or "\\" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def parse_sums(text: str) -> list:
    """[(relative path, sha256)] from sha256sum output ("<hex>  ./path")."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not match:
            raise ValueError(f"line {number} is not '<sha256>  <file>': {line[:80]!r}")
        rel = match.group(2)
        while rel.startswith("./"):
            rel = rel[2:]
        if not safe_rel(rel) or rel in (SUMS, MANIFEST, RUN_RECORD):
            raise ValueError(f"line {number} names {match.group(2)!r}, not a file inside the backup directory")
        entries.append((rel, match.group(1).lower()))
    return entries


def this_host() -> str:
    """The name run records give this host (``host``): what the dead-process rule compares."""
    return socket.gethostname()


def utc_text(moment: datetime | None = None) -> str:
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_record_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode("utf-8")


def parse_record(data) -> dict | None:
    """A ``.run.json``'s bytes as a run record, or None when absent or not a valid one."""
    if data is None:
        return None
    record = _manifest.parse_manifest(data)
    return record if _manifest.valid_run_record(record) else None


class CommandRunner:
    """``run_command``, ``get_bin_path`` and ``popen`` as the stores use them from an AnsibleModule,
    for code that runs without one (the detached backup run, the node-side steps of a streamed
    backup): argv lists only, never a shell."""

    def get_bin_path(self, name: str) -> str | None:
        return _tools.find(name)

    def run_command(self, argv, environ_update=None, data=None, binary_data=False, expand_user_and_vars=False):
        env = dict(os.environ, **(environ_update or {}))
        if data is not None and not isinstance(data, bytes):
            data = str(data).encode("utf-8") + (b"" if binary_data else b"\n")
        try:
            # pylint: disable-next=ansible-bad-function  # run_command's stand-in without an AnsibleModule
            done = subprocess.run(list(argv), input=data, capture_output=True, env=env, check=False)
        except OSError as exc:
            return 127, "", f"{argv[0]}: {exc}"
        return done.returncode, done.stdout.decode("utf-8", "surrogateescape"), done.stderr.decode("utf-8", "replace")

    def popen(self, argv, environ_update=None, **kwargs) -> subprocess.Popen:
        """A process whose stdin the caller writes (a stream to a remote host)."""
        env = dict(os.environ, **(environ_update or {}))
        # pylint: disable-next=ansible-bad-function  # a stream: run_command cannot give a live stdin
        return subprocess.Popen(list(argv), env=env, close_fds=True, **kwargs)  # pylint: disable=consider-using-with


class FileWriter:
    """A writer of a new file on this host (0600, fsynced on ``close``); ``abort`` removes it."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.path = path
        self.handle = open(path, "xb")  # pylint: disable=consider-using-with
        os.chmod(path, 0o600)

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def abort(self) -> None:
        try:
            self.handle.close()
            os.unlink(self.path)
        except OSError:
            pass


def new_copy_record(local, kind: str = "copy", owner: str | None = None) -> dict:
    """The run record a copy of ``local`` made by this process marks itself with."""
    return _manifest.run_record(_manifest.new_run_id(), local.id, local.cluster, local.state_uuid, owner,
                                this_host(), _proc.identity(), utc_text(), kind=kind)


# ---------------------------------------------------------------------------------------------
# The source of a copy

class LocalBackup:
    """One complete backup directory on this host: read, checked, never changed.

    ``streamed``: files SHA256SUMS lists that are not here, because they were streamed straight to
    a store (the local record of a streamed backup, ``backup_id`` its id while it is a partial)."""

    def __init__(self, src: str, streamed=(), backup_id: str | None = None):
        self.path = os.path.normpath(src)
        self.id = backup_id or os.path.basename(self.path)
        self.streamed = set(streamed)
        fix = "Give the directory of one complete backup, <galera_backup_dir>/<id>. Nothing was copied."
        if not os.path.isdir(self.path):
            raise GaleraError(f"src {src} is not a directory. {fix}")
        for name in (MANIFEST, SUMS):
            if not os.path.isfile(os.path.join(self.path, name)):
                more = " (a backup in progress or an interrupted one has no manifest)" if name == MANIFEST else ""
                raise GaleraError(f"src {src} has no {name}: it is not a complete backup{more}. {fix}")
        if not _manifest.valid_id(self.id):
            raise GaleraError(f"src {src}: {self.id!r} is not a backup id. {fix}")
        manifest_path = os.path.join(self.path, MANIFEST)
        with open(manifest_path, "rb") as handle:
            self.manifest_bytes = handle.read()
        manifest = _manifest.parse_manifest(self.manifest_bytes)
        problems = []
        manifest = _manifest.check_manifest(manifest, self.id, manifest_path, problems)
        if manifest is None:
            raise GaleraError(f"{problems[0]}. {fix}")
        self.manifest = manifest
        self.manifest_sha = sha256_bytes(self.manifest_bytes)
        self.cluster = _manifest.cluster_name(manifest)
        self.state_uuid = _manifest.cluster_uuid(manifest)
        sums_path = os.path.join(self.path, SUMS)
        self.sums_sha = sha256_file(sums_path)
        if not isinstance(manifest.get("sha256"), str) or manifest["sha256"].lower() != self.sums_sha:
            raise GaleraError(f"the local backup is inconsistent: the sha256 of {sums_path} is {self.sums_sha}, its "
                              f"manifest says {manifest.get('sha256')!r}. SHA256SUMS or the manifest changed after the "
                              f"backup finished; check the backup (galera_backup_info) or take a new one. "
                              f"Nothing was copied.")
        try:
            with open(sums_path, "r", encoding="utf-8") as handle:
                self.entries = parse_sums(handle.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise GaleraError(f"{sums_path} cannot be read: {exc}. {fix}")
        self.sums = dict(self.entries)
        self.files = [rel for rel, _sha in self.entries] + [SUMS, MANIFEST]
        missing = [rel for rel in self.files
                   if rel not in self.streamed and not os.path.isfile(os.path.join(self.path, rel))]
        if missing:
            raise GaleraError(f"the local backup is incomplete: {', '.join(missing[:5])} listed in SHA256SUMS "
                              f"{'is' if len(missing) == 1 else 'are'} missing from {self.path}. {fix}")
        self.sizes = {rel: os.path.getsize(os.path.join(self.path, rel)) for rel in self.files
                      if rel not in self.streamed}
        self.bytes = sum(self.sizes.values())
        listed = set(self.files)
        self.excluded = []
        for top, dirs, names in os.walk(self.path):
            dirs.sort()
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(top, name), self.path).replace(os.sep, "/")
                if rel not in listed:
                    self.excluded.append(rel)

    def expected_sha(self, rel: str) -> str | None:
        if rel == MANIFEST:
            return self.manifest_sha
        if rel == SUMS:
            return self.sums_sha
        return self.sums.get(rel)

    def damaged(self, rels) -> list:
        """The files among ``rels`` that do not match their checksum here, on this host."""
        bad = []
        for rel in rels:
            if rel in self.streamed:
                continue  # never on this host: checked where it went
            try:
                if sha256_file(os.path.join(self.path, rel)) != self.expected_sha(rel):
                    bad.append(rel)
            except OSError:
                bad.append(rel)
        return bad


def compare(local: LocalBackup, state: dict, rels) -> tuple:
    """(bad files among ``rels``, extra files) of a copy, from a store's ``_state``.

    ``state``: ``files`` present there, ``hashes`` {file: sha256} of the files the store hashed,
    ``failed`` files a check there (``sha256sum -c``) found different. manifest.json and SHA256SUMS
    must be hashed; a data file is good when present, not failed, and equal where it was hashed.
    """
    present = set(state["files"]) - {RUN_RECORD}
    failed = set(state["failed"])
    hashes = state["hashes"]
    bad = []
    for rel in rels:
        if rel not in present or rel in failed:
            bad.append(rel)
        elif rel in hashes or rel in (MANIFEST, SUMS):
            if hashes.get(rel) != local.expected_sha(rel):
                bad.append(rel)
    return sorted(bad), sorted(present - set(local.files))


def mismatch_error(local: LocalBackup, where: str, bad: list, left: str) -> GaleraError:
    """The failure for a copy that does not match after it was (re)made."""
    damaged = local.damaged(bad)
    if damaged:
        return GaleraError(f"the LOCAL backup {local.path} is damaged: {', '.join(damaged[:5])} no longer "
                           f"match{'es' if len(damaged) == 1 else ''} SHA256SUMS (checked on this host). It cannot be "
                           f"copied; take a new backup and check this host's disk. The copy at {where} was {left}; "
                           f"the local backup was not changed.", mismatched=bad, local_damaged=damaged)
    return GaleraError(f"the copy at {where} does not match: {', '.join(bad[:5])}"
                       f"{' (and more)' if len(bad) > 5 else ''}, after copying twice. The destination copy was "
                       f"{left}; {UNTOUCHED} Check the destination's disk (and its memory), then run again.",
                       mismatched=bad)


# ---------------------------------------------------------------------------------------------
# The interface

class Store:
    """What every store does, written once over the primitives each store implements.

    ``staging_suffix``: where an unfinished copy of ``<id>`` is staged. ``".partial"``: in
    ``<id>.partial``, renamed to ``<id>`` once verified (directories). ``""``: in place, counting
    as a backup once ``manifest.json`` is there (object stores).
    """

    kind = "store"
    staging_suffix = ".partial"

    # -- primitives (each store) -------------------------------------------------------------
    def describe(self) -> dict:
        raise NotImplementedError

    def url(self, name: str) -> str:
        raise NotImplementedError

    def _entries(self) -> list:
        """Every top-level name: ``dict(name, dir=bool, manifest=bytes or None, record=bytes or None)``
        (``dir``: a real directory or prefix, not a link or a plain file)."""
        raise NotImplementedError

    def _state(self, name: str, rels) -> dict | None:
        """None when ``name`` does not exist, else ``dict(files, hashes, failed, manifest=bytes or None)``
        (see ``compare``); the files of ``rels`` are verified."""
        raise NotImplementedError

    def _begin(self, local: LocalBackup, repair, record: dict) -> None:
        """Make the staging place of ``local`` with ``record`` in it; with ``repair``, first take the
        complete copy out of the catalogue (it stops counting as a backup)."""
        raise NotImplementedError

    def _send(self, local: LocalBackup, name: str, rels) -> None:
        raise NotImplementedError

    def _drop(self, name: str, rels) -> None:
        """Remove the files ``rels`` of ``name`` (verified not to match)."""
        raise NotImplementedError

    def _publish(self, local: LocalBackup) -> None:
        """Make the verified staged copy count as a backup, without its run record."""
        raise NotImplementedError

    def _read(self, name: str, rel: str) -> bytes | None:
        raise NotImplementedError

    def _download(self, name: str, rels, target: str) -> None:
        raise NotImplementedError

    def _remove(self, name: str) -> None:
        """Delete ``name`` whole, its manifest.json first."""
        raise NotImplementedError

    def _writer(self, name: str, rel: str, size_hint: int | None = None):
        """A writer (see the module) of the new file ``rel`` in the staging place ``name``;
        ``size_hint``: the bytes expected, when known (an object store sizes its parts by it)."""
        raise NotImplementedError

    def _discard_uploads(self, name: str) -> None:
        """Drop what unfinished writes into ``name`` left that a listing does not show (an object
        store's multipart uploads); ``name`` is an abandoned unfinished copy. Nothing by default."""

    # -- the interface -------------------------------------------------------------------------
    def staging(self, backup_id: str) -> str:
        return backup_id + self.staging_suffix

    def partial_id(self, name: str) -> str | None:
        """The backup id of the unfinished copy ``name``, or None when ``name`` is not one's name."""
        if not self.staging_suffix:
            return name if _manifest.valid_id(name) else None
        for suffix in _manifest.PARTIAL_SUFFIXES:
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                return base if _manifest.valid_id(base) else None
        return None

    def list(self) -> dict:
        manifests, partials, other = {}, {}, []
        for entry in self._entries():
            name = entry["name"]
            if not entry["dir"]:
                other.append(name)
                continue
            unfinished = _manifest.is_partial(name) if self.staging_suffix else entry["manifest"] is None
            if unfinished:
                if self.partial_id(name) is not None:
                    partials[name] = parse_record(entry["record"])
                else:
                    other.append(name)
            elif entry["manifest"] is not None:
                manifests[name] = _manifest.parse_manifest(entry["manifest"])
            else:
                other.append(name)
        return dict(manifests=manifests, partials=partials, other=sorted(other))

    def inspect(self, local: LocalBackup) -> dict | None:
        state = self._state(local.id, local.files)
        if state is None or (not self.staging_suffix and state["manifest"] is None):
            return None
        bad, extra = compare(local, state, local.files)
        manifest = None if state["manifest"] is None else _manifest.parse_manifest(state["manifest"])
        return dict(manifest=manifest, bad=bad, extra=extra)

    def put(self, local: LocalBackup, repair=None, record: dict | None = None) -> None:
        record = record or new_copy_record(local)
        staged = self.staging(local.id)
        # In place, manifest.json goes last, once the data verified; staged aside, it goes with the data.
        rels = [rel for rel in local.files if self.staging_suffix or rel != MANIFEST]
        self._begin(local, repair, record)
        todo = rels
        if repair is not None:
            todo = [rel for rel in repair if rel in rels]
            self._drop(staged, todo)
        for attempt in (1, 2):
            self._send(local, staged, todo)
            state = self._state(staged, rels)
            if state is None:
                raise GaleraError(f"{self.url(staged)} vanished right after the copy: is another job working there? "
                                  f"{UNTOUCHED}")
            bad, extra = compare(local, state, rels)
            if extra:
                self._drop(staged, extra)
            if not bad:
                break
            self._drop(staged, bad)
            if attempt == 2 or local.damaged(bad):
                left = (f"left as {staged} (not a backup)" if self.staging_suffix
                        else f"left without {MANIFEST} (so it does not count as a backup)")
                raise mismatch_error(local, self.url(staged), bad, left + " without the mismatching files")
            todo = bad
        self._publish(local)

    def fetch(self, backup_id: str, dest_dir: str) -> dict:
        if not _manifest.valid_id(backup_id):
            raise GaleraError(f"{backup_id!r} is not a backup id. Nothing was changed.")
        target = os.path.join(dest_dir, backup_id)
        staged = target + _manifest.PARTIAL_SUFFIX
        where = self.url(backup_id)
        for path in (target, staged):
            if os.path.lexists(path):
                raise GaleraError(f"{path} already exists on this host: move it away (or restore from it) before "
                                  f"fetching {where} again. Nothing was changed.")
        manifest_bytes = self._read(backup_id, MANIFEST)
        if manifest_bytes is None:
            raise GaleraError(f"{where} is not a complete backup (it has no {MANIFEST}): choose another backup. "
                              "Nothing was changed.")
        problems = []
        manifest = _manifest.check_manifest(_manifest.parse_manifest(manifest_bytes), backup_id,
                                            f"{where}/{MANIFEST}", problems)
        if manifest is None:
            raise GaleraError(f"{problems[0]}. Nothing was changed.")
        sums_bytes = self._read(backup_id, SUMS) or b""
        if str(manifest.get("sha256", "")).lower() != sha256_bytes(sums_bytes):
            raise GaleraError(f"{where}/{SUMS} is not the one its manifest names (sha256 {manifest.get('sha256')!r}): "
                              "the copy there is damaged; repair it with galera_backup_copy from a good copy, or "
                              "choose another backup. Nothing was changed.")
        try:
            entries = parse_sums(sums_bytes.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise GaleraError(f"{where}/{SUMS} cannot be read: {exc}. Nothing was changed.")
        os.makedirs(dest_dir, exist_ok=True)
        os.mkdir(staged, 0o700)
        try:
            record = _manifest.run_record(_manifest.new_run_id(), backup_id, _manifest.cluster_name(manifest),
                                          _manifest.cluster_uuid(manifest), None, this_host(),
                                          _proc.identity(), utc_text(), kind="fetch")
            _manifest.write_json_atomic(os.path.join(staged, RUN_RECORD), record)
            self._download(backup_id, [rel for rel, _sha in entries], staged)
            for rel, data in ((SUMS, sums_bytes), (MANIFEST, manifest_bytes)):
                with open(os.path.join(staged, rel), "wb") as handle:
                    handle.write(data)
            bad = []
            for rel, expected in entries:
                full = os.path.join(staged, rel)
                if not os.path.isfile(full) or os.path.islink(full) or sha256_file(full) != expected:
                    bad.append(rel)
            if bad:
                raise GaleraError(f"the backup fetched from {where} does not match its SHA256SUMS: "
                                  f"{', '.join(bad[:5])}{' (and more)' if len(bad) > 5 else ''}. The copy there is "
                                  "damaged: repair it with galera_backup_copy from a good copy, or choose another "
                                  f"backup. Nothing was kept on this host.", mismatched=bad)
            os.remove(os.path.join(staged, RUN_RECORD))
            os.rename(staged, target)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)  # this run's own directory
            raise
        size = sum(os.path.getsize(os.path.join(target, rel)) for rel, _sha in entries) \
            + len(sums_bytes) + len(manifest_bytes)
        return dict(id=backup_id, path=target, manifest=manifest, files=len(entries) + 2, bytes=size)

    def delete(self, names) -> None:
        for name in names:
            if not _manifest.valid_id(name):
                raise GaleraError(f"refused to delete {self.url(name)}: {name!r} is not a backup id. Nothing more "
                                  "was deleted.")
            self._remove(name)

    def delete_partials(self, names) -> None:
        for name in names:
            if self.partial_id(name) is None:
                raise GaleraError(f"refused to delete {self.url(name)}: {name!r} is not the name of an unfinished "
                                  "copy. Nothing more was deleted.")
            if not self.staging_suffix and self._read(name, MANIFEST) is not None:
                continue  # finished since it was listed: a backup now, not a leftover
            self._remove(name)
            self._discard_uploads(name)

    # -- streamed backups ----------------------------------------------------------------------
    def begin_stream(self, backup_id: str, record: dict) -> None:
        """Make the staging place of the streamed backup ``backup_id``, its run record ``record`` first."""
        if not _manifest.valid_id(backup_id) or not _manifest.valid_run_record(record):
            raise GaleraError(f"{backup_id!r} is not a backup id with a run record: nothing was streamed.")
        self._begin(SimpleNamespace(id=backup_id), None, record)

    def open_writer(self, backup_id: str, rel: str, size_hint: int | None = None):
        """A writer of the file ``rel`` of the streamed backup ``backup_id`` (``begin_stream`` first)."""
        if not _manifest.valid_id(backup_id) or not safe_rel(rel) or rel in (MANIFEST, RUN_RECORD):
            raise GaleraError(f"refused to stream {rel!r} of {backup_id!r}: not a data file of a backup. "
                              "Nothing was streamed.")
        return self._writer(self.staging(backup_id), rel, size_hint)

    def publish_stream(self, local: LocalBackup) -> None:
        """Send the files of the streamed backup's local record ``local`` that are on this host,
        verify EVERY file at the destination (the streamed ones against the sha256 that SHA256SUMS
        recorded as they passed), then make it count: ``manifest.json`` last. A mismatch raises and
        leaves the staging place, which does not count as a backup (``abort_stream`` removes it)."""
        staged = self.staging(local.id)
        here = [rel for rel in local.files if rel not in local.streamed and (self.staging_suffix or rel != MANIFEST)]
        for rel in sorted(here, key=lambda r: (r == MANIFEST, r == SUMS, r)):  # SHA256SUMS, manifest last
            writer = self._writer(staged, rel, local.sizes.get(rel))
            try:
                with open(os.path.join(local.path, rel), "rb") as handle:
                    for block in iter(lambda: handle.read(CHUNK), b""):
                        writer.write(block)
            except BaseException:
                writer.abort()
                raise
            writer.close()
        rels = [rel for rel in local.files if self.staging_suffix or rel != MANIFEST]
        state = self._state(staged, rels)
        if state is None:
            raise GaleraError(f"{self.url(staged)} vanished while the backup was streamed there: is another job "
                              "working there? The backup does not count.")
        bad, extra = compare(local, state, rels)
        if extra:
            self._drop(staged, extra)
        if bad:
            raise GaleraError(f"the backup streamed to {self.url(staged)} does not match what was sent: "
                              f"{', '.join(bad[:5])}{' (and more)' if len(bad) > 5 else ''} differ there from the "
                              "sha256 computed as they passed. Its manifest was not written, so it does not count "
                              "as a backup. Check the destination's disk, then run again.", mismatched=bad)
        self._publish(local)

    def abort_stream(self, backup_id: str, run_id: str) -> bool:
        """Remove the staging place of the streamed backup ``backup_id`` when its run record names the
        run ``run_id`` (never a backup that counts, never another run's); True when it did."""
        if not _manifest.valid_id(backup_id):
            return False
        staged = self.staging(backup_id)
        record = parse_record(self._read(staged, RUN_RECORD))
        if record is None or record.get("run_id") != run_id or record.get("backup") != backup_id:
            return False
        self.delete_partials([staged])
        return True


# ---------------------------------------------------------------------------------------------
# A backup directory on this host

class LocalStore(Store):
    """A directory of backups on this host (the node's galera_backup_dir, or a mounted disk)."""

    kind = "local"

    def __init__(self, path: str, name: str | None = None):
        if not path or "\n" in path:
            raise GaleraError("the path of a local store must name a directory. Nothing was changed.")
        self.path = os.path.normpath(path)
        self.name = name

    def describe(self) -> dict:
        return dict(type="local", name=self.name, path=self.path)

    def url(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _child(self, name: str) -> str:
        """The direct child ``name`` of the store's directory; refuses anything else."""
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise GaleraError(f"{name!r} is not a name directly under {self.path}. Nothing more was changed.")
        return os.path.join(self.path, name)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def source(self, backup_id: str) -> LocalBackup:
        """The complete backup ``backup_id`` here, checked, as the source of a copy."""
        return LocalBackup(self._child(backup_id))

    def _entries(self) -> list:
        try:
            scanned = sorted(os.scandir(self.path), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise GaleraError(f"cannot list {self.path}: {exc.strerror or exc}. Check its permissions. "
                              "Nothing was changed.")
        return [dict(name=e.name, dir=e.is_dir(follow_symlinks=False),
                     manifest=_read_plain(os.path.join(e.path, MANIFEST)) if e.is_dir(follow_symlinks=False) else None,
                     record=_read_plain(os.path.join(e.path, RUN_RECORD)) if e.is_dir(follow_symlinks=False) else None)
                for e in scanned]

    def _state(self, name, rels):
        top = self._child(name)
        if not os.path.isdir(top) or os.path.islink(top):
            return None
        files, hashes = [], {}
        wanted = set(rels)
        for root, dirs, names in os.walk(top):
            dirs.sort()
            for entry in sorted(names):
                full = os.path.join(root, entry)
                rel = os.path.relpath(full, top).replace(os.sep, "/")
                files.append(rel)
                if rel in wanted and os.path.isfile(full) and not os.path.islink(full):
                    hashes[rel] = sha256_file(full)
        return dict(files=files, hashes=hashes, failed=[], manifest=_read_plain(os.path.join(top, MANIFEST)))

    def _begin(self, local, repair, record):
        os.makedirs(self.path, exist_ok=True)
        final, staged = self._child(local.id), self._child(self.staging(local.id))
        if repair is not None:
            _manifest.write_json_atomic(os.path.join(final, RUN_RECORD), record)
            if os.path.lexists(staged):
                shutil.rmtree(staged)  # this backup's own staging place, replaced by the copy being repaired
            os.rename(final, staged)
        else:
            os.makedirs(staged, mode=0o700, exist_ok=True)
            _manifest.write_json_atomic(os.path.join(staged, RUN_RECORD), record)

    def _send(self, local, name, rels):
        top = self._child(name)
        for rel in rels:
            target = os.path.join(top, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(local.path, rel), target)

    def _drop(self, name, rels):
        top = self._child(name)
        for rel in rels:
            if safe_rel(rel) and os.path.lexists(os.path.join(top, rel)):
                os.remove(os.path.join(top, rel))

    def _publish(self, local):
        final, staged = self._child(local.id), self._child(self.staging(local.id))
        if os.path.lexists(final):
            raise GaleraError(f"{final} appeared while copying (another job?): the verified copy stays in {staged}. "
                              f"{UNTOUCHED}")
        os.remove(os.path.join(staged, RUN_RECORD))
        os.rename(staged, final)

    def _read(self, name, rel):
        return _read_plain(os.path.join(self._child(name), rel))

    def _download(self, name, rels, target):
        top = self._child(name)
        for rel in rels:
            destination = os.path.join(target, rel)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.copyfile(os.path.join(top, rel), destination)

    def _writer(self, name, rel, size_hint=None):
        top = self._child(name)
        if not os.path.isdir(top) or os.path.islink(top) or not safe_rel(rel):
            raise GaleraError(f"{top} is not the staging directory of a streamed backup (begin_stream first). "
                              "Nothing was streamed.")
        return FileWriter(os.path.join(top, rel))

    def _remove(self, name):
        full = self._child(name)
        if not os.path.lexists(full):
            return
        if os.path.islink(full) or not os.path.isdir(full):
            raise GaleraError(f"refused to delete {full}: it is not a directory (a link or a file). Nothing more "
                              "was deleted.")
        try:
            manifest = os.path.join(full, MANIFEST)
            if os.path.lexists(manifest):
                os.remove(manifest)
            shutil.rmtree(full)
        except OSError as exc:
            raise GaleraError(f"cannot delete {full}: {exc.strerror or exc}. Check the permissions of {self.path}.")

    # -- failed-run records (this kind of store only)
    def failures(self) -> dict:
        """{backup id: failed-run record dict or "invalid"} of the ``<id>.failed.json`` files here."""
        out = {}
        for entry in self._entries():
            name = entry["name"]
            if entry["dir"] or not name.endswith(_manifest.FAILED_SUFFIX):
                continue
            backup_id = name[: -len(_manifest.FAILED_SUFFIX)]
            if not _manifest.valid_id(backup_id):
                continue
            data = _read_plain(self._child(name))
            record = "invalid" if data is None else _manifest.parse_manifest(data)
            out[backup_id] = record
        return out

    def delete_failures(self, backup_ids) -> None:
        for backup_id in backup_ids:
            if not _manifest.valid_id(backup_id):
                raise GaleraError(f"refused to delete the failed-run record of {backup_id!r}: not a backup id.")
            full = self._child(backup_id + _manifest.FAILED_SUFFIX)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            try:
                os.remove(full)
            except OSError as exc:
                raise GaleraError(f"cannot delete {full}: {exc.strerror or exc}. Check the permissions of "
                                  f"{self.path}.")


def _read_plain(path: str) -> bytes | None:
    """The bytes of a regular file (not a link), or None when there is none."""
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None

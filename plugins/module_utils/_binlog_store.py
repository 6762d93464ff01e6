# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where the binary-log archive is kept (private): the archive area of a store.

Binlog segments are files, not backup directories, so they live apart from the backups, in one
directory (prefix) per cluster that the stores' backup listing never takes for a backup:

- locally: ``<galera_backup_dir>/binlogs/<cluster>/`` on the archiving node;
- SSH store: ``<path>/binlogs/<cluster>/``; S3: ``<prefix>binlogs/<cluster>/``; local store
  (``type: local``): ``<path>/binlogs/<cluster>/``.

``binlogs`` is not a backup id, so ``_stores.Store.list`` puts it under ``other`` and ``_retention``
never plans it, reports it or deletes it (a backup id always ends in a UTC time). The area holds
``index.json`` (the archive index, written last, ``_binlog``) and the segment files, named
``<first GTID seq:020d>_<node>_<binlog file>.binlog[.zst][.enc]`` (``_binlog.segment_name``). An area
deletes only names that parse as segment names and the caller's index names (``delete``): nothing
else found there is ever touched, only reported.

Every area answers: ``describe()``, ``url(name)``, ``listing()`` -> ``{name: size}`` of the files
there (regular files only), ``read_index()`` -> bytes or None, ``put(path, name, sha256)`` (copy the
local file there and verify it there by its sha256; an existing file with that sha256 is left
alone), ``write_index(data)`` (replaces ``index.json`` in one step), ``delete(names)`` and
``sha256(name)``. Expected failures raise ``GaleraError`` naming the cause and the fix.
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
import shlex
import shutil
import tempfile

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog, _manifest, _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

CHUNK = 1 << 20
ENTRY_ONLY = ("keep", "keep_tiers", "max_age")
LOCAL = "local"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def area_rel(cluster: str) -> str:
    """``binlogs/<cluster>``: the archive's place inside a backup directory or store."""
    return f"{_binlog.AREA}/{_manifest.sanitize(cluster)}"


def _check_name(name: str) -> str:
    if name != _binlog.INDEX and not _binlog.is_segment_name(name):
        raise GaleraError(f"{name!r} is not a name of the binlog archive (a segment or {_binlog.INDEX}): refused. "
                          "Nothing more was changed.")
    return name


class LocalArea:
    """The archive area in a directory of this host (``<galera_backup_dir>/binlogs/<cluster>``)."""

    kind = "local"

    def __init__(self, base: str, cluster: str, name: str = LOCAL, uid: int | None = None, gid: int | None = None):
        self.base = os.path.normpath(base)
        self.path = os.path.join(self.base, _binlog.AREA, _manifest.sanitize(cluster))
        self.name = name
        self.uid, self.gid = uid, gid

    def describe(self) -> dict:
        return dict(name=self.name, type="local", path=self.path)

    def url(self, name: str = "") -> str:
        return os.path.join(self.path, name) if name else self.path

    def ensure(self) -> None:
        for directory in (os.path.join(self.base, _binlog.AREA), self.path):
            if os.path.islink(directory):
                raise GaleraError(f"{directory} is a symbolic link: the archive is never written through one. "
                                  f"Remove it. Nothing was changed.")
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
                if self.uid is not None:
                    os.chown(directory, self.uid, self.gid if self.gid is not None else -1)

    def listing(self) -> dict:
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise GaleraError(f"cannot list {self.path}: {exc.strerror or exc}. Check its permissions.")
        return {e.name: e.stat(follow_symlinks=False).st_size for e in entries
                if e.is_file(follow_symlinks=False)}

    def read_index(self) -> bytes | None:
        full = os.path.join(self.path, _binlog.INDEX)
        if os.path.islink(full) or not os.path.isfile(full):
            return None
        with open(full, "rb") as handle:
            return handle.read()

    def _atomic(self, name: str, fill) -> None:
        self.ensure()
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o600)
            if self.uid is not None:
                os.chown(temp, self.uid, self.gid if self.gid is not None else -1)
            os.replace(temp, os.path.join(self.path, name))
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def put(self, path: str, name: str, sha256: str) -> bool:
        """Copy ``path`` here as ``name``; False when an equal file was already there."""
        target = os.path.join(self.path, _check_name(name))
        if os.path.isfile(target) and not os.path.islink(target) and _stores.sha256_file(target) == sha256:
            return False

        def fill(handle):
            with open(path, "rb") as source:
                shutil.copyfileobj(source, handle, CHUNK)
        self._atomic(name, fill)
        if _stores.sha256_file(target) != sha256:
            raise GaleraError(f"{target} does not match what was written (sha256): check this host's disk. The "
                              "archive's index was not changed.")
        return True

    def write_index(self, data: bytes) -> None:
        self._atomic(_binlog.INDEX, lambda handle: handle.write(data))

    def delete(self, names) -> list:
        done = []
        for name in names:
            full = os.path.join(self.path, _check_name(name))
            if os.path.islink(full) or not os.path.lexists(full):
                continue
            os.remove(full)
            done.append(name)
        return done

    def sha256(self, name: str) -> str | None:
        full = os.path.join(self.path, _check_name(name))
        return _stores.sha256_file(full) if os.path.isfile(full) and not os.path.islink(full) else None

    def fetch(self, name: str, target: str) -> None:
        full = os.path.join(self.path, _check_name(name))
        if os.path.islink(full) or not os.path.isfile(full):
            raise GaleraError(f"{full} is missing: the archive there is not whole. Nothing was changed.")
        shutil.copyfile(full, target)


# One line per regular file: @@f <size> <base64 name>. Names travel encoded: no name can change the answer.
_LIST = r"""
cd -- {path} 2>/dev/null || {{ echo '@@nodir'; echo '@@end'; exit 0; }}
for f in * .[!.]*; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    printf '@@f %s b%s\n' "$(wc -c < "$f" | tr -d ' ')" "$(printf '%s' "$f" | base64 | tr -d '\n')"
  fi
done
echo '@@end'
"""
_READ = r"""
f={path}
if [ -f "$f" ] && [ ! -L "$f" ]; then printf '@@data b'; base64 < "$f" | tr -d '\n'; echo; else echo '@@absent'; fi
echo '@@end'
"""
_HASH = r"""
f={path}
if [ -f "$f" ] && [ ! -L "$f" ]; then printf '@@sha %s\n' "$(sha256sum < "$f" | cut -c1-64)"; else echo '@@absent'; fi
echo '@@end'
"""


def _parse_listing(out: str) -> dict:
    files = {}
    for line in out.splitlines():
        if line.startswith("@@f "):
            parts = line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("b"):
                raise ValueError(f"unexpected line {line[:80]!r}")
            name = base64.b64decode(parts[2][1:], validate=True).decode("utf-8", "surrogateescape")
            files[name] = int(parts[1])
    return files


def _parse_data(out: str):
    for line in out.splitlines():
        if line.startswith("@@data b"):
            return base64.b64decode(line[len("@@data b"):].strip(), validate=True)
    return None


def _parse_hash(out: str):
    for line in out.splitlines():
        if line.startswith("@@sha "):
            return line.split(" ", 1)[1].strip().lower()
    return None


class SshArea:
    """The archive area of an SSH store (``_store_ssh.SshStore``): ``<path>/binlogs/<cluster>/``."""

    kind = "ssh"

    def __init__(self, store, cluster: str):
        self.store = store
        self.name = store.name
        self.rel = area_rel(cluster)
        self.path = posixpath.join(store.path, self.rel)

    def describe(self) -> dict:
        return dict(self.store.describe(), area=self.rel)

    def url(self, name: str = "") -> str:
        return self.store.url(posixpath.join(self.rel, name) if name else self.rel)

    def q(self, name: str = "") -> str:
        return shlex.quote(posixpath.join(self.path, name) if name else self.path)

    def listing(self) -> dict:
        return self.store.answer(_LIST.format(path=self.q()), f"listing {self.path}", _parse_listing)

    def read_index(self) -> bytes | None:
        return self.store.answer(_READ.format(path=self.q(_binlog.INDEX)), f"reading {self.path}/{_binlog.INDEX}",
                                 _parse_data)

    def sha256(self, name: str) -> str | None:
        return self.store.answer(_HASH.format(path=self.q(_check_name(name))), f"hashing {self.path}/{name}",
                                 _parse_hash)

    def put(self, path: str, name: str, sha256: str) -> bool:
        _check_name(name)
        if self.sha256(name) == sha256:
            return False
        temp = f".{name}.partial"
        self.store.run(f"mkdir -p -- {self.q()} && rm -f -- {self.q(temp)}", f"creating {self.path}")
        host = f"[{self.store.host}]" if ":" in self.store.host else self.store.host
        self.store.rsync(["--", path, f"{host}:{posixpath.join(self.path, temp)}"],
                         f"rsync of {os.path.basename(path)} to {self.store.user}@{self.store.host}:{self.path}")
        rc, out = self.store.run(
            f"cd -- {self.q()} && s=$(sha256sum < {shlex.quote(temp)} | cut -c1-64) && "
            f"if [ \"$s\" = {shlex.quote(sha256)} ]; then mv -f -- {shlex.quote(temp)} {shlex.quote(name)}; "
            f"else rm -f -- {shlex.quote(temp)}; echo \"@@bad $s\"; exit 4; fi",
            f"verifying {self.path}/{name}", ok=(0, 4))
        if rc == 4:
            raise GaleraError(f"{self.url(name)} does not match what was sent (sha256 there {out.strip()[-64:]}): it "
                              f"was removed. Check the destination's disk, then run again. The archive's index was "
                              f"not changed.")
        return True

    def fetch(self, name: str, target: str) -> None:
        host = f"[{self.store.host}]" if ":" in self.store.host else self.store.host
        self.store.rsync(["--", f"{host}:{posixpath.join(self.path, _check_name(name))}", target],
                         f"rsync of {self.path}/{name} from {self.store.host}")

    def write_index(self, data: bytes) -> None:
        temp = f".{_binlog.INDEX}.partial"
        self.store.run(f"mkdir -p -- {self.q()} && cat > {self.q(temp)} && mv -f -- {self.q(temp)} "
                       f"{self.q(_binlog.INDEX)}", f"writing {self.path}/{_binlog.INDEX}", data=data)

    def delete(self, names) -> list:
        names = [_check_name(n) for n in names]
        if names:
            self.store.run(f"cd -- {self.q()} && rm -f -- " + " ".join(shlex.quote(n) for n in names),
                           f"deleting archived binlogs in {self.path}")
        return names


class S3Area:
    """The archive area of an S3 store (``_store_s3.S3Store``): ``<prefix>binlogs/<cluster>/``."""

    kind = "s3"

    def __init__(self, store, cluster: str):
        self.store = store
        self.name = store.name
        self.rel = area_rel(cluster)
        self.prefix = f"{store.prefix}{self.rel}/"

    def describe(self) -> dict:
        return dict(self.store.describe(), area=self.rel)

    def url(self, name: str = "") -> str:
        return f"s3://{self.store.bucket}/{self.prefix}{name}"

    def listing(self) -> dict:
        keys = self.store.list_keys(self.prefix)
        return {key[len(self.prefix):]: size for key, size in keys.items() if "/" not in key[len(self.prefix):]}

    def _get(self, key: str):
        client = self.store.client

        def get():
            try:
                return client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read()
            except Exception as exc:  # pylint: disable=broad-except  # NoSuchKey: absent; others: raised by call
                code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("NoSuchKey", "404"):
                    return None
                raise
        return self.store.call(f"reading {self.url(key[len(self.prefix):])}", get)

    def read_index(self) -> bytes | None:
        return self._get(self.prefix + _binlog.INDEX)

    def sha256(self, name: str) -> str | None:
        return self.store.hash_object(self.prefix + _check_name(name))

    def put(self, path: str, name: str, sha256: str) -> bool:
        key = self.prefix + _check_name(name)
        if self.sha256(name) == sha256:
            return False
        extra = dict(self.store.extra)
        if self.store.object_lock():
            extra["ChecksumAlgorithm"] = "SHA256"
        self.store.call(f"uploading {name} to {self.url(name)}", self.store.client.upload_file, path,
                        self.store.bucket, key, ExtraArgs=extra or None, Config=self.store.transfer)
        if self.store.hash_object(key) != sha256:
            self.store.delete_keys([key], f"deleting the mismatching {self.url(name)}")
            raise GaleraError(f"{self.url(name)} does not match what was sent (sha256 read back): it was deleted. "
                              "Run again. The archive's index was not changed.")
        return True

    def fetch(self, name: str, target: str) -> None:
        self.store.call(f"downloading {self.url(name)}", self.store.client.download_file, self.store.bucket,
                        self.prefix + _check_name(name), target, Config=self.store.transfer)

    def write_index(self, data: bytes) -> None:
        self.store.put_bytes(self.prefix + _binlog.INDEX, data)

    def delete(self, names) -> list:
        names = [_check_name(n) for n in names]
        if names:
            self.store.delete_keys([self.prefix + n for n in names], f"deleting archived binlogs under {self.url()}")
        return names


def open_areas(entries, cluster: str, runner=None) -> list:
    """The archive areas of the off-host stores ``entries`` (``galera_backup_copies`` items: ``name``,
    ``type`` ssh, s3 or local and that store's options)."""
    from ansible_collections.dbtools.galera.plugins.module_utils import _copy  # boto3 only when used

    areas = []
    for entry in entries or []:
        if not isinstance(entry, dict) or not entry.get("name") or not _NAME.match(str(entry["name"])):
            raise GaleraError(f"every galera_backup_copies entry needs a plain name (letters, digits, _ . -): "
                              f"{entry.get('name') if isinstance(entry, dict) else entry!r}. Nothing was changed.")
        opts = {k: v for k, v in entry.items() if k not in ENTRY_ONLY}
        store = _copy.open_store(runner or _stores.CommandRunner(), opts)
        if store.kind == "ssh":
            areas.append(SshArea(store, cluster))
        elif store.kind == "s3":
            areas.append(S3Area(store, cluster))
        else:
            areas.append(LocalArea(store.path, cluster, name=entry["name"]))
    names = [a.name for a in areas]
    if len(set(names)) != len(names) or LOCAL in names:
        raise GaleraError(f"the galera_backup_copies names must be unique and not {LOCAL!r} (the node's own copy): "
                          f"{', '.join(names)}. Nothing was changed.")
    return areas

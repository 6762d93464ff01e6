# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Validation of the paths and names an operator gives (private).

Every directory the collection writes into or deletes from, and every name it puts into a path, a
file or a command, passes through here first. The checks that need only the text run on the
controller (the role's plan) and again on the node; the checks that look at the filesystem (owner,
mode, what the directory holds, where the data directory is) run on the node.
"""

from __future__ import annotations

import grp
import os
import posixpath
import pwd
import re
import stat
import tempfile

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

RUN_BASE = "/run/dbtools-galera"


def run_base(preferred: str = RUN_BASE) -> str:
    """Where private run directories live: ``preferred`` (under /run: memory, never on disk) when it can be
    made writable, else ``dbtools-galera`` in the temp directory."""
    try:
        os.makedirs(preferred, mode=0o700, exist_ok=True)
        if os.access(preferred, os.W_OK | os.X_OK):
            return preferred
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), "dbtools-galera")


# Directories that are never a backup directory (nor a scratch or staging directory) themselves.
SYSTEM_DIRS = frozenset((
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail",
    "/var/opt", "/var/run", "/var/spool", "/var/tmp", "/var/lib/mysql", "/var/lib/mysql-files",
    "/var/log/mysql", "/run/mysqld", "/var/run/mysqld", "/etc/mysql",
))
# Trees whose every subdirectory belongs to the system (nothing of ours may live there).
SYSTEM_TREES = ("/bin/", "/boot/", "/dev/", "/etc/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/proc/",
                "/sbin/", "/sys/", "/usr/", "/var/lib/mysql/")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# POSIX portable user/group names (plus the '$' of machine accounts).
_ACCOUNT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")


def printable(text) -> bool:
    return isinstance(text, str) and not _CONTROL.search(text)


def check_dir_text(path, variable: str) -> str:
    """The normalised absolute ``path`` of a directory to write into, from its text alone.

    Refuses (GaleraError) what is empty, relative, holds a control character (a newline), a ``..``
    or ``.`` component or a doubled slash (so the path says what it means), is ``/`` or a system
    directory, or lies in a system tree.
    """
    fix = f"Set {variable} to a dedicated absolute directory such as /var/backups/galera. Nothing was changed."
    if not isinstance(path, str) or not path:
        raise GaleraError(f"{variable} is empty. {fix}", variable=variable)
    if not printable(path):
        raise GaleraError(f"{variable}={path!r} holds a control character (a newline?). {fix}", variable=variable)
    if not path.startswith("/"):
        raise GaleraError(f"{variable}={path!r} is not an absolute path. {fix}", variable=variable)
    parts = path.rstrip("/").split("/")[1:] if path != "/" else []
    if any(part in ("", ".", "..") for part in parts):
        raise GaleraError(f"{variable}={path!r} is not a normalised path (it holds '..', '.' or '//'). {fix}",
                          variable=variable)
    norm = posixpath.normpath(path)
    if norm in SYSTEM_DIRS:
        raise GaleraError(f"{variable}={norm} is a system directory: the collection creates, locks down and "
                          f"cleans up its own directory, which must not be {norm}. {fix}", variable=variable)
    if any((norm + "/").startswith(tree) for tree in SYSTEM_TREES):
        raise GaleraError(f"{variable}={norm} lies inside a system directory "
                          f"({next(t for t in SYSTEM_TREES if (norm + '/').startswith(t)).rstrip('/')}). {fix}",
                          variable=variable)
    return norm


def related(a: str, b: str) -> bool:
    """True when one of two normalised absolute paths is the other or lies inside it."""
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b + "/") or b.startswith(a + "/") or "/" in (a, b)


def check_apart(path: str, variable: str, others: dict) -> None:
    """Refuse ``path`` when it is, contains or lies inside one of ``others`` ({what: path})."""
    for what, other in others.items():
        if not other:
            continue
        other = posixpath.normpath(str(other))
        if related(path, other):
            raise GaleraError(f"{variable}={path} overlaps {what} {other}: backups must live apart from it "
                              f"(the collection removes and locks down what it creates there). Choose a directory "
                              f"outside {other}. Nothing was changed.", variable=variable)


def account(name, variable: str, kind: str = "user") -> int:
    """The uid (``kind="user"``) or gid (``kind="group"``) of a local account name; GaleraError when the
    name is not a plain account name or does not exist here."""
    if not isinstance(name, str) or not _ACCOUNT.fullmatch(name):
        raise GaleraError(f"{variable}={name!r} is not a {kind} name (letters, digits, '_', '.', '-'). "
                          f"Set it to an existing {kind} of the node. Nothing was changed.", variable=variable)
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        raise GaleraError(f"{variable}={name} names no {kind} on this node. Create it or choose an existing "
                          f"one. Nothing was changed.", variable=variable) from None


def nearest_existing(path: str) -> str:
    """The path itself when it exists, else its nearest existing ancestor."""
    current = path
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_existing_dir(path: str, variable: str, uid: int) -> bool:
    """Check a directory we would write into on this host; True when it exists (False: to create).

    An existing one must be a real directory (not a symbolic link), owned by ``uid`` and not writable
    by others; it is never changed (no chmod, no chown). A missing one needs an existing, writable,
    real directory as its nearest ancestor on a writable filesystem.
    """
    if os.path.lexists(path):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise GaleraError(f"{variable}={path} is a symbolic link; give the real directory. Nothing was changed.",
                              variable=variable)
        if not stat.S_ISDIR(info.st_mode):
            raise GaleraError(f"{variable}={path} exists and is not a directory. Nothing was changed.",
                              variable=variable)
        if info.st_mode & stat.S_IWOTH:
            raise GaleraError(f"{variable}={path} is writable by every user (mode {stat.S_IMODE(info.st_mode):04o}): "
                              f"anyone could plant or swap a backup there. Use a directory of its own (it is created "
                              f"0700 when missing), or remove the others' write permission yourself. Nothing was "
                              f"changed.", variable=variable)
        if info.st_uid != uid:
            owner = _user_name(info.st_uid)
            raise GaleraError(f"{variable}={path} is owned by {owner}, not by the configured owner "
                              f"({_user_name(uid)}): it is not a directory of ours. Use a directory of its own (it is "
                              f"created when missing), or set the owner variable to match. Nothing was changed.",
                              variable=variable)
        _check_writable(path, variable)
        return True
    anchor = nearest_existing(path)
    if not os.path.isdir(anchor) or os.path.islink(anchor):
        raise GaleraError(f"{variable}={path} cannot be created: {anchor} is not a directory. Nothing was changed.",
                          variable=variable)
    _check_writable(anchor, variable, creating=path)
    return False


def _check_writable(path: str, variable: str, creating: str | None = None) -> None:
    what = f"{creating} cannot be created in {path}" if creating else f"{path} cannot be written"
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        raise GaleraError(f"{variable}: {what}: {exc.strerror}. Nothing was changed.", variable=variable) from exc
    if vfs.f_flag & os.ST_RDONLY:
        raise GaleraError(f"{variable}: {what}: the filesystem is mounted read-only. Choose a writable directory. "
                          "Nothing was changed.", variable=variable)
    if not os.access(path, os.W_OK | os.X_OK):
        raise GaleraError(f"{variable}: {what}: permission denied for this user. Run the role with become, or "
                          "choose a writable directory. Nothing was changed.", variable=variable)


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def free_bytes(path: str) -> int:
    """Bytes available to an unprivileged writer on the filesystem of ``path`` (or its nearest ancestor)."""
    vfs = os.statvfs(nearest_existing(path))
    return vfs.f_bavail * vfs.f_frsize


def same_filesystem(a: str, b: str) -> bool:
    return os.stat(nearest_existing(a)).st_dev == os.stat(nearest_existing(b)).st_dev


def make_dir(path: str, uid: int, gid: int, mode: int = 0o700) -> bool:
    """Create ``path`` (and missing parents, 0755 root's) when missing; True when it was created.

    Only a directory created here gets ``mode`` and the owner; an existing one is left exactly as it is.
    """
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)
    os.chown(path, uid, gid)
    return True


def safe_rel(rel) -> bool:
    """True for a relative path inside a directory: printable, no '..', '.' or empty components."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or not printable(rel):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def check_name(value, variable: str, pattern=r"^[A-Za-z0-9_.:@+-]{1,255}$", what: str = "name") -> str:
    """A short identifier given by an operator (owner, store name): printable, no path separators."""
    if not isinstance(value, str) or not re.fullmatch(pattern, value) or value in (".", ".."):
        raise GaleraError(f"{variable}={value!r} is not a valid {what} (letters, digits and _ . : @ + -, at most "
                          f"255). Nothing was changed.", variable=variable)
    return value

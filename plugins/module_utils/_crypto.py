# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Backup encryption (private): the key, its check value, the openssl stage and the integrity MACs.

Format. A stream is compressed with zstd, then encrypted by ``openssl enc -aes-256-ctr -pbkdf2 -md
sha256 -iter 200000 -salt -pass file:<key file>`` (unchanged since scheme 1, so old backups decrypt
as before). The key is exactly what ``-pass file:`` uses: the first line of the file up to its
``\\n`` (a ``\\r`` before it stays part of the key, as openssl reads it); at most 1023 bytes, no NUL.
The manifest's ``encryption`` record (scheme 2) holds, beside those openssl settings:

- ``key_id``: 16 bytes (hex) of PBKDF2-HMAC-SHA256(key, "dbtools.galera key id v2\\0" + salt,
  ``key_id_kdf.iterations``), the random 16-byte salt in ``key_id_kdf.salt``;
- ``mac``: HMAC-SHA256 keyed by PBKDF2-HMAC-SHA256(key, "dbtools.galera mac key v2\\0" + its own
  random salt, ``mac.iterations``); ``files`` maps each encrypted file's relative name to
  HMAC(mac key, "dbtools.galera file v2\\0" + name + "\\0" + ciphertext) (encrypt-then-MAC, the
  name bound so files cannot be swapped); ``seal`` is HMAC(mac key, "dbtools.galera seal v2\\0" +
  canonical JSON of the record without ``seal``), so no field or ``files`` entry can be changed,
  added or removed. No key material is stored: salts are random, both derivations are one-way.
Scheme 1 (legacy, no ``scheme``): ``key_id`` is 16 hex of SHA-256("dbtools.galera key id\\n" + key
without trailing CR/LF), no salt, no MAC. It still decrypts and still identifies its key.

Threat model: someone holding a copied manifest and ciphertexts, without the key, cannot read the
data, and can test a guessed key only at the cost of 200000 PBKDF2 iterations per guess and per
backup (the key id is salted per backup: no precomputation, no telling two backups share a key),
the same cost as trying the guess on the ciphertext. They cannot change, truncate, swap or remove
an encrypted file the record lists, or change any part of the record, without ``verify_file`` /
``verify_backup`` failing (CTR is malleable: verify before trusting decrypted data, and restore
only files the record lists: one added beside them is not verified). They can still: guess a weak key
(use ``openssl rand -base64 48``), read what the manifest says in plain text (names, sizes, times),
delete backups, put back an older genuine backup whole, and, holding a legacy manifest of the same
key, dress a backup up as legacy (no MAC): callers report legacy status, and ``allow_legacy=False``
refuses it once no legacy backups are kept. Legacy key ids stay testable at SHA-256 speed: rotate
keys whose legacy manifests were copied off-host.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
import secrets

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

SCHEME = 2
CIPHER = "aes-256-ctr"
KDF = "pbkdf2"
DIGEST = "sha256"
CIPHER_ITERATIONS = 200000
# Key id and MAC key derivations: at least the cipher's, so a guess costs as much against either.
ITERATIONS = CIPHER_ITERATIONS
MAX_ITERATIONS = 50000000  # a record asking for more is refused, not run for hours
SALT_BYTES = 16
KEY_ID_BYTES = 16
MAX_KEY_BYTES = 1023  # openssl's -pass file: reads at most this many bytes of the line
PBKDF2_NAME = "pbkdf2-hmac-sha256"
MAC_NAME = "hmac-sha256"

VERIFIED = "verified"
LEGACY = "legacy"
LEGACY_NOTE = "integrity: legacy backup, no MAC"

_KEY_ID_LABEL = b"dbtools.galera key id v2\0"
_MAC_KEY_LABEL = b"dbtools.galera mac key v2\0"
_FILE_LABEL = b"dbtools.galera file v2\0"
_SEAL_LABEL = b"dbtools.galera seal v2\0"
_LEGACY_LABEL = b"dbtools.galera key id\n"
_HEX = re.compile(r"^[0-9a-f]+$")
_CHUNK = 1 << 20
_INVALID = "The manifest was changed, or written by a newer dbtools.galera. Nothing was changed."


# ---------------------------------------------------------------------------------------------
# The key

def _check_key(key: bytes, where: str) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"a key is bytes, not {type(key).__name__}")
    if b"\n" in key or b"\0" in key:
        raise GaleraError(f"the encryption key from {where} holds a newline or a NUL byte, which openssl would "
                          "cut it at: use a key of printable characters. Nothing was changed.")
    if not key.strip():
        raise GaleraError(f"the encryption key from {where} is empty (its first line is the key): write the key "
                          "on the first line, e.g. the output of `openssl rand -base64 48`. Nothing was changed.")
    if len(key) > MAX_KEY_BYTES:
        raise GaleraError(f"the encryption key from {where} is {len(key)} bytes long; openssl uses only the first "
                          f"{MAX_KEY_BYTES}: use a shorter key (e.g. `openssl rand -base64 48`). Nothing was changed.")
    return key


def read_key(path: str) -> bytes:
    """The key in file ``path`` exactly as ``openssl -pass file:`` reads it: its first line without
    the ``\\n`` (a CR before it is kept, as openssl keeps it)."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline(MAX_KEY_BYTES + 2)
    except FileNotFoundError:
        raise GaleraError(f"the encryption key file {path} does not exist: give the path of the key file of "
                          "these backups, or the key itself. Nothing was changed.", path=path) from None
    except OSError as exc:
        raise GaleraError(f"cannot read the encryption key file {path} ({exc.strerror or exc}): make it a file "
                          "readable by the user that runs the backup (mode 0600). Nothing was changed.",
                          path=path) from None
    return _check_key(line[:-1] if line.endswith(b"\n") else line, f"file {path}")


def key_from_text(text: str) -> bytes:
    """The key given as text (a variable): its first line, cut as ``str.splitlines`` cuts it, in
    UTF-8: what the scheme 1 role wrote to its key file (that line plus ``\\n``), so openssl gets the
    same key. Hand it to openssl with ``write_key_file``."""
    lines = (text or "").splitlines()
    try:
        key = lines[0].encode("utf-8") if lines else b""
    except UnicodeEncodeError:
        raise GaleraError("the encryption key given as text is not valid Unicode: give it as UTF-8 text. "
                          "Nothing was changed.") from None
    return _check_key(key, "the variable")


def write_key_file(path: str, key: bytes) -> None:
    """Writes ``key`` into a new 0600 file ``path`` that ``openssl -pass file:`` and ``read_key``
    read back as ``key``; refuses an existing path or a link."""
    _check_key(key, "the caller")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise GaleraError(f"cannot create the key file {path} ({exc.strerror or exc}): it must not exist yet, "
                          "in a directory private to the run. Nothing was changed.", path=path) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")


# ---------------------------------------------------------------------------------------------
# The record

@functools.lru_cache(maxsize=16)
def _pbkdf2(key: bytes, label: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", key, label + salt, iterations, 32)


def _legacy_id(key: bytes) -> str:
    return hashlib.sha256(_LEGACY_LABEL + key.rstrip(b"\r\n")).hexdigest()[:16]


def new_record(key: bytes, *, iterations: int = ITERATIONS) -> dict:
    """The manifest's ``encryption`` record for a new backup with ``key`` (scheme 2, empty ``files``,
    not sealed yet). ``iterations`` of both derivations: lower it in tests only."""
    _check_key(key, "the caller")
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{MAX_ITERATIONS}, not {iterations!r}")
    id_salt, mac_salt = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(SALT_BYTES)
    return {
        "scheme": SCHEME,
        "cipher": CIPHER, "kdf": KDF, "digest": DIGEST, "iterations": CIPHER_ITERATIONS,
        "key_id": _pbkdf2(key, _KEY_ID_LABEL, id_salt, iterations)[:KEY_ID_BYTES].hex(),
        "key_id_kdf": {"name": PBKDF2_NAME, "salt": id_salt.hex(), "iterations": iterations},
        "mac": {"name": MAC_NAME, "kdf": PBKDF2_NAME, "salt": mac_salt.hex(), "iterations": iterations},
        "files": {},
        "seal": None,
    }


def is_legacy(record: dict | None) -> bool:
    """True for a scheme 1 record (no salt, no MAC). None or {} is an unencrypted backup."""
    return isinstance(record, dict) and bool(record) and "scheme" not in record


def _hex(value, size: int) -> bool:
    return isinstance(value, str) and len(value) == 2 * size and _HEX.match(value) is not None


def _iterations(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ITERATIONS


def _check_rel(rel) -> str:
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise GaleraError(f"{rel!r} is not a relative file name inside a backup (no '/' at either end, no '.', "
                          f"'..' or empty parts, no NUL). {_INVALID}", rel=rel)
    return rel


def _check_cipher(record: dict) -> None:
    wanted = {"cipher": CIPHER, "kdf": KDF, "digest": DIGEST}
    wrong = [f"{name}={record.get(name)!r}" for name, value in wanted.items() if record.get(name) != value]
    if not _iterations(record.get("iterations")):
        wrong.append(f"iterations={record.get('iterations')!r}")
    if wrong:
        raise GaleraError(f"the backup's encryption settings are not supported ({', '.join(wrong)}; this "
                          f"version decrypts {CIPHER} with {KDF}/{DIGEST}). {_INVALID}")


def _check_v2(record) -> dict:
    """``record`` when it is a well-formed scheme 2 record (its ``files`` entries aside: see
    ``_check_files``), else a GaleraError saying what is wrong."""
    if not isinstance(record, dict):
        raise GaleraError(f"the backup's encryption record is not a mapping. {_INVALID}")
    if record.get("scheme") != SCHEME:
        raise GaleraError(f"the backup's encryption record has scheme {record.get('scheme')!r}; this version "
                          f"knows scheme {SCHEME} and legacy records: upgrade dbtools.galera. Nothing was changed.")
    _check_cipher(record)
    problems = [] if _hex(record.get("key_id"), KEY_ID_BYTES) else ["key_id"]
    for name, wanted in (("key_id_kdf", {"name": PBKDF2_NAME}), ("mac", {"name": MAC_NAME, "kdf": PBKDF2_NAME})):
        part = record.get(name)
        if not (isinstance(part, dict) and all(part.get(k) == v for k, v in wanted.items())
                and _hex(part.get("salt"), SALT_BYTES) and _iterations(part.get("iterations"))):
            problems.append(name)
    if not isinstance(record.get("files"), dict):
        problems.append("files")
    if record.get("seal") is not None and not _hex(record.get("seal"), 32):
        problems.append("seal")
    if problems:
        raise GaleraError(f"the backup's encryption record is not valid ({', '.join(problems)}). {_INVALID}")
    return record


def _check_files(record: dict) -> None:
    for rel, mac in record["files"].items():
        if not _hex(mac, 32):
            raise GaleraError(f"the backup's encryption record has no valid MAC for {rel!r}. {_INVALID}")
        _check_rel(rel)


def _check_legacy(record: dict) -> dict:
    if not _hex(record.get("key_id"), 8):
        raise GaleraError(f"the backup's legacy encryption record has no valid key id ({record.get('key_id')!r}), "
                          f"so its key cannot be checked. {_INVALID}")
    return record


def key_matches(record: dict | None, key: bytes | None) -> bool:
    """True when ``key`` is the key of the backup whose ``encryption`` record is ``record``; a
    ``None`` record is an unencrypted backup, matched by ``None`` alone. A malformed or newer record
    raises GaleraError (it is not a wrong key)."""
    record = record or None  # {} is no encryption too, as in _catalog
    if record is None or key is None:
        return record is None and key is None
    if is_legacy(record):
        return hmac.compare_digest(_legacy_id(key), _check_legacy(record)["key_id"])
    _check_v2(record)
    kdf = record["key_id_kdf"]
    derived = _pbkdf2(key, _KEY_ID_LABEL, bytes.fromhex(kdf["salt"]), kdf["iterations"])[:KEY_ID_BYTES]
    return hmac.compare_digest(derived.hex(), record["key_id"])


# ---------------------------------------------------------------------------------------------
# The openssl stage

def _argv(openssl_path: str, key_file: str, direction: str, iterations: int) -> list:
    for name, value in (("openssl_path", openssl_path), ("key_file", key_file)):
        if not isinstance(value, str) or not value or "\0" in value:
            raise ValueError(f"{name} must be a non-empty path, not {value!r}")
    argv = [openssl_path, "enc", direction, "-" + CIPHER, "-" + KDF, "-md", DIGEST, "-iter", str(iterations)]
    return argv + (["-salt"] if direction == "-e" else []) + ["-pass", "file:" + key_file]


def encrypt_argv(openssl_path: str, key_file: str) -> list:
    """argv of the openssl stage that encrypts stdin to stdout (the key read from ``key_file``)."""
    return _argv(openssl_path, key_file, "-e", CIPHER_ITERATIONS)


def decrypt_argv(openssl_path: str, key_file: str, record: dict | None = None) -> list:
    """argv of the openssl stage that decrypts stdin to stdout, with the settings ``record`` names
    (scheme 2 and legacy both: checked, the same today) or the current ones."""
    if record is not None:
        _check_cipher(record)
    return _argv(openssl_path, key_file, "-d", record["iterations"] if record is not None else CIPHER_ITERATIONS)


# ---------------------------------------------------------------------------------------------
# Integrity

def _mac_key(key: bytes, record: dict) -> bytes:
    if is_legacy(record):
        raise GaleraError("a legacy backup's encryption record has no MAC settings: only new backups get MACs.")
    mac = _check_v2(record)["mac"]
    return _pbkdf2(key, _MAC_KEY_LABEL, bytes.fromhex(mac["salt"]), mac["iterations"])


class Mac:
    """The streaming MAC of one encrypted file (its ciphertext, as written) named ``rel`` in the
    backup: ``update`` with every chunk, then ``record_file_mac(record, rel, mac.hexdigest())``."""

    def __init__(self, key: bytes, record: dict, rel: str):
        name = _check_rel(rel).encode("utf-8")
        self._hmac = hmac.new(_mac_key(key, record), _FILE_LABEL + name + b"\0", hashlib.sha256)

    def update(self, data: bytes) -> None:
        self._hmac.update(data)

    def hexdigest(self) -> str:
        return self._hmac.hexdigest()


def record_file_mac(record: dict, rel: str, hexdigest: str) -> None:
    """Records the MAC of file ``rel`` in ``record`` (and drops its seal: seal again at the end)."""
    _check_v2(record)  # not the files already recorded: linear, however many files a backup has
    if not _hex(hexdigest, 32):
        raise ValueError(f"not a hex HMAC-SHA256: {hexdigest!r}")
    record["files"][_check_rel(rel)] = hexdigest
    record["seal"] = None


def _seal_of(key: bytes, record: dict) -> str:
    body = {name: value for name, value in record.items() if name != "seal"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(_mac_key(key, record), _SEAL_LABEL + text.encode("ascii"), hashlib.sha256).hexdigest()


def seal(record: dict, key: bytes) -> None:
    """Seals ``record`` (every field, the ``files`` map included) once all its files are recorded,
    before the manifest is written; any later change to the record breaks the seal."""
    record["seal"] = _seal_of(key, record)


def _file_mac(path: str, rel: str, record: dict, key: bytes) -> str:
    mac = Mac(key, record, rel)
    try:
        with open(path, "rb") as handle:
            for chunk in iter(functools.partial(handle.read, _CHUNK), b""):
                mac.update(chunk)
    except OSError as exc:
        raise GaleraError(f"cannot read backup file {path} ({exc.strerror or exc}) to check its MAC: the backup "
                          "is incomplete or not readable by this user.", path=path) from None
    return mac.hexdigest()


def _checked(record: dict | None, key: bytes, allow_legacy: bool, what: str) -> bool:
    """Checks the key and the seal of ``record``; False for a legacy record (nothing to verify)."""
    if not record:
        raise GaleraError(f"{what} is not encrypted: there is no MAC to check (its SHA256SUMS is the check).")
    if is_legacy(record):
        if not allow_legacy:
            raise GaleraError(f"{what} has a legacy encryption record (no MAC), so nothing proves it was not changed; "
                              "legacy backups are refused here. Take a new backup, or allow legacy backups if "
                              "you still keep some.", legacy=True)
        return False
    if not key_matches(record, key):
        raise GaleraError(f"{what}: the key given does not match the backup's key id: wrong key or the file was "
                          "changed after the backup (its manifest). Give the key the backup was taken with.")
    if not record.get("seal") or not hmac.compare_digest(_seal_of(key, record), record["seal"]):
        raise GaleraError(f"{what}: the backup's encryption record is not sealed or its seal does not match: "
                          "wrong key or the file was changed after the backup (its manifest), or the backup "
                          "never finished.")
    _check_files(record)
    return True


def _verify(path: str, rel: str, record: dict, key: bytes) -> None:
    wanted = record["files"].get(_check_rel(rel))
    if wanted is None:
        raise GaleraError(f"backup file {path}: the backup records no MAC for {rel}: the file is not part of "
                          "the backup, or the file was changed after the backup (its manifest).", path=path)
    if not hmac.compare_digest(_file_mac(path, rel, record, key), wanted):
        raise GaleraError(f"backup file {path} does not match its MAC: wrong key or the file was changed after "
                          "the backup. Do not restore it.", path=path)


def verify_file(path: str, rel: str, record: dict | None, key: bytes, *, allow_legacy: bool = True) -> str:
    """Re-reads encrypted file ``path`` (named ``rel`` in the backup) and checks it against its MAC
    in ``record``: returns VERIFIED, or LEGACY for a legacy record (nothing verified: say
    LEGACY_NOTE); raises GaleraError naming the file on any mismatch."""
    if not _checked(record, key, allow_legacy, f"backup file {path}"):
        return LEGACY
    _verify(path, rel, record, key)
    return VERIFIED


def verify_backup(directory: str, record: dict | None, key: bytes, *, allow_legacy: bool = True) -> str:
    """``verify_file`` for every file the (sealed) record lists, all of which must be present in
    ``directory``: VERIFIED, or LEGACY for a legacy record (nothing verified)."""
    if not _checked(record, key, allow_legacy, f"backup {directory}"):
        return LEGACY
    if not record["files"]:
        raise GaleraError(f"backup {directory}: its encryption record lists no encrypted file, so nothing can "
                          "be verified: the backup is incomplete.")
    for rel in sorted(record["files"]):
        _verify(os.path.join(directory, rel), rel, record, key)
    return VERIFIED

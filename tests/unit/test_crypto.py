"""Backup encryption: the key as openssl reads it, the salted key id, the openssl stage (real openssl),
the per-file MACs and the seal, and backups of the legacy scheme (scheme 1)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _crypto
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The last scheme 1 writer: backup_tool.sh and key.yml of the role as of this commit (since replaced).
LEGACY_COMMIT = "83147d613b8e08fed6e329afe37eded8f2701b69"
OPENSSL = shutil.which("openssl")
ZSTD = shutil.which("zstd")
FAST = 1000  # derivation iterations for tests; the production default is checked in its own test
KEY = b"correct horse battery staple"
OTHER = b"correct horse battery stapler"
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl CLI")

# Keys that a shell string or a careless parser would break; each a whole first line.
HOSTILE_KEYS = [
    b"two words and  trailing space ",
    b" leading space",
    b"it's \"quoted\" 'twice'",
    b"$(touch /tmp/dbtools-pwned) `id` ${HOME} ; rm -rf / | cat",
    "p\u00e4ssw\u00f6rd \u2713 \u5bc6\u7801".encode("utf-8"),
    b"-pass pass:oops",
    b"back\\slash\\n not a newline",
    b"x" * _crypto.MAX_KEY_BYTES,
]


# The legacy key id, copied line for line from backup_tool.sh's key_id (checked against it below,
# from git history).
LEGACY_KEY_ID_PY = '''import hashlib, sys
with open(sys.argv[1], "rb") as handle:
    key = handle.readline().rstrip(b"\\r\\n")
if not key:
    sys.exit("the encryption key file is empty")
print(hashlib.sha256(b"dbtools.galera key id\\n" + key).hexdigest()[:16])
'''


def legacy_key_id(key_file) -> str:
    """What backup_tool.sh's key_id printed for this key file (its Python, run here: no interpreter start)."""
    out, argv = io.StringIO(), sys.argv
    try:
        sys.argv = ["-", str(key_file)]
        with contextlib.redirect_stdout(out):
            exec(compile(LEGACY_KEY_ID_PY, "backup_tool.sh:key_id", "exec"), {"__name__": "__main__"})  # noqa: S102
    finally:
        sys.argv = argv
    return out.getvalue().strip()


def legacy_record(key_file) -> dict:
    """The manifest's encryption record the old scheme wrote (backup_tool.sh, keyid step)."""
    return {"key_id": legacy_key_id(key_file), "cipher": "aes-256-ctr", "kdf": "pbkdf2", "digest": "sha256",
            "iterations": 200000}


def key_file(tmp_path, content: bytes, name="backup.key"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def quick(argv: list, fast: bool) -> list:
    """openssl's argv with ``-iter FAST`` when ``fast``: how openssl reads the key and what the MACs
    see do not depend on it, and 200000 iterations cost ~0.1 s a run. The production count runs in
    the tests that pass ``fast=False``."""
    if not fast:
        return argv
    at = argv.index("-iter") + 1
    return argv[:at] + [str(FAST)] + argv[at + 1:]


def encrypt_to(dest, data: bytes, keyfile: str, record=None, key=None, rel=None, compress=True,
               fast=True) -> str | None:
    """The node's pipeline: [zstd |] openssl enc, Python reading openssl's output into ``dest`` and
    (for a scheme 2 record) MACing it. Returns the MAC's hex digest."""
    stages = ([[ZSTD, "-q", "-c"]] if compress else []) + [quick(_crypto.encrypt_argv(OPENSSL, keyfile), fast)]
    procs, stdin = [], subprocess.PIPE
    for argv in stages:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE)
        if procs:
            procs[-1].stdout.close()
        procs.append(proc)
        stdin = proc.stdout

    def feed():
        procs[0].stdin.write(data)
        procs[0].stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    mac = _crypto.Mac(key, record, rel) if record is not None else None
    with open(dest, "wb") as out:
        for chunk in iter(lambda: procs[-1].stdout.read(65536), b""):
            out.write(chunk)
            if mac:
                mac.update(chunk)
    feeder.join()
    assert [p.wait() for p in procs] == [0] * len(procs)
    return mac.hexdigest() if mac else None


def decrypt(path, keyfile: str, record=None, compress=True, fast=True) -> subprocess.CompletedProcess:
    with open(path, "rb") as src:
        plain = subprocess.run(quick(_crypto.decrypt_argv(OPENSSL, keyfile, record), fast), stdin=src,
                               capture_output=True, check=False)
    if not compress or plain.returncode:
        return plain
    return subprocess.run([ZSTD, "-dcq"], input=plain.stdout, capture_output=True, check=False)


def sealed_backup(tmp_path, key: bytes, keyfile: str, files: dict, iterations=FAST, fast=True) -> dict:
    """A backup directory ``tmp_path/backup`` of encrypted ``files`` (rel -> plain bytes), its record
    sealed and passed through JSON as the manifest would be."""
    record = _crypto.new_record(key, iterations=iterations)
    for rel, data in files.items():
        dest = tmp_path / "backup" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _crypto.record_file_mac(record, rel, encrypt_to(dest, data, keyfile, record, key, rel, fast=fast))
    _crypto.seal(record, key)
    return json.loads(json.dumps({"encryption": record}))["encryption"]


DATA = b"".join(b"INSERT INTO t VALUES (%d, 'row %d');\n" % (i, i) for i in range(5000))


# ---------------------------------------------------------------------------------------------
# The key

@pytest.mark.parametrize("content, key", [
    (b"secret\n", b"secret"),
    (b"secret", b"secret"),
    (b"secret\nsecond line\n", b"secret"),
    (b"secret\r\n", b"secret\r"),          # openssl keeps the CR (proved against openssl below)
    (b"  spaced out  \n", b"  spaced out  "),
    (b"x" * 1023 + b"\n", b"x" * 1023),
] + [(k + b"\n", k) for k in HOSTILE_KEYS])
def test_read_key_is_the_first_line_as_openssl_reads_it(tmp_path, content, key):
    assert _crypto.read_key(key_file(tmp_path, content)) == key


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    ("dir", "cannot read the encryption key file"),
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"\r\n", "is empty"),
    (b" \t\nsecond line is not the key\n", "is empty"),
    (b"abc\0def\n", "NUL"),
    (b"x" * 1024 + b"\n", "openssl uses only the first 1023"),
    (b"x" * 5000, "openssl uses only the first 1023"),
])
def test_read_key_refuses_naming_the_file_and_the_fix(tmp_path, content, fragment):
    path = str(tmp_path / "the key $(x)")
    if content == "dir":
        os.mkdir(path)
    elif content is not None:
        key_file(tmp_path, content, "the key $(x)")
    with pytest.raises(GaleraError) as err:
        _crypto.read_key(path)
    assert fragment in err.value.msg
    assert path in err.value.msg and "Nothing was changed." in err.value.msg


@pytest.mark.parametrize("text, key", [
    ("secret", b"secret"),
    ("secret\n", b"secret"),
    ("secret\r\nsecond", b"secret"),
    ("secret\rsecond", b"secret"),          # str.splitlines, as the old role's key.yml cut it
    ("p\u00e4ssw\u00f6rd \u2713", "p\u00e4ssw\u00f6rd \u2713".encode("utf-8")),
    ("$(touch /tmp/x) `id` 'q' \"d\"", b"$(touch /tmp/x) `id` 'q' \"d\""),
])
def test_key_from_text_is_its_first_line_in_utf8(text, key):
    assert _crypto.key_from_text(text) == key


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty"), (None, "is empty"), ("\nsecret", "is empty"), ("   ", "is empty"),
    ("a\0b", "NUL"), ("x" * 1024, "1023"), ("\u00e9" * 512, "1023"), ("\udc80abc", "not valid Unicode"),
])
def test_key_from_text_refuses(text, fragment):
    with pytest.raises(GaleraError) as err:
        _crypto.key_from_text(text)
    assert fragment in err.value.msg and "Nothing was changed." in err.value.msg


@pytest.mark.parametrize("text", ["secret\r\n", "p\u00e4ss \u2713\nnext", "$(id) 'q' \"d\"\n"])
def test_key_from_text_equals_the_key_of_the_file_the_role_writes(tmp_path, text):
    # the old roles/galera_backup/tasks/key.yml: content "{{ key.splitlines() | first }}\n"
    path = key_file(tmp_path, (text.splitlines()[0] + "\n").encode("utf-8"))
    assert _crypto.key_from_text(text) == _crypto.read_key(path)


def test_the_old_role_cut_a_key_variable_as_key_from_text_does():
    task = legacy_source("roles/galera_backup/tasks/key.yml")
    assert 'content: "{{ galera_backup_encrypt_key.splitlines() | first }}\\n"' in task


@pytest.mark.parametrize("key", HOSTILE_KEYS + [b"secret\r"])
def test_write_key_file_is_private_and_reads_back(tmp_path, key):
    path = str(tmp_path / "k")
    _crypto.write_key_file(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert _crypto.read_key(path) == key


def test_write_key_file_refuses_an_existing_path_or_a_link(tmp_path):
    existing = key_file(tmp_path, b"old\n")
    os.symlink(existing, tmp_path / "link")
    for path in (existing, str(tmp_path / "link")):
        with pytest.raises(GaleraError, match="must not exist yet"):
            _crypto.write_key_file(path, KEY)
    assert (tmp_path / "backup.key").read_bytes() == b"old\n"
    with pytest.raises(GaleraError, match="newline"):
        _crypto.write_key_file(str(tmp_path / "new"), b"two\nlines")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------
# The record and the key id

def test_the_production_record_costs_a_guess_as_much_as_the_cipher():
    record = _crypto.new_record(KEY)
    assert record["scheme"] == 2
    assert (record["cipher"], record["kdf"], record["digest"]) == ("aes-256-ctr", "pbkdf2", "sha256")
    assert record["iterations"] == 200000
    assert record["key_id_kdf"]["iterations"] >= record["iterations"]
    assert record["mac"]["iterations"] >= record["iterations"]
    assert record["files"] == {} and record["seal"] is None
    assert _crypto.key_matches(record, KEY) and not _crypto.key_matches(record, OTHER)


def test_two_records_for_one_key_share_no_salt_and_no_id():
    a, b = _crypto.new_record(KEY, iterations=FAST), _crypto.new_record(KEY, iterations=FAST)
    salts = {a["key_id_kdf"]["salt"], a["mac"]["salt"], b["key_id_kdf"]["salt"], b["mac"]["salt"]}
    assert len(salts) == 4 and all(re.fullmatch("[0-9a-f]{32}", s) for s in salts)
    assert a["key_id"] != b["key_id"]
    assert _crypto.key_matches(a, KEY) and _crypto.key_matches(b, KEY)


@pytest.mark.parametrize("key", [KEY] + HOSTILE_KEYS)
def test_the_record_holds_no_key_material(tmp_path, key):
    record = _crypto.new_record(key, iterations=FAST)
    _crypto.record_file_mac(record, "a.zst.enc", "0" * 64)
    _crypto.seal(record, key)
    text = json.dumps(record).encode("utf-8")
    mac_key = _crypto._pbkdf2(key, _crypto._MAC_KEY_LABEL, bytes.fromhex(record["mac"]["salt"]), FAST)
    secrets_and_stand_ins = [
        key, key.hex().encode(), base64.b64encode(key), json.dumps(key.decode("utf-8", "replace")).encode(),
        hashlib.sha256(key).hexdigest().encode(),
        legacy_key_id(key_file(tmp_path, key + b"\n")).encode(),  # the old unsalted id
        mac_key.hex().encode(), mac_key.hex()[:32].encode(),
    ]
    for secret in secrets_and_stand_ins:
        assert secret not in text
    # The MAC key is not the key id's derivation: they differ even for the same salt.
    assert _crypto._pbkdf2(key, _crypto._KEY_ID_LABEL, bytes.fromhex(record["mac"]["salt"]), FAST) != mac_key


@pytest.mark.parametrize("key, other", [
    (KEY, OTHER), (KEY, KEY + b" "), (KEY, KEY[:-1]), (b"secret\r", b"secret"), (b"secret", b"SECRET"),
] + [(k, k[::-1]) for k in HOSTILE_KEYS[:4]])
def test_key_matches_scheme_2(key, other):
    record = _crypto.new_record(key, iterations=FAST)
    assert _crypto.key_matches(record, key)
    assert not _crypto.key_matches(record, other)
    assert not _crypto.key_matches(record, None)
    assert not _crypto.key_matches(json.loads(json.dumps(record)), other)
    assert _crypto.key_matches(json.loads(json.dumps(record)), key)


@pytest.mark.parametrize("content, wrong", [
    (b"secret\n", b"secret2"),
    (b"secret", b"Secret"),
    (b"secret\r\n", b"secre"),
    ("p\u00e4ss \u2713\n".encode("utf-8"), "pass \u2713".encode("utf-8")),
    (b"$(id) 'q' \"d\"\n", b"$(id) 'q' \"d\" "),
])
def test_key_matches_a_legacy_record_as_backup_tool_wrote_it(tmp_path, content, wrong):
    path = key_file(tmp_path, content)
    record = legacy_record(path)
    assert re.fullmatch("[0-9a-f]{16}", record["key_id"])
    assert _crypto.is_legacy(record)
    assert _crypto.key_matches(record, _crypto.read_key(path))
    assert not _crypto.key_matches(record, wrong)
    assert not _crypto.key_matches(record, None)


def test_a_legacy_id_cannot_tell_a_crlf_key_file_from_its_text(tmp_path):
    """A limit of scheme 1, kept: its id ignored the CR openssl used. Scheme 2 tells them apart."""
    record = legacy_record(key_file(tmp_path, b"secret\r\n"))
    assert _crypto.key_matches(record, b"secret\r") and _crypto.key_matches(record, b"secret")


def legacy_source(path: str) -> str:
    """A file of the role as the last scheme 1 writer had it (read-only git)."""
    if shutil.which("git") is None:
        pytest.skip("needs git to read the legacy scheme's writer from history")
    done = subprocess.run(["git", "-C", ROOT, "show", f"{LEGACY_COMMIT}:{path}"], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        pytest.skip(f"commit {LEGACY_COMMIT[:7]} is not in this checkout: {done.stderr.strip()}")
    return done.stdout


def test_the_legacy_id_is_computed_as_backup_tool_sh_did():
    script = legacy_source("roles/galera_backup/files/backup_tool.sh")
    body = re.search(r"key_id\(\) \{.*?<<'PY'.*?\n(.*?\n)PY\n", script, re.S)
    assert body and body.group(1) == LEGACY_KEY_ID_PY


@pytest.mark.parametrize("record, key, matches", [
    (None, None, True), ({}, None, True), (None, KEY, False), ({}, KEY, False),
])
def test_key_matches_unencrypted(record, key, matches):
    assert _crypto.key_matches(record, key) is matches


def _broken(**changes) -> dict:
    record = _crypto.new_record(KEY, iterations=FAST)
    for path, value in changes.items():
        target, *rest = path.split("__")
        if rest:
            record[target][rest[0]] = value
        elif value is None:
            del record[target]
        else:
            record[target] = value
    return record


@pytest.mark.parametrize("record, fragment", [
    (_broken(scheme=3), "upgrade dbtools.galera"),
    (_broken(cipher="aes-128-cbc"), "cipher='aes-128-cbc'"),
    (_broken(iterations=True), "iterations=True"),
    (_broken(key_id_kdf__salt="zz" * 16), "key_id_kdf"),
    (_broken(key_id_kdf__salt=None), "key_id_kdf"),
    (_broken(key_id_kdf__iterations=10 ** 12), "key_id_kdf"),
    (_broken(key_id_kdf=None), "key_id_kdf"),
    (_broken(key_id="ABC"), "key_id"),
    (_broken(mac__kdf="sha256-once"), "mac"),
    (_broken(files=[]), "files"),
    ({"cipher": "aes-256-ctr"}, "no valid key id"),
    ({"key_id": "$(id)"}, "no valid key id"),
    ("not a mapping", "not a mapping"),
])
def test_key_matches_refuses_a_malformed_or_newer_record(record, fragment):
    with pytest.raises(GaleraError) as err:
        _crypto.key_matches(record, KEY)
    assert fragment in err.value.msg


# ---------------------------------------------------------------------------------------------
# The openssl stage

def test_argv_carry_the_key_file_never_the_key(tmp_path):
    path = str(tmp_path / "a dir $(id)" / "k'ey")
    common = ["-aes-256-ctr", "-pbkdf2", "-md", "sha256", "-iter", "200000"]
    assert _crypto.encrypt_argv("/usr/bin/openssl", path) == \
        ["/usr/bin/openssl", "enc", "-e", *common, "-salt", "-pass", "file:" + path]
    assert _crypto.decrypt_argv("openssl", path) == ["openssl", "enc", "-d", *common, "-pass", "file:" + path]
    legacy = {"key_id": "0" * 16, "cipher": "aes-256-ctr", "kdf": "pbkdf2", "digest": "sha256", "iterations": 200000}
    assert _crypto.decrypt_argv("openssl", path, legacy) == _crypto.decrypt_argv("openssl", path) == \
        _crypto.decrypt_argv("openssl", path, _crypto.new_record(KEY, iterations=FAST))
    with pytest.raises(GaleraError, match="not supported"):
        _crypto.decrypt_argv("openssl", path, dict(legacy, digest="md5"))
    for bad in ("", "a\0b", None):
        with pytest.raises(ValueError):
            _crypto.encrypt_argv("openssl", bad)


@needs_openssl
@pytest.mark.parametrize("content", [b"secret\n", b"secret\r\n", b"secret", b"secret\r\r\n"] +
                         [k + b"\r\n" for k in HOSTILE_KEYS[:-1]])
def test_read_key_gives_the_password_openssl_uses(tmp_path, content):
    """Encrypted with the user's key file, decrypted with a file holding exactly read_key's bytes."""
    path = key_file(tmp_path, content)
    encrypt_to(tmp_path / "f.enc", DATA, path, compress=False)
    exact = str(tmp_path / "exact.key")
    _crypto.write_key_file(exact, _crypto.read_key(path))
    assert decrypt(tmp_path / "f.enc", exact, compress=False).stdout == DATA


@needs_openssl
def test_a_crlf_key_file_is_not_the_same_key_as_its_text(tmp_path):
    """openssl keeps the CR: the old id could not tell these apart, the new one does (and says so
    before decrypting to garbage)."""
    crlf = key_file(tmp_path, b"secret\r\n")
    record = sealed_backup(tmp_path, _crypto.read_key(crlf), crlf, {"a.zst.enc": DATA})
    assert not _crypto.key_matches(record, _crypto.key_from_text("secret\r\n"))
    lf = key_file(tmp_path, b"secret\n", "lf.key")
    assert decrypt(tmp_path / "backup" / "a.zst.enc", lf).returncode != 0
    assert decrypt(tmp_path / "backup" / "a.zst.enc", crlf).stdout == DATA


# ---------------------------------------------------------------------------------------------
# Integrity

FILES = {"backup.xbstream.zst.enc": DATA, "db1/t $(id) 'q'.sql.zst.enc": DATA[:1000], "\u00fc.zst.enc": b"x"}


@needs_openssl
def test_round_trip_with_the_production_settings(tmp_path):
    path = key_file(tmp_path, KEY + b"\n")
    record = sealed_backup(tmp_path, KEY, path, FILES, iterations=_crypto.ITERATIONS, fast=False)
    backup = str(tmp_path / "backup")
    assert sorted(record["files"]) == sorted(FILES)
    assert _crypto.verify_backup(backup, record, KEY) == _crypto.VERIFIED
    for rel, data in FILES.items():
        assert _crypto.verify_file(os.path.join(backup, rel), rel, record, KEY) == _crypto.VERIFIED
        assert decrypt(os.path.join(backup, rel), path, record, fast=False).stdout == data


@needs_openssl
@pytest.mark.parametrize("key, given_as", [(b"secret\r", "file")] + [(k, "file") for k in HOSTILE_KEYS] +
                         [(k, "text") for k in HOSTILE_KEYS[:5]])
def test_round_trip_with_hostile_keys(tmp_path, key, given_as):
    if given_as == "text":  # as the role hands over a key variable: first line + "\n" in a 0600 file
        key = _crypto.key_from_text(key.decode("utf-8") + "\r\nnot the key")
        path = str(tmp_path / "key")
        _crypto.write_key_file(path, key)
    else:
        path = key_file(tmp_path, key + b"\n")
        assert _crypto.read_key(path) == key
    rel = "db1/t $(id) 'q'.sql.zst.enc"
    record = sealed_backup(tmp_path, key, path, {rel: DATA})
    assert _crypto.verify_backup(str(tmp_path / "backup"), record, key) == _crypto.VERIFIED
    assert decrypt(tmp_path / "backup" / rel, path, record).stdout == DATA
    assert not _crypto.key_matches(record, key + b" ")


@pytest.fixture(name="built", scope="module")
def fixture_built(tmp_path_factory):
    if OPENSSL is None:
        pytest.skip("needs the openssl CLI")
    top = tmp_path_factory.mktemp("built")
    path = key_file(top, KEY + b"\n")
    return top, sealed_backup(top, KEY, path, FILES), path


@pytest.fixture(name="backup")
def fixture_backup(built, tmp_path):
    """A fresh copy of one sealed backup of FILES: (directory, record, key file)."""
    top, record, path = built
    shutil.copytree(top / "backup", tmp_path / "backup")
    return str(tmp_path / "backup"), json.loads(json.dumps(record)), path


def _tamper(path, offset, replacement=None):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)
        handle.seek(offset)
        handle.write(replacement if replacement is not None else bytes([old[0] ^ 0x01]))


def test_a_flipped_byte_fails_verify_file_though_it_still_decrypts(backup, tmp_path):
    directory, record, keyfile = backup
    rel = "backup.xbstream.zst.enc"
    target = os.path.join(directory, rel)
    # Without compression, CTR decrypts a flipped ciphertext byte to a flipped plaintext byte, no error:
    # only the MAC can tell. (zstd's checksum catches some flips, never all, never a swapped file.)
    plain = tmp_path / "plain.enc"
    record2 = _crypto.new_record(KEY, iterations=FAST)
    mac = encrypt_to(plain, DATA, keyfile, record2, KEY, "plain", compress=False)
    _crypto.record_file_mac(record2, "plain", mac)
    _crypto.seal(record2, KEY)
    _tamper(plain, 16 + 100)  # past openssl's "Salted__" + salt header
    changed = decrypt(plain, keyfile, compress=False)
    assert changed.returncode == 0 and changed.stdout != DATA and len(changed.stdout) == len(DATA)
    with pytest.raises(GaleraError) as err:
        _crypto.verify_file(str(plain), "plain", record2, KEY)
    assert str(plain) in err.value.msg and "wrong key or the file was changed after the backup" in err.value.msg

    _tamper(target, os.path.getsize(target) // 2)
    with pytest.raises(GaleraError, match="was changed after the backup"):
        _crypto.verify_file(target, rel, record, KEY)
    with pytest.raises(GaleraError, match=re.escape(target)):
        _crypto.verify_backup(directory, record, KEY)


@pytest.mark.parametrize("change", ["truncate", "append", "header", "swap", "delete"])
def test_changed_files_fail_verification(backup, change):
    directory, record = backup[:2]
    a, b = os.path.join(directory, "backup.xbstream.zst.enc"), os.path.join(directory, "\u00fc.zst.enc")
    if change == "truncate":
        os.truncate(a, os.path.getsize(a) - 1)
    elif change == "append":
        with open(a, "ab") as handle:
            handle.write(b"\0")
    elif change == "header":
        _tamper(a, 9)  # openssl's salt
    elif change == "swap":
        os.rename(a, a + ".tmp")
        os.rename(b, a)
        os.rename(a + ".tmp", b)
    else:
        os.remove(b)
    with pytest.raises(GaleraError) as err:
        _crypto.verify_backup(directory, record, KEY)
    assert "changed after the backup" in err.value.msg or "incomplete" in err.value.msg


@pytest.mark.parametrize("edit", [
    "drop a file", "add a file", "change a mac", "key id salt", "mac salt", "mac iterations", "cipher iterations",
    "unseal", "extra field",
])
def test_a_changed_record_fails_verification(backup, edit):
    directory, record = backup[:2]
    rel = "backup.xbstream.zst.enc"
    if edit == "drop a file":
        del record["files"]["\u00fc.zst.enc"]
    elif edit == "add a file":
        record["files"]["extra.zst.enc"] = record["files"][rel]
    elif edit == "change a mac":
        record["files"][rel] = record["files"]["\u00fc.zst.enc"]
    elif edit == "key id salt":
        record["key_id_kdf"]["salt"] = "00" * 16
    elif edit == "mac salt":
        record["mac"]["salt"] = "00" * 16
    elif edit == "mac iterations":
        record["mac"]["iterations"] = FAST + 1
    elif edit == "cipher iterations":
        record["iterations"] = 1
    elif edit == "unseal":
        record["seal"] = None
    else:
        record["note"] = "harmless?"
    with pytest.raises(GaleraError) as err:
        _crypto.verify_backup(directory, record, KEY)
    assert "changed after the backup" in err.value.msg


def test_a_wrong_key_fails_verification_and_key_matches(backup):
    directory, record = backup[:2]
    rel = "backup.xbstream.zst.enc"
    assert not _crypto.key_matches(record, OTHER)
    for call in (lambda: _crypto.verify_file(os.path.join(directory, rel), rel, record, OTHER),
                 lambda: _crypto.verify_backup(directory, record, OTHER),
                 lambda: _crypto.verify_file(os.path.join(directory, rel), rel, record, None)):
        with pytest.raises(GaleraError, match="wrong key"):
            call()


def test_a_file_the_record_does_not_name_fails(backup):
    directory, record = backup[:2]
    other = os.path.join(directory, "backup.xbstream.zst.enc")
    with pytest.raises(GaleraError, match="records no MAC for not-listed"):
        _crypto.verify_file(other, "not-listed", record, KEY)
    # the right bytes under another name: the MAC binds the name
    with pytest.raises(GaleraError, match="was changed after the backup"):
        _crypto.verify_file(other, "\u00fc.zst.enc", record, KEY)
    for rel in ("../escape", "/etc/passwd", "a//b", "./a", "a/", ""):
        with pytest.raises(GaleraError, match="not a relative file name"):
            _crypto.verify_file(other, rel, record, KEY)


def test_record_file_mac_drops_the_seal_and_checks_its_input():
    record = _crypto.new_record(KEY, iterations=FAST)
    _crypto.seal(record, KEY)
    assert record["seal"]
    _crypto.record_file_mac(record, "a", "ab" * 32)
    assert record["seal"] is None and record["files"] == {"a": "ab" * 32}
    with pytest.raises(ValueError):
        _crypto.record_file_mac(record, "b", "XY" * 32)
    with pytest.raises(GaleraError):
        _crypto.record_file_mac(record, "../b", "ab" * 32)
    with pytest.raises(GaleraError):
        _crypto.Mac(KEY, record, "a/../../b")


def test_an_unsealed_or_empty_backup_does_not_verify(tmp_path):
    record = _crypto.new_record(KEY, iterations=FAST)
    with pytest.raises(GaleraError, match="not sealed"):
        _crypto.verify_backup(str(tmp_path), record, KEY)
    _crypto.seal(record, KEY)
    with pytest.raises(GaleraError, match="lists no encrypted file"):
        _crypto.verify_backup(str(tmp_path), record, KEY)
    with pytest.raises(GaleraError, match="not encrypted"):
        _crypto.verify_backup(str(tmp_path), None, None)


def test_the_mac_streams(tmp_path):
    record = _crypto.new_record(KEY, iterations=FAST)
    whole, pieces = _crypto.Mac(KEY, record, "f"), _crypto.Mac(KEY, record, "f")
    whole.update(DATA)
    for start in range(0, len(DATA), 4097):
        pieces.update(DATA[start:start + 4097])
    assert whole.hexdigest() == pieces.hexdigest()
    assert _crypto.Mac(OTHER, record, "f").hexdigest() != _crypto.Mac(KEY, record, "f").hexdigest()
    # The name is bound: the same bytes under another name (a swapped file) have another MAC.
    renamed = _crypto.Mac(KEY, record, "g")
    renamed.update(DATA)
    assert renamed.hexdigest() != whole.hexdigest()
    assert _crypto.Mac(KEY, _crypto.new_record(KEY, iterations=FAST), "f").hexdigest() != \
        _crypto.Mac(KEY, record, "f").hexdigest()


# ---------------------------------------------------------------------------------------------
# Legacy backups

@needs_openssl
def test_a_legacy_backup_still_restores_and_says_it_has_no_mac(tmp_path):
    path = key_file(tmp_path, b"$(id) 'old' key\r\n")
    legacy_cmd = "openssl enc -e -aes-256-ctr -pbkdf2 -md sha256 -iter 200000 -salt -pass".split()
    dest = tmp_path / "backup.xbstream.zst.enc"
    compressed = subprocess.run([ZSTD, "-q", "-c"], input=DATA, capture_output=True, check=True).stdout
    dest.write_bytes(subprocess.run(legacy_cmd + ["file:" + path], input=compressed, capture_output=True,
                                    check=True).stdout)
    record = json.loads(json.dumps(legacy_record(path)))
    key = _crypto.read_key(path)
    assert _crypto.key_matches(record, key)
    assert decrypt(dest, path, record, fast=False).stdout == DATA
    assert _crypto.verify_file(str(dest), "backup.xbstream.zst.enc", record, key) == _crypto.LEGACY
    assert _crypto.verify_backup(str(tmp_path), record, key) == _crypto.LEGACY
    with pytest.raises(GaleraError, match="legacy encryption record"):
        _crypto.verify_backup(str(tmp_path), record, key, allow_legacy=False)
    with pytest.raises(GaleraError, match="no MAC settings"):
        _crypto.Mac(key, record, "x")
    assert "legacy" in _crypto.LEGACY_NOTE and "no MAC" in _crypto.LEGACY_NOTE

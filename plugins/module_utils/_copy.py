# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Off-host copies of a backup directory (private): the local backup and its checksums, an SSH
store (rsync, sha256sum -c there) and an S3 bucket (boto3, every object read back), and the
destination's chain-aware retention. Used by the galera_backup_copy module."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import shlex
import time
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog

try:
    import boto3
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotoConfig
except ImportError:
    boto3 = None
    BOTO3_IMPORT_ERROR = traceback.format_exc()
else:
    BOTO3_IMPORT_ERROR = None

MANIFEST = _catalog.MANIFEST
SUMS = "SHA256SUMS"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PARTIAL = ".partial"
CHUNK = 1024 * 1024
MULTIPART = 16 * 1024 * 1024
UNTOUCHED = "The local backup is untouched."


class CopyError(Exception):
    """A failure with a message that names the cause and the fix."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sanitize(name):
    """A cluster or host name the way backup ids spell it."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(name))


def safe_rel(rel):
    """True for a relative path inside the backup directory, printable, without '..'."""
    if not rel or rel.startswith("/") or "\\" in rel or any(ord(c) < 32 for c in rel):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def parse_sums(text):
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
        if not safe_rel(rel) or rel in (SUMS, MANIFEST):
            raise ValueError(f"line {number} names {match.group(2)!r}, not a file inside the backup directory")
        entries.append((rel, match.group(1).lower()))
    return entries


class LocalBackup:
    """The backup directory on this host: read, checked, never changed."""

    def __init__(self, src):
        self.path = os.path.normpath(src)
        self.id = os.path.basename(self.path)
        fix = "Give the directory of one complete backup, <galera_backup_dir>/<id>. Nothing was copied."
        if not os.path.isdir(self.path):
            raise CopyError(f"src {src} is not a directory. {fix}")
        for name in (MANIFEST, SUMS):
            if not os.path.isfile(os.path.join(self.path, name)):
                more = (" (a backup in progress or an interrupted one has no manifest)" if name == MANIFEST else "")
                raise CopyError(f"src {src} has no {name}: it is not a complete backup{more}. {fix}")
        if _catalog.is_partial(self.id) or not SAFE_NAME.match(self.id):
            raise CopyError(f"src {src}: {self.id!r} is not a backup id. {fix}")
        manifest_path = os.path.join(self.path, MANIFEST)
        with open(manifest_path, "rb") as handle:
            self.manifest_bytes = handle.read()
        try:
            manifest = json.loads(self.manifest_bytes.decode("utf-8"))
        except ValueError as exc:
            raise CopyError(f"{manifest_path} is not valid JSON ({exc}). {fix}")
        if not isinstance(manifest, dict):
            raise CopyError(f"{manifest_path} is not a JSON object. {fix}")
        if manifest.get("id", self.id) != self.id:
            raise CopyError(f"{manifest_path} names id {manifest.get('id')!r}, not its directory {self.id!r}: "
                            f"the directory was renamed or the manifest belongs elsewhere. {fix}")
        if manifest.get("result", "ok") != "ok":
            raise CopyError(f"{manifest_path} has result {manifest.get('result')!r}, not a good backup. {fix}")
        manifest.setdefault("id", self.id)
        self.manifest = manifest
        self.manifest_sha = hashlib.sha256(self.manifest_bytes).hexdigest()
        self.cluster = _catalog.cluster_name(manifest)
        sums_path = os.path.join(self.path, SUMS)
        self.sums_sha = sha256_file(sums_path)
        if not isinstance(manifest.get("sha256"), str) or manifest["sha256"].lower() != self.sums_sha:
            raise CopyError(f"the local backup is inconsistent: the sha256 of {sums_path} is {self.sums_sha}, its "
                            f"manifest says {manifest.get('sha256')!r}. SHA256SUMS or the manifest changed after the "
                            f"backup finished; check the backup (galera_backup_info) or take a new one. "
                            f"Nothing was copied.")
        try:
            with open(sums_path, "r", encoding="utf-8") as handle:
                self.entries = parse_sums(handle.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CopyError(f"{sums_path} cannot be read: {exc}. {fix}")
        self.sums = dict(self.entries)
        self.files = [rel for rel, _sha in self.entries] + [SUMS, MANIFEST]
        missing = [rel for rel in self.files if not os.path.isfile(os.path.join(self.path, rel))]
        if missing:
            raise CopyError(f"the local backup is incomplete: {', '.join(missing[:5])} listed in SHA256SUMS "
                            f"{'is' if len(missing) == 1 else 'are'} missing from {self.path}. {fix}")
        self.sizes = {rel: os.path.getsize(os.path.join(self.path, rel)) for rel in self.files}
        self.bytes = sum(self.sizes.values())
        listed = set(self.files)
        self.excluded = []
        for top, dirs, names in os.walk(self.path):
            dirs.sort()
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(top, name), self.path).replace(os.sep, "/")
                if rel not in listed:
                    self.excluded.append(rel)

    def expected_sha(self, rel):
        if rel == MANIFEST:
            return self.manifest_sha
        if rel == SUMS:
            return self.sums_sha
        return self.sums.get(rel)

    def damaged(self, rels):
        """The files among ``rels`` that do not match their checksum here, on this host."""
        bad = []
        for rel in rels:
            full = os.path.join(self.path, rel)
            try:
                if sha256_file(full) != self.expected_sha(rel):
                    bad.append(rel)
            except OSError:
                bad.append(rel)
        return bad


def compare(local, hashes, failed, files):
    """(bad files, extra files) of a copy, from what the destination reported.

    ``hashes``: sha256 of the destination's manifest.json and SHA256SUMS; ``failed``: files that
    ``sha256sum -c`` (or the S3 stream) found different; ``files``: every file there.
    """
    bad = set(failed)
    for rel in (MANIFEST, SUMS):
        if hashes.get(rel) != local.expected_sha(rel):
            bad.add(rel)
    present = set(files)
    bad.update(rel for rel in local.files if rel not in present)
    extra = sorted(present - set(local.files))
    return sorted(bad & set(local.files)), extra


def mismatch_error(local, where, bad, left):
    """The failure for a copy that does not match after it was (re)made."""
    damaged = local.damaged(bad)
    if damaged:
        return CopyError(f"the LOCAL backup {local.path} is damaged: {', '.join(damaged[:5])} no longer "
                         f"match{'es' if len(damaged) == 1 else ''} SHA256SUMS (checked on this host). It cannot be "
                         f"copied; take a new backup and check this host's disk. The copy at {where} was {left}; "
                         f"the local backup was not changed.", mismatched=bad, local_damaged=damaged)
    return CopyError(f"the copy at {where} does not match: {', '.join(bad[:5])}"
                     f"{' (and more)' if len(bad) > 5 else ''}, after copying twice. The destination copy was "
                     f"{left}; {UNTOUCHED} Check the destination's disk (and its memory), then run again.",
                     mismatched=bad)


# ---------------------------------------------------------------------------------------------
# SSH destination

SSH_STDERR_NOISE = re.compile(r"^(Warning: Permanently added .*|\*\*.*)$")


class SshDest:
    kind = "ssh"

    def __init__(self, module, opts):
        self.module = module
        self.host = opts["host"][1:-1] if (opts["host"] or "").startswith("[") else opts["host"]
        self.port = opts["port"]
        self.user = opts["user"]
        self.path = posixpath.normpath(opts["path"]) if opts["path"] not in ("", None) else ""
        self.identity_file = opts["identity_file"]
        self.known_hosts_file = opts["known_hosts_file"]
        self.strict = opts["strict_host_key_checking"]
        self.bwlimit = opts["bwlimit"] or 0
        self.name = opts.get("name")
        for label, value in (("host", self.host), ("user", self.user)):
            if not value or value.startswith("-") or re.search(r"[\s'\"\\@/]", value):
                raise CopyError(f"dest.{label} {value!r} is not a valid SSH {label}. Nothing was changed.")
        if not self.path or "\n" in self.path:
            raise CopyError("dest.path must name the remote directory of the backups. Nothing was changed.")
        if not 0 < self.port < 65536:
            raise CopyError(f"dest.port {self.port} is not a TCP port. Nothing was changed.")
        if self.bwlimit < 0:
            raise CopyError(f"dest.bwlimit must not be negative, got {self.bwlimit}. Nothing was changed.")
        for label, value in (("identity_file", self.identity_file), ("known_hosts_file", self.known_hosts_file)):
            if value and '"' in value:
                raise CopyError(f"dest.{label} must not contain a double quote. Nothing was changed.")
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise CopyError(f"dest.identity_file {self.identity_file} does not exist on this host: copy the "
                            f"private key there (mode 0600) or fix the path. Nothing was changed.")
        if self.known_hosts_file and not os.path.isfile(self.known_hosts_file) and self.strict == "yes":
            raise CopyError(f"dest.known_hosts_file {self.known_hosts_file} does not exist on this host: put the "
                            f"destination's host key there (check its fingerprint, then ssh-keyscan -p {self.port} "
                            f"{self.host} >> {self.known_hosts_file}) or use strict_host_key_checking=accept-new. "
                            f"Nothing was changed.")
        self.ssh_bin = module.get_bin_path("ssh")
        self.rsync_bin = module.get_bin_path("rsync")
        for tool, found in (("ssh", self.ssh_bin), ("rsync", self.rsync_bin)):
            if not found:
                raise CopyError(f"{tool} is not installed on this host; install it (Debian: apt-get install "
                                f"{'openssh-client' if tool == 'ssh' else 'rsync'}). Nothing was changed.")

    # -- description
    def describe(self):
        return dict(type="ssh", name=self.name, host=self.host, port=self.port, user=self.user, path=self.path,
                    identity_file=self.identity_file, known_hosts_file=self.known_hosts_file,
                    strict_host_key_checking=self.strict, bwlimit=self.bwlimit)

    def url(self, name):
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        path = self.path if self.path.startswith("/") else "/~/" + self.path
        return f"ssh://{self.user}@{host}:{self.port}{posixpath.join(path, name)}"

    def remote(self, name):
        return posixpath.join(self.path, name)

    # -- running ssh
    def ssh_options(self):
        opts = ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={self.strict}",
                "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-p", str(self.port), "-l", self.user]
        if self.identity_file:
            opts += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts_file:
            opts += ["-o", 'UserKnownHostsFile="%s"' % self.known_hosts_file.replace("%", "%%")]
        return opts

    def known_hosts_text(self):
        return self.known_hosts_file or "the system's known_hosts (~/.ssh/known_hosts of the user running the module)"

    def classify(self, stderr):
        """A message for an SSH-level failure, or None when the failure is not SSH's own."""
        lower = stderr.lower()
        where = f"{self.host} (port {self.port})"
        if "remote host identification has changed" in lower or "host key for" in lower and "has changed" in lower:
            return (f"the host key of {where} has CHANGED: it does not match the entry in {self.known_hosts_text()}. "
                    f"If the host was reinstalled, check its new fingerprint and replace the entry; otherwise the "
                    f"connection may be intercepted. Nothing was changed.")
        if "host key verification failed" in lower or "no ed25519 host key is known" in lower \
                or "host key is known" in lower:
            return (f"the host key of {where} is unknown: it is not in {self.known_hosts_text()}. Check its "
                    f"fingerprint and add it (ssh-keyscan -p {self.port} {self.host} >> <known_hosts file>), or set "
                    f"dest.strict_host_key_checking=accept-new to trust it on first contact. Nothing was changed.")
        if re.search(r"permission denied \((publickey|password|keyboard|gssapi|hostbased)", lower) \
                or "too many authentication failures" in lower:
            key = self.identity_file or "the user's default keys"
            return (f"{where} refused the login of {self.user} (authentication with {key} failed). Add the public key "
                    f"to ~{self.user}/.ssh/authorized_keys on {self.host}, or fix dest.identity_file/dest.user "
                    f"(only key authentication is used). Nothing was changed.")
        if "could not resolve hostname" in lower or "name or service not known" in lower:
            return f"cannot resolve the destination host name {self.host!r}: fix dest.host or DNS. Nothing was changed."
        for text in ("connection refused", "no route to host", "connection timed out", "network is unreachable",
                     "operation timed out", "connection reset", "connection closed by", "timeout, server"):
            if text in lower:
                return (f"cannot reach {where} over SSH ({text}): check that the host is up, that sshd listens on "
                        f"port {self.port} and that no firewall blocks it. Nothing was changed at the destination "
                        f"by this step.")
        return None

    def clean_stderr(self, stderr):
        lines = [line for line in stderr.strip().splitlines() if not SSH_STDERR_NOISE.match(line.strip())]
        return " | ".join(lines[-6:])

    def run(self, script, what, ok=(0,)):
        """Run a POSIX sh script at the destination; (rc, stdout). Raises CopyError on failure."""
        command = "LC_ALL=C sh -c " + shlex.quote("set -u; LC_ALL=C; export LC_ALL; " + script)
        cmd = [self.ssh_bin] + self.ssh_options() + ["--", self.host, command]
        rc, out, err = self.module.run_command(cmd, environ_update=dict(LC_ALL="C", LANG="C"))
        if rc in ok:
            return rc, out
        message = self.classify(err) if rc == 255 else None
        if message is None:
            message = (f"{what} at {self.user}@{self.host}:{self.path} failed (exit {rc}): "
                       f"{self.clean_stderr(err) or out.strip()[-300:] or 'no message'}")
            if "no space left" in err.lower():
                message += ". The destination is full: free space there or lower keep."
            elif "permission denied" in err.lower():
                message += f". {self.user} may not write to {self.path}: fix its permissions or dest.user."
        raise CopyError(message, rc=rc)

    # -- inspecting a copy
    def inspect(self, name, verify=True):
        """The state of ``<path>/<name>``: None when absent, else dict(hashes, failed, files, manifest)."""
        directory = shlex.quote(self.remote(name))
        script = f"""
d={directory}
if [ ! -d "$d" ]; then echo '@@absent'; echo '@@end'; exit 0; fi
cd -- "$d" || exit 3
for f in {MANIFEST} {SUMS}; do
  if [ -f "$f" ]; then printf '@@hash %s %s\\n' "$f" "$(sha256sum < "$f" | cut -c1-64)"; fi
done
if [ -f {MANIFEST} ]; then printf '@@manifest '; base64 < {MANIFEST} | tr -d '\\n'; echo; fi
"""
        if verify:
            script += f"""
if [ -f {SUMS} ]; then
  echo '@@check'
  sha256sum --quiet -c {SUMS} 2>&1 | sed 's/^/@@c /'
fi
echo '@@files'
find . -type f -print | sed 's/^/@@f /'
"""
        script += "echo '@@end'\n"
        _rc, out = self.run(script, f"reading {self.remote(name)}")
        if "@@end" not in out:
            raise CopyError(f"reading {self.remote(name)} at {self.host} gave an incomplete answer: {out[-300:]!r}")
        if "@@absent" in out.splitlines():
            return None
        state = dict(hashes={}, failed=[], files=[], manifest=None, manifest_raw=None)
        for line in out.splitlines():
            if line.startswith("@@hash "):
                parts = line.split(" ")
                if len(parts) == 3:
                    state["hashes"][parts[1]] = parts[2]
            elif line.startswith("@@manifest "):
                state["manifest_raw"] = line[len("@@manifest "):].strip()
            elif line.startswith("@@c "):
                match = re.match(r"^(.*): FAILED( open or read)?$", line[4:])
                if match:
                    rel = match.group(1)
                    while rel.startswith("./"):
                        rel = rel[2:]
                    state["failed"].append(rel)
            elif line.startswith("@@f "):
                rel = line[4:]
                while rel.startswith("./"):
                    rel = rel[2:]
                state["files"].append(rel)
        state["manifest"] = decode_manifest(state["manifest_raw"])
        return state

    # -- copying
    def rsync(self, local, name):
        ssh = " ".join(shlex.quote(part) for part in [self.ssh_bin] + self.ssh_options())
        cmd = [self.rsync_bin, "-a", "--partial", "--delete", "--delete-excluded", "-s", "--timeout=600",
               "-e", ssh]
        if self.bwlimit:
            cmd.append(f"--bwlimit={self.bwlimit}")
        for rel in local.excluded:
            cmd.append("--exclude=/" + re.sub(r"([*?\[\\])", r"\\\1", rel))
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        cmd += ["--", local.path + "/", f"{host}:{self.remote(name)}/"]
        rc, out, err = self.module.run_command(cmd, environ_update=dict(LC_ALL="C", LANG="C"))
        if rc == 0:
            return
        message = self.classify(err)
        if message is None:
            message = f"rsync of {local.path} to {self.user}@{self.host}:{self.remote(name)} failed (exit {rc}): " \
                      f"{self.clean_stderr(err) or 'no message'}"
            lower = err.lower()
            if "rsync: command not found" in lower or "rsync: not found" in lower or rc == 127:
                message += ". Install rsync on the destination host."
            elif "no space left" in lower:
                message += ". The destination is full: free space there or lower keep."
            message += (f" The copy stays in {self.remote(name)} (not a backup; the next run resumes it). "
                        f"{UNTOUCHED}")
        raise CopyError(message, rc=rc)

    def prepare_repair(self, local):
        """Turn the damaged copy back into ``.partial`` (it stops counting), minus the files to send again."""
        final, partial = shlex.quote(self.remote(local.id)), shlex.quote(self.remote(local.id + PARTIAL))
        self.run(f'rm -rf -- {partial} && mv -T -- {final} {partial}',
                 f"moving the damaged copy {self.remote(local.id)} aside")

    def remove_files(self, name, rels):
        if not rels:
            return
        directory = shlex.quote(self.remote(name))
        files = " ".join(shlex.quote(rel) for rel in rels)
        self.run(f"cd -- {directory} && rm -f -- {files}", f"removing mismatching files in {self.remote(name)}")

    def copy(self, local, repair):
        partial = local.id + PARTIAL
        if repair is not None:
            self.prepare_repair(local)
            self.remove_files(partial, repair)
        else:
            self.run(f"mkdir -p -- {shlex.quote(self.path)}", f"creating {self.path}")
        for attempt in (1, 2):
            self.rsync(local, partial)
            state = self.inspect(partial)
            if state is None:
                raise CopyError(f"{self.remote(partial)} vanished at {self.host} right after the copy: is another "
                                f"job working there? {UNTOUCHED}")
            bad, extra = compare(local, state["hashes"], state["failed"], state["files"])
            if not bad and not extra:
                break
            self.remove_files(partial, bad + extra)
            if attempt == 2 or local.damaged(bad):
                raise mismatch_error(local, self.url(partial), bad or extra,
                                     f"left as {partial} (not a backup) without the mismatching files")
        final, staged = shlex.quote(self.remote(local.id)), shlex.quote(self.remote(partial))
        rc, _out = self.run(f"if [ -e {final} ]; then exit 4; fi; mv -T -- {staged} {final}",
                            f"renaming {self.remote(partial)}", ok=(0, 4))
        if rc == 4:
            raise CopyError(f"{self.remote(local.id)} appeared at {self.host} while copying (another job?): the "
                            f"verified copy stays in {self.remote(partial)}. {UNTOUCHED}")

    # -- listing and retention
    def listing(self):
        """dict(manifests={name: manifest dict or "invalid"}, partials=[names]) of the directories under path."""
        script = f"""
cd -- {shlex.quote(self.path)} 2>/dev/null || {{ echo '@@nodir'; echo '@@end'; exit 0; }}
for d in */; do
  d=${{d%/}}
  if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
  case $d in *{PARTIAL}) printf '@@partial %s\\n' "$d";; esac
  if [ -f "$d/{MANIFEST}" ]; then printf '@@manifest %s ' "$d"; base64 < "$d/{MANIFEST}" | tr -d '\\n'; echo; fi
done
echo '@@end'
"""
        _rc, out = self.run(script, f"listing {self.path}")
        if "@@end" not in out:
            raise CopyError(f"listing {self.path} at {self.host} gave an incomplete answer: {out[-300:]!r}")
        manifests, partials = {}, []
        for line in out.splitlines():
            if line.startswith("@@partial "):
                partials.append(line[len("@@partial "):])
            elif line.startswith("@@manifest "):
                rest = line[len("@@manifest "):]
                name, _sep, raw = rest.rpartition(" ")
                manifests[name] = decode_manifest(raw)
        return dict(manifests=manifests, partials=partials)

    def delete(self, names, what):
        """Delete backup directories (their manifest first, so a half-deleted one no longer counts)."""
        lines = []
        for name in names:
            target = shlex.quote(self.remote(name))
            manifest = shlex.quote(self.remote(posixpath.join(name, MANIFEST)))
            lines.append(f"rm -f -- {manifest} && rm -rf -- {target} || exit 5")
        if lines:
            self.run("\n".join(lines), f"deleting {what} {', '.join(names)}")


def parse_manifest(raw: bytes):
    """A destination's manifest.json bytes as a dict, or "invalid" when they are not a JSON object."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "invalid"
    return value if isinstance(value, dict) else "invalid"


def decode_manifest(raw):
    """A manifest sent base64-encoded in an SSH listing (None when there was none)."""
    if raw is None:
        return None
    try:
        return parse_manifest(base64.b64decode(raw))
    except (ValueError, TypeError):
        return "invalid"


# ---------------------------------------------------------------------------------------------
# S3 destination

class S3Dest:
    kind = "s3"

    def __init__(self, module, opts):
        if boto3 is None:
            module.fail_json(msg=missing_required_lib("boto3"), exception=BOTO3_IMPORT_ERROR)
        self.module = module
        self.bucket = opts["bucket"]
        prefix = opts["prefix"] or ""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix.lstrip("/")
        self.endpoint_url = opts["endpoint_url"]
        self.region = opts["region"]
        self.storage_class = opts["storage_class"]
        self.name = opts.get("name")
        if not self.bucket:
            raise CopyError("dest.bucket is required with dest.type=s3. Nothing was changed.")
        if bool(opts["access_key"]) != bool(opts["secret_key"]):
            raise CopyError("give dest.access_key and dest.secret_key together, or neither (then the AWS "
                            "environment, ~/.aws/credentials or an instance role provide them). Nothing was changed.")
        verify = opts["ca_bundle"] if opts["ca_bundle"] else opts["validate_certs"]
        config = dict(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=20, read_timeout=120)
        if self.endpoint_url:
            config["s3"] = {"addressing_style": "path"}
        try:
            boto_config = BotoConfig(request_checksum_calculation="when_required",
                                     response_checksum_validation="when_required", **config)
        except TypeError:  # botocore before 1.36 has neither option (and computes no extra checksums)
            boto_config = BotoConfig(**config)
        try:
            session = boto3.session.Session(aws_access_key_id=opts["access_key"] or None,
                                            aws_secret_access_key=opts["secret_key"] or None,
                                            region_name=self.region or None)
            self.client = session.client("s3", endpoint_url=self.endpoint_url or None, verify=verify,
                                         config=boto_config)
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise CopyError(f"cannot set up the S3 client: {exc}. Check dest.endpoint_url, dest.region and the AWS "
                            f"configuration. Nothing was changed.")
        self.transfer = TransferConfig(multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART,
                                       max_concurrency=4)
        self.extra = {"StorageClass": self.storage_class} if self.storage_class else {}

    def describe(self):
        return dict(type="s3", name=self.name, bucket=self.bucket, prefix=self.prefix,
                    endpoint_url=self.endpoint_url, region=self.region, storage_class=self.storage_class)

    def url(self, name):
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def key(self, name, rel=""):
        return f"{self.prefix}{name}/{rel}"

    def explain(self, exc, what):
        """A CopyError for a boto3/botocore exception raised while doing ``what``."""
        where = f"bucket {self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return CopyError(f"{what}: no S3 credentials. Give dest.access_key and dest.secret_key, or set them "
                             f"in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws/credentials "
                             f"of the user running the module. {UNTOUCHED}")
        if isinstance(exc, botocore.exceptions.SSLError):
            return CopyError(f"{what}: the TLS certificate of {self.endpoint_url or 'S3'} is not trusted ({exc}). "
                             f"Give its CA in dest.ca_bundle (or, for a test server only, "
                             f"dest.validate_certs=false). {UNTOUCHED}")
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                            botocore.exceptions.ReadTimeoutError)):
            return CopyError(f"{what}: cannot reach {self.endpoint_url or 'S3'} ({exc}). Check dest.endpoint_url, "
                             f"the network and any firewall or proxy. {UNTOUCHED}")
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            text = error.get("Message") or str(exc)
            if code in ("NoSuchBucket",):
                fix = f"the bucket {self.bucket} does not exist; create it or fix dest.bucket"
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                          "AuthorizationHeaderMalformed"):
                fix = "the server refused the credentials; check dest.access_key, dest.secret_key and dest.region"
            elif code in ("AccessDenied", "403", "AllAccessDisabled"):
                fix = (f"access denied: the credentials need s3:ListBucket, s3:GetObject, s3:PutObject and "
                       f"s3:DeleteObject on {self.bucket}/{self.prefix}*")
            elif code in ("404", "NotFound"):
                fix = f"{self.endpoint_url or 'S3'} answered Not Found; check dest.endpoint_url and dest.bucket"
            elif code in ("InvalidStorageClass",):
                fix = f"the server does not accept storage class {self.storage_class}; fix dest.storage_class"
            else:
                fix = f"the S3 server answered {code or 'an error'}"
            return CopyError(f"{what} ({where}): {fix} ({text}). {UNTOUCHED}", code=code)
        return CopyError(f"{what} ({where}): {exc}. {UNTOUCHED}")

    def call(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self.explain(exc, what)
        except Exception as exc:  # boto3's transfer manager wraps failures (S3UploadFailedError, ...)
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
                raise self.explain(cause, what)
            if isinstance(exc, OSError) or type(exc).__module__.startswith(("boto3", "botocore", "s3transfer")):
                raise CopyError(f"{what}: {exc}. {UNTOUCHED}")
            raise

    def list_keys(self, prefix):
        """{key: size} of every object under ``prefix``."""
        keys = {}
        paginator = self.client.get_paginator("list_objects_v2")

        def walk():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []) or []:
                    keys[item["Key"]] = item.get("Size")
        self.call(f"listing s3://{self.bucket}/{prefix}", walk)
        return keys

    def hash_object(self, key):
        """The sha256 of an object, streamed; None when it does not exist."""
        def stream():
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            digest = hashlib.sha256()
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
            return digest.hexdigest()
        return self.call(f"reading back s3://{self.bucket}/{key}", stream)

    def read_object(self, key):
        def read():
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return self.call(f"reading s3://{self.bucket}/{key}", read)

    def verify(self, local, rels, keys):
        """(bad, extra) of the objects of ``rels`` among ``keys`` (the listing of the backup's prefix)."""
        base = self.key(local.id)
        present = {key[len(base):] for key in keys if key.startswith(base)}
        failed = []
        hashes = {}
        for rel in rels:
            if rel not in present:
                continue
            digest = self.hash_object(base + rel)
            if rel in (MANIFEST, SUMS):
                hashes[rel] = digest
            elif digest != local.expected_sha(rel):
                failed.append(rel)
        bad = sorted(set(failed) | {rel for rel in rels if rel not in present}
                     | {rel for rel in (MANIFEST, SUMS) if rel in rels and hashes.get(rel) != local.expected_sha(rel)})
        extra = sorted(present - set(local.files))
        return bad, extra

    def inspect(self, local):
        """None when there is no complete copy (no manifest.json), else dict(manifest, bad, extra)."""
        keys = self.list_keys(self.key(local.id))
        if self.key(local.id, MANIFEST) not in keys:
            return None
        manifest = parse_manifest(self.read_object(self.key(local.id, MANIFEST)))
        bad, extra = self.verify(local, local.files, keys)
        return dict(manifest=manifest, bad=bad, extra=extra)

    def delete_keys(self, keys, what):
        keys = sorted(keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            answer = self.call(what, self.client.delete_objects, Bucket=self.bucket,
                               Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise CopyError(f"{what}: the server refused to delete {first.get('Key')} ({first.get('Code')}: "
                                f"{first.get('Message')}); {len(errors)} object(s) not deleted. Check that the "
                                f"credentials have s3:DeleteObject. {UNTOUCHED}")

    def upload(self, local, rel):
        key = self.key(local.id, rel)
        self.call(f"uploading {rel} to s3://{self.bucket}/{key}", self.client.upload_file,
                  os.path.join(local.path, rel), self.bucket, key, ExtraArgs=dict(self.extra) or None,
                  Config=self.transfer)

    def copy(self, local, repair):
        manifest_key = self.key(local.id, MANIFEST)
        if repair is not None:
            # The copy stops counting as a backup before anything else changes.
            self.delete_keys([manifest_key], f"deleting {self.url(local.id)}/{MANIFEST} of the damaged copy")
            todo = [rel for rel in repair if rel != MANIFEST]
        else:
            todo = [rel for rel in local.files if rel != MANIFEST]
        data = [rel for rel in local.files if rel != MANIFEST]
        for attempt in (1, 2):
            for rel in todo:
                self.upload(local, rel)
            keys = self.list_keys(self.key(local.id))
            bad, extra = self.verify(local, data, keys)
            extra = [rel for rel in extra if rel != MANIFEST]
            if extra:
                self.delete_keys([self.key(local.id, rel) for rel in extra],
                                 f"deleting objects under {self.url(local.id)}/ that the backup does not have")
            if not bad:
                break
            if attempt == 2 or local.damaged(bad):
                raise mismatch_error(local, self.url(local.id), bad,
                                     f"left without {MANIFEST} (so it does not count as a backup)")
            todo = bad
        self.call(f"uploading {MANIFEST} to s3://{self.bucket}/{manifest_key}", self.client.put_object,
                  Bucket=self.bucket, Key=manifest_key, Body=local.manifest_bytes, **self.extra)
        if self.hash_object(manifest_key) != local.manifest_sha:
            self.delete_keys([manifest_key], f"deleting the mismatching {self.url(local.id)}/{MANIFEST}")
            raise CopyError(f"the copy at {self.url(local.id)} does not match: {MANIFEST} read back differs; it was "
                            f"deleted there, so the copy does not count as a backup. {UNTOUCHED} Run again.",
                            mismatched=[MANIFEST])

    def listing(self):
        """dict(manifests={name: manifest dict or "invalid"}, partials=[names without manifest.json])."""
        keys = self.list_keys(self.prefix)
        groups = {}
        for key in keys:
            rest = key[len(self.prefix):]
            if "/" not in rest:
                continue
            name, _sep, rel = rest.partition("/")
            groups.setdefault(name, set()).add(rel)
        manifests, partials = {}, []
        for name, rels in sorted(groups.items()):
            if MANIFEST in rels:
                manifests[name] = parse_manifest(self.read_object(self.key(name, MANIFEST)))
            else:
                partials.append(name)
        return dict(manifests=manifests, partials=partials)

    def delete(self, names, what):
        if not names:
            return
        # Manifests first: a backup interrupted half-way through its deletion no longer counts.
        self.delete_keys([self.key(name, MANIFEST) for name in names], f"deleting the manifests of {what}")
        for name in names:
            keys = self.list_keys(self.key(name))
            self.delete_keys(keys, f"deleting {self.url(name)}")


# ---------------------------------------------------------------------------------------------
# Retention at the destination

def retention(dest, local, keep, check_mode):
    """Plan (and, unless check mode, apply) retention at the destination: (removed, partials, kept, problems)."""
    found = dest.listing()
    problems = []
    mine = []
    names = set()
    for name, manifest in sorted(found["manifests"].items()):
        if _catalog.is_partial(name):
            continue
        manifest = _catalog.check_manifest(manifest, name, f"{dest.url(name)}/{MANIFEST}", problems)
        if manifest is None or _catalog.cluster_name(manifest) != local.cluster:
            continue
        mine.append(manifest)
        names.add(name)
    if local.id not in names:  # check mode, or a listing that raced with another job
        mine.append(dict(local.manifest))
        names.add(local.id)
    parsed = _catalog.parse_manifests(mine, problems)
    plan = _catalog.plan_retention(parsed, keep)
    remove = [i for i in plan["remove"] if i in names and i != local.id and SAFE_NAME.match(i)]
    kept = [i for i in plan["keep"] if i in names]
    if local.id not in kept:
        kept.append(local.id)
    for broken in plan["broken"]:
        if broken not in remove:
            problems.append(f"{dest.url(broken)} cannot be restored (its chain is broken): kept")

    prefix = sanitize(local.cluster) + "_" if local.cluster is not None else None
    partials = []
    for name in found["partials"]:
        own = local.id + PARTIAL if dest.kind == "ssh" else local.id
        if name == own or not SAFE_NAME.match(name):
            continue
        manifest = found["manifests"].get(name)
        if isinstance(manifest, dict):
            ours = _catalog.cluster_name(manifest) == local.cluster
        else:
            ours = prefix is not None and name.startswith(prefix)
        if ours:
            partials.append(name)
    if not check_mode:
        dest.delete(remove, "backups removed by retention")
        dest.delete(partials, "leftovers of interrupted copies")
    return remove, partials, kept, problems


def run(module):
    """Copy, verify and apply retention for the galera_backup_copy module; exits the module."""
    p = module.params
    started = time.monotonic()
    opts = dict(p["dest"], name=p["name"])
    result = dict(changed=False, dest=None, url=None, id=None, bytes=0, files=0, verified=False, copied=False,
                  repaired=[], seconds=0.0, removed=[], removed_partial=[], kept=[], excluded=[], problems=[])
    if p["keep"] is not None and p["keep"] < 1:
        module.fail_json(msg=f"keep must be at least 1, got {p['keep']} (leave it out for no retention at the "
                             "destination). Nothing was changed.", **result)
    try:
        local = LocalBackup(p["src"])
        result.update(id=local.id, bytes=local.bytes, files=len(local.files), excluded=local.excluded)
        dest = SshDest(module, opts) if opts["type"] == "ssh" else S3Dest(module, opts)
        result.update(dest=dest.describe(), url=dest.url(local.id))
        label = f"{p['name']} ({result['url']})" if p["name"] else result["url"]
        if local.excluded:
            module.warn(f"{len(local.excluded)} file(s) of {local.path} are not listed in SHA256SUMS and are not "
                        f"copied: {', '.join(local.excluded[:5])}")

        if dest.kind == "ssh":
            state = dest.inspect(local.id)
            if state is not None:
                remote = state["manifest"]
                bad, extra = compare(local, state["hashes"], state["failed"], state["files"])
                state = dict(manifest=remote, bad=bad, extra=extra)
        else:
            state = dest.inspect(local)

        repair = None
        if state is None:
            action = "copy"
        else:
            remote = state["manifest"]
            if isinstance(remote, dict) and str(remote.get("sha256", "")).lower() != local.sums_sha:
                raise CopyError(f"{label} already holds a DIFFERENT backup named {local.id} (its manifest names "
                                f"sha256 {remote.get('sha256')!r}, this one {local.sums_sha}). Nothing was changed; "
                                f"find out which is right, then remove or rename the one at the destination.")
            if not state["bad"] and not state["extra"]:
                action = "none"
            else:
                action = "repair"
                repair = state["bad"]
                module.warn(f"the copy at {label} does not match ({', '.join((state['bad'] + state['extra'])[:5])}): "
                            f"{'it would be' if module.check_mode else 'it was'} repaired (copied again and verified)")
        result["repaired"] = list(repair or [])
        result["copied"] = action != "none"
        result["changed"] = action != "none"
        if action == "none":
            result["verified"] = True
        elif not module.check_mode:
            dest.copy(local, repair)
            result["verified"] = True

        if p["keep"] is not None:
            removed, partials, kept, problems = retention(dest, local, p["keep"], module.check_mode)
            result.update(removed=removed, removed_partial=partials, kept=kept, problems=problems)
            for text in problems:
                module.warn(text)
            if removed or partials:
                result["changed"] = True
    except CopyError as exc:
        result["seconds"] = round(time.monotonic() - started, 1)
        result.update(exc.extra)
        module.fail_json(msg=(f"copy to {p['name']}: " if p["name"] else "") + exc.msg, **result)
    result["seconds"] = round(time.monotonic() - started, 1)
    module.exit_json(msg=summary(result, module.check_mode), **result)


def summary(result, check_mode):
    """One line saying what was (or, in check mode, would be) done."""
    size = _catalog.human_bytes(result["bytes"])
    if result["repaired"]:
        text = (f"{result['url']} did not match ({', '.join(result['repaired'][:5])}): "
                f"{'it would be repaired' if check_mode else 'repaired'}")
    elif result["copied"]:
        text = f"{'would copy' if check_mode else 'copied'} {result['files']} files ({size}) to {result['url']}"
    else:
        text = f"{result['url']} already holds this backup ({result['files']} files, {size})"
    if result["verified"]:
        text += ", verified there"
    if result["removed"] or result["removed_partial"]:
        text += (f"; retention {'would remove' if check_mode else 'removed'} "
                 f"{', '.join(result['removed'] + result['removed_partial'])}")
    return text

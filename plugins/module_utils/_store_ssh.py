# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A backup store in a directory on another host, reached over SSH (private).

Copies go with rsync into ``<path>/<id>.partial`` (resumable), are verified there with
``sha256sum -c`` and renamed to ``<path>/<id>`` in one ``mv -T``. A streamed backup's files go
into the same ``<id>.partial`` through ``ssh ... cat > <file>`` (``SshWriter``), one connection per
file, at most ``bwlimit`` KiB/s. Every remote command is a POSIX
``sh`` script in which each value is ``shlex.quote``d; names read back from the remote side travel
base64-encoded, so no name (a newline, a quote, ``@@`` in it) can change what the answer says.
The remote host needs ``sh``, coreutils (``sha256sum``, ``base64``) and rsync; this host ssh and rsync.
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
import re
import shlex
import subprocess
import tempfile
import time

from ansible_collections.dbtools.galera.plugins.module_utils import _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

MANIFEST, SUMS, RUN_RECORD, UNTOUCHED = _stores.MANIFEST, _stores.SUMS, _stores.RUN_RECORD, _stores.UNTOUCHED
SSH_STDERR_NOISE = re.compile(r"^(Warning: Permanently added .*|\*\*.*)$")
# One line per top-level entry: @@e <kind> <name> <manifest> <record>, each field base64 ("b" + data) or "-".
LIST_SCRIPT = r"""
cd -- {path} 2>/dev/null || {{ echo '@@nodir'; echo '@@end'; exit 0; }}
enc() {{ printf 'b'; base64 | tr -d '\n'; }}
for d in * .[!.]* ..?*; do
  if [ ! -e "$d" ] && [ ! -L "$d" ]; then continue; fi
  n=$(printf '%s' "$d" | enc)
  if [ -L "$d" ] || [ ! -d "$d" ]; then echo "@@e o $n - -"; continue; fi
  m=-; r=-
  if [ -f "$d/{manifest}" ] && [ ! -L "$d/{manifest}" ]; then m=$(enc < "$d/{manifest}"); fi
  if [ -f "$d/{record}" ] && [ ! -L "$d/{record}" ]; then r=$(enc < "$d/{record}"); fi
  echo "@@e d $n $m $r"
done
echo '@@end'
"""
STATE_SCRIPT = r"""
d={path}
if [ ! -d "$d" ] || [ -L "$d" ]; then echo '@@absent'; echo '@@end'; exit 0; fi
cd -- "$d" || exit 3
for f in {manifest} {sums}; do
  if [ -f "$f" ]; then printf '@@hash %s %s\n' "$f" "$(sha256sum < "$f" | cut -c1-64)"; fi
done
if [ -f {manifest} ]; then printf '@@manifest b'; base64 < {manifest} | tr -d '\n'; echo; fi
if [ -f {sums} ]; then
  printf '@@failed b'; sha256sum --quiet -c {sums} 2>/dev/null | sed -n 's/: FAILED\( open or read\)\{{0,1\}}$//p' \
    | base64 | tr -d '\n'; echo
fi
printf '@@files b'; find . -type f -print0 | base64 | tr -d '\n'; echo
echo '@@end'
"""
READ_SCRIPT = r"""
f={path}
if [ -f "$f" ] && [ ! -L "$f" ]; then printf '@@data b'; base64 < "$f" | tr -d '\n'; echo; else echo '@@absent'; fi
echo '@@end'
"""
# Writes stdin into a new file of an existing staging directory (never through a link, never elsewhere).
WRITE_SCRIPT = r"""
d={top}
if [ ! -d "$d" ] || [ -L "$d" ]; then echo "@@nostaging: $d is not a staging directory" >&2; exit 5; fi
{mkdir}cat > {path}
"""


def decode(field: str):
    """A "b<base64>" field of an answer as bytes; "-" (absent) as None."""
    if field == "-":
        return None
    if not field.startswith("b"):
        raise ValueError(f"not an encoded field: {field[:40]!r}")
    try:
        return base64.b64decode(field[1:], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64: {exc}")


def strip_dot(rel: str) -> str:
    while rel.startswith("./"):
        rel = rel[2:]
    return rel


def parse_listing(out: str) -> list:
    """The entries (see ``_stores.Store._entries``) of LIST_SCRIPT's answer."""
    entries = []
    for line in out.splitlines():
        if not line.startswith("@@e "):
            continue
        parts = line.split(" ")
        if len(parts) != 5 or parts[1] not in ("d", "o"):
            raise ValueError(f"unexpected line {line[:80]!r}")
        name = decode(parts[2]).decode("utf-8", errors="surrogateescape")
        entries.append(dict(name=name, dir=parts[1] == "d", manifest=decode(parts[3]), record=decode(parts[4])))
    return entries


def parse_state(out: str) -> dict | None:
    """The state (see ``_stores.compare``) of STATE_SCRIPT's answer; None when absent."""
    if "@@absent" in out.splitlines():
        return None
    state = dict(hashes={}, failed=[], files=[], manifest=None)
    for line in out.splitlines():
        if line.startswith("@@hash "):
            parts = line.split(" ")
            if len(parts) == 3:
                state["hashes"][parts[1]] = parts[2]
        elif line.startswith("@@manifest "):
            state["manifest"] = decode(line[len("@@manifest "):].strip())
        elif line.startswith("@@failed "):
            text = decode(line[len("@@failed "):].strip()).decode("utf-8", errors="replace")
            state["failed"] = [strip_dot(rel) for rel in text.splitlines() if rel]
        elif line.startswith("@@files "):
            raw = decode(line[len("@@files "):].strip()).decode("utf-8", errors="surrogateescape")
            state["files"] = [strip_dot(rel) for rel in raw.split("\0") if rel]
    return state


class SshWriter:
    """One file of a streamed backup, written through ``ssh ... cat >`` (see ``_stores``' writers)."""

    def __init__(self, store, name: str, rel: str):
        self.store, self.where = store, store.remote(name, rel)
        parent = posixpath.dirname(rel)
        script = WRITE_SCRIPT.format(top=store.q(name), path=store.q(name, rel),
                                     mkdir=f"mkdir -p -- {store.q(name, parent)} && " if parent else "")
        self.errors = tempfile.TemporaryFile()  # pylint: disable=consider-using-with
        self.proc = store.popen(store.remote_argv(script), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=self.errors)
        self.sent = 0
        self.started = time.monotonic()

    def _failed(self, what: str) -> GaleraError:
        rc = self.proc.wait()
        self.errors.seek(0)
        err = self.errors.read().decode("utf-8", "replace")
        self.errors.close()
        if rc == 5 and "@@nostaging" in err:
            return GaleraError(f"{what}: the staging directory {posixpath.dirname(self.where)} is gone at "
                               f"{self.store.host} (another job removed it?). The backup does not count.", rc=rc)
        return self.store.explain(rc, err, what)

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
        except OSError:  # the connection or the remote cat ended: say why
            raise self._failed(f"streaming {self.where} to {self.store.user}@{self.store.host}") from None
        self.sent += len(data)
        if self.store.bwlimit:
            ahead = self.sent / (self.store.bwlimit * 1024.0) - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait()
        if rc != 0:
            raise self._failed(f"streaming {self.where} to {self.store.user}@{self.store.host}")
        self.errors.close()

    def abort(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.errors.close()


class SshStore(_stores.Store):
    kind = "ssh"

    def __init__(self, runner, opts: dict):
        self.runner = runner
        host = opts.get("host") or ""
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port = 22 if opts.get("port") is None else opts["port"]
        self.user = opts.get("user") or "root"
        self.path = posixpath.normpath(opts["path"]) if opts.get("path") not in ("", None) else ""
        self.identity_file = opts.get("identity_file")
        self.known_hosts_file = opts.get("known_hosts_file")
        self.strict = opts.get("strict_host_key_checking") or "yes"
        self.bwlimit = opts.get("bwlimit") or 0
        self.name = opts.get("name")
        for label, value in (("host", self.host), ("user", self.user)):
            if not value or value.startswith("-") or re.search(r"[\s'\"\\@/]", value):
                raise GaleraError(f"dest.{label} {value!r} is not a valid SSH {label}. Nothing was changed.")
        if not self.path or "\n" in self.path or self.path in ("/", "."):
            raise GaleraError("dest.path must name the remote directory of the backups. Nothing was changed.")
        if not 0 < self.port < 65536:
            raise GaleraError(f"dest.port {self.port} is not a TCP port. Nothing was changed.")
        if self.bwlimit < 0:
            raise GaleraError(f"dest.bwlimit must not be negative, got {self.bwlimit}. Nothing was changed.")
        for label, value in (("identity_file", self.identity_file), ("known_hosts_file", self.known_hosts_file)):
            if value and ('"' in value or "\n" in value):
                raise GaleraError(f"dest.{label} must not contain a double quote or a newline. Nothing was changed.")
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise GaleraError(f"dest.identity_file {self.identity_file} does not exist on this host: copy the "
                              f"private key there (mode 0600) or fix the path. Nothing was changed.")
        if self.known_hosts_file and not os.path.isfile(self.known_hosts_file) and self.strict == "yes":
            raise GaleraError(f"dest.known_hosts_file {self.known_hosts_file} does not exist on this host: put the "
                              f"destination's host key there (check its fingerprint, then ssh-keyscan -p {self.port} "
                              f"{self.host} >> {self.known_hosts_file}) or use strict_host_key_checking=accept-new. "
                              f"Nothing was changed.")
        self.ssh_bin = runner.get_bin_path("ssh")
        self.rsync_bin = runner.get_bin_path("rsync")
        for tool, found in (("ssh", self.ssh_bin), ("rsync", self.rsync_bin)):
            if not found:
                raise GaleraError(f"{tool} is not installed on this host; install it (Debian: apt-get install "
                                  f"{'openssh-client' if tool == 'ssh' else 'rsync'}). Nothing was changed.")

    # -- description
    def describe(self):
        return dict(type="ssh", name=self.name, host=self.host, port=self.port, user=self.user, path=self.path,
                    identity_file=self.identity_file, known_hosts_file=self.known_hosts_file,
                    strict_host_key_checking=self.strict, bwlimit=self.bwlimit)

    def url(self, name):
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.path.startswith("/") else "/~/" + self.path
        return f"ssh://{self.user}@{host}:{self.port}{posixpath.join(path, name)}"

    def remote(self, name, rel=""):
        return posixpath.join(self.path, name, rel) if rel else posixpath.join(self.path, name)

    def q(self, name, rel=""):
        return shlex.quote(self.remote(name, rel))

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
        if "remote host identification has changed" in lower or ("host key for" in lower and "has changed" in lower):
            return (f"the host key of {where} has CHANGED: it does not match the entry in {self.known_hosts_text()}. "
                    f"If the host was reinstalled, check its new fingerprint and replace the entry; otherwise the "
                    f"connection may be intercepted. Nothing was changed.")
        if "host key verification failed" in lower or "host key is known" in lower:
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

    def explain(self, rc, err, what, out="", tool="ssh"):
        """The GaleraError for a failed ssh (exit 255: SSH's own failure) or rsync call doing ``what``."""
        message = self.classify(err) if rc == 255 or tool == "rsync" else None
        if message is None:
            message = f"{what} failed (exit {rc}): {self.clean_stderr(err) or out.strip()[-300:] or 'no message'}"
            lower = err.lower()
            if tool == "rsync" and ("rsync: command not found" in lower or "rsync: not found" in lower or rc == 127):
                message += ". Install rsync on the destination host."
            elif "no space left" in lower:
                message += ". The destination is full: free space there or lower keep."
            elif "permission denied" in lower:
                message += f". {self.user} may not write to {self.path}: fix its permissions or dest.user."
        return GaleraError(message, rc=rc)

    def remote_argv(self, script):
        """The ssh argv that runs the POSIX sh ``script`` at the destination (values in it quoted)."""
        command = "LC_ALL=C sh -c " + shlex.quote("set -u; umask 077; LC_ALL=C; export LC_ALL; " + script)
        return [self.ssh_bin] + self.ssh_options() + ["--", self.host, command]

    def popen(self, argv, **kwargs):
        """A process started through the runner's ``popen`` (a ``_stores.CommandRunner``; tests play
        the destination with their own), else directly."""
        opener = getattr(self.runner, "popen", None)
        if opener is not None:
            return opener(argv, environ_update=dict(LC_ALL="C", LANG="C"), **kwargs)
        # pylint: disable-next=ansible-bad-function  # a stream: run_command cannot give a live stdin
        return subprocess.Popen(argv, env=dict(os.environ, LC_ALL="C", LANG="C"),  # pylint: disable=consider-using-with
                                close_fds=True, **kwargs)

    def run(self, script, what, ok=(0,), data=None):
        """Run a POSIX sh script at the destination; (rc, stdout). Raises GaleraError on failure."""
        cmd = self.remote_argv(script)
        kwargs = dict(environ_update=dict(LC_ALL="C", LANG="C"), expand_user_and_vars=False)
        if data is not None:
            kwargs.update(data=data, binary_data=True)
        rc, out, err = self.runner.run_command(cmd, **kwargs)
        if rc not in ok:
            raise self.explain(rc, err, f"{what} at {self.user}@{self.host}:{self.path}", out)
        return rc, out

    def answer(self, script, what, parse):
        """Run a script whose answer ends with @@end and parse it."""
        _rc, out = self.run(script, what)
        if "@@end" not in out.splitlines():
            raise GaleraError(f"{what} at {self.host} gave an incomplete answer: {out[-300:]!r}. Run again; if it "
                              "persists, check the destination's shell and coreutils.")
        try:
            return parse(out)
        except ValueError as exc:
            raise GaleraError(f"{what} at {self.host} gave an answer that cannot be read ({exc}). Check that the "
                              "destination has coreutils (base64, sha256sum).")

    def rsync(self, argv, what, data=None):
        ssh = " ".join(shlex.quote(part) for part in [self.ssh_bin] + self.ssh_options())
        cmd = [self.rsync_bin, "-a", "-s", "--timeout=600", "-e", ssh]
        if self.bwlimit:
            cmd.append(f"--bwlimit={self.bwlimit}")
        kwargs = dict(environ_update=dict(LC_ALL="C", LANG="C"), expand_user_and_vars=False)
        if data is not None:
            kwargs.update(data=data, binary_data=True)
        rc, _out, err = self.runner.run_command(cmd + argv, **kwargs)
        if rc != 0:
            raise self.explain(rc, err, what, tool="rsync")

    def rsync_host(self):
        return f"[{self.host}]" if ":" in self.host else self.host

    # -- the primitives
    def _entries(self):
        script = LIST_SCRIPT.format(path=shlex.quote(self.path), manifest=MANIFEST, record=RUN_RECORD)
        return self.answer(script, f"listing {self.path}", parse_listing)

    def _state(self, name, rels):
        script = STATE_SCRIPT.format(path=self.q(name), manifest=MANIFEST, sums=SUMS)
        return self.answer(script, f"reading {self.remote(name)}", parse_state)

    def _begin(self, local, repair, record):
        final, staged = self.q(local.id), self.q(self.staging(local.id))
        if repair is not None:
            # The record goes into the complete copy, which then becomes <id>.partial and stops counting.
            script = (f"cat > {self.q(local.id, RUN_RECORD)} && rm -rf -- {staged} && mv -T -- {final} {staged}")
            what = f"moving the damaged copy {self.remote(local.id)} aside"
        else:
            script = (f"mkdir -p -- {shlex.quote(self.path)} {staged} && "
                      f"cat > {self.q(self.staging(local.id), RUN_RECORD)}")
            what = f"creating {self.remote(self.staging(local.id))}"
        self.run(script, what, data=_stores.run_record_bytes(record))

    def _send(self, local, name, rels):
        argv = ["--partial", "--delete", "--delete-excluded", f"--filter=P /{RUN_RECORD}", f"--exclude=/{RUN_RECORD}"]
        for rel in local.excluded:
            argv.append("--exclude=/" + re.sub(r"([*?\[\\])", r"\\\1", rel))
        argv += ["--", local.path + "/", f"{self.rsync_host()}:{self.remote(name)}/"]
        try:
            self.rsync(argv, f"rsync of {local.path} to {self.user}@{self.host}:{self.remote(name)}")
        except GaleraError as exc:
            raise GaleraError(f"{exc.msg} The copy stays in {self.remote(name)} (not a backup; the next run resumes "
                              f"it). {UNTOUCHED}", **exc.details)

    def _drop(self, name, rels):
        if rels:
            files = " ".join(shlex.quote(rel) for rel in rels if _stores.safe_rel(rel))
            self.run(f"cd -- {self.q(name)} && rm -f -- {files}", f"removing mismatching files in {self.remote(name)}")

    def _publish(self, local):
        final, staged = self.q(local.id), self.q(self.staging(local.id))
        rc, _out = self.run(f"if [ -e {final} ]; then exit 4; fi; rm -f -- {self.q(self.staging(local.id), RUN_RECORD)}"
                            f" && mv -T -- {staged} {final}", f"renaming {self.remote(self.staging(local.id))}",
                            ok=(0, 4))
        if rc == 4:
            raise GaleraError(f"{self.remote(local.id)} appeared at {self.host} while copying (another job?): the "
                              f"verified copy stays in {self.remote(self.staging(local.id))}. {UNTOUCHED}")

    def _read(self, name, rel):
        def parse(out):
            for line in out.splitlines():
                if line.startswith("@@data "):
                    return decode(line[len("@@data "):].strip())
            return None
        return self.answer(READ_SCRIPT.format(path=self.q(name, rel)), f"reading {self.remote(name, rel)}", parse)

    def _download(self, name, rels, target):
        listing = "".join(rel + "\n" for rel in rels if _stores.safe_rel(rel)).encode("utf-8")
        self.rsync(["--files-from=-", "--", f"{self.rsync_host()}:{self.remote(name)}/", target.rstrip("/") + "/"],
                   f"rsync of {self.remote(name)} from {self.host}", data=listing)

    def _remove(self, name):
        self.run(f"rm -f -- {self.q(name, MANIFEST)} && rm -rf -- {self.q(name)}", f"deleting {self.remote(name)}")

    def _writer(self, name, rel, size_hint=None):
        if not _stores.safe_rel(rel):
            raise GaleraError(f"refused to stream {rel!r}: not a file inside a backup. Nothing was streamed.")
        return SshWriter(self, name, rel)

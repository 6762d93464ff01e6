# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test helpers for the stores: real backup directories, a runner that plays the SSH destination
on this machine (remote scripts run by the local ``sh``, rsync imitated in Python), and stores of
each kind over a temporary directory or moto's in-process S3."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

from ansible_collections.dbtools.galera.plugins.module_utils import _stores

UUID = "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"
OTHER_UUID = "7c1f0e2a-0000-11f1-8000-000000000001"


def make_backup(root, backup_id, cluster="c1", kind="full", parent=None, chain=None,
                finished="2026-11-25T03:00:00Z", state_uuid=UUID, size=3000):
    """A complete backup directory ``root/backup_id`` (data, a nested file, SHA256SUMS, manifest)."""
    directory = os.path.join(str(root), backup_id)
    os.makedirs(os.path.join(directory, "meta"))
    with open(os.path.join(directory, "backup.xbstream.zst"), "wb") as handle:
        handle.write(os.urandom(size))
    with open(os.path.join(directory, "meta", "checkpoints"), "w", encoding="utf-8") as handle:
        handle.write("to_lsn = 1\n")
    lines = []
    for rel in ("backup.xbstream.zst", "meta/checkpoints"):
        lines.append(f"{_stores.sha256_file(os.path.join(directory, rel))}  ./{rel}\n")
    with open(os.path.join(directory, "SHA256SUMS"), "w", encoding="utf-8") as handle:
        handle.write("".join(lines))
    manifest = dict(format=1, id=backup_id, result="ok", type=kind, parent=parent, chain=chain or [backup_id],
                    cluster=dict(name=cluster, state_uuid=state_uuid), finished_at=finished,
                    position=dict(cluster_uuid=state_uuid, seqno=10, to_lsn=1),
                    sha256=_stores.sha256_file(os.path.join(directory, "SHA256SUMS")))
    with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    return directory, manifest


def sums_of(directory) -> dict:
    out = {}
    for top, _dirs, names in os.walk(directory):
        for name in names:
            full = os.path.join(top, name)
            out[os.path.relpath(full, directory)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------
# The SSH destination, played locally

def fake_rsync(argv, data):
    """What rsync does with the arguments SshStore gives it, on local paths ("host:" dropped)."""
    rest = argv[argv.index("--") + 1:]
    options = argv[1:argv.index("--")]
    src, dst = (p.split(":", 1)[1] if ":" in p and not p.startswith("/") else p for p in rest)
    protect, exclude = set(), set()
    for option in options:
        if option.startswith("--filter=P /"):
            protect.add(option[len("--filter=P /"):])
        elif option.startswith("--exclude=/"):
            exclude.add(option[len("--exclude=/"):].replace("\\", ""))
    os.makedirs(dst, exist_ok=True)
    if "--files-from=-" in options:
        wanted = data.decode().splitlines()
    else:
        wanted = [rel for rel in _walk(src) if rel not in exclude]
    for rel in wanted:
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(os.path.join(src, rel)):
            return 23, "", f"rsync: link_stat \"{rel}\" failed: No such file or directory (2)"
        shutil.copy2(os.path.join(src, rel), target)
    if "--delete" in options:
        for rel in _walk(dst):
            if rel not in wanted and rel not in protect:
                os.remove(os.path.join(dst, rel))
    return 0, "", ""


def _walk(top):
    out = []
    for root, _dirs, names in os.walk(top):
        for name in names:
            out.append(os.path.relpath(os.path.join(root, name), top))
    return out


class LocalRunner:
    """An AnsibleModule stand-in: ssh runs the remote script with the local sh; rsync is imitated."""

    def __init__(self):
        self.calls = []
        self.fail = None  # (rc, stderr) for the next ssh call

    def get_bin_path(self, name):
        return "/usr/bin/" + name

    def run_command(self, argv, environ_update=None, data=None, binary_data=False, expand_user_and_vars=False):
        self.calls.append(list(argv))
        if argv[0].endswith("rsync"):
            return fake_rsync(argv, data)
        if self.fail:
            rc, err = self.fail
            self.fail = None
            return rc, "", err
        assert argv[argv.index("--") + 1] == "store"
        proc = subprocess.run(["sh", "-c", argv[-1]], input=data if data is not None else b"",
                              capture_output=True, check=False)
        return proc.returncode, proc.stdout.decode("utf-8", "surrogateescape"), proc.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# One store of each kind

class Planted:
    """A store of one kind and a way to put raw things in it (what a foreign job would leave)."""

    def __init__(self, kind, store, root=None, client=None, bucket=None, prefix=""):
        self.kind, self.store, self.root, self.client, self.bucket, self.prefix = kind, store, root, client, bucket, \
            prefix

    def plant(self, name, files):
        """Write ``files`` ({relative path: bytes}) under ``name`` (a plain file when ``files`` is bytes)."""
        if self.client is not None:
            if isinstance(files, bytes):
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=files)
                return
            for rel, body in files.items():
                self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{name}/{rel}", Body=body)
            return
        path = os.path.join(self.root, name)
        if isinstance(files, bytes):
            with open(path, "wb") as handle:
                handle.write(files)
            return
        for rel, body in files.items():
            os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
            with open(os.path.join(path, rel), "wb") as handle:
                handle.write(body)

    def names(self):
        """Every top-level name in the store."""
        if self.client is not None:
            out = set()
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    out.add(item["Key"][len(self.prefix):].split("/", 1)[0])
            return out
        return set(os.listdir(self.root)) if os.path.isdir(self.root) else set()

    def files(self, name):
        """{relative path: bytes} under ``name``."""
        if self.client is not None:
            out = {}
            base = f"{self.prefix}{name}/"
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    out[item["Key"][len(base):]] = self.client.get_object(Bucket=self.bucket,
                                                                          Key=item["Key"])["Body"].read()
            return out
        top = os.path.join(self.root, name)
        return {rel: open(os.path.join(top, rel), "rb").read() for rel in _walk(top)} if os.path.isdir(top) else {}

    def damage(self, name, rel):
        body = self.files(name)[rel]
        self.plant(name, {rel: b"X" + body[1:]})

    def remove_file(self, name, rel):
        if self.client is not None:
            self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}{name}/{rel}")
        else:
            os.remove(os.path.join(self.root, name, rel))

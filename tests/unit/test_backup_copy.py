# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The local side of galera_backup_copy on real backup directories, and retention planning
over an in-memory destination listing. The copies themselves: tests/integration."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _copy as copy


def make_backup(root, backup_id, cluster="c1", kind="full", parent=None, chain=None, finished="2026-11-25T03:00:00Z"):
    directory = root / backup_id
    (directory / "meta").mkdir(parents=True)
    (directory / "backup.xbstream.zst").write_bytes(os.urandom(3000))
    (directory / "meta" / "checkpoints").write_text("to_lsn = 1\n")
    lines = []
    for rel in ("backup.xbstream.zst", "meta/checkpoints"):
        lines.append(f"{hashlib.sha256((directory / rel).read_bytes()).hexdigest()}  ./{rel}\n")
    (directory / "SHA256SUMS").write_text("".join(lines))
    manifest = dict(format=1, id=backup_id, result="ok", type=kind, parent=parent, chain=chain or [backup_id],
                    cluster=dict(name=cluster), finished_at=finished,
                    sha256=hashlib.sha256((directory / "SHA256SUMS").read_bytes()).hexdigest())
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory, manifest


def test_parse_sums_accepts_sha256sum_output_and_rejects_escapes():
    digest = "a" * 64
    assert copy.parse_sums(f"{digest}  ./x.zst\n{digest} *./d/y\n") == [("x.zst", digest), ("d/y", digest)]
    for bad in (f"{digest}  ../etc/passwd", f"{digest}  /etc/passwd", f"{digest}  ./a/../../b", "nonsense",
                f"{digest}  ./manifest.json"):
        with pytest.raises(ValueError):
            copy.parse_sums(bad)


def test_local_backup_lists_files_and_leaves_out_unlisted_ones(tmp_path):
    directory, _manifest = make_backup(tmp_path, "c1_n1_20261125T030000Z")
    (directory / "stray.log").write_text("not listed")
    local = copy.LocalBackup(str(directory))
    assert local.id == "c1_n1_20261125T030000Z"
    assert local.files == ["backup.xbstream.zst", "meta/checkpoints", "SHA256SUMS", "manifest.json"]
    assert local.excluded == ["stray.log"]
    assert local.bytes == sum(os.path.getsize(directory / rel) for rel in local.files)
    assert local.damaged(local.files) == []
    (directory / "meta" / "checkpoints").write_text("to_lsn = 2\n")
    assert local.damaged(local.files) == ["meta/checkpoints"]


def test_local_backup_refuses_incomplete_or_inconsistent_directories(tmp_path):
    directory, manifest = make_backup(tmp_path, "c1_n1_20261125T030000Z")
    (directory / "SHA256SUMS").write_text((directory / "SHA256SUMS").read_text() + "\n")
    with pytest.raises(copy.CopyError, match="inconsistent"):
        copy.LocalBackup(str(directory))
    (directory / "manifest.json").unlink()
    with pytest.raises(copy.CopyError, match="has no manifest.json"):
        copy.LocalBackup(str(directory))
    with pytest.raises(copy.CopyError, match="not a directory"):
        copy.LocalBackup(str(tmp_path / "missing"))
    other, _m = make_backup(tmp_path, "c1_n1_20261126T030000Z")
    (other / "backup.xbstream.zst").unlink()
    with pytest.raises(copy.CopyError, match="incomplete"):
        copy.LocalBackup(str(other))
    assert manifest["id"] == "c1_n1_20261125T030000Z"


def test_compare_names_damaged_missing_and_extra_files(tmp_path):
    directory, _manifest = make_backup(tmp_path, "c1_n1_20261125T030000Z")
    local = copy.LocalBackup(str(directory))
    good = {"manifest.json": local.manifest_sha, "SHA256SUMS": local.sums_sha}
    assert copy.compare(local, good, [], local.files) == ([], [])
    bad, extra = copy.compare(local, dict(good, **{"SHA256SUMS": "0" * 64}), ["meta/checkpoints"],
                              ["backup.xbstream.zst", "SHA256SUMS", "manifest.json", "junk"])
    assert bad == ["SHA256SUMS", "meta/checkpoints"]
    assert extra == ["junk"]


class MemoryDest:
    """A destination listing held in memory (what SshDest/S3Dest.listing return)."""

    kind = "ssh"

    def __init__(self, manifests, partials):
        self.manifests = manifests
        self.partials = partials
        self.deleted = []

    def listing(self):
        return dict(manifests=dict(self.manifests), partials=list(self.partials))

    def url(self, name):
        return f"ssh://store/{name}"

    def delete(self, names, what):
        self.deleted.extend(names)


def test_retention_keeps_chains_other_clusters_and_what_it_cannot_read(tmp_path):
    old, full, inc = "c1_n1_20261110T030000Z", "c1_n1_20261111T030000Z", "c1_n1_20261112T030000Z"
    _d, m_old = make_backup(tmp_path, old, finished="2026-11-10T03:00:00Z")
    _d, m_full = make_backup(tmp_path, full, finished="2026-11-11T03:00:00Z")
    directory, m_inc = make_backup(tmp_path, inc, kind="incremental", parent=full, chain=[full, inc],
                                   finished="2026-11-12T03:00:00Z")
    other = dict(m_old, id="c2_n1_20261101T030000Z", cluster=dict(name="c2"), finished_at="2026-11-01T03:00:00Z")
    dest = MemoryDest({old: m_old, full: m_full, inc: m_inc, other["id"]: other, "c1_n1_20261109T030000Z": "invalid"},
                      ["c1_n2_20261108T030000Z.partial", "c2_n1_20261108T030000Z.partial", inc + ".partial"])
    local = copy.LocalBackup(str(directory))

    removed, partials, kept, problems = copy.retention(dest, local, 1, check_mode=True)
    assert (removed, partials, sorted(kept)) == ([old], ["c1_n2_20261108T030000Z.partial"], [full, inc])
    assert dest.deleted == []
    assert any("c1_n1_20261109T030000Z" in p and "never deleted" in p for p in problems)

    copy.retention(dest, local, 1, check_mode=False)
    assert dest.deleted == [old, "c1_n2_20261108T030000Z.partial"]

"""The backup catalogue: reading a directory, chains, retention, parent choice, freshness, and the
two modules that use it, run through their real AnsibleModule entry point."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog

from module_helpers import run_module  # pylint: disable=import-error

NOW = datetime(2026, 11, 25, 5, 0, 0, tzinfo=timezone.utc)


def stamp(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


def make_id(moment: datetime, cluster="dbtools", host="galera-node3") -> str:
    return f"{cluster}_{host}_{moment.strftime('%Y%m%dT%H%M%SZ')}"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest(hours_ago, kind="full", parent=None, chain=None, cluster="dbtools", host="galera-node3",
             method="mariabackup", to_lsn=1000, **extra):
    moment = stamp(hours_ago)
    backup_id = extra.pop("id", None) or make_id(moment, cluster, host)
    m = {
        "format": 1, "id": backup_id, "result": "ok", "type": kind, "parent": parent,
        "chain": chain if chain is not None else ([backup_id] if kind == "full" else None),
        "method": method, "compress": "zstd", "node": host, "wsrep_node_name": host,
        "cluster": {"name": cluster, "state_uuid": "uuid-" + cluster, "size": 3},
        "started_at": iso(moment - timedelta(minutes=1)), "finished_at": iso(moment),
        "bytes": 1288490188, "files": 3,
        "position": {"galera": f"uuid-{cluster}:1234", "cluster_uuid": "uuid-" + cluster, "seqno": 1234,
                     "source": "galera info", "from_lsn": None, "to_lsn": to_lsn},
        "encryption": None, "verify": {"level": "prepare", "result": "ok"},
    }
    if m["chain"] is None:
        del m["chain"]
    m.update(extra)
    return m


def incremental(hours_ago, parent_manifest, **kw):
    chain = list(parent_manifest.get("chain") or [parent_manifest["id"]])
    m = manifest(hours_ago, "incremental", parent=parent_manifest["id"], chain=None, **kw)
    m["chain"] = chain + [m["id"]]
    return m


def write(root, *manifests):
    for m in manifests:
        folder = root / m["id"]
        folder.mkdir()
        (folder / "backup.xbstream.zst").write_bytes(b"data")
        (folder / "SHA256SUMS").write_text("0" * 64 + "  ./backup.xbstream.zst\n")
        (folder / "manifest.json").write_text(json.dumps(m))
    return manifests


def write_failure(root, hours_ago, cluster="dbtools", host="galera-node3", error="mariabackup exited 1"):
    moment = stamp(hours_ago)
    backup_id = make_id(moment, cluster, host)
    record = {"id": backup_id, "result": "failed", "error": error, "method": "mariabackup", "node": host,
              "cluster": cluster, "started_at": iso(moment - timedelta(minutes=2)), "failed_at": iso(moment),
              "resynced": True}
    (root / f"{backup_id}.failed.json").write_text(json.dumps(record))
    return record


def ids(*manifests):
    return sorted(m["id"] for m in manifests)


# --------------------------------------------------------------------------------------------
# read_dir / parse_manifests

def test_read_dir_ignores_partial_and_reports_bad_files_without_raising(tmp_path):
    full, = write(tmp_path, manifest(30))
    (tmp_path / (make_id(stamp(1)) + ".partial")).mkdir()
    verify = tmp_path / (make_id(stamp(2)) + ".partial.verify")
    verify.mkdir()
    (verify / "manifest.json").write_text(json.dumps(manifest(2)))   # even with a manifest: ignored
    bad = tmp_path / make_id(stamp(3))
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    listy = tmp_path / make_id(stamp(4))
    listy.mkdir()
    (listy / "manifest.json").write_text("[1, 2]")
    (tmp_path / make_id(stamp(5))).mkdir()                            # no manifest: incomplete
    (tmp_path / "lost+found").mkdir()                                 # not a backup name: silent
    (tmp_path / (make_id(stamp(6)) + ".failed.json")).write_text("oops")
    (tmp_path / "notes.txt").write_text("hello")

    found = _catalog.read_dir(str(tmp_path))
    assert found["exists"] is True
    assert [b["id"] for b in found["backups"]] == [full["id"]]
    assert found["backups"][0]["path"] == str(tmp_path / full["id"])
    assert found["failures"] == []
    text = "\n".join(found["problems"])
    assert len(found["problems"]) == 4
    assert "not a readable JSON manifest" in text and "not a JSON object" in text
    assert "has no manifest.json" in text and "failure record" in text
    assert ".partial" not in text and "lost+found" not in text


def test_read_dir_missing_directory(tmp_path):
    found = _catalog.read_dir(str(tmp_path / "absent"))
    assert found["backups"] == [] and found["failures"] == []
    assert found["exists"] is False
    assert "does not exist" in found["problems"][0]


def test_read_dir_refuses_a_manifest_whose_id_is_not_its_directory(tmp_path):
    evil = manifest(5, id="../../etc")
    folder = tmp_path / make_id(stamp(5))
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(evil))
    found = _catalog.read_dir(str(tmp_path))
    assert found["backups"] == []
    assert "not its directory" in found["problems"][0]


def test_read_dir_reads_failures_and_defaults_their_id(tmp_path):
    record = write_failure(tmp_path, 2)
    del record["id"]
    (tmp_path / (make_id(stamp(2)) + ".failed.json")).write_text(json.dumps(record))
    found = _catalog.read_dir(str(tmp_path))
    assert found["failures"][0]["id"] == make_id(stamp(2))
    assert found["failures"][0]["path"].endswith(".failed.json")


def test_parse_manifests_defaults_old_manifests_to_full_and_fills_chains():
    old = manifest(30)
    for key in ("type", "parent", "chain", "encryption"):
        old.pop(key)
    inc = manifest(20, "incremental", parent=old["id"])
    assert "chain" not in inc
    parsed = {m["id"]: m for m in _catalog.parse_manifests([old, inc])}
    assert parsed[old["id"]]["type"] == "full"
    assert parsed[old["id"]]["parent"] is None
    assert parsed[old["id"]]["chain"] == [old["id"]]
    assert parsed[inc["id"]]["chain"] == [old["id"], inc["id"]]
    assert "type" not in old  # the input is not changed


def test_parse_manifests_skips_partial_duplicates_and_junk():
    problems = []
    good = manifest(10)
    partial = dict(manifest(9), id=make_id(stamp(9)) + ".partial")
    out = _catalog.parse_manifests([good, dict(good), partial, "junk", {"type": "full"}], problems)
    assert [m["id"] for m in out] == [good["id"]]
    assert len(problems) == 3


# --------------------------------------------------------------------------------------------
# chains and retention

def chain_fixture():
    full = manifest(50)
    inc1 = incremental(40, full)
    inc2 = incremental(30, inc1)
    return full, inc1, inc2


def test_restorable_chain_and_broken_chain():
    full, inc1, inc2 = chain_fixture()
    by_id = {m["id"]: m for m in _catalog.parse_manifests([full, inc1, inc2])}
    assert all(_catalog.restorable(m, by_id) for m in by_id.values())
    assert _catalog.chain_of(by_id[inc2["id"]], by_id) == [full["id"], inc1["id"], inc2["id"]]
    del by_id[inc1["id"]]
    assert not _catalog.restorable(by_id[inc2["id"]], by_id)
    assert "is missing" in _catalog.broken_reason(by_id[inc2["id"]], by_id)


def test_restorable_refuses_loops_and_mismatched_chains():
    a = manifest(10, "incremental", parent=make_id(stamp(9)), chain=[make_id(stamp(9)), make_id(stamp(10))])
    b = manifest(9, "incremental", parent=a["id"], chain=[a["id"], make_id(stamp(9))])
    by_id = {a["id"]: a, b["id"]: b}
    assert not _catalog.restorable(a, by_id)
    assert "loops" in _catalog.broken_reason(a, by_id)
    full = manifest(20)
    liar = incremental(10, full)
    liar["chain"] = ["someone_else_20260101T000000Z", liar["id"]]
    assert "does not match" in _catalog.broken_reason(liar, {full["id"]: full, liar["id"]: liar})


def test_keep_one_when_newest_is_incremental_keeps_the_whole_chain():
    older = manifest(80)
    full, inc1, inc2 = chain_fixture()
    plan = _catalog.plan_retention([older, full, inc1, inc2], 1)
    assert plan["keep"] == [full["id"], inc1["id"], inc2["id"]]
    assert plan["remove"] == [older["id"]]
    assert plan["broken"] == []


def test_keep_counts_restorable_backups_not_chains():
    full, inc1, inc2 = chain_fixture()
    full2 = manifest(20)
    inc3 = incremental(10, full2)
    plan = _catalog.plan_retention([full, inc1, inc2, full2, inc3], 2)
    # the 2 newest are inc3 and full2; nothing else is needed
    assert plan["keep"] == ids(full2, inc3) and plan["keep"] == [full2["id"], inc3["id"]]
    assert plan["remove"] == [full["id"], inc1["id"], inc2["id"]]
    plan = _catalog.plan_retention([full, inc1, inc2, full2, inc3], 3)
    assert plan["keep"] == [full["id"], inc1["id"], inc2["id"], full2["id"], inc3["id"]]
    assert plan["remove"] == []


def test_retention_removes_old_broken_keeps_new_broken():
    old_full = manifest(100)
    orphan_old = manifest(90, "incremental", parent=make_id(stamp(95)),
                          chain=[make_id(stamp(95)), make_id(stamp(90))])
    full = manifest(50)
    orphan_new = manifest(10, "incremental", parent=make_id(stamp(20)),
                          chain=[make_id(stamp(20)), make_id(stamp(10))])
    plan = _catalog.plan_retention([old_full, orphan_old, full, orphan_new], 1)
    assert plan["broken"] == [orphan_old["id"], orphan_new["id"]]
    assert plan["remove"] == [old_full["id"], orphan_old["id"]]
    assert plan["keep"] == [full["id"], orphan_new["id"]]


def test_retention_never_removes_when_nothing_is_restorable():
    orphan = manifest(10, "incremental", parent=make_id(stamp(20)), chain=[make_id(stamp(20)), make_id(stamp(10))])
    plan = _catalog.plan_retention([orphan], 1)
    assert (plan["keep"], plan["remove"], plan["broken"]) == ([orphan["id"]], [], [orphan["id"]])
    assert "its cluster has no restorable backup" in plan["reasons"][orphan["id"]][0]
    assert plan["oldest_kept"] == []


def test_retention_is_per_cluster():
    a_old, a_new = manifest(50, cluster="alpha"), manifest(10, cluster="alpha")
    b_old, b_new = manifest(49, cluster="beta"), manifest(48, cluster="beta")
    plan = _catalog.plan_retention([a_old, a_new, b_old, b_new], 1)
    assert set(plan["keep"]) == {a_new["id"], b_new["id"]}
    assert set(plan["remove"]) == {a_old["id"], b_old["id"]}


def test_retention_groups_by_cluster_name_and_state_uuid():
    a_old, a_new = manifest(50, cluster="my_wsrep_cluster"), manifest(10, cluster="my_wsrep_cluster")
    b_old = manifest(49, cluster="my_wsrep_cluster", host="galera-node1")
    b_new = manifest(48, cluster="my_wsrep_cluster", host="galera-node1")
    for m in (b_old, b_new):
        m["cluster"] = dict(m["cluster"], state_uuid="uuid-twin")
        m["position"] = dict(m["position"], cluster_uuid="uuid-twin")
    plan = _catalog.plan_retention([a_old, a_new, b_old, b_new], 1)
    assert set(plan["keep"]) == {a_new["id"], b_new["id"]}
    assert set(plan["remove"]) == {a_old["id"], b_old["id"]}
    assert _catalog.newest_good([a_old, a_new, b_old, b_new], "my_wsrep_cluster", cluster_uuid="uuid-twin")["id"] == b_new["id"]


@pytest.mark.parametrize("backup_id", ["dbtools_galera-node3_20261125T030000Z",
                                       "dbtools_galera-node3_20261125T030000Z-0a1b2c3d"])
def test_old_and_new_ids_are_read_and_dated(tmp_path, backup_id):
    m = manifest(1, id=backup_id)
    del m["finished_at"], m["started_at"]
    write(tmp_path, m)
    found = _catalog.read_dir(str(tmp_path))
    assert [b["id"] for b in found["backups"]] == [backup_id]
    assert _catalog.format_time(_catalog.backup_time(found["backups"][0])) == "2026-11-25T03:00:00Z"


def test_retention_rejects_keep_below_one():
    with pytest.raises(ValueError):
        _catalog.plan_retention([manifest(1)], 0)


def test_retention_ignores_partial_ids():
    full = manifest(10)
    partial = dict(manifest(1), id=make_id(stamp(1)) + ".partial")
    plan = _catalog.plan_retention([full, partial], 1)
    assert (plan["keep"], plan["remove"], plan["broken"]) == ([full["id"]], [], [])
    assert plan["reasons"] == {full["id"]: ["newest restorable", "keep 1 of 1"]}


def test_newest_good_skips_broken_and_filters_cluster():
    full = manifest(30)
    orphan = manifest(1, "incremental", parent="gone_x_20260101T000000Z")
    other = manifest(2, cluster="other")
    assert _catalog.newest_good([full, orphan, other], "dbtools")["id"] == full["id"]
    assert _catalog.newest_good([full, orphan, other])["id"] == other["id"]
    assert _catalog.newest_good([orphan]) is None
    assert _catalog.newest_good([full], "nope") is None


# --------------------------------------------------------------------------------------------
# choose_parent

def test_choose_parent_newest_of_same_node_and_method():
    full, inc1, inc2 = chain_fixture()
    other_node = manifest(5, host="galera-node1")
    dump = manifest(4, method="mydumper", to_lsn=None)
    parent, reason = _catalog.choose_parent([full, inc1, inc2, other_node, dump], "dbtools", "galera-node3",
                                            "mariabackup", 7)
    assert parent["id"] == inc2["id"]
    assert "4 of at most 7" in reason


def test_choose_parent_chain_full_starts_new_chain_instead_of_forking():
    full, inc1, inc2 = chain_fixture()
    parent, reason = _catalog.choose_parent([full, inc1, inc2], "dbtools", "galera-node3", "mariabackup", 3)
    assert parent is None
    assert "has 3 backups, max_chain is 3" in reason


@pytest.mark.parametrize("backups, node, method, max_chain, fragment", [
    ([], "galera-node3", "mariabackup", 5, "no restorable mariabackup backup"),
    ([manifest(5, host="galera-node1")], "galera-node3", "mariabackup", 5, "taken on node galera-node3"),
    ([manifest(5, method="xtrabackup")], "galera-node3", "mariabackup", 5, "no restorable"),
    ([manifest(5, to_lsn=None)], "galera-node3", "mariabackup", 5, "no position.to_lsn"),
    ([manifest(5)], "galera-node3", "mysqldump", 5, "takes no incremental"),
    ([manifest(5)], "galera-node3", "mariabackup", 1, "every backup is a full backup"),
    ([manifest(5, cluster="other")], "galera-node3", "mariabackup", 5, "of cluster dbtools"),
])
def test_choose_parent_says_why_none_fits(backups, node, method, max_chain, fragment):
    parent, reason = _catalog.choose_parent(backups, "dbtools", node, method, max_chain)
    assert parent is None
    assert fragment in reason


def test_choose_parent_asks_key_matches_about_the_newest_candidate():
    plain = manifest(5)
    encryption = dict(cipher="aes-256-ctr", key_id="salted-id-1", salt="00ff")
    encrypted = dict(manifest(4), encryption=encryption)
    seen = []

    def matches(value):
        seen.append(value)
        return value is not None and value.get("salt") == "00ff"
    parent, reason = _catalog.choose_parent([plain, encrypted], "dbtools", "galera-node3", "mariabackup", 5,
                                            key_matches=matches)
    assert parent["id"] == encrypted["id"] and seen == [encryption]
    parent, reason = _catalog.choose_parent([plain, encrypted], "dbtools", "galera-node3", "mariabackup", 5,
                                            key_matches=lambda _value: False)
    assert parent is None
    assert "is encrypted with key id salted-id-1, and this backup's key does not match it" in reason
    # Without key_matches only an unencrypted candidate fits (an empty record is no encryption).
    parent, reason = _catalog.choose_parent([plain, encrypted], "dbtools", "galera-node3", "mariabackup", 5)
    assert parent is None and "does not match" in reason
    parent, _reason = _catalog.choose_parent([dict(plain, encryption={})], "dbtools", "galera-node3", "mariabackup", 5)
    assert parent["id"] == plain["id"]
    seen.clear()
    parent, reason = _catalog.choose_parent([plain], "dbtools", "galera-node3", "mariabackup", 5, key_matches=matches)
    assert parent is None and "is not encrypted" in reason and seen == [None]


@pytest.mark.parametrize("key_id, encryption, expected", [
    (None, None, True), (None, {"key_id": "ab"}, False), ("ab", {"key_id": "ab"}, True),
    ("ab", {"key_id": "cd"}, False), ("ab", None, False),
])
def test_key_id_matcher(key_id, encryption, expected):
    assert _catalog.key_id_matcher(key_id)(encryption) is expected


def test_choose_parent_stays_within_one_state_uuid():
    full = manifest(30)
    newer_other = dict(manifest(10, host="galera-node3"), cluster={"name": "dbtools", "state_uuid": "uuid-other"},
                       position={"cluster_uuid": "uuid-other", "to_lsn": 5})
    parent, _reason = _catalog.choose_parent([full, newer_other], "dbtools", "galera-node3", "mariabackup", 5,
                                             cluster_uuid="uuid-dbtools")
    assert parent["id"] == full["id"]
    parent, _reason = _catalog.choose_parent([full, newer_other], "dbtools", "galera-node3", "mariabackup", 5)
    assert parent["id"] == newer_other["id"]


def test_choose_parent_ignores_broken_chains():
    full = manifest(30)
    orphan = manifest(1, "incremental", parent="gone_x_20260101T000000Z")
    parent, _reason = _catalog.choose_parent([full, orphan], "dbtools", "galera-node3", "mariabackup", 5)
    assert parent["id"] == full["id"]


# --------------------------------------------------------------------------------------------
# freshness

def judge(tmp_path, **kw):
    found = _catalog.read_dir(str(tmp_path))
    summaries = _catalog.summarize(found["backups"], NOW)
    failures = [_catalog.failure_summary(f) for f in found["failures"]]
    return _catalog.freshness(summaries, failures, now=NOW, problems=found["problems"], where=f"in {tmp_path}", **kw)


def test_freshness_ok_line(tmp_path):
    encryption = {"cipher": "aes-256-ctr", "kdf": "pbkdf2", "digest": "sha256", "iterations": 100000,
                  "key_id": "3f0a9c1d2b4e5f60"}
    full, = write(tmp_path, manifest(2.1, encryption=encryption))
    result = judge(tmp_path, max_age=93600, fail_on=["stale", "last_run_failed", "none_found"])
    assert result["stale"] is False and result["alerts"] == [] and result["failing"] == []
    assert result["summary"] == (
        f"OK: cluster dbtools newest backup {full['id']} 2.1 h old (max 26.0 h), 1.2 GiB, full, verified prepare, "
        "encrypted (key 3f0a9c1d2b4e5f60), position uuid-dbtools:1234")
    summary = result["newest"]["dbtools"]
    assert summary["age_seconds"] == 2.1 * 3600
    assert summary["encryption"] == {"key_id": "3f0a9c1d2b4e5f60", "cipher": "aes-256-ctr"}
    assert summary["position"] == {"cluster_uuid": "uuid-dbtools", "seqno": 1234, "to_lsn": 1000, "binlog_gtid": None}
    assert summary["verify"] == "prepare" and summary["restorable"] is True
    assert result["last_run"]["dbtools"] == {"result": "ok", "at": full["finished_at"], "id": full["id"],
                                             "node": "galera-node3", "error": None}


def test_freshness_stale_is_critical_only_when_failing_on_it(tmp_path):
    write(tmp_path, manifest(30))
    result = judge(tmp_path, max_age=93600, fail_on=["stale"])
    assert result["stale"] is True and result["failing"] == ["stale"]
    assert result["summary"].startswith("CRITICAL: cluster dbtools newest backup")
    assert "30.0 h old (max 26.0 h) STALE" in result["summary"]
    result = judge(tmp_path, max_age=93600)
    assert result["summary"].startswith("WARNING:") and result["failing"] == []
    result = judge(tmp_path)
    assert "stale" not in result and result["summary"].startswith("OK:")


def test_freshness_last_run_failed(tmp_path):
    write(tmp_path, manifest(5))
    write_failure(tmp_path, 1, error="mariabackup exited 1:\nout of disk")
    result = judge(tmp_path, max_age=93600, fail_on=["last_run_failed"])
    assert result["last_run"]["dbtools"]["result"] == "failed"
    assert result["alerts"] == ["last_run_failed"]
    assert result["summary"].startswith("CRITICAL:")
    assert "last run FAILED at" in result["summary"] and "out of disk" in result["summary"]
    assert "\n" not in result["summary"]
    # an older failure followed by a good backup is not the last run
    other = tmp_path / "b"
    other.mkdir()
    write_failure(other, 6)
    write(other, manifest(5))
    assert judge(other, fail_on=["last_run_failed"])["alerts"] == []


def test_freshness_none_found(tmp_path):
    result = judge(tmp_path, max_age=3600, fail_on=["none_found"])
    assert result["alerts"] == ["stale", "none_found"] and result["failing"] == ["none_found"]
    assert result["summary"] == f"CRITICAL: no backup found in {tmp_path}"
    write_failure(tmp_path, 1, cluster="lonely")
    result = judge(tmp_path, fail_on=["none_found"])
    assert result["summary"].startswith("CRITICAL: cluster lonely has no restorable backup; last run FAILED")


def test_freshness_broken_chain_is_a_problem_and_newest_skips_it(tmp_path):
    full, inc1, inc2 = write(tmp_path, *chain_fixture())
    (tmp_path / inc1["id"] / "manifest.json").unlink()
    result = judge(tmp_path, max_age=93600 * 3)
    assert result["newest"]["dbtools"]["id"] == full["id"]
    broken = [b for b in result["backups"] if not b["restorable"]]
    assert [b["id"] for b in broken] == [inc2["id"]]
    assert any("cannot be restored" in p for p in result["problems"])
    assert result["summary"].startswith("WARNING:") and "2 problems" in result["summary"]


def test_freshness_multiple_clusters_and_duplicate_copies(tmp_path):
    a = manifest(3, cluster="alpha")
    b = manifest(40, cluster="beta")
    s = _catalog.summarize([a, b], NOW)
    copy = dict(s[0], restorable=False, broken="x")
    result = _catalog.freshness([copy] + s, [], now=NOW, max_age=93600, fail_on=["stale"])
    assert set(result["newest"]) == {"alpha", "beta"}
    assert len(result["backups"]) == 2 and all(x["restorable"] for x in result["backups"])
    assert result["summary"].startswith("CRITICAL: cluster alpha newest backup")
    assert "; cluster beta newest backup" in result["summary"]


def test_age_recomputed_at_merge_time():
    s = _catalog.summarize([manifest(1)], NOW)
    later = NOW + timedelta(hours=2)
    result = _catalog.freshness(s, [], now=later)
    assert result["backups"][0]["age_seconds"] == 3 * 3600


def test_human_bytes_and_age():
    assert _catalog.human_bytes(512) == "512 B"
    assert _catalog.human_bytes(1288490188) == "1.2 GiB"
    assert _catalog.human_bytes(None) == "size unknown"
    assert _catalog.age_seconds({"finished_at": "2026-11-25T04:00:00Z"}, NOW) == 3600
    assert _catalog.age_seconds({"id": "c_h_20261125T040000Z"}, NOW) == 3600


# --------------------------------------------------------------------------------------------
# The modules, through their real entry point

def test_info_module_reads_and_fails_on_request(tmp_path):
    now = datetime.now(timezone.utc)
    hours = (now - NOW).total_seconds() / 3600
    write(tmp_path, manifest(30 - hours))   # 30 h old now
    ok = run_module("galera_backup_info", {"path": str(tmp_path)})
    assert not ok.get("failed") and ok["changed"] is False
    assert ok["summary"].startswith("OK:") and len(ok["backups"]) == 1
    stale = run_module("galera_backup_info", {"path": str(tmp_path), "max_age": 93600, "fail_on": ["stale"]},
                       check=True)
    assert stale["failed"] is True and stale["msg"] == stale["summary"]
    assert stale["msg"].startswith("CRITICAL:") and stale["stale"] is True
    assert stale["newest"]["dbtools"]["id"]
    bad = run_module("galera_backup_info", {"path": str(tmp_path), "fail_on": ["stale"]})
    assert bad["failed"] and "max_age is not set" in bad["msg"]


def test_info_module_missing_dir_and_merge(tmp_path):
    now = datetime.now(timezone.utc)
    hours = (now - NOW).total_seconds() / 3600
    node3 = tmp_path / "node3"
    node3.mkdir()
    write(node3, manifest(2 - hours))
    write_failure(node3, 1 - hours)
    one = run_module("galera_backup_info", {"path": str(tmp_path / "none")})
    assert one["problems"] == [] and one["summary"].startswith("WARNING: no backup found in")
    three = run_module("galera_backup_info", {"path": str(node3)})
    merged = run_module("galera_backup_info", {"merge": {"node1": one, "node2": {}, "node3": three},
                                               "max_age": 93600, "fail_on": ["stale", "none_found"]})
    assert not merged.get("failed"), merged
    assert merged["newest"]["dbtools"]["node"] == "galera-node3"
    assert merged["last_run"]["dbtools"]["result"] == "failed"
    assert merged["alerts"] == ["last_run_failed"] and merged["failing"] == []
    assert merged["problems"] == ["node2: no result to merge (unreachable, or its task failed or was skipped)"]
    assert merged["summary"].startswith("WARNING: cluster dbtools newest backup")


def test_prune_module_check_diff_and_real_run(tmp_path):
    older = manifest(80)
    full, inc1, inc2 = chain_fixture()
    other = manifest(90, cluster="other")
    write(tmp_path, older, full, inc1, inc2, other)
    old_failure = write_failure(tmp_path, 85)
    newer_failure = write_failure(tmp_path, 70)   # older than the oldest kept (50 h) but the newest: kept
    (tmp_path / (make_id(stamp(1)) + ".partial")).mkdir()
    args = {"path": str(tmp_path), "cluster": "dbtools", "keep": 1}

    would = run_module("galera_backup_prune", args, check=True, diff=True)
    assert would["changed"] is True
    assert would["removed"] == [older["id"]]
    assert would["removed_failures"] == [old_failure["id"]]
    assert would["kept"] == [full["id"], inc1["id"], inc2["id"]]
    assert older["id"] in would["diff"]["before"] and older["id"] not in would["diff"]["after"]
    assert (tmp_path / older["id"]).is_dir()

    done = run_module("galera_backup_prune", args)
    assert done["changed"] is True and done["removed"] == [older["id"]]
    assert not (tmp_path / older["id"]).exists()
    assert not (tmp_path / (old_failure["id"] + ".failed.json")).exists()
    assert (tmp_path / (newer_failure["id"] + ".failed.json")).exists()
    assert (tmp_path / other["id"]).is_dir()
    assert (tmp_path / (make_id(stamp(1)) + ".partial")).is_dir()
    for m in (full, inc1, inc2):
        assert (tmp_path / m["id"] / "manifest.json").exists()

    again = run_module("galera_backup_prune", args)
    assert again["changed"] is False and again["removed"] == []


def test_prune_module_rejects_keep_zero(tmp_path):
    result = run_module("galera_backup_prune", {"path": str(tmp_path), "cluster": "dbtools", "keep": 0})
    assert result["failed"] and "Nothing was deleted." in result["msg"]


def test_prune_module_keeps_a_twin_cluster_and_what_it_cannot_prove(tmp_path):
    """Two clusters named my_wsrep_cluster (MariaDB's default) back up into one directory: pruning
    one never deletes the other's backups; unfinished backups go only with a run record proving them
    abandoned; nothing else in the directory is touched."""
    ours = [manifest(h, cluster="my_wsrep_cluster") for h in (50, 40, 30)]
    twin = [manifest(h, cluster="my_wsrep_cluster", host="galera-node1") for h in (45, 35)]
    for m in twin:
        m["cluster"] = dict(m["cluster"], state_uuid="uuid-twin")
        m["position"] = dict(m["position"], cluster_uuid="uuid-twin")
    write(tmp_path, *ours, *twin)
    abandoned = make_id(stamp(48), "my_wsrep_cluster", "galera-node2") + "-0123abcd"
    (tmp_path / (abandoned + ".partial")).mkdir()
    (tmp_path / (abandoned + ".partial") / ".run.json").write_text(json.dumps({
        "format": 1, "kind": "dbtools.galera run", "what": "backup", "run_id": "0123abcd", "backup": abandoned,
        "cluster": {"name": "my_wsrep_cluster", "state_uuid": "uuid-my_wsrep_cluster"}, "host": "elsewhere",
        "process": {"pid": 1, "boot_id": "x", "start_ticks": 1}, "started_at": iso(stamp(48))}))
    unproven = make_id(stamp(47), "my_wsrep_cluster", "galera-node2") + ".partial"
    (tmp_path / unproven).mkdir()
    (tmp_path / "my_wsrep_cluster_logs").mkdir()
    before = sorted(os.listdir(tmp_path))

    args = {"path": str(tmp_path), "cluster": "my_wsrep_cluster", "keep": 1,
            "cluster_uuid": "uuid-my_wsrep_cluster"}
    done = run_module("galera_backup_prune", args)
    assert not done.get("failed"), done
    assert done["removed"] == [ours[1]["id"], ours[0]["id"]]
    assert done["removed_partial"] == [abandoned + ".partial"]
    gone = {ours[0]["id"], ours[1]["id"], abandoned + ".partial"}
    assert sorted(os.listdir(tmp_path)) == sorted(set(before) - gone)
    assert sum("uuid-twin" in p for p in done["problems"]) == 2
    assert any(unproven in p and "no valid run record" in p for p in done["problems"])

    # Without cluster_uuid each cluster of that name keeps its own newest backup.
    again = run_module("galera_backup_prune", {"path": str(tmp_path), "cluster": "my_wsrep_cluster", "keep": 1})
    assert again["removed"] == [twin[0]["id"]]
    assert (tmp_path / twin[1]["id"]).is_dir() and (tmp_path / ours[2]["id"]).is_dir()


@pytest.mark.parametrize("owner", ["", "   ", "x" * 256])
def test_desync_and_the_finish_steps_resync_refuse_an_owner_the_lease_cannot_hold(tmp_path, owner):
    # Both refuse before they connect: the login points at a socket that does not exist, so a module that
    # got past the check would fail naming the connection instead.
    login = {"login_unix_socket": str(tmp_path / "no.sock")}
    desync = run_module("galera_desync", dict(login, state="desynced", owner=owner))
    assert desync["failed"] and desync["msg"] == ("owner must be a non-empty string of at most 255 characters. "
                                                  "Nothing was changed.")
    finish = run_module("galera_backup_job", dict(login, step="finish", run={}, backup={"dir": str(tmp_path)},
                                                  resync_options={"owner": owner}))
    assert finish["failed"] and finish["msg"] == ("resync_options: owner must be a non-empty string of at most "
                                                  "255 characters. Nothing was changed.")
    start = run_module("galera_backup_job", dict(login, step="start", run={}, backup={"dir": str(tmp_path)},
                                                 desync_options={"owner": owner}))
    assert start["failed"] and start["msg"] == ("desync_options: owner must be a non-empty string of at most "
                                                "255 characters. Nothing was changed.")


@pytest.mark.parametrize("options, problem", [
    (dict(lease_ttl=0), "lease_ttl must be at least 1 second, got 0"),
    (dict(drain_timeout=-1), "these options must not be negative: drain_timeout=-1"),
    (dict(watchdog_min_free_fraction=1.5), "watchdog_min_free_fraction is a fraction of the filesystem, from 0 to 1"),
    (dict(poll_interval=0), "poll_interval must be positive, got 0.0"),
])
def test_the_desync_of_the_start_step_refuses_what_galera_desync_refuses(tmp_path, options, problem):
    login = {"login_unix_socket": str(tmp_path / "no.sock")}
    desync = run_module("galera_desync", dict(login, state="desynced", owner="o", **options))
    start = run_module("galera_backup_job", dict(login, step="start", run={}, backup={"dir": str(tmp_path)},
                                                 desync_options=dict(owner="o", **options)))
    assert desync["failed"] and problem in desync["msg"] and desync["msg"].endswith("Nothing was changed.")
    assert start["failed"] and start["msg"] == "desync_options: " + desync["msg"]


@pytest.mark.parametrize("options, problem", [
    (dict(drain_timeout=-1), "these options must not be negative: drain_timeout=-1"),
    (dict(timeout=-5), "these options must not be negative: timeout=-5"),
    (dict(poll_interval=0), "poll_interval must be positive, got 0.0"),
])
def test_the_resync_of_the_finish_step_refuses_with_the_same_rule(tmp_path, options, problem):
    login = {"login_unix_socket": str(tmp_path / "no.sock")}
    finish = run_module("galera_backup_job", dict(login, step="finish", run={}, backup={"dir": str(tmp_path)},
                                                  resync_options=dict(owner="o", **options)))
    assert finish["failed"] and finish["msg"] == f"resync_options: {problem}. Nothing was changed."

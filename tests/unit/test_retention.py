# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Retention against hostile store listings: only what provably is this cluster's is deleted.

The store is an in-memory fake with the interface of ``_stores.Store`` (list, partial_id, url,
delete, delete_partials), staged in place like S3 or aside like SSH and local directories."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _manifest, _retention, _stores

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
HOST = "db1.example.com"
UUID = "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"
OTHER_UUID = "7c1f0e2a-0000-11f1-8000-000000000001"
MARGIN = 21600 + 600
LIVE = dict(pid=101, boot_id="b", start_ticks=1)
DEAD = dict(pid=102, boot_id="b", start_ticks=1)


def alive(process):
    """The fake liveness check: only LIVE runs."""
    if not isinstance(process, dict):
        return None
    return process == LIVE


def bid(hours_ago, cluster="prod", node="db1", run="0123abcd"):
    return _manifest.backup_id(cluster, node, NOW - timedelta(hours=hours_ago), run)


def manifest(backup_id, hours_ago, cluster="prod", uuid=UUID, **extra):
    finished = (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = dict(format=1, id=backup_id, result="ok", type="full", parent=None, chain=[backup_id],
             cluster=dict(name=cluster, state_uuid=uuid), finished_at=finished, sha256="0" * 64)
    m.update(extra)
    return m


def record(backup_id, hours_ago, cluster="prod", uuid=UUID, host=HOST, process=None):
    started = (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _manifest.run_record("89abcdef", backup_id, cluster, uuid, "test", host, process or DEAD, started)


class FakeStore(_stores.Store):
    """A listing held in memory; deletions recorded."""

    def __init__(self, listing, staging_suffix=".partial"):
        self.listing = listing
        self.staging_suffix = staging_suffix
        self.deleted, self.deleted_partials = [], []

    def url(self, name):
        return f"fake://store/{name}"

    def list(self):
        return dict(manifests=dict(self.listing["manifests"]), partials=dict(self.listing["partials"]),
                    other=list(self.listing.get("other", [])))

    def _remove(self, name):
        (self.deleted_partials if self.partial_id(name) and name not in self.listing["manifests"]
         else self.deleted).append(name)

    def _read(self, name, rel):
        return None


def run(store, cluster="prod", keep=1, uuid=UUID, check_mode=False, **kw):
    return _retention.run(store, cluster, keep, check_mode, state_uuid=uuid, margin=MARGIN, now=NOW, host=HOST,
                          alive=alive, **kw)


# ---------------------------------------------------------------------------------------------
# The review's listing, staged aside (SSH, local) and in place (S3)

def hostile(suffix):
    """What a shared bucket or directory holds beside this cluster's backups, and what must happen to each."""
    def p(backup_id):
        return backup_id + suffix
    old, new = bid(72), bid(24)
    east = _manifest.backup_id("prod_east", "db1", NOW - timedelta(hours=1), "0123abcd")
    east_old = _manifest.backup_id("prod_east", "db1", NOW - timedelta(hours=100), "0123abcd")
    prod_east_node = bid(80, node="east_db1")   # cluster prod, node east_db1: same prefix as prod_east_db1
    mine_live, mine_dead_young, mine_old, mine_no_record = bid(1, node="db2"), bid(2, node="db3"), bid(30, node="db4"), \
        bid(40, node="db5")
    mine_dead_elsewhere, other_uuid_partial = bid(3, node="db6"), bid(50, node="db7")
    other_uuid = bid(90, node="db8")
    listing = dict(
        manifests={
            old: manifest(old, 72), new: manifest(new, 24),
            prod_east_node: manifest(prod_east_node, 80),
            east_old: manifest(east_old, 100, cluster="prod_east"),
            other_uuid: manifest(other_uuid, 90, uuid=OTHER_UUID),
            bid(95, node="db9"): "invalid",
            "prod_logs": manifest("prod_logs", 200),   # someone's file named like a manifest
        },
        partials={
            p(east): record(east, 1, cluster="prod_east", host="other-host"),           # another cluster, in flight
            p(bid(400, cluster="prod_east", node="x")): record(bid(400, cluster="prod_east", node="x"), 400,
                                                               cluster="prod_east"),     # theirs, old: still theirs
            p(mine_live): record(mine_live, 30, process=LIVE),                          # ours, alive: in flight
            p(mine_dead_young): record(mine_dead_young, 2),                              # ours, dead here: removed
            p(mine_old): record(mine_old, 30, host="other-host", process=LIVE),        # ours, past the margin
            p(mine_no_record): None,                                                     # no record: never
            p(mine_dead_elsewhere): record(mine_dead_elsewhere, 3, host="other-host"),   # dead? not known here
            p(other_uuid_partial): record(other_uuid_partial, 50, uuid=OTHER_UUID),      # another uuid: never
        },
        other=["prod_binlogs", "prod_logs.partial", "..", "prod_db1_20261201T000000Z/../../etc", "prod\n_db1",
               bid(60, node="db0")],
    )
    expect = dict(
        remove=[old, prod_east_node],  # newest first
        remove_partial=sorted([p(mine_dead_young), p(mine_old)]),
        in_flight=sorted([p(mine_live), p(mine_dead_elsewhere)]),
        kept=[new],
    )
    return listing, expect, dict(no_record=p(mine_no_record), other_uuid=other_uuid,
                                 other_uuid_partial=p(other_uuid_partial), invalid=bid(95, node="db9"),
                                 manifestless=bid(60, node="db0"))


@pytest.mark.parametrize("suffix", [".partial", ""])
def test_hostile_listing_only_ours_is_deleted(suffix):
    listing, expect, names = hostile(suffix)
    store = FakeStore(listing, staging_suffix=suffix)
    planned = run(store)
    assert planned["remove"] == expect["remove"]
    assert planned["remove_partial"] == expect["remove_partial"]
    assert planned["in_flight"] == expect["in_flight"]
    assert planned["kept"] == expect["kept"]
    assert store.deleted == expect["remove"]
    assert store.deleted_partials == expect["remove_partial"]
    text = "\n".join(planned["problems"])
    assert names["no_record"] in text and "no valid run record" in text
    assert names["other_uuid"] in text and OTHER_UUID in text
    assert names["other_uuid_partial"] in text
    assert names["invalid"] in text and "not a readable JSON manifest" in text
    assert names["manifestless"] in text
    assert "prod_logs" in text  # names cluster prod without being an id of it
    for foreign in ("prod_east", "prod_binlogs", ".."):
        assert not any(p.startswith(f"fake://store/{foreign}") for p in planned["problems"]), foreign


@pytest.mark.parametrize("suffix", [".partial", ""])
def test_check_mode_deletes_nothing(suffix):
    listing, expect, _names = hostile(suffix)
    store = FakeStore(listing, staging_suffix=suffix)
    planned = run(store, check_mode=True)
    assert planned["remove"] == expect["remove"] and planned["remove_partial"] == expect["remove_partial"]
    assert store.deleted == [] and store.deleted_partials == []


def test_a_live_run_is_never_deleted_whatever_its_age():
    mine = bid(500)
    store = FakeStore(dict(manifests={}, partials={mine + ".partial": record(mine, 500, process=LIVE)}))
    assert run(store)["in_flight"] == [mine + ".partial"]
    assert store.deleted_partials == []


@pytest.mark.parametrize("hours, host, process, removed", [
    (MARGIN / 3600 + 0.1, "other-host", LIVE, True),      # past the margin: abandoned, wherever it ran
    (MARGIN / 3600 - 0.1, "other-host", DEAD, False),     # young, elsewhere: cannot be known dead
    (MARGIN / 3600 - 0.1, HOST, DEAD, True),              # young, here, dead
    (MARGIN / 3600 - 0.1, HOST, "not a process", False),  # young, here, unknown liveness
    (0.5, HOST, LIVE, False),
])
def test_partial_margin_and_liveness(hours, host, process, removed):
    mine = bid(hours)
    name = mine + ".partial"
    store = FakeStore(dict(manifests={}, partials={name: record(mine, hours, host=host, process=process)}))
    planned = run(store)
    assert (planned["remove_partial"] == [name]) is removed
    assert (planned["in_flight"] == [name]) is not removed


def test_a_record_of_another_backup_or_without_time_is_not_proof():
    mine, theirs = bid(30), bid(31)
    undated = bid(40, node="db2")
    rec = record(undated, 40, host="other-host")
    del rec["started_at"]
    store = FakeStore(dict(manifests={}, partials={mine + ".partial": record(theirs, 30),
                                                   undated + ".partial": rec}))
    planned = run(store)
    assert planned["remove_partial"] == []
    assert any("names backup" in p for p in planned["problems"])


def test_our_own_backup_is_protected_and_counted_in_check_mode():
    old, current = bid(48), bid(0)
    store = FakeStore(dict(manifests={old: manifest(old, 48)}, partials={
        current + ".partial": record(current, 100)}))
    planned = run(store, protect=[current], extra=[manifest(current, 0)])
    assert planned["remove"] == [old]
    assert planned["kept"] == [current]
    assert planned["remove_partial"] == []


def test_two_clusters_named_my_wsrep_cluster_are_kept_apart():
    a = [bid(h, cluster="my_wsrep_cluster") for h in (10, 20, 30)]
    b = [bid(h, cluster="my_wsrep_cluster", node="db2") for h in (15, 25)]
    manifests = {i: manifest(i, h, cluster="my_wsrep_cluster") for i, h in zip(a, (10, 20, 30))}
    manifests.update({i: manifest(i, h, cluster="my_wsrep_cluster", uuid=OTHER_UUID) for i, h in zip(b, (15, 25))})
    listing = dict(manifests=manifests, partials={})

    # Known uuid: only that cluster's backups are candidates; the other's are kept and reported.
    store = FakeStore(listing)
    planned = run(store, cluster="my_wsrep_cluster", keep=1)
    assert planned["remove"] == [a[1], a[2]] and planned["kept"] == [a[0]]
    assert sum(OTHER_UUID in p for p in planned["problems"]) == 2

    # Unknown uuid (prune without cluster_uuid): each uuid is its own group, keep=1 of each.
    store = FakeStore(listing)
    planned = run(store, cluster="my_wsrep_cluster", keep=1, uuid=None)
    assert sorted(planned["remove"]) == sorted([a[1], a[2], b[1]])
    assert sorted(planned["kept"]) == sorted([a[0], b[0]])
    assert any("2 cluster state uuids" in p for p in planned["problems"])


def test_backups_without_a_uuid_count_as_the_named_cluster():
    old, new = bid(50), bid(10)
    m_old = manifest(old, 50)
    m_old["cluster"] = dict(name="prod")
    store = FakeStore(dict(manifests={old: m_old, new: manifest(new, 10)}, partials={}))
    planned = run(store)
    # No uuid recorded: its own (name, unknown uuid) group, so it is its group's newest and kept.
    assert planned["remove"] == [] and sorted(planned["kept"]) == sorted([old, new])


def test_the_newest_restorable_backup_and_whole_chains_are_kept():
    full, inc = bid(30), bid(20)
    broken = bid(10)
    manifests = {full: manifest(full, 30),
                 inc: manifest(inc, 20, type="incremental", parent=full, chain=[full, inc]),
                 broken: manifest(broken, 10, type="incremental", parent=bid(15), chain=[bid(15), broken])}
    planned = run(FakeStore(dict(manifests=manifests, partials={})), keep=1)
    assert planned["remove"] == [] and planned["kept"] == [full, inc, broken]
    assert planned["broken"] == [broken]


def test_no_cluster_name_deletes_nothing():
    old = bid(50)
    store = FakeStore(dict(manifests={old: manifest(old, 50)}, partials={}))
    planned = _retention.run(store, None, 1, False, now=NOW)
    assert planned["remove"] == [] and store.deleted == []
    assert planned["problems"] == ["the backup names no cluster: retention deletes nothing"]


def test_a_deletion_failure_says_what_was_deleted():
    old, older, new = bid(50), bid(60), bid(10)
    store = FakeStore(dict(manifests={i: manifest(i, h) for i, h in ((old, 50), (older, 60), (new, 10))},
                           partials={}))
    calls = []

    def fail_second(name):
        calls.append(name)
        if len(calls) == 2:
            raise _retention.GaleraError(f"cannot delete {name}.")
    store._remove = fail_second
    with pytest.raises(_retention.GaleraError, match=f"Deleted before it: {old}; nothing after it") as caught:
        run(store)
    assert caught.value.get("deleted") == [old]


# ---------------------------------------------------------------------------------------------
# Failed-run records (galera_backup_prune)

def test_failed_records_only_ours_older_than_kept_never_the_newest():
    kept = [manifest(bid(10), 10)]

    def failure(hours, cluster="prod", uuid=UUID):
        return dict(result="failed", cluster=cluster, failed_at=(NOW - timedelta(hours=hours)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"), position=dict(cluster_uuid=uuid))
    failures = {bid(50): failure(50), bid(40): failure(40), bid(5): failure(5),
                _manifest.backup_id("prod_east", "db1", NOW - timedelta(hours=60), "0123abcd"):
                    failure(60, cluster="prod_east"),
                bid(61, node="x"): failure(61, cluster="prod_east"),
                bid(70, node="y"): failure(70, uuid=OTHER_UUID),
                bid(80, node="z"): "invalid",
                bid(81, node="w"): dict(result="failed")}
    problems = []
    mine = _retention.our_failures(failures, "prod", UUID, problems)
    assert sorted(r["id"] for r in mine) == sorted([bid(50), bid(40), bid(5)])
    assert _retention.failures_to_delete(mine, kept) == [bid(50), bid(40)]
    assert len(problems) == 2
    # The newest record is kept even when it is older than every kept backup.
    assert _retention.failures_to_delete(mine[:1], kept) == []


def test_sweep_local_partials_removes_only_proven_abandoned_runs(tmp_path):
    now = datetime.now(timezone.utc)
    old = _manifest.backup_id("prod", "db1", now - timedelta(days=1), "0123abcd")
    young = _manifest.backup_id("prod", "db2", now, "0123abcd")
    theirs = _manifest.backup_id("prod_east", "db1", now - timedelta(days=1), "0123abcd")
    bare = _manifest.backup_id("prod", "db3", now - timedelta(days=1), "0123abcd")
    started_old = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for backup_id, cluster, started in ((old, "prod", started_old), (young, "prod", now.strftime("%Y-%m-%dT%H:%M:%SZ")),
                                        (theirs, "prod_east", started_old)):
        (tmp_path / (backup_id + ".partial")).mkdir()
        _manifest.write_json_atomic(str(tmp_path / (backup_id + ".partial") / ".run.json"), _manifest.run_record(
            "0123abcd", backup_id, cluster, UUID, None, "elsewhere", {}, started))
    (tmp_path / (bare + ".partial")).mkdir()
    (tmp_path / "prod_logs").mkdir()
    assert _retention.sweep_local_partials(str(tmp_path), "prod", UUID, MARGIN) == [old + ".partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young + ".partial", theirs + ".partial",
                                                                 bare + ".partial", "prod_logs"])
    assert _retention.sweep_local_partials(str(tmp_path / "absent"), "prod", UUID) == []

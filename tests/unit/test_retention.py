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


# ---------------------------------------------------------------------------------------------
# Policies (keep, max_age, tiers) through the store-level plan

def daily(days_ago, hour=3, node="db1", kind="full", parent=None, chain=None):
    moment = (NOW - timedelta(days=days_ago)).replace(hour=hour, minute=0, second=0)
    backup_id = _manifest.backup_id("prod", node, moment, "0123abcd")
    hours_ago = (NOW - moment).total_seconds() / 3600
    return backup_id, manifest(backup_id, hours_ago, type=kind, parent=parent, chain=chain or [backup_id])


def test_tiers_reasons_and_oldest_kept_through_a_store():
    listing = dict(manifests={}, partials={})
    ids = []
    for days_ago in (40, 20, 9, 8, 2, 1):
        backup_id, m = daily(days_ago)
        listing["manifests"][backup_id] = m
        ids.append(backup_id)
    store = FakeStore(listing)
    planned = run(store, keep=dict(daily=2, monthly=2), protect=[ids[-1]])
    # 2026-11-21 (20 days ago) is November's newest but for 2026-11-29/30; the two newest days; October's.
    assert planned["kept"] == [ids[0], ids[4], ids[5]]
    assert planned["reasons"][ids[5]] == ["newest restorable", "daily 2026-11-30", "monthly 2026-11",
                                          "copied by this run"]
    assert planned["reasons"][ids[0]] == ["monthly 2026-10"]
    assert planned["remove"] == [ids[3], ids[2], ids[1]]
    assert planned["remove_reasons"][ids[1]].startswith("no retention rule keeps it")
    assert planned["oldest_kept"] == [dict(cluster="prod", cluster_uuid=UUID, id=ids[0], started_at=None,
                                           finished_at=listing["manifests"][ids[0]]["finished_at"], position={})]
    assert store.deleted == [ids[3], ids[2], ids[1]]
    lines = _retention.plan_lines(planned, check_mode=False)
    assert f"- {ids[1]}  removed: no retention rule keeps it" in lines
    assert f"  {ids[0]}  kept: monthly 2026-10\n" in lines


def test_a_policy_needs_a_rule_and_says_which_option_is_wrong():
    with pytest.raises(_retention.GaleraError, match="give keep, max_age or keep_tiers.*Nothing was deleted"):
        _retention.policy_from_options(None, {"daily": 0}, None, untouched="Nothing was deleted.")
    with pytest.raises(_retention.GaleraError, match="keep_tiers.weekly must be an integer of at least 0"):
        _retention.policy_from_options(3, {"weekly": -1}, None)
    with pytest.raises(_retention.GaleraError, match="unknown tier.*\\$\\(id\\)"):
        _retention.policy_from_options(3, {"$(id)": 1}, None)
    assert _retention.policy_from_options(None, None, None, required=False) is None
    assert _retention.policy_from_options(None, {"daily": None}, None, required=False) is None
    assert _retention.policy_from_options(5, {}, None, required=False)["keep"] == 5
    with pytest.raises(_retention.GaleraError, match="no retention rule"):
        run(FakeStore(dict(manifests={}, partials={})), keep={})


# ---------------------------------------------------------------------------------------------
# A store that refuses deletions (S3 Object Lock): kept whole, reported, never fatal

class LockedStore(FakeStore):
    """A FakeStore whose ``locked`` names are refused like S3Store refuses a locked backup; it can
    tell beforehand (``deletion_refusal``) unless ``foresee`` is False."""

    def __init__(self, listing, locked, staging_suffix=".partial", foresee=True, whole=True):
        super().__init__(listing, staging_suffix)
        self.locked, self.whole, self.attempts = dict(locked), whole, []
        if not foresee:
            self.deletion_refusal = None

    def deletion_refusal(self, name):  # pylint: disable=method-hidden
        until = self.locked.get(name)
        return None if until is None else dict(reason=f"Object Lock COMPLIANCE until {until}", until=until)

    def _remove(self, name):
        self.attempts.append(name)
        if name in self.locked:
            raise _retention.GaleraError(f"{name}: refused", refused=True, whole=self.whole,
                                         reason=f"Object Lock COMPLIANCE until {self.locked[name]}",
                                         until=self.locked[name])
        super()._remove(name)
        self.listing["manifests"].pop(name, None)
        self.listing["partials"].pop(name, None)


def chain_listing():
    """An old chain (full, incremental), an old full backup and a new one: keep=1 removes the first three."""
    old_full, m_old_full = daily(10)
    old_inc, m_old_inc = daily(9, kind="incremental", parent=old_full, chain=[old_full, daily(9)[0]])
    lone, m_lone = daily(5)
    new, m_new = daily(1)
    listing = dict(manifests={old_full: m_old_full, old_inc: m_old_inc, lone: m_lone, new: m_new}, partials={})
    return listing, (old_full, old_inc, lone, new)


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_refused_deletion_keeps_the_backup_and_its_chain_and_the_run_goes_on(check_mode):
    listing, (old_full, old_inc, lone, new) = chain_listing()
    store = LockedStore(listing, {old_inc: "2026-12-15T00:00:00Z"})
    planned = run(store, keep=1, check_mode=check_mode)
    assert planned["remove"] == [lone]
    assert planned["kept"] == [old_full, old_inc, new]
    assert planned["refused"] == [dict(id=old_inc, reason="Object Lock COMPLIANCE until 2026-12-15T00:00:00Z",
                                       until="2026-12-15T00:00:00Z")]
    assert planned["reasons"][old_inc] == ["the destination refuses deletion (Object Lock COMPLIANCE until "
                                           "2026-12-15T00:00:00Z)"]
    assert planned["reasons"][old_full] == [f"chain of {old_inc}, which the destination refuses to delete"]
    assert f"fake://store/{old_inc}: kept: the destination refuses deletion (Object Lock COMPLIANCE until " \
           "2026-12-15T00:00:00Z)" in planned["problems"]
    # The full backup of the refused incremental was never tried: the chain stays whole.
    assert store.attempts == ([] if check_mode else [lone, old_inc])
    assert store.deleted == ([] if check_mode else [lone])
    assert "kept: chain of" in _retention.plan_lines(planned, check_mode)


def test_without_foresight_check_mode_says_removed_and_the_real_run_still_keeps_it():
    listing, (old_full, old_inc, lone, _new) = chain_listing()
    store = LockedStore(listing, {old_full: "2026-12-15T00:00:00Z"}, foresee=False)
    assert run(store, keep=1, check_mode=True)["remove"] == [lone, old_inc, old_full]
    planned = run(store, keep=1)
    assert planned["remove"] == [lone, old_inc] and old_full in planned["kept"]
    assert [r["id"] for r in planned["refused"]] == [old_full]
    again = run(store, keep=1)   # the next run asks once more, and only about what is left
    assert again["remove"] == [] and store.attempts == [lone, old_inc, old_full, old_full]


def test_a_partly_deleted_backup_no_longer_counts_and_is_reported():
    listing, (old_full, old_inc, lone, _new) = chain_listing()
    store = LockedStore(listing, {lone: None}, whole=False)
    store.locked = {lone: "2026-12-15T00:00:00Z"}
    store.deletion_refusal = None
    planned = run(store, keep=1)
    assert planned["remove"] == [lone, old_inc, old_full] and planned["refused"] == []
    assert f"fake://store/{lone} was only partly deleted: {lone}: refused" in planned["problems"]


def test_a_refused_unfinished_copy_is_reported_and_kept():
    mine = bid(30, node="db4")
    store = LockedStore(dict(manifests={}, partials={mine: record(mine, 30, host="other-host")}),
                        {mine: "2026-12-15T00:00:00Z"}, staging_suffix="")
    planned = run(store)
    assert planned["remove_partial"] == [] and planned["refused"][0]["id"] == mine
    assert any("kept: the destination refuses deletion" in p for p in planned["problems"])


def test_any_other_deletion_failure_still_fails_naming_what_went():
    listing, (_old_full, old_inc, lone, _new) = chain_listing()
    store = LockedStore(listing, {})

    def broken(name):
        if name == old_inc:
            raise _retention.GaleraError("cannot delete: connection reset.")
        store.deleted.append(name)
    store._remove = broken
    with pytest.raises(_retention.GaleraError, match=f"Deleted before it: {lone}; nothing after it"):
        run(store, keep=1)


# ---------------------------------------------------------------------------------------------
# S3 with Object Lock (moto, in process): uploads work, locked backups are kept whole

def s3_store(monkeypatch, lock=True, retention=None):
    from ansible_collections.dbtools.galera.plugins.module_utils._store_s3 import S3Store
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    store = S3Store(dict(bucket="locked-backups", prefix="galera/", region="us-east-1", access_key="test",
                         secret_key="test-secret"))
    store.client.create_bucket(Bucket="locked-backups", ObjectLockEnabledForBucket=lock)
    if retention:
        store.client.put_object_lock_configuration(Bucket="locked-backups", ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": retention, "Days": 1}}})
    return store


def put_backups(store, tmp_path, hours=(72, 48, 24)):
    """Backups of cluster prod made ``hours`` ago, copied to ``store``; their ids, oldest first."""
    from stores_helpers import make_backup  # pylint: disable=import-error,import-outside-toplevel
    ids = []
    for hours_ago in hours:
        moment = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
        backup_id = _manifest.backup_id("prod", "db1", moment, "0123abcd")
        directory, _m = make_backup(tmp_path / "src", backup_id, cluster="prod", state_uuid=UUID,
                                    finished=moment.strftime("%Y-%m-%dT%H:%M:%SZ"), size=500)
        store.put(_stores.LocalBackup(directory))
        ids.append(backup_id)
    return ids


def objects(store) -> dict:
    out = {}
    for key in store.list_keys("galera/"):
        name, _sep, rel = key[len("galera/"):].partition("/")
        out.setdefault(name, set()).add(rel)
    return out


@pytest.fixture
def moto():
    from moto import mock_aws  # pylint: disable=import-outside-toplevel
    with mock_aws():
        yield


def s3_run(store, keep=1, check_mode=False):
    return _retention.run(store, "prod", keep, check_mode, state_uuid=UUID, margin=MARGIN)


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_s3_default_retention_uploads_and_refuses_retention_whole(moto, tmp_path, monkeypatch, mode):
    store = s3_store(monkeypatch, retention=mode)
    ids = put_backups(store, tmp_path)
    before = objects(store)
    assert set(before) == set(ids) and all("manifest.json" in rels for rels in before.values())
    for check_mode in (True, False):
        planned = s3_run(store, check_mode=check_mode)
        assert planned["remove"] == [] and planned["kept"] == ids
        assert [r["id"] for r in planned["refused"]] == [ids[1], ids[0]]
        reason = planned["refused"][0]["reason"]
        assert reason.startswith(f"Object Lock {mode} until ") and planned["refused"][0]["until"] in reason
        assert planned["problems"] == [
            f"s3://locked-backups/galera/{r['id']}: kept: the destination refuses deletion ({r['reason']})"
            for r in planned["refused"]]
        assert objects(store) == before   # every object of every backup is still there


def test_s3_upload_retries_with_a_checksum_when_the_lock_cannot_be_read(moto, tmp_path, monkeypatch):
    store = s3_store(monkeypatch, retention="COMPLIANCE")
    sent = []
    real_put = store.client.put_object

    def denied(**_kw):
        raise botocore_error("AccessDenied", "Access Denied")

    def put_object(**kw):
        sent.append("ContentMD5" in kw or "ChecksumAlgorithm" in kw)
        return real_put(**kw)
    monkeypatch.setattr(store.client, "get_object_lock_configuration", denied)
    monkeypatch.setattr(store.client, "put_object", put_object)
    ids = put_backups(store, tmp_path, hours=(24,))
    assert store.object_lock() is True   # learnt from the server's answer
    assert sent[0] is False and sent[1] is True and all(sent[1:])
    assert set(objects(store)[ids[0]]) == {"backup.xbstream.zst", "meta/checkpoints", "SHA256SUMS", "manifest.json"}


def botocore_error(code, message):
    import botocore.exceptions  # pylint: disable=import-outside-toplevel
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": message}}, "Test")


def test_s3_legal_hold_keeps_a_chain_until_it_is_lifted(moto, tmp_path, monkeypatch):
    store = s3_store(monkeypatch)
    ids = put_backups(store, tmp_path, hours=(96, 72, 48, 24))
    store.client.put_object_legal_hold(Bucket="locked-backups", Key=f"galera/{ids[1]}/backup.xbstream.zst",
                                       LegalHold={"Status": "ON"})
    planned = s3_run(store)
    assert planned["remove"] == [ids[2], ids[0]] and planned["kept"] == [ids[1], ids[3]]
    assert planned["refused"] == [dict(id=ids[1], reason="Object Lock legal hold on backup.xbstream.zst", until=None)]
    assert set(objects(store)) == {ids[1], ids[3]}
    store.client.put_object_legal_hold(Bucket="locked-backups", Key=f"galera/{ids[1]}/backup.xbstream.zst",
                                       LegalHold={"Status": "OFF"})
    planned = s3_run(store)
    assert planned["remove"] == [ids[1]] and planned["refused"] == []
    assert set(objects(store)) == {ids[3]}


def refuse_deletes(store, monkeypatch, refuse, code="InvalidRequest",
                   message="Object is WORM protected and cannot be overwritten."):
    """A server that refuses to delete the keys ``refuse(key)`` names (MinIO's answer by default)."""
    real = store.client.delete_objects
    monkeypatch.setattr(store, "_lock_of", lambda keys, now=None: None)   # the lock cannot be read

    def delete_objects(Bucket, Delete):  # pylint: disable=invalid-name
        errors = [dict(Key=o["Key"], Code=code, Message=message) for o in Delete["Objects"] if refuse(o["Key"])]
        rest = [o for o in Delete["Objects"] if not refuse(o["Key"])]
        if rest:
            real(Bucket=Bucket, Delete=dict(Delete, Objects=rest))
        return {"Errors": errors}
    monkeypatch.setattr(store.client, "delete_objects", delete_objects)


def test_s3_refused_data_after_the_manifest_puts_the_manifest_back(moto, tmp_path, monkeypatch):
    store = s3_store(monkeypatch, lock=False)
    ids = put_backups(store, tmp_path, hours=(48, 24))
    before = objects(store)
    refuse_deletes(store, monkeypatch, lambda key: not key.endswith("/manifest.json"))
    planned = s3_run(store)
    assert planned["remove"] == [] and [r["id"] for r in planned["refused"]] == [ids[0]]
    assert "InvalidRequest: Object is WORM protected" in planned["refused"][0]["reason"]
    assert objects(store) == before   # whole again: its manifest was put back
    assert store.list()["manifests"][ids[0]]["id"] == ids[0]


def test_s3_a_refused_manifest_deletes_nothing(moto, tmp_path, monkeypatch):
    store = s3_store(monkeypatch, lock=False)
    ids = put_backups(store, tmp_path, hours=(48, 24))
    before = objects(store)
    refuse_deletes(store, monkeypatch, lambda key: True, code="AccessDenied", message="Access Denied")
    planned = s3_run(store)
    assert [r["id"] for r in planned["refused"]] == [ids[0]]
    assert "AccessDenied: Access Denied; an Object Lock, a bucket policy, or credentials without s3:DeleteObject" \
        in planned["refused"][0]["reason"]
    assert objects(store) == before


def test_s3_partly_refused_data_leaves_no_backup_that_counts(moto, tmp_path, monkeypatch):
    store = s3_store(monkeypatch, lock=False)
    ids = put_backups(store, tmp_path, hours=(48, 24))
    refuse_deletes(store, monkeypatch, lambda key: key.endswith("/meta/checkpoints"))
    planned = s3_run(store)
    assert planned["remove"] == [ids[0]] and planned["refused"] == []
    assert any("was only partly deleted" in p and "no longer counts as a backup" in p for p in planned["problems"])
    assert objects(store)[ids[0]] == {"meta/checkpoints"}
    assert ids[0] not in store.list()["manifests"]


def test_s3_any_other_deletion_error_still_fails(moto, tmp_path, monkeypatch):
    store = s3_store(monkeypatch, lock=False)
    ids = put_backups(store, tmp_path, hours=(48, 24))
    refuse_deletes(store, monkeypatch, lambda key: True, code="InternalError", message="We encountered an error")
    with pytest.raises(_retention.GaleraError, match=f"refused to delete galera/{ids[0]}/manifest.json.*InternalError"):
        s3_run(store)

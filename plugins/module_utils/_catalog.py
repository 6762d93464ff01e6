# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The catalogue of backups in a directory: chains, retention, freshness (private).

A backup is a directory ``<id>`` holding ``manifest.json``; only complete, verified backups have
one. ``<id>.failed.json`` records a failed run. Directories whose name ends ``.partial`` or
``.partial.verify`` are in progress and never count. Everything but ``read_dir`` is a pure function
over plain dicts (manifests read here, or from a remote store), so it is unit-tested on its own and
used by modules and other module_utils alike. No Ansible imports.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog, _manifest
# Backup ids, names and the manifest check live in _manifest alone.
from ansible_collections.dbtools.galera.plugins.module_utils._manifest import (
    FAILED_SUFFIX, MANIFEST, check_manifest, cluster_name, cluster_uuid, is_partial, valid_id)

PHYSICAL_METHODS = ("mariabackup", "xtrabackup")
CONDITIONS = ("stale", "last_run_failed", "none_found")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# Small helpers

def parse_time(text) -> datetime | None:
    """ISO 8601 UTC text ("2026-11-25T03:01:10Z") to an aware datetime; None when absent or invalid."""
    if not isinstance(text, str) or not text:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.strptime(text.strip(), "%Y%m%dT%H%M%SZ")
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def backup_time(backup: dict) -> datetime:
    """When the backup finished: ``finished_at``, else ``started_at``, else the time in its id."""
    for key in ("finished_at", "started_at"):
        moment = parse_time(backup.get(key))
        if moment is not None:
            return moment
    return _manifest.id_time(backup.get("id")) or _EPOCH


def _sort_key(backup: dict):
    return (backup_time(backup), str(backup.get("id")))


def age_seconds(backup: dict, now: datetime | None = None) -> float:
    """Seconds from the backup's finish to ``now`` (default: the current UTC time)."""
    now = now or utc_now()
    return round((now - backup_time(backup)).total_seconds(), 1)


def human_bytes(size) -> str:
    try:
        value = float(size)
    except (TypeError, ValueError):
        return "size unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _hours(seconds) -> str:
    return f"{float(seconds) / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# Reading and normalising

def _load_json(path: str):
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def read_dir(path: str) -> dict:
    """Read the backups and failed-run records directly under ``path``.

    Returns ``dict(backups=[normalised manifests, each with "path"], failures=[failed records, each
    with "path"], problems=[text], exists=bool)``. One unreadable or invalid file is a problem text,
    never an exception; ``.partial`` directories are skipped without a word; a missing directory
    gives empty lists, a problem text and ``exists=False``.
    """
    result = dict(backups=[], failures=[], problems=[], exists=True)
    problems = result["problems"]
    if not os.path.isdir(path):
        result["exists"] = False
        problems.append(f"{path} does not exist or is not a directory: no backups there")
        return result
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        problems.append(f"cannot list {path}: {exc.strerror or exc}")
        return result
    manifests = []
    for name in names:
        if is_partial(name):
            continue
        full = os.path.join(path, name)
        if name.endswith(FAILED_SUFFIX):
            if os.path.isfile(full) and not os.path.islink(full):
                record = _read_failure(full, name, problems)
                if record is not None:
                    result["failures"].append(record)
            continue
        if not os.path.isdir(full):
            continue
        if os.path.islink(full):
            if valid_id(name):
                problems.append(f"{full} is a symbolic link: ignored (a backup is a real directory)")
            continue
        manifest_path = os.path.join(full, MANIFEST)
        if not os.path.lexists(manifest_path):
            if valid_id(name):
                problems.append(f"{full} has no {MANIFEST}: an incomplete backup (or one being written), "
                                "not counted")
            continue
        manifest = _read_manifest(manifest_path, name, problems)
        if manifest is not None:
            manifest["path"] = full
            manifests.append(manifest)
    result["backups"] = parse_manifests(manifests, problems)
    return result


def _read_failure(full: str, name: str, problems: list) -> dict | None:
    try:
        record = _load_json(full)
    except (OSError, ValueError) as exc:
        problems.append(f"{full} is not a readable JSON failure record: {exc}")
        return None
    if not isinstance(record, dict):
        problems.append(f"{full} is not a JSON object: ignored")
        return None
    record = dict(record)
    record.setdefault("id", name[: -len(FAILED_SUFFIX)])
    record["path"] = full
    return record


def _read_manifest(manifest_path: str, name: str, problems: list) -> dict | None:
    try:
        manifest = _load_json(manifest_path)
    except (OSError, ValueError) as exc:
        problems.append(f"{manifest_path} is not a readable JSON manifest ({exc}): that backup is not counted")
        return None
    return check_manifest(manifest, name, manifest_path, problems)


def parse_manifests(manifests: list, problems: list | None = None) -> list:
    """Normalised copies of manifests: ``type`` (missing: "full"), ``parent`` (missing: None) and
    ``chain`` (missing: worked out from the parents) are always present.

    Usable on manifests read from a remote store. Entries that are not dicts, have no id, are
    ``.partial`` or repeat an id already seen are left out (with a text appended to ``problems``).
    """
    out = []
    seen = set()
    for manifest in manifests:
        if not isinstance(manifest, dict):
            _note(problems, f"a manifest that is not a JSON object was ignored: {manifest!r:.80}")
            continue
        backup = dict(manifest)
        backup_id = backup.get("id")
        if not backup_id and backup.get("path"):
            backup_id = backup["id"] = os.path.basename(str(backup["path"]).rstrip("/"))
        if not backup_id:
            _note(problems, "a manifest without an id was ignored")
            continue
        backup_id = backup["id"] = str(backup_id)
        if is_partial(backup_id) or is_partial(os.path.basename(str(backup.get("path") or "").rstrip("/"))):
            continue
        if backup_id in seen:
            _note(problems, f"backup id {backup_id} appears twice: only the first is counted")
            continue
        seen.add(backup_id)
        if not backup.get("type"):
            backup["type"] = "full"
        backup["parent"] = backup.get("parent") or None
        out.append(backup)
    by_id = {b["id"]: b for b in out}
    for backup in out:
        chain = backup.get("chain")
        if not isinstance(chain, list) or not chain:
            walked, _reason = _walk(backup, by_id, check_declared=False)
            backup["chain"] = walked if walked is not None else _partial_chain(backup, by_id)
    return out


def _note(problems, text: str) -> None:
    if problems is not None:
        problems.append(text)


def _partial_chain(backup: dict, by_id: dict) -> list:
    """The ids reachable from ``backup`` through its parents, oldest first (for a broken chain)."""
    ids = [backup["id"]]
    parent = backup.get("parent")
    while parent and parent not in ids:
        ids.append(parent)
        parent = by_id.get(parent, {}).get("parent")
    return list(reversed(ids))


# ---------------------------------------------------------------------------------------------
# Chains

def _walk(backup: dict, by_id: dict, check_declared: bool = True):
    """(chain of ids from the full backup to ``backup``, None) or (None, why the chain is broken)."""
    ids = []
    current = backup
    while True:
        current_id = current.get("id")
        if current_id in ids:
            return None, f"the chain of {backup.get('id')} loops at {current_id}"
        ids.append(current_id)
        if current.get("result", "ok") != "ok":
            return None, f"{current_id} in the chain of {backup.get('id')} is not a good backup"
        kind = current.get("type") or "full"
        if kind == "full":
            break
        if kind != "incremental":
            return None, f"{current_id} has an unknown type {kind!r}"
        parent = current.get("parent")
        if not parent:
            return None, f"the incremental backup {current_id} names no parent"
        if parent not in by_id:
            return None, f"{parent}, the parent of {current_id}, is missing"
        current = by_id[parent]
    ids.reverse()
    declared = backup.get("chain")
    if check_declared and isinstance(declared, list) and declared and list(declared) != ids:
        return None, (f"the chain recorded in {backup.get('id')} ({' > '.join(map(str, declared))}) does not "
                      f"match its parents ({' > '.join(ids)})")
    return ids, None


def chain_of(backup: dict, by_id: dict) -> list | None:
    """The ids from the full backup to ``backup`` (oldest first), or None when the chain is broken."""
    return _walk(backup, by_id)[0]


def broken_reason(backup: dict, by_id: dict) -> str | None:
    """Why ``backup`` cannot be restored from what ``by_id`` holds, or None when it can."""
    return _walk(backup, by_id)[1]


def restorable(backup: dict, by_id: dict) -> bool:
    """True when every backup of the chain, up to its full backup, is in ``by_id`` and good."""
    return _walk(backup, by_id)[0] is not None


def cluster_key(record: dict) -> tuple:
    """(cluster name, cluster state uuid) of a manifest: what retention, restorability and the parent
    choice group by. Two clusters may share a name (``my_wsrep_cluster`` is MariaDB's default);
    their state uuids tell them apart."""
    return (cluster_name(record) or "", cluster_uuid(record) or "")


def _by_cluster(backups: list) -> dict:
    groups = {}
    for backup in backups:
        groups.setdefault(cluster_key(backup), []).append(backup)
    return groups


def _sorted_ids(backups) -> list:
    return [b["id"] for b in sorted(backups, key=_sort_key)]


# ---------------------------------------------------------------------------------------------
# Retention, newest, parent

# Retention policy: ``keep`` newest, ``max_age``, calendar tiers. See ``plan_retention``.
TIERS = ("hourly", "daily", "weekly", "monthly", "yearly")
POLICY_KEYS = ("keep", "max_age") + TIERS


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def retention_policy(value=None, **rules) -> dict:
    """A checked retention policy: ``dict(keep, max_age, hourly, daily, weekly, monthly, yearly)``.

    ``value`` is an int (the short form of ``{"keep": value}``, what ``keep`` always meant), a
    policy dict, or None; ``rules`` add to it. ``keep`` (at least 1) keeps that many newest
    restorable backups; ``max_age`` (seconds, at least 1) every restorable backup younger than that;
    each tier (0 or more; 0 and None are off) the newest restorable backup of each of that many
    most recent periods that have one (``plan_retention``). Missing rules are None. Raises
    ValueError naming the rule when a value is wrong, or when no rule is given at all.
    """
    given = {}
    if _count(value):
        given["keep"] = value
    elif isinstance(value, dict):
        given.update(value)
    elif value is not None:
        raise ValueError(f"a retention policy is a dict of {', '.join(POLICY_KEYS)} (or an int: keep), "
                         f"got {value!r}")
    given.update(rules)
    unknown = sorted(str(k) for k in given if k not in POLICY_KEYS)
    if unknown:
        raise ValueError(f"unknown retention rule(s) {', '.join(unknown)}: the rules are {', '.join(POLICY_KEYS)}")
    policy = {key: given.get(key) for key in POLICY_KEYS}
    for key, least in (("keep", 1), ("max_age", 1)) + tuple((tier, 0) for tier in TIERS):
        number = policy[key]
        if number is not None and (not _count(number) or number < least):
            raise ValueError(f"{key} must be an integer of at least {least}, got {number!r}")
    if not policy["keep"] and not policy["max_age"] and not any(policy[tier] for tier in TIERS):
        raise ValueError("no retention rule is given: give keep, max_age or at least one tier ("
                         f"{', '.join(TIERS)}) above 0")
    return policy


def describe_policy(policy) -> str:
    """One line for messages: "keep 7, max_age 48.0 h, daily 7, weekly 4"."""
    policy = retention_policy(policy)
    parts = []
    for key in POLICY_KEYS:
        if policy[key]:
            parts.append(f"max_age {_hours(policy[key])}" if key == "max_age" else f"{key} {policy[key]}")
    return ", ".join(parts)


def period(moment: datetime, tier: str) -> str:
    """The calendar period (UTC) of ``moment`` for ``tier``, as its label: hourly "2026-11-30T14Z",
    daily "2026-11-30", weekly "2026-W48" (ISO 8601 week: Monday to Sunday, its year the ISO
    year, so 2027-01-01 is in 2026-W53), monthly "2026-11", yearly "2026"."""
    moment = moment.astimezone(timezone.utc)
    if tier == "hourly":
        return moment.strftime("%Y-%m-%dT%HZ")
    if tier == "daily":
        return moment.strftime("%Y-%m-%d")
    if tier == "weekly":
        year, week, _day = moment.isocalendar()
        return f"{year:04d}-W{week:02d}"
    if tier == "monthly":
        return moment.strftime("%Y-%m")
    if tier == "yearly":
        return moment.strftime("%Y")
    raise ValueError(f"unknown tier {tier!r}: the tiers are {', '.join(TIERS)}")


def reason_text(reasons) -> str:
    """The reasons a backup is kept, for a line: "daily 2026-11-30, chain of X (and 2 more)"."""
    own = [r for r in reasons if not r.startswith("chain of ")]
    chains = [r for r in reasons if r.startswith("chain of ")]
    if chains:
        own.append(chains[0] + (f" (and {len(chains) - 1} more)" if len(chains) > 1 else ""))
    return ", ".join(own)


def _oldest_entry(key: tuple, backup: dict) -> dict:
    position = backup.get("position") if isinstance(backup.get("position"), dict) else {}
    started = parse_time(backup.get("started_at"))
    # finished_at is the time retention went by (the id's time when the manifest has none valid).
    return dict(cluster=key[0] or None, cluster_uuid=key[1] or None, id=backup["id"],
                started_at=format_time(started) if started else None, finished_at=format_time(backup_time(backup)),
                position=dict(position))


def plan_retention(backups: list, policy, now: datetime | None = None) -> dict:
    """What retention keeps and removes, per cluster (name and state uuid, ``cluster_key``).

    ``policy``: a ``retention_policy`` dict, or an int (``keep``). Only restorable backups count,
    newest first by ``finished_at`` (``backup_time``); every rule is applied on its own to all of
    them, and a backup is kept when any rule keeps it:

    - always: the newest restorable backup;
    - ``keep``: the ``keep`` newest restorable backups;
    - ``max_age``: every restorable backup less than ``max_age`` seconds older than ``now``;
    - each tier (hourly, daily, weekly, monthly, yearly): the newest restorable backup of each of
      the N most recent periods that HAVE a restorable backup. Periods are UTC calendar periods
      (``period``; weeks are ISO weeks, Monday to Sunday).

    This is the grandfather-father-son rule as restic applies it (``--keep-daily`` and so on): a
    period without a backup does not use up a slot, and each tier is counted over every backup,
    independently of the others (one backup may be the daily, the weekly and the monthly one;
    borg instead counts a tier only over the backups earlier tiers did not keep). Chosen because
    every tier then means the same thing on its own (daily 7 is the newest backup of each of the
    last 7 days that have one, whatever the other tiers say), so its count never exceeds N, and a
    cluster whose backups stopped, or a prune that runs late, never loses old backups to the
    calendar moving on: the tiers do not depend on ``now``, only ``max_age`` does.

    A kept backup is kept with its whole chain (the full backup and every incremental before it),
    even when no rule keeps those on their own. A backup whose chain is broken is ``broken``: never
    counted; removed when it is older than the oldest kept backup of its cluster, kept otherwise,
    and kept when its cluster has no restorable backup at all. Applying the plan and planning again
    with the same ``now`` removes nothing more.

    Returns ``dict(keep=[ids], remove=[ids], broken=[ids], reasons={kept id: [why]},
    remove_reasons={removed id: why}, oldest_kept=[...], policy=the checked policy)``, the lists
    oldest first. A reason is "newest restorable", "keep 2 of 7", "max_age (5.0 h old)",
    "daily 2026-11-30" (the tier and its period), "chain of <id>" (the backup it is needed by) or,
    for a kept broken backup, why it is kept.

    ``oldest_kept`` has one entry per cluster (name, state uuid) that keeps a restorable backup:
    ``dict(cluster, cluster_uuid, id, started_at, finished_at, position)`` of its oldest kept
    restorable backup (``position`` as its manifest records it: Galera uuid:seqno, LSNs, binlog).
    It is what a binlog archive must keep from: a point-in-time restore starts from a kept backup
    and replays the binary logs from that backup's position on, so the events after the oldest
    kept backup's position are needed and older ones are not. (There is no binlog archive yet; it
    comes with point-in-time recovery and asks this.)
    """
    policy = retention_policy(policy)
    now = now or utc_now()
    kept, removed, broken = [], [], []
    reasons, remove_reasons, oldest = {}, {}, []
    for key, members in _by_cluster(parse_manifests(backups)).items():
        by_id = {b["id"]: b for b in members}
        good = sorted((b for b in members if restorable(b, by_id)), key=_sort_key, reverse=True)
        why = _select(good, policy, now)
        for head in [b for b in good if b["id"] in why]:
            for ancestor in chain_of(head, by_id)[:-1]:
                why.setdefault(ancestor, []).append(f"chain of {head['id']}")
        kept_good = [by_id[i] for i in why]
        oldest_kept = min((_sort_key(b) for b in kept_good), default=None)
        if kept_good:
            oldest.append(_oldest_entry(key, min(kept_good, key=_sort_key)))
        for backup in members:
            backup_id = backup["id"]
            if backup_id in why:
                kept.append(backup)
                reasons[backup_id] = why[backup_id]
                continue
            reason = broken_reason(backup, by_id)
            if reason is None:
                removed.append(backup)
                remove_reasons[backup_id] = "no retention rule keeps it, and no kept backup needs it"
                continue
            broken.append(backup)
            if oldest_kept is not None and _sort_key(backup) < oldest_kept:
                removed.append(backup)
                remove_reasons[backup_id] = f"cannot be restored ({reason}) and is older than the oldest kept backup"
            else:
                kept.append(backup)
                reasons[backup_id] = [f"cannot be restored ({reason}), but is newer than the oldest kept backup"
                                      if oldest_kept is not None else
                                      f"cannot be restored ({reason}); its cluster has no restorable backup"]
    oldest.sort(key=lambda entry: (entry["cluster"] or "", entry["cluster_uuid"] or ""))
    return dict(keep=_sorted_ids(kept), remove=_sorted_ids(removed), broken=_sorted_ids(broken),
                reasons=reasons, remove_reasons=remove_reasons, oldest_kept=oldest, policy=policy)


def _select(good: list, policy: dict, now: datetime) -> dict:
    """{id: [reasons]} of the restorable backups ``good`` (newest first) that a rule keeps."""
    why = {}

    def add(backup, text):
        why.setdefault(backup["id"], []).append(text)
    if good:
        add(good[0], "newest restorable")
    if policy["keep"]:
        for rank, backup in enumerate(good[:policy["keep"]], 1):
            add(backup, f"keep {rank} of {policy['keep']}")
    if policy["max_age"]:
        for backup in good:
            age = (now - backup_time(backup)).total_seconds()
            if age < policy["max_age"]:
                add(backup, f"max_age ({_hours(max(age, 0))} old)")
    for tier in TIERS:
        wanted = policy[tier] or 0
        seen = []
        for backup in good:
            label = period(backup_time(backup), tier)
            if seen and seen[-1] == label:
                continue  # an older backup of a period already served by its newest
            if len(seen) == wanted:
                break
            seen.append(label)
            add(backup, f"{tier} {label}")
    return why


def newest_good(backups: list, cluster: str | None = None, cluster_uuid: str | None = None) -> dict | None:
    """The newest restorable backup (of cluster name ``cluster`` and, when both are known, cluster
    state uuid ``cluster_uuid``), or None."""
    best = None
    for _key, members in _by_cluster(parse_manifests(backups)).items():
        if cluster is not None and not _manifest.same_cluster(members[0], cluster, cluster_uuid):
            continue
        by_id = {b["id"]: b for b in members}
        for backup in members:
            if restorable(backup, by_id) and (best is None or _sort_key(backup) > _sort_key(best)):
                best = backup
    return best


def key_id_matcher(key_id: str | None):
    """A ``key_matches`` for ``choose_parent`` that compares plain key ids (``encryption.key_id``):
    None matches only unencrypted backups."""
    def matches(encryption) -> bool:
        theirs = encryption.get("key_id") if isinstance(encryption, dict) else None
        return theirs == key_id if key_id else not theirs
    return matches


def _not_encrypted(encryption) -> bool:
    return not encryption


def choose_parent(backups: list, cluster: str, wsrep_node_name: str, method: str, max_chain: int,
                  key_matches=None, cluster_uuid: str | None = None):
    """The backup an incremental backup should build on, as ``(parent or None, reason)``.

    Candidates are the restorable backups of ``cluster`` (and, when known, of the cluster state uuid
    ``cluster_uuid``; restorable within their own (name, uuid) group) taken on the node
    ``wsrep_node_name`` (LSNs are per node) with the same physical ``method``. The newest candidate is
    the parent when it has a ``position.to_lsn``, its chain has fewer than ``max_chain`` backups and
    ``key_matches(its encryption record or None)`` is true (a chain has one key; the default matches
    only unencrypted backups); otherwise there is no parent (a full backup starts a new chain:
    building on an older candidate would fork the chain). ``reason`` says why, in either case.
    """
    if method not in PHYSICAL_METHODS:
        return None, f"{method} takes no incremental backups (only {' and '.join(PHYSICAL_METHODS)} do)"
    if not isinstance(max_chain, int) or max_chain < 2:
        return None, f"max_chain is {max_chain}: every backup is a full backup"
    key_matches = key_matches or _not_encrypted
    candidates = []
    for members in _by_cluster(parse_manifests(backups)).values():
        if not _manifest.same_cluster(members[0], cluster, cluster_uuid):
            continue
        by_id = {b["id"]: b for b in members}
        candidates.extend((b, by_id) for b in members
                          if b.get("wsrep_node_name") == wsrep_node_name and b.get("method") == method
                          and restorable(b, by_id))
    if not candidates:
        return None, (f"no restorable {method} backup of cluster {cluster} taken on node {wsrep_node_name}: "
                      "a full backup starts the chain")
    newest, by_id = max(candidates, key=lambda pair: _sort_key(pair[0]))
    position = newest.get("position") if isinstance(newest.get("position"), dict) else {}
    if position.get("to_lsn") is None:
        return None, f"the newest candidate {newest['id']} has no position.to_lsn: a full backup starts a new chain"
    length = len(chain_of(newest, by_id))
    if length >= max_chain:
        return None, (f"the chain of the newest candidate {newest['id']} has {length} backups, max_chain is "
                      f"{max_chain}: a full backup starts a new chain")
    encryption = newest.get("encryption") if isinstance(newest.get("encryption"), dict) else None
    if not key_matches(encryption or None):
        theirs = (f"encrypted with key id {encryption.get('key_id')}" if encryption else "not encrypted")
        return None, (f"the newest candidate {newest['id']} is {theirs}, and this backup's key does not match it "
                      "(a chain has one key, or none): a full backup starts a new chain")
    return newest, (f"incremental on {newest['id']} (to_lsn {position['to_lsn']}), backup {length + 1} of at "
                    f"most {max_chain} in its chain")


# ---------------------------------------------------------------------------------------------
# Freshness: summaries, last run, the one-line verdict

def summarize(backups: list, now: datetime | None = None) -> list:
    """One short dict per backup (newest first), with ``restorable`` and ``age_seconds``."""
    now = now or utc_now()
    out = []
    for members in _by_cluster(parse_manifests(backups)).values():
        by_id = {b["id"]: b for b in members}
        for backup in members:
            out.append(_summary(backup, by_id, now))
    out.sort(key=_sort_key, reverse=True)
    return out


def _summary(backup: dict, by_id: dict, now: datetime) -> dict:
    position = backup.get("position") if isinstance(backup.get("position"), dict) else {}
    encryption = backup.get("encryption") if isinstance(backup.get("encryption"), dict) else None
    encryption = encryption or None  # an empty dict is no encryption
    verify = backup.get("verify") if isinstance(backup.get("verify"), dict) else {}
    reason = broken_reason(backup, by_id)
    finished = backup.get("finished_at") or format_time(backup_time(backup))
    return dict(
        id=backup["id"],
        type=backup.get("type") or "full",
        parent=backup.get("parent"),
        chain=list(backup.get("chain") or [backup["id"]]),
        cluster=cluster_name(backup),
        node=backup.get("node"),
        wsrep_node_name=backup.get("wsrep_node_name"),
        finished_at=finished,
        age_seconds=age_seconds(backup, now),
        bytes=backup.get("bytes"),
        method=backup.get("method"),
        encryption=encryption and dict(key_id=encryption.get("key_id"), cipher=encryption.get("cipher")),
        verify=verify.get("level"),
        position=dict(cluster_uuid=position.get("cluster_uuid"), seqno=position.get("seqno"),
                      to_lsn=position.get("to_lsn"),
                      # the GTID position a point-in-time restore replays the binlog archive from
                      binlog_gtid=(position.get("binlog") or {}).get("gtid")
                      if isinstance(position.get("binlog"), dict) else None),
        restorable=reason is None,
        broken=reason,
        path=backup.get("path"),
    )


def failure_summary(record: dict) -> dict:
    """The fields of a failed-run record that matter for reporting."""
    return dict(
        id=record.get("id"),
        cluster=cluster_name(record),
        node=record.get("node"),
        method=record.get("method"),
        started_at=record.get("started_at"),
        failed_at=record.get("failed_at"),
        error=record.get("error"),
        resynced=record.get("resynced"),
        path=record.get("path"),
    )


def last_run(summaries: list, failures: list, cluster: str | None = None) -> dict | None:
    """The newest run of ``cluster`` (any when None): a backup's ``finished_at`` or a failure's
    ``failed_at``, as ``dict(result="ok"|"failed", at, id, node, error)``; None when there is none."""
    best = None
    for summary in summaries:
        if cluster is None or summary.get("cluster") == cluster:
            run = dict(result="ok", at=summary.get("finished_at"), id=summary.get("id"),
                       node=summary.get("node"), error=None)
            best = _later(best, run)
    for record in failures:
        if cluster is None or cluster_name(record) == cluster:
            run = dict(result="failed", at=record.get("failed_at"), id=record.get("id"),
                       node=record.get("node"), error=record.get("error"))
            best = _later(best, run)
    return best


def _later(best, run):
    if best is None:
        return run
    moment, best_moment = parse_time(run["at"]) or _EPOCH, parse_time(best["at"]) or _EPOCH
    # On a tie the failure wins: a failure recorded in the same second is the more recent news.
    if moment > best_moment or (moment == best_moment and run["result"] == "failed"):
        return run
    return best


def broken_problem(summary: dict) -> str:
    """The problem text for a backup summary that cannot be restored."""
    return (f"backup {summary.get('id')} on {summary.get('node')} cannot be restored: "
            f"{summary.get('broken') or 'its chain is broken'}")


def freshness(summaries: list, failures: list, now: datetime | None = None, max_age: int | None = None,
              fail_on=(), problems=(), where: str = "") -> dict:
    """Judge backup summaries (from ``summarize``) and failed records (``failure_summary``).

    Returns ``dict(backups, failures, newest={cluster: summary}, last_run={cluster: run},
    alerts=[conditions met], failing=[those of fail_on], problems, summary=one line, stale
    (only when max_age is given))``. Ages are recomputed from ``finished_at`` at ``now``. The line
    starts CRITICAL when a condition of ``fail_on`` is met, WARNING when another condition is met
    or there are problems, OK otherwise. ``where`` says what was read, for "no backup found <where>"
    (e.g. "in /var/backups/galera").
    """
    now = now or utc_now()
    problems = list(problems)
    backups = []
    seen = {}
    for summary in summaries:
        summary = dict(summary)
        moment = parse_time(summary.get("finished_at"))
        if moment is not None:
            summary["age_seconds"] = round((now - moment).total_seconds(), 1)
        previous = seen.get(summary.get("id"))
        if previous is not None:  # the same backup on two hosts (a copy): count one, a restorable one
            if summary.get("restorable") and not previous.get("restorable"):
                backups[backups.index(previous)] = summary
                seen[summary.get("id")] = summary
            continue
        seen[summary.get("id")] = summary
        backups.append(summary)
    backups.sort(key=lambda s: (parse_time(s.get("finished_at")) or _EPOCH, str(s.get("id"))), reverse=True)
    failures = sorted((dict(f) for f in failures),
                      key=lambda f: (parse_time(f.get("failed_at")) or _EPOCH, str(f.get("id"))), reverse=True)
    problems.extend(broken_problem(s) for s in backups if not s.get("restorable"))

    clusters = sorted({s.get("cluster") or "" for s in backups} | {f.get("cluster") or "" for f in failures})
    newest, runs, stale_clusters, missing, failed_runs = {}, {}, [], [], []
    for name in clusters:
        good = [s for s in backups if (s.get("cluster") or "") == name and s.get("restorable")]
        if good:
            newest[name] = good[0]
            if max_age is not None and good[0]["age_seconds"] > max_age:
                stale_clusters.append(name)
        else:
            missing.append(name)
        run = last_run(backups, failures, name)
        if run is not None:
            runs[name] = run
            if run["result"] == "failed":
                failed_runs.append(name)

    alerts = []
    if max_age is not None and (stale_clusters or missing or not clusters):
        alerts.append("stale")
    if failed_runs:
        alerts.append("last_run_failed")
    if missing or not clusters:
        alerts.append("none_found")
    failing = [c for c in CONDITIONS if c in alerts and c in fail_on]
    level = "CRITICAL" if failing else ("WARNING" if alerts or problems else "OK")

    parts = []
    for name in clusters:
        parts.append(_cluster_line(name, newest.get(name), runs.get(name), max_age))
    if not clusters:
        parts.append("no backup found" + (f" {where}" if where else ""))
    line = f"{level}: " + "; ".join(parts)
    if problems:
        line += f"; {len(problems)} problem{'s' if len(problems) != 1 else ''}: {problems[0]}"
        if len(problems) > 1:
            line += " (more in problems)"
    result = dict(backups=backups, failures=failures, newest=newest, last_run=runs, alerts=alerts,
                  failing=failing, problems=problems, summary=" ".join(line.split()),
                  checked_at=format_time(now))
    if max_age is not None:
        result["stale"] = "stale" in alerts
    return result


def _cluster_line(name: str, newest: dict | None, run: dict | None, max_age) -> str:
    label = f"cluster {name or '(unnamed)'}"
    if newest is None:
        text = f"{label} has no restorable backup"
    else:
        position = newest.get("position") or {}
        age = _hours(newest["age_seconds"])
        limit = f" (max {_hours(max_age)})" if max_age is not None else ""
        stale = " STALE" if max_age is not None and newest["age_seconds"] > max_age else ""
        details = [human_bytes(newest.get("bytes")), newest.get("type") or "full"]
        if newest.get("verify"):
            details.append(f"verified {newest['verify']}")
        if newest.get("encryption"):
            details.append(f"encrypted (key {newest['encryption'].get('key_id')})")
        details.append(f"position {position.get('cluster_uuid')}:{position.get('seqno')}")
        text = f"{label} newest backup {newest['id']} {age} old{limit}{stale}, " + ", ".join(details)
    if run is not None and run["result"] == "failed":
        text += f"; last run FAILED at {run['at']} on {run.get('node')}: {run.get('error')}"
    return text


# ---------------------------------------------------------------------------------------------
# Restore drills: their records and how fresh the last good one is

DRILL_FORMAT = 1
DRILL_KIND = "dbtools.galera restore drill"
DRILL_PREFIX = "drill-"
DRILL_SUFFIX = ".json"
DRILL_CONDITIONS = ("drill_stale", "drill_failed", "no_drill")


def drill_file_name(cluster) -> str:
    """``drill-<cluster>.json``: the cluster's name as backup ids spell it."""
    return f"{DRILL_PREFIX}{_manifest.sanitize(cluster)}{DRILL_SUFFIX}"


def valid_drill(record) -> bool:
    return (isinstance(record, dict) and record.get("kind") == DRILL_KIND and record.get("result") in ("ok", "failed")
            and parse_time(record.get("finished_at")) is not None)


def read_drills(path: str) -> dict:
    """``dict(drills=[records, each with "path"], problems=[text], exists=bool)``: the drill records
    (``drill-*.json``) directly under ``path``. A record keeps the cluster's last good drill in
    ``last_ok`` when the newest one failed, so one file answers both questions."""
    out = dict(drills=[], problems=[], exists=os.path.isdir(path))
    if not out["exists"]:
        return out
    for name in sorted(os.listdir(path)):
        if not (name.startswith(DRILL_PREFIX) and name.endswith(DRILL_SUFFIX)):
            continue
        full = os.path.join(path, name)
        if os.path.islink(full) or not os.path.isfile(full):
            continue
        try:
            record = _load_json(full)
        except (OSError, ValueError) as exc:
            out["problems"].append(f"{full} is not a readable drill record: {exc}")
            continue
        if not valid_drill(record):
            out["problems"].append(f"{full} is not a drill record of this collection: ignored")
            continue
        out["drills"].append(dict(record, path=full))
    return out


def drill_freshness(records: list, now: datetime | None = None, max_age: int | None = None, fail_on=(),
                    clusters=None, problems=()) -> dict:
    """Judge restore drill records (``read_drills``, possibly from several hosts).

    Per cluster: the newest drill and the newest successful one (a failed record carries its
    cluster's earlier success in ``last_ok``). Conditions: ``drill_stale`` (the last successful drill
    is older than ``max_age`` seconds, or there is none), ``drill_failed`` (the newest drill failed),
    ``no_drill`` (a cluster of ``clusters``, or any at all, has no drill record). Returns
    ``dict(clusters={name: dict(last, last_ok, age_seconds)}, alerts, failing, problems, summary)``.
    """
    now = now or utc_now()
    problems = list(problems)
    by_cluster = {}
    for record in records or []:
        if not valid_drill(record):
            continue
        entry = by_cluster.setdefault(str(record.get("cluster") or ""), dict(last=None, last_ok=None))
        moment = parse_time(record["finished_at"])
        if entry["last"] is None or moment > parse_time(entry["last"]["finished_at"]):
            entry["last"] = record
        for good in (record if record["result"] == "ok" else None, record.get("last_ok")):
            if isinstance(good, dict) and parse_time(good.get("finished_at")) is not None and (
                    entry["last_ok"] is None or parse_time(good["finished_at"]) > parse_time(entry["last_ok"]["finished_at"])):
                entry["last_ok"] = good
    for name in clusters or []:
        by_cluster.setdefault(str(name), dict(last=None, last_ok=None))
    stale, failed, missing, parts = [], [], [], []
    for name in sorted(by_cluster):
        entry = by_cluster[name]
        good = entry["last_ok"]
        entry["age_seconds"] = round((now - parse_time(good["finished_at"])).total_seconds(), 1) if good else None
        if entry["last"] is None:
            missing.append(name)
        if max_age is not None and (good is None or entry["age_seconds"] > max_age):
            stale.append(name)
        if entry["last"] is not None and entry["last"]["result"] != "ok":
            failed.append(name)
        parts.append(_drill_line(name, entry, max_age))
    alerts = []
    if stale or (max_age is not None and not by_cluster):
        alerts.append("drill_stale")
    if failed:
        alerts.append("drill_failed")
    if missing or not by_cluster:
        alerts.append("no_drill")
    failing = [c for c in DRILL_CONDITIONS if c in alerts and c in fail_on]
    level = "CRITICAL" if failing else ("WARNING" if alerts or problems else "OK")
    line = f"{level}: " + ("; ".join(parts) if parts else "no restore drill record found")
    if problems:
        line += f"; {len(problems)} problem{'s' if len(problems) != 1 else ''}: {problems[0]}"
    return dict(clusters=by_cluster, alerts=alerts, failing=failing, problems=problems,
                summary=" ".join(line.split()), checked_at=format_time(now))


def _drill_line(name: str, entry: dict, max_age) -> str:
    label = f"cluster {name or '(unnamed)'}"
    last, good = entry["last"], entry["last_ok"]
    if last is None:
        return f"{label} has no restore drill"
    if good is None:
        text = f"{label} has no successful restore drill"
    else:
        limit = f" (max {_hours(max_age)})" if max_age is not None else ""
        stale = " STALE" if max_age is not None and entry["age_seconds"] > max_age else ""
        backup = (good.get("backup") or {}).get("id")
        text = (f"{label} last successful drill {_hours(entry['age_seconds'])} ago{limit}{stale}, backup {backup}, "
                f"{good.get('duration_seconds')} s on {good.get('host')}")
    if last["result"] != "ok":
        text += f"; last drill FAILED at {last.get('finished_at')} ({last.get('step')}): {last.get('error')}"
    return text


# ---------------------------------------------------------------------------------------------
# The binlog archive: how far behind it is, and whether it has a gap

ARCHIVE_CONDITIONS = ("archive_lag", "archive_gap", "no_archive")


def _index_age(index: dict) -> tuple:
    """Which of two copies of an archive index is newer: the catalogue's revision, then the cursor."""
    last = index.get("last")
    return int(index.get("revision") or 0), int(last) if isinstance(last, int) else -1


def archive_freshness(reads: dict, now: datetime | None = None, max_lag: int | None = None, fail_on=(),
                      problems=()) -> dict:
    """Judge the binlog archive copies the nodes hold (``{host: galera_binlog_info result or None}``).

    Per cluster: the newest index any node holds (highest revision), the union of the segment files
    found on the nodes that answered, the lag (now minus ``archived_through``, the moment up to
    which every committed write is archived) and the gaps: recorded gaps, holes, and segments whose
    file no answering node holds. While a node did not answer, a segment not found is a problem
    (it may be on that node), not a gap. Conditions: ``archive_lag`` (lag over ``max_lag``, or
    unknown), ``archive_gap``, ``no_archive`` (no archive index found at all). The line starts
    CRITICAL when a condition of ``fail_on`` holds, WARNING when another holds or on problems.
    Returns ``dict(clusters={name: dict(index, lag_seconds, gaps, missing)}, alerts, failing,
    problems, summary, checked_at)``.
    """
    now = now or utc_now()
    problems = list(problems)
    newest, files, silent = {}, {}, []
    for host in sorted(reads or {}):
        result = reads[host]
        if not isinstance(result, dict) or not isinstance(result.get("archives"), dict):
            silent.append(host)
            continue
        problems.extend(f"{host}: {text}" for text in result.get("problems") or [])
        for name, entry in result["archives"].items():
            index = entry.get("index") if isinstance(entry, dict) else None
            files.setdefault(name, set()).update((entry or {}).get("files") or [])
            if _binlog.valid_index(index) and (name not in newest or _index_age(index) > _index_age(newest[name])):
                newest[name] = index
    if silent:
        problems.append(f"no archive listing from {', '.join(silent)} (unreachable, or its task failed): segments "
                        "kept only there cannot be checked")
    clusters, lagging, gapped, parts = {}, [], [], []
    for name in sorted(newest):
        index = newest[name]
        checked = _binlog.check(index, files.get(name, set()) if not silent else None)
        missing = [s.get("name") for s in index.get("segments") or []
                   if s.get("kind") == "file" and s.get("name") not in files.get(name, set())]
        if silent and missing:
            problems.append(f"cluster {name}: {len(missing)} archived segment(s) not found on the nodes that answered "
                            f"(first: {missing[0]})")
        through = parse_time(index.get("archived_through"))
        lag = round((now - through).total_seconds(), 1) if through is not None else None
        clusters[name] = dict(index={k: v for k, v in index.items() if k != "segments"}, lag_seconds=lag,
                              gaps=checked["gaps"], missing=missing, segments=len(index.get("segments") or []))
        if max_lag is not None and (lag is None or lag > max_lag):
            lagging.append(name)
        if checked["gaps"]:
            gapped.append(name)
        lag_text = "unknown" if lag is None else f"{lag:.0f} s"
        limit = f" (max {max_lag} s)" if max_lag is not None else ""
        text = (f"cluster {name or '(unnamed)'} binlog archive up to {index.get('last_gtid')} ({index.get('last_time')}), "
                f"lag {lag_text}{limit}{' TOO OLD' if name in lagging else ''}, "
                f"{sum(1 for s in index.get('segments') or [] if s.get('kind') == 'file')} segment(s)")
        for gap in checked["gaps"][:3]:
            text += f"; {gap['text']}"
        if len(checked["gaps"]) > 3:
            text += f"; and {len(checked['gaps']) - 3} more gap(s)"
        parts.append(text)
    alerts = []
    if lagging or (max_lag is not None and not newest):
        alerts.append("archive_lag")
    if gapped:
        alerts.append("archive_gap")
    if not newest:
        alerts.append("no_archive")
    failing = [c for c in ARCHIVE_CONDITIONS if c in alerts and c in fail_on]
    level = "CRITICAL" if failing else ("WARNING" if alerts or problems else "OK")
    line = f"{level}: " + ("; ".join(parts) if parts else "no binlog archive found")
    if problems:
        line += f"; {len(problems)} problem{'s' if len(problems) != 1 else ''}: {problems[0]}"
    return dict(clusters=clusters, alerts=alerts, failing=failing, problems=problems,
                summary=" ".join(line.split()), checked_at=format_time(now))

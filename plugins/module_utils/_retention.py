# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Retention in any store (private), written once against ``_stores.Store``: what may be deleted,
and deleting it. Used by galera_backup_copy (per destination) and galera_backup_prune (the local
backup directory).

Only what provably is ours is ever deleted:

- a backup: its name parses as a backup id of this cluster (``_manifest.id_of_cluster``) and its
  manifest (format 1, naming that id, result ok) names the same cluster name and, when both are
  known, the same cluster state uuid. Retention is planned per (cluster name, state uuid) by
  ``_catalog.plan_retention``: the ``keep`` newest restorable backups are kept with their whole
  chains, so the newest restorable backup is never deleted;
- an unfinished copy (``<id>.partial``, an S3 prefix without manifest.json): its id is of this
  cluster, its run record (``.run.json``) names this cluster (and state uuid, when both are known)
  and this backup id, and either the record is older than ``margin`` seconds, or it was written on
  this host by a process that provably is no longer alive. One without a valid run record is
  never deleted;
- a failed-run record ``<id>.failed.json`` (local directory only): its id is of this cluster and it
  names this cluster; older than the oldest kept backup, and never the newest record.

Everything else is left alone, and reported in ``problems`` when it looks like ours (its name is an
id of this cluster) but cannot be proven to be.
"""

from __future__ import annotations

from datetime import datetime

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog, _manifest, _paths, _proc, _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

# galera_backup_max_duration's default (6 h) and 10 minutes: no run writes for longer.
DEFAULT_MARGIN = 21600 + 600


def _uuid_text(value) -> str:
    return value or "unknown"


def backups_to_plan(listing: dict, store, cluster: str, state_uuid: str | None, problems: list) -> list:
    """The manifests of the backups of ``listing`` that provably are this cluster's (see the module)."""
    mine = []
    for name, manifest in sorted(listing["manifests"].items()):
        looks = _manifest.id_of_cluster(name, cluster)
        where = f"{store.url(name)}/{_manifest.MANIFEST}"
        if not isinstance(manifest, dict):
            if looks:
                problems.append(f"{where} is not a readable JSON manifest: that backup is not counted and never "
                                "deleted")
            continue
        if _manifest.cluster_name(manifest) != str(cluster):
            if looks and _manifest.cluster_name(manifest) is None:
                problems.append(f"{where} names no cluster: that backup is not counted and never deleted")
            continue  # another cluster's (prod_east_... for cluster prod): not ours, not a problem
        if not looks:
            problems.append(f"{where} names cluster {cluster} but {name!r} is not a backup id of that cluster: "
                            "never deleted")
            continue
        checked = _manifest.check_manifest(manifest, name, where, problems)
        if checked is None:
            continue
        if not _manifest.same_cluster(checked, cluster, state_uuid):
            problems.append(f"{store.url(name)} is a backup of another cluster named {cluster} (state uuid "
                            f"{_manifest.cluster_uuid(checked)}, this one is {state_uuid}): kept, never deleted here")
            continue
        mine.append(checked)
    return mine


def partials_to_delete(listing: dict, store, cluster: str, state_uuid: str | None, margin: float,
                       now: datetime, host: str, alive, protect=()) -> tuple:
    """(names to delete, names left in flight) among the unfinished copies; problems appended."""
    remove, in_flight, problems = [], [], []
    for name, record in sorted(listing["partials"].items()):
        backup_id = store.partial_id(name)
        if backup_id is None or not _manifest.id_of_cluster(backup_id, cluster) or backup_id in protect:
            continue
        where = store.url(name)
        if record is None:
            problems.append(f"{where} looks like an unfinished copy of cluster {cluster} but has no valid run record "
                            f"({_manifest.RUN_RECORD}): never deleted. Remove it by hand once no job writes it.")
            continue
        if not _manifest.same_cluster(record, cluster, state_uuid):
            if _manifest.cluster_name(record) == str(cluster):
                problems.append(f"{where} is an unfinished copy of another cluster named {cluster} (state uuid "
                                f"{_uuid_text(_manifest.cluster_uuid(record))}): never deleted here")
            continue  # another cluster's copy in flight
        if record.get("backup") != backup_id:
            problems.append(f"{where}: its run record names backup {record.get('backup')!r}, not {backup_id}: "
                            "never deleted")
            continue
        started = _catalog.parse_time(record.get("started_at"))
        age = (now - started).total_seconds() if started is not None else None
        here = record.get("host") == host
        living = alive(record.get("process")) if here else None
        if living is True:
            in_flight.append(name)  # provably still being written, whatever its age
        elif (age is not None and age > margin) or living is False:
            remove.append(name)
        else:
            in_flight.append(name)
    return remove, in_flight, problems


def our_failures(failures: dict, cluster: str, state_uuid: str | None, problems: list) -> list:
    """The failed-run records (``{id: record or "invalid"}``, ``LocalStore.failures``) that provably
    are this cluster's, each with its ``id``; problems appended for those that look ours only."""
    mine = []
    for backup_id, record in sorted(failures.items()):
        if not _manifest.id_of_cluster(backup_id, cluster):
            continue
        name = backup_id + _manifest.FAILED_SUFFIX
        if not isinstance(record, dict):
            problems.append(f"{name} is not a readable JSON failure record: never deleted")
        elif _manifest.cluster_name(record) is None:
            problems.append(f"{name} names no cluster: never deleted")
        elif _manifest.same_cluster(record, cluster, state_uuid):
            mine.append(dict(record, id=backup_id))
    return mine


def failures_to_delete(mine: list, kept: list) -> list:
    """The ids of the failed-run records ``mine`` older than the oldest of the ``kept`` backups,
    never the newest record (it says how the last run ended)."""
    if not mine or not kept:
        return []
    oldest_kept = min(_catalog.backup_time(b) for b in kept)

    def moment(record):
        return _catalog.parse_time(record.get("failed_at")) or _catalog.backup_time(record)
    ordered = sorted(mine, key=lambda r: (moment(r), r["id"]))
    return [r["id"] for r in ordered[:-1] if moment(r) < oldest_kept]


def plan(store, listing: dict, cluster: str | None, keep: int, state_uuid: str | None = None,
         margin: float = DEFAULT_MARGIN, now: datetime | None = None, host: str | None = None, alive=None,
         protect=(), extra: list | None = None) -> dict:
    """What retention removes from ``listing`` (``store.list()``); pure apart from ``alive``.

    ``protect``: ids never removed (the backup a copy just made); ``extra``: manifests to count as
    present (that backup in check mode). Returns ``dict(remove=[ids, newest first],
    remove_partial=[names], kept=[ids], broken=[ids], in_flight=[names], problems=[texts],
    backups=[the manifests planned over])``.
    """
    now = now or _catalog.utc_now()
    host = _stores.this_host() if host is None else host
    alive = _proc.same_process_alive if alive is None else alive
    result = dict(remove=[], remove_partial=[], kept=[], broken=[], in_flight=[], problems=[], backups=[])
    if not cluster:
        result["problems"].append("the backup names no cluster: retention deletes nothing")
        return result
    problems = result["problems"]
    mine = backups_to_plan(listing, store, cluster, state_uuid, problems)
    listed = {m["id"] for m in mine}
    for manifest in extra or []:
        if manifest.get("id") not in listed:
            mine.append(dict(manifest))
    backups = _catalog.parse_manifests(mine, problems)
    planned = _catalog.plan_retention(backups, keep) if backups else dict(keep=[], remove=[], broken=[])
    uuids = sorted({_uuid_text(_manifest.cluster_uuid(b)) for b in backups})
    if len(uuids) > 1:
        problems.append(f"cluster name {cluster} has backups of {len(uuids)} cluster state uuids here "
                        f"({', '.join(uuids)}): retention keeps the {keep} newest of each; give cluster_uuid to "
                        "prune only one")
    by_id = {b["id"]: b for b in backups}
    remove = [i for i in planned["remove"] if i in listed and i not in protect]
    result["remove"] = sorted(remove, key=lambda i: (_catalog.backup_time(by_id[i]), i), reverse=True)
    result["kept"] = [i for i in planned["keep"] if i in listed or i in protect]
    for backup_id in protect:
        if backup_id not in result["kept"]:
            result["kept"].append(backup_id)
    result["broken"] = list(planned["broken"])
    for broken in planned["broken"]:
        if broken not in remove:
            problems.append(f"{store.url(broken)} cannot be restored (its chain is broken): kept")
    for name in listing.get("other", []):
        if _manifest.id_of_cluster(name, cluster) or _manifest.id_of_cluster(store.partial_id(name) or "", cluster):
            problems.append(f"{store.url(name)} is named like a backup of cluster {cluster} but is neither a complete "
                            f"backup ({_manifest.MANIFEST}) nor an unfinished copy with a run record: never deleted")
    partials, in_flight, partial_problems = partials_to_delete(listing, store, cluster, state_uuid, margin, now,
                                                               host, alive, protect)
    result.update(remove_partial=partials, in_flight=in_flight, backups=backups)
    problems.extend(partial_problems)
    return result


def apply(store, planned: dict, check_mode: bool) -> None:
    """Delete what ``planned`` says (nothing in check mode), newest backups first (an incremental
    before its parent), one at a time; a failure says what was already deleted."""
    if check_mode:
        return
    done = []
    try:
        for backup_id in planned["remove"]:
            store.delete([backup_id])
            done.append(backup_id)
        for name in planned["remove_partial"]:
            store.delete_partials([name])
            done.append(name)
    except GaleraError as exc:
        raise GaleraError(f"{exc.msg} Deleted before it: {', '.join(done) or 'nothing'}; nothing after it.",
                          deleted=done, **exc.details)


def run(store, cluster: str | None, keep: int, check_mode: bool, **kwargs) -> dict:
    """List ``store``, plan retention (``plan``'s keywords) and apply it; the plan."""
    planned = plan(store, store.list(), cluster, keep, **kwargs)
    apply(store, planned, check_mode)
    return planned


def sweep_local_partials(path: str, cluster: str, state_uuid: str | None, margin: float = DEFAULT_MARGIN,
                         protect=()) -> list:
    """Delete the unfinished backups in the local directory ``path`` that provably are abandoned runs
    of this cluster (the rule of ``partials_to_delete``); the names deleted. For the backup run's
    sweep before it starts; ``protect``: backup ids left alone (this run's own)."""
    store = _stores.LocalStore(path)
    if not cluster or not store.exists():
        return []
    remove, _in_flight, _problems = partials_to_delete(store.list(), store, cluster, state_uuid, margin,
                                                       _catalog.utc_now(), _stores.this_host(),
                                                       _proc.same_process_alive, protect)
    store.delete_partials(remove)
    return remove


def prune(path: str, cluster: str, keep: int, check_mode: bool, state_uuid: str | None = None,
          margin: float = DEFAULT_MARGIN, diff: bool = False) -> dict:
    """galera_backup_prune's work: retention in the local backup directory ``path`` (through
    ``LocalStore``), with the cluster's failed-run records; the module's result."""
    path = _paths.check_dir_text(path, "path")
    store = _stores.LocalStore(path)
    exists = store.exists()
    planned = plan(store, store.list(), cluster, keep, state_uuid=state_uuid, margin=margin)
    problems = planned["problems"]
    failures = our_failures(store.failures(), cluster, state_uuid, problems)
    good_kept = [b for b in planned["backups"] if b["id"] in planned["kept"] and b["id"] not in planned["broken"]]
    remove_failures = failures_to_delete(failures, good_kept)
    result = dict(changed=bool(planned["remove"] or planned["remove_partial"] or remove_failures),
                  removed=planned["remove"], removed_failures=remove_failures,
                  removed_partial=planned["remove_partial"], kept=planned["kept"], broken=planned["broken"],
                  in_flight=planned["in_flight"], problems=problems, exists=exists)
    if diff:
        before = sorted([b["id"] for b in planned["backups"]] + [f["id"] + _manifest.FAILED_SUFFIX for f in failures]
                        + planned["remove_partial"] + planned["in_flight"])
        gone = set(planned["remove"] + planned["remove_partial"]) | {i + _manifest.FAILED_SUFFIX
                                                                     for i in remove_failures}
        header = f"{path} ({cluster})"
        result["diff"] = dict(before_header=header, after_header=header, before="".join(i + "\n" for i in before),
                              after="".join(i + "\n" for i in before if i not in gone))
    apply(store, planned, check_mode)
    if not check_mode:
        try:
            store.delete_failures(remove_failures)
        except GaleraError as exc:
            raise GaleraError(f"{exc.msg} The backups were pruned; failed-run records were not all deleted.",
                              **dict(result, **exc.details))
    return result

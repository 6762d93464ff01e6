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
  ``_catalog.plan_retention`` under a policy (``keep`` newest, ``max_age``, calendar tiers hourly
  to yearly; ``_catalog.retention_policy``): every backup a rule keeps is kept with its whole
  chain, and the newest restorable backup is never deleted;
- an unfinished copy (``<id>.partial``, an S3 prefix without manifest.json): its id is of this
  cluster, its run record (``.run.json``) names this cluster (and state uuid, when both are known)
  and this backup id, and either the record is older than ``margin`` seconds, or it was written on
  this host by a process that provably is no longer alive. One without a valid run record is
  never deleted;
- a failed-run record ``<id>.failed.json`` (local directory only): its id is of this cluster and it
  names this cluster; older than the oldest kept backup, and never the newest record.

Everything else is left alone, and reported in ``problems`` when it looks like ours (its name is an
id of this cluster) but cannot be proven to be.

A store may refuse a deletion (an S3 bucket with Object Lock: ``_store_s3``). Such a backup is
kept, whole, and reported ("kept: the destination refuses deletion (...)") in ``problems`` and
``refused``; the backups its chain needs are kept with it; the run goes on. Stores that can tell
beforehand (``deletion_refusal(name)``) are asked in check mode too, so check mode shows it.
The plan names, for every kept backup, the rules that keep it (``reasons``), and ``oldest_kept``
says where a future binlog archive may start (``_catalog.plan_retention``).
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


def retention_argument_spec() -> dict:
    """The modules' options for the rules besides ``keep`` (doc fragment ``dbtools.galera._retention``)."""
    return dict(max_age=dict(type="int"),
                keep_tiers=dict(type="dict", options={tier: dict(type="int") for tier in _catalog.TIERS}))


def policy_from_options(keep=None, keep_tiers=None, max_age=None, required: bool = True,
                        untouched: str = "Nothing was changed.") -> dict | None:
    """The retention policy of the modules' options ``keep`` (int), ``keep_tiers`` (dict of tiers,
    None or 0 for off) and ``max_age`` (seconds). None when no option is given at all and not
    ``required`` (the copy module: no retention at the destination); otherwise a checked policy,
    or a GaleraError naming the wrong option and ending with ``untouched``."""
    tiers = dict(keep_tiers or {})
    unknown = sorted(str(k) for k in tiers if k not in _catalog.TIERS)
    if unknown:
        raise GaleraError(f"keep_tiers has unknown tier(s) {', '.join(unknown)}: the tiers are "
                          f"{', '.join(_catalog.TIERS)}. {untouched}")
    if not required and keep is None and max_age is None and not any(v is not None for v in tiers.values()):
        return None
    if keep is None and max_age is None and not any(tiers.values()):
        raise GaleraError("give keep, max_age or keep_tiers (at least one tier above 0): retention needs a rule "
                          f"that says what to keep. {untouched}")
    try:
        return _catalog.retention_policy(dict(keep=keep, max_age=max_age, **tiers))
    except ValueError as exc:
        text = str(exc)
        if text.split(" ", 1)[0] in _catalog.TIERS:
            text = "keep_tiers." + text
        raise GaleraError(f"{text}. {untouched}")


def plan(store, listing: dict, cluster: str | None, policy, state_uuid: str | None = None,
         margin: float = DEFAULT_MARGIN, now: datetime | None = None, host: str | None = None, alive=None,
         protect=(), extra: list | None = None) -> dict:
    """What retention removes from ``listing`` (``store.list()``); pure apart from ``alive``.

    ``policy``: a retention policy (``_catalog.retention_policy``) or an int (``keep``).
    ``protect``: ids never removed (the backup a copy just made); ``extra``: manifests to count as
    present (that backup in check mode). Returns ``dict(remove=[ids, newest first],
    remove_partial=[names], kept=[ids, oldest first], broken=[ids], in_flight=[names],
    problems=[texts], backups=[the manifests planned over], present=[ids of those listed],
    reasons={kept id: [why]},
    remove_reasons={id: why}, refused=[], oldest_kept=[...], policy)``; ``apply`` fills
    ``refused`` (and moves what a store refuses to delete from ``remove`` to ``kept``).
    """
    try:
        policy = _catalog.retention_policy(policy)
    except ValueError as exc:
        raise GaleraError(f"{exc}. Nothing was changed.")
    now = now or _catalog.utc_now()
    host = _stores.this_host() if host is None else host
    alive = _proc.same_process_alive if alive is None else alive
    result = dict(remove=[], remove_partial=[], kept=[], broken=[], in_flight=[], problems=[], backups=[],
                  present=[], reasons={}, remove_reasons={}, refused=[], oldest_kept=[], policy=policy)
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
    planned = _catalog.plan_retention(backups, policy, now) if backups else dict(
        keep=[], remove=[], broken=[], reasons={}, remove_reasons={}, oldest_kept=[])
    uuids = sorted({_uuid_text(_manifest.cluster_uuid(b)) for b in backups})
    if len(uuids) > 1:
        problems.append(f"cluster name {cluster} has backups of {len(uuids)} cluster state uuids here "
                        f"({', '.join(uuids)}): retention ({_catalog.describe_policy(policy)}) applies to each "
                        "apart; give cluster_uuid to prune only one")
    by_id = {b["id"]: b for b in backups}
    remove = [i for i in planned["remove"] if i in listed and i not in protect]
    result["remove"] = sorted(remove, key=lambda i: (_catalog.backup_time(by_id[i]), i), reverse=True)
    result["kept"] = [i for i in planned["keep"] if i in listed or i in protect]
    result["reasons"] = {i: list(planned["reasons"].get(i, [])) for i in result["kept"]}
    for backup_id in protect:
        if backup_id not in result["kept"]:
            result["kept"].append(backup_id)
        result["reasons"].setdefault(backup_id, []).append("copied by this run")
    result["remove_reasons"] = {i: planned["remove_reasons"][i] for i in remove}
    result["oldest_kept"] = planned["oldest_kept"]
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
    result.update(remove_partial=partials, in_flight=in_flight, backups=backups, present=sorted(listed))
    problems.extend(partial_problems)
    return result


def _refusal_text(store, name: str, refusal: dict) -> str:
    return f"{store.url(name)}: kept: the destination refuses deletion ({refusal.get('reason') or 'no reason given'})"


def _hold(planned: dict, backup_id: str, reason: str) -> None:
    """Move ``backup_id`` from the plan's removals to what it keeps, with ``reason``."""
    planned["remove"].remove(backup_id)
    planned["remove_reasons"].pop(backup_id, None)
    planned["reasons"].setdefault(backup_id, []).append(reason)
    if backup_id not in planned["kept"]:
        planned["kept"].append(backup_id)


def apply(store, planned: dict, check_mode: bool) -> None:
    """Delete what ``planned`` says (nothing in check mode), newest backups first (an incremental
    before its parent), one at a time; a failure says what was already deleted.

    A backup the store refuses to delete (``GaleraError`` with ``refused``; in check mode, what
    ``store.deletion_refusal(name)`` foresees, for stores that have it) is kept whole and reported
    in ``planned["refused"]`` and ``problems``, with every backup of its chain; the run goes on.
    Each is tried once per run: the next run plans, and asks, again."""
    foresee = getattr(store, "deletion_refusal", None)
    chains = {b["id"]: list(b.get("chain") or [b["id"]]) for b in planned.get("backups", [])}
    held = {}
    done = []
    for backup_id in list(planned["remove"]):
        if backup_id in held:
            _hold(planned, backup_id, f"chain of {held[backup_id]}, which the destination refuses to delete")
            continue
        refusal = _try_delete(store, foresee, backup_id, check_mode, done, store.delete)
        if refusal is None:
            done.append(backup_id)
            continue
        if refusal.get("whole") is False:  # it no longer counts as a backup; what is left is reported
            planned["problems"].append(f"{store.url(backup_id)} was only partly deleted: {refusal['msg']}")
            done.append(backup_id)
            continue
        _hold(planned, backup_id, f"the destination refuses deletion ({refusal.get('reason')})")
        planned["refused"].append(dict(id=backup_id, reason=refusal.get("reason"), until=refusal.get("until")))
        planned["problems"].append(_refusal_text(store, backup_id, refusal))
        for ancestor in chains.get(backup_id, [])[:-1]:
            held.setdefault(ancestor, backup_id)
    for name in list(planned["remove_partial"]):
        refusal = _try_delete(store, foresee, name, check_mode, done, store.delete_partials)
        if refusal is None or refusal.get("whole") is False:
            if refusal is not None:
                planned["problems"].append(f"{store.url(name)} was only partly deleted: {refusal['msg']}")
            done.append(name)
            continue
        planned["remove_partial"].remove(name)
        planned["refused"].append(dict(id=name, reason=refusal.get("reason"), until=refusal.get("until")))
        planned["problems"].append(_refusal_text(store, name, refusal))
    by_id = {b["id"]: b for b in planned.get("backups", [])}
    planned["kept"].sort(key=lambda i: (_catalog.backup_time(by_id[i]), i) if i in by_id else (_catalog.utc_now(), i))


def _try_delete(store, foresee, name: str, check_mode: bool, done: list, delete) -> dict | None:
    """None when ``name`` was deleted (would be, in check mode); the refusal dict when the store
    refuses; raises (saying what was deleted before) on any other failure."""
    if check_mode:
        return foresee(name) if foresee is not None else None
    try:
        delete([name])
    except GaleraError as exc:
        if exc.get("refused"):
            return dict(reason=exc.get("reason") or exc.msg, until=exc.get("until"), whole=exc.get("whole", True),
                        msg=exc.msg)
        raise GaleraError(f"{exc.msg} Deleted before it: {', '.join(done) or 'nothing'}; nothing after it.",
                          deleted=list(done), **exc.details)
    return None


def run(store, cluster: str | None, policy, check_mode: bool, **kwargs) -> dict:
    """List ``store``, plan retention (``plan``'s keywords) and apply it; the plan (as applied)."""
    planned = plan(store, store.list(), cluster, policy, **kwargs)
    apply(store, planned, check_mode)
    return planned


def plan_lines(planned: dict, check_mode: bool) -> str:
    """What retention did (would do, in check mode) and why, one line per backup, oldest first:
    "- <id>  removed: <why>" or "  <id>  kept: <rules>"; a diff's ``prepared`` text."""
    by_id = {b["id"]: b for b in planned.get("backups", [])}
    verb = "would be removed" if check_mode else "removed"
    lines = [f"retention ({_catalog.describe_policy(planned['policy'])}): {len(planned['kept'])} kept, "
             f"{len(planned['remove'])} {verb}\n"]

    def when(name):
        return (_catalog.backup_time(by_id[name]) if name in by_id else _catalog.utc_now(), name)
    for name in sorted(set(planned["kept"]) | set(planned["remove"]), key=when):
        if name in planned["remove"]:
            lines.append(f"- {name}  {verb}: {planned['remove_reasons'].get(name, '')}\n")
        else:
            lines.append(f"  {name}  kept: {_catalog.reason_text(planned['reasons'].get(name, []))}\n")
    for name in planned["remove_partial"]:
        lines.append(f"- {name}  {verb}: an unfinished copy that its run record proves abandoned\n")
    return "".join(lines)


def plan_diff(planned: dict, header: str, check_mode: bool, before_extra=(), gone_extra=()) -> dict:
    """A module's ``diff`` for an applied plan: before and after lists of the names retention
    judged (``before_extra``, ``gone_extra``: more names there, and those of them deleted), and
    ``plan_lines`` as the ``prepared`` text."""
    before = set(planned["present"]) | set(planned["remove_partial"]) | set(planned["in_flight"]) \
        | {r["id"] for r in planned["refused"]} | set(before_extra)
    gone = set(planned["remove"]) | set(planned["remove_partial"]) | set(gone_extra)
    after = (before | set(planned["kept"])) - gone
    return dict(before_header=header, after_header=header, before="".join(f"{i}\n" for i in sorted(before)),
                after="".join(f"{i}\n" for i in sorted(after)), prepared=plan_lines(planned, check_mode))


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


def prune(path: str, cluster: str, policy, check_mode: bool, state_uuid: str | None = None,
          margin: float = DEFAULT_MARGIN, diff: bool = False) -> dict:
    """galera_backup_prune's work: retention (``policy``: a retention policy or an int ``keep``) in
    the local backup directory ``path`` (through ``LocalStore``), with the cluster's failed-run
    records; the module's result."""
    path = _paths.check_dir_text(path, "path")
    store = _stores.LocalStore(path)
    exists = store.exists()
    planned = plan(store, store.list(), cluster, policy, state_uuid=state_uuid, margin=margin)
    problems = planned["problems"]
    failures = our_failures(store.failures(), cluster, state_uuid, problems)
    good_kept = [b for b in planned["backups"] if b["id"] in planned["kept"] and b["id"] not in planned["broken"]]
    remove_failures = failures_to_delete(failures, good_kept)
    apply(store, planned, check_mode)
    result = dict(changed=bool(planned["remove"] or planned["remove_partial"] or remove_failures),
                  removed=planned["remove"], removed_failures=remove_failures,
                  removed_partial=planned["remove_partial"], kept=planned["kept"], broken=planned["broken"],
                  in_flight=planned["in_flight"], problems=problems, exists=exists,
                  reasons={i: _catalog.reason_text(r) for i, r in planned["reasons"].items()},
                  oldest_kept=planned["oldest_kept"], policy=planned["policy"])
    if diff:
        result["diff"] = plan_diff(planned, f"{path} ({cluster})", check_mode,
                                   before_extra=[f["id"] + _manifest.FAILED_SUFFIX for f in failures],
                                   gone_extra=[i + _manifest.FAILED_SUFFIX for i in remove_failures])
    if not check_mode:
        try:
            store.delete_failures(remove_failures)
        except GaleraError as exc:
            raise GaleraError(f"{exc.msg} The backups were pruned; failed-run records were not all deleted.",
                              **dict(result, **exc.details))
    return result

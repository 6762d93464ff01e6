# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rules of rebuilding a cluster or a node from a backup (private): pure functions over plain
dicts, unit-tested on their own, used by the restore modules on the nodes and by the
``restore_plan`` filter on the controller. No Ansible imports.

- ``check_settings``: the role's settings, judged from their text alone.
- ``plan_cluster`` / ``plan_rebuild``: what each node's inspection says, judged against the recovery
  invariants (R1-R5 of the design): refusals first, before anything changes; the backup, the first
  node, the joiners and how they join.
- ``ist_verdict``: whether the donors' gcache still holds the write-sets a node at the backup's
  position needs (``wsrep_local_cached_downto <= seqno + 1``), and if not, by how much it misses.
- ``how_joined``: how a joiner got its state, read from the server's own error log since its start.
- ``table_verdict``: tables present and ``CHECKSUM TABLE`` figures equal to those the backup's restore
  verification recorded, on every node.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog, _catalog, _manifest, _paths, _restore, _typed

JOINER_MODES = ("ist", "sst")
LOCAL = "local"
ASIDE_TAG = ".dbtools-"
STAGING_TAG = ".dbtools-restore-"
# The tables a restore changes by design: the backup's lease row is cleared before the cluster serves.
LEASE_TABLE = "desync_lease"
NOTHING = "Nothing was changed."
_STAMP = "%Y%m%dT%H%M%SZ"


# ---------------------------------------------------------------------------------------------
# Names

def aside_name(datadir: str, moment: datetime | None = None) -> str:
    """Where an existing data directory is moved aside: ``<datadir>.dbtools-<UTC time>`` (a sibling,
    so the rename stays on the same filesystem)."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{datadir.rstrip('/')}{ASIDE_TAG}{moment.strftime(_STAMP)}"


def staging_name(datadir: str, run_id: str) -> str:
    """Where a restore prepares the new data directory before it takes the place of the old one."""
    if not _manifest.RUN_ID_PATTERN.fullmatch(run_id or ""):
        raise ValueError(f"run id {run_id!r} is not 8 hex digits")
    return f"{datadir.rstrip('/')}{STAGING_TAG}{run_id}"


def staging_run(datadir: str, name: str) -> str | None:
    """The run id of ``name`` when it is a staging directory of ``datadir`` (its basename), else None."""
    prefix = datadir.rstrip("/").rsplit("/", 1)[-1] + STAGING_TAG
    if not name.startswith(prefix):
        return None
    run_id = name[len(prefix):]
    return run_id if _manifest.RUN_ID_PATTERN.fullmatch(run_id) else None


# ---------------------------------------------------------------------------------------------
# The server's configuration (my_print_defaults --mysqld)

def parse_defaults(lines) -> dict:
    """Options of ``my_print_defaults`` output (``--name=value`` lines) as {name: value}, names with
    ``_`` for ``-``, the last occurrence winning (as the server reads them)."""
    out = {}
    for line in lines or []:
        text = str(line).strip()
        if not text.startswith("--"):
            continue
        name, sep, value = text[2:].partition("=")
        out[name.replace("-", "_").lower()] = value if sep else ""
    return out


def _strip_slash(path: str) -> str:
    return path.rstrip("/") or path


def server_config(options: dict, datadir: str = "") -> dict:
    """What the restore needs of the server's configuration: data directory (``datadir`` given wins,
    then the configured one, then /var/lib/mysql), cluster and node name, error log, pid file."""
    configured = _strip_slash(options.get("datadir") or "") or "/var/lib/mysql"
    # A given "/" stays "/" (and is refused by the datadir check), never an empty text that means "configured".
    path = _strip_slash(datadir) if datadir else configured
    log_error = options.get("log_error")
    if log_error and not log_error.startswith("/"):
        log_error = f"{path}/{log_error}"
    pid_file = options.get("pid_file")
    if pid_file and not pid_file.startswith("/"):
        pid_file = f"{path}/{pid_file}"
    return dict(datadir=path, configured_datadir=configured,
                cluster_name=options.get("wsrep_cluster_name") or "my_wsrep_cluster",
                node_name=options.get("wsrep_node_name") or None, log_error=log_error or None,
                pid_file=pid_file or None, socket=options.get("socket") or None,
                port=options.get("port") or None, sst_method=options.get("wsrep_sst_method") or "rsync",
                provider_options=options.get("wsrep_provider_options") or "")


# ---------------------------------------------------------------------------------------------
# Settings

def typed_settings(s: dict) -> dict:
    """The role's settings with their numbers and booleans typed (``_typed``: ansible-core < 2.19)."""
    return _typed.typed(s, ("timeout", "sync_timeout"), (), ("fresh_backup", "allow_sst"))


def check_settings(s: dict, hosts=None) -> list:
    """The settings' errors (one text each) from their text alone; [] when they are fine."""
    s = typed_settings(s)
    errors = []
    datadir = s.get("datadir") or ""
    if datadir:
        errors += _error_of(lambda: check_datadir(datadir))
    if s.get("joiners", "ist") not in JOINER_MODES:
        errors.append(f"galera_restore_joiners={s.get('joiners')!r} must be one of {', '.join(JOINER_MODES)}")
    backup_id = s.get("id") or ""
    if backup_id and not _manifest.valid_id(backup_id):
        errors.append(f"galera_restore_id={backup_id!r} is not a backup id (<cluster>_<node>_<UTC time>-<run>)")
    until = s.get("until") or ""
    if until:
        try:
            _binlog.parse_until(until)
        except ValueError as exc:
            errors.append(f"galera_restore_until: {exc}")
    source = s.get("source") or LOCAL
    stores = s.get("stores") or []
    if not isinstance(stores, list) or not all(isinstance(d, dict) for d in stores):
        errors.append("galera_restore_stores must be a list of destinations (the items of galera_backup_copies)")
        stores = []
    names = [d.get("name") for d in stores]
    if source != LOCAL and source not in names:
        errors.append(f"galera_restore_source={source!r} names no store: use 'local' (galera_restore_dir on each "
                      f"node) or the name of one of galera_restore_stores ({', '.join(map(str, names)) or 'none given'})")
    for variable, value in (("galera_restore_dir", s.get("dir")), ("galera_restore_work_dir", s.get("work_dir"))):
        if value:
            errors += _error_of(lambda value=value, variable=variable: _paths.check_dir_text(value, variable))
    for name in ("start_command", "stop_command", "bootstrap_command"):
        value = s.get(name)
        if value not in (None, "", []) and (not isinstance(value, list) or not value
                                            or not all(isinstance(p, str) and p and _paths.printable(p)
                                                       for p in value)):
            errors.append(f"galera_restore_{name} must be a list of strings (an argv, no shell), got {value!r}")
    first = s.get("first_node") or ""
    if first and hosts is not None and first not in hosts:
        errors.append(f"galera_restore_first_node={first!r} is not a host of the play ({', '.join(hosts)})")
    for name in ("timeout", "sync_timeout"):
        value = s.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            errors.append(f"galera_restore_{name} must be a positive number of seconds, got {value!r}")
    return [text.replace(" " + NOTHING, "").rstrip(".") for text in errors]


def check_datadir(path) -> str:
    """A data directory to restore: absolute, normalised, printable, not / nor a system directory."""
    return _restore.check_datadir_text(path)


def _error_of(check) -> list:
    try:
        check()
    except Exception as exc:  # GaleraError (or ValueError) from a check: its message
        return [getattr(exc, "msg", str(exc))]
    return []


# ---------------------------------------------------------------------------------------------
# Reading the nodes' inspections

def _server(fact: dict) -> dict:
    return fact.get("server") if isinstance(fact.get("server"), dict) else {}


def running(fact: dict) -> bool:
    """True when the node's server runs (it answers, or its pid file names a live process)."""
    server = _server(fact)
    return bool(server.get("reachable") or server.get("process_alive"))


def in_primary(fact: dict) -> bool:
    return _server(fact).get("cluster_status") == "Primary"


def synced(fact: dict) -> bool:
    server = _server(fact)
    return server.get("cluster_status") == "Primary" and server.get("local_state") == 4


def describe_node(host: str, fact: dict) -> str:
    server = _server(fact)
    if not fact:
        return f"{host}: no answer"
    if server.get("reachable"):
        return (f"{host}: running, {server.get('cluster_status') or 'no wsrep status'}, "
                f"{server.get('local_state_comment') or '?'}, size {server.get('cluster_size')}")
    if server.get("process_alive"):
        return f"{host}: a server process runs but does not answer ({server.get('error') or 'no connection'})"
    return f"{host}: stopped"


def backups_at(facts: dict, hosts: list) -> dict:
    """{backup id: dict(summary=..., hosts=[hosts whose source lists it])} over the nodes' inspections."""
    found = {}
    for host in hosts:
        source = (facts.get(host) or {}).get("source") or {}
        for summary in source.get("backups") or []:
            if isinstance(summary, dict) and summary.get("id"):
                entry = found.setdefault(summary["id"], dict(summary=summary, hosts=[]))
                entry["hosts"].append(host)
                if summary.get("restorable") and not entry["summary"].get("restorable"):
                    entry["summary"] = summary
    return found


def command_errors(facts: dict, needs: dict) -> list:
    """``needs``: ``{host: [actions]}`` the plan runs there (start, bootstrap, stop); the problems the
    hosts' inspections report for those commands (``_service.report``: not set, program not found)."""
    errors = []
    for host, actions in needs.items():
        report = (facts.get(host) or {}).get("commands") or {}
        for action in actions:
            problem = (report.get(action) or {}).get("problem")
            if problem:
                errors.append(f"{host} must {action} its server: {problem}")
    return errors


def source_errors(facts: dict, hosts: list) -> list:
    """Why the source could not be read, per host (an unreachable store, a wrong key file path...)."""
    return [f"{h} could not read the source: {((facts.get(h) or {}).get('source') or {}).get('error')}"
            for h in hosts if ((facts.get(h) or {}).get("source") or {}).get("error")]


def choose_backup(found: dict, backup_id: str, cluster: str, state_uuid: str | None = None, until: str = ""):
    """(entry of ``backups_at`` or None, error text or None). No ``backup_id``: the newest restorable
    physical backup of ``cluster`` (of ``state_uuid`` first when known); with ``until`` (a point-in-time
    target, ``galera_restore_until``) the newest of those that records its binlog position and lies
    before the target: finished at or before its time, or at or below its GTID's sequence number in
    that GTID's domain (``latest``: the newest with a binlog position)."""
    if backup_id:
        entry = found.get(backup_id)
        if entry is None:
            return None, (f"backup {backup_id} is not at the source (found: "
                          f"{', '.join(sorted(found)[-6:]) or 'none'})")
        return entry, None
    candidates = [e for e in found.values() if e["summary"].get("cluster") == cluster
                  and e["summary"].get("restorable") and e["summary"].get("method") in _catalog.PHYSICAL_METHODS]
    if state_uuid:
        same = [e for e in candidates if (e["summary"].get("position") or {}).get("cluster_uuid") == state_uuid]
        candidates = same or candidates
    if not candidates:
        names = sorted({str(e["summary"].get("cluster")) for e in found.values()})
        return None, (f"no restorable physical backup of cluster {cluster} at the source (backups there are of "
                      f"{', '.join(names) or 'no cluster'})")
    if until:
        before = [e for e in candidates if before_target(e["summary"], until)]
        if not before:
            oldest = min(candidates, key=_finished_key)["summary"]
            return None, (f"no restorable physical backup of cluster {cluster} at the source lies before "
                          f"galera_restore_until={until} with a binlog position to replay from (the oldest is "
                          f"{oldest['id']}, finished {oldest.get('finished_at')}, binlog position "
                          f"{(oldest.get('position') or {}).get('binlog_gtid') or 'none'}): choose an earlier "
                          "target, or a backup with galera_restore_id")
        candidates = before
    return max(candidates, key=_finished_key), None


def _finished_key(entry: dict) -> tuple:
    return (str(entry["summary"].get("finished_at") or ""), entry["summary"]["id"])


def before_target(summary: dict, until: str) -> bool:
    """Whether a backup (catalogue summary) can be rolled forward to ``until`` (``_binlog.parse_until``'s
    input): it records the GTID position to replay from, and that lies before the target."""
    gtid = (summary.get("position") or {}).get("binlog_gtid")
    try:
        position = _binlog.parse_gtid_list(gtid)
        target = _binlog.parse_until(until)
    except ValueError:
        return False
    if not position:
        return False
    if target["stop_time"]:
        finished = _binlog.parse_time(summary.get("finished_at"))
        return finished is not None and finished <= _binlog.parse_time(target["stop_time"])
    if target["stop_gtid"]:
        domain, _server, seq = (int(part) for part in target["stop_gtid"].split("-"))
        return domain in position and position[domain][1] <= seq
    return True


def backup_errors(summary: dict, cluster: str) -> list:
    """Why ``summary`` (a catalogue summary) cannot rebuild nodes of cluster ``cluster``; [] when it can."""
    errors = []
    backup_id = summary.get("id")
    if summary.get("cluster") != cluster:
        errors.append(f"backup {backup_id} is of cluster {summary.get('cluster')!r}, and these nodes are configured "
                      f"for cluster {cluster!r} (wsrep_cluster_name): restore a backup of this cluster, or give "
                      "galera_restore_cluster when the cluster was renamed")
    if not summary.get("restorable"):
        errors.append(f"backup {backup_id} cannot be restored: {summary.get('broken') or 'its chain is broken'}")
    if summary.get("method") not in _catalog.PHYSICAL_METHODS:
        errors.append(f"backup {backup_id} is a logical {summary.get('method')} dump: restore it into a running "
                      "cluster with dbtools.galera.restore_logical")
    position = summary.get("position") or {}
    if summary.get("method") in _catalog.PHYSICAL_METHODS and (not position.get("cluster_uuid")
                                                               or not isinstance(position.get("seqno"), int)):
        errors.append(f"backup {backup_id} records no Galera position (uuid:seqno): its nodes could not join by IST")
    return errors


def cluster_name_of(facts: dict, hosts: list, given: str = "") -> tuple:
    """(cluster name, error or None): ``given``, else the nodes' configured ``wsrep_cluster_name`` (one)."""
    if given:
        return given, None
    names = sorted({str(((facts.get(h) or {}).get("config") or {}).get("cluster_name")) for h in hosts
                    if (facts.get(h) or {}).get("config")})
    if len(names) == 1:
        return names[0], None
    if not names:
        return "", "no node reported its configuration (wsrep_cluster_name)"
    return names[0], (f"the nodes are configured for different clusters ({', '.join(names)}): they are not one "
                      "cluster; fix the inventory group")


# ---------------------------------------------------------------------------------------------
# Plans

def plan_cluster(facts: dict, hosts: list, s: dict) -> dict:
    """The whole-cluster restore: refusals (R2: never beside a running Primary component without the
    operator's confirmation naming the cluster), the backup, the first node, the joiners."""
    s = typed_settings(s)
    answered = [h for h in hosts if isinstance(facts.get(h), dict) and facts[h].get("config")]
    errors = [f"{h}: its inspection failed: {(facts.get(h) or {}).get('msg') or 'no result'}"
              for h in hosts if h not in answered]
    cluster, problem = cluster_name_of(facts, answered, s.get("cluster") or "")
    if problem:
        errors.append(problem)
    confirm = s.get("confirm") or ""
    primary = [h for h in answered if running(facts[h]) and in_primary(facts[h])]
    running_hosts = [h for h in answered if running(facts[h])]
    if confirm and confirm != cluster:
        errors.append(f"galera_restore_confirm={confirm!r} does not name this cluster ({cluster!r}): a disaster "
                      "restore needs the cluster's exact name")
    elif primary and confirm != cluster:
        errors.append(f"{', '.join(primary)} {'runs' if len(primary) == 1 else 'run'} a server in a Primary component "
                      f"of cluster {cluster}: a restore would start a second Primary component beside it. If the "
                      f"cluster is lost and its data must be replaced, confirm the disaster restore with "
                      f"galera_restore_confirm={cluster} (the restore then stops those servers, moves their data "
                      f"aside and rebuilds from the backup); to bring back one node, use dbtools.galera.rebuild_node")
    elif running_hosts and confirm != cluster:
        errors.append(f"{', '.join(running_hosts)} {'runs' if len(running_hosts) == 1 else 'run'} a server (not in a "
                      f"Primary component): stop {'it' if len(running_hosts) == 1 else 'them'} first, or confirm the "
                      f"disaster restore with galera_restore_confirm={cluster}")
    uuids = sorted({_server(facts[h]).get("cluster_state_uuid") for h in primary} - {None})
    found = backups_at(facts, answered)
    entry, problem = choose_backup(found, s.get("id") or "", cluster, uuids[0] if len(uuids) == 1 else None,
                                   until=s.get("until") or "")
    summary = entry["summary"] if entry else None
    if problem:
        errors.append(problem)
        errors += source_errors(facts, answered)
    elif summary is not None:
        errors += backup_errors(summary, cluster)
    holders = entry["hosts"] if entry else []
    first = s.get("first_node") or ""
    if not first:
        local = (s.get("source") or LOCAL) == LOCAL
        first = next((h for h in hosts if h in holders), hosts[0] if hosts else "") if local else (hosts[0] if hosts else "")
    joiners = [h for h in hosts if h != first]
    mode = s.get("joiners") or "ist"
    needing = [first] + (joiners if mode == "ist" else [])
    if entry and (s.get("source") or LOCAL) == LOCAL:
        lacking = [h for h in needing if h not in holders]
        if lacking:
            errors.append(f"backup {summary['id']} is not in {s.get('dir')} on {', '.join(lacking)} (it is on "
                          f"{', '.join(holders)}): copy it there, restore from a store (galera_restore_source), or "
                          f"let the joiners take a full SST (galera_restore_joiners=sst)")
    needs = {h: (["stop"] if h in running_hosts else []) + (["bootstrap"] if h == first else ["start"])
             for h in answered}
    errors += command_errors(facts, needs)
    state = "; ".join(describe_node(h, facts.get(h) or {}) for h in hosts)
    if errors:
        message = (f"Refused to restore cluster {cluster or '?'}; {NOTHING} " + " | ".join(errors) + f". Nodes: {state}.")
    else:
        position = summary.get("position") or {}
        message = (f"Restoring cluster {cluster} from backup {summary['id']} ({' > '.join(summary.get('chain') or [])}, "
                   f"{summary.get('method')}, finished {summary.get('finished_at')}"
                   f"{'; the newest before galera_restore_until=' + s['until'] if s.get('until') and not s.get('id') else ''}"
                   f") at Galera position "
                   f"{position.get('cluster_uuid')}:{position.get('seqno')}: {first} bootstraps, "
                   f"{', '.join(joiners) or 'no other node'} join{'s' if len(joiners) == 1 else ''} by "
                   f"{'IST from the same backup' if mode == 'ist' else 'full SST'}"
                   f"{'; stopping ' + ', '.join(running_hosts) + ' first (disaster restore confirmed)' if running_hosts else ''}. "
                   f"Nodes: {state}.")
    return dict(ok=not errors, errors=errors, message=message, cluster=cluster, backup=summary,
                first=first, joiners=joiners, joiners_mode=mode, needing=needing if not errors else [],
                stop=running_hosts if not errors else [], hosts=list(hosts))


def plan_rebuild(facts: dict, hosts: list, target: str, s: dict) -> dict:
    """One lost node brought back: the target must not run a server, the others must hold a Primary
    component with at least one Synced member; the newest backup of the cluster and whether the
    donors' gcache still holds what a node at its position lacks."""
    s = typed_settings(s)
    errors = []
    if target not in hosts:
        errors.append(f"galera_restore_node={target!r} is not a host of the play ({', '.join(hosts)})")
    for h in hosts:
        if not isinstance(facts.get(h), dict) or not facts[h].get("config"):
            errors.append(f"{h}: its inspection failed: {(facts.get(h) or {}).get('msg') or 'no result'}")
    fact = facts.get(target) or {}
    if running(fact):
        what = ("is a running member of the cluster" if in_primary(fact) and _server(fact).get("local_state") == 4
                else "runs a server")
        errors.append(f"{target} {what} ({describe_node(target, fact)}): rebuild_node only brings back a node whose "
                      "server is stopped. Stop it first if its data must be replaced")
    donors = [h for h in hosts if h != target and synced(facts.get(h) or {})]
    cluster, problem = cluster_name_of(facts, [h for h in hosts if (facts.get(h) or {}).get("config")],
                                       s.get("cluster") or "")
    if problem:
        errors.append(problem)
    if not donors:
        errors.append(f"no other node is Synced in a Primary component ({'; '.join(describe_node(h, facts.get(h) or {}) for h in hosts if h != target)}): "
                      "a node can only be rebuilt into a running cluster; to rebuild the whole cluster use "
                      "dbtools.galera.restore_cluster")
    uuids = sorted({_server(facts[h]).get("cluster_state_uuid") for h in donors} - {None})
    state_uuid = uuids[0] if len(uuids) == 1 else None
    found = backups_at(facts, [target])
    entry, problem = choose_backup(found, s.get("id") or "", cluster, state_uuid)
    summary = entry["summary"] if entry else None
    if problem:
        errors.append(problem + f" (read on {target})")
        errors += source_errors(facts, [target])
    elif summary is not None:
        errors += backup_errors(summary, cluster)
    ist = None
    mode = "sst" if s.get("joiners") == "sst" else "ist"
    if summary is not None and donors and not errors:
        ist = ist_verdict(summary, {h: _server(facts[h]) for h in donors}, state_uuid)
        if mode == "ist" and not ist["possible"]:
            if s.get("fresh_backup") and (s.get("source") or LOCAL) == LOCAL:
                errors.append(ist["message"] + ". galera_rebuild_fresh_backup needs galera_restore_source to name a "
                              "store of galera_backup_copies, so that the new backup of another node reaches "
                              f"{target}")
            elif s.get("fresh_backup"):
                mode = "fresh"
            elif s.get("allow_sst"):
                mode = "sst"
            else:
                errors.append(ist["message"] + ". Take a newer backup of another node first "
                              "(galera_rebuild_fresh_backup=true: under the lease and desync of any backup) or allow "
                              "a full SST from a donor (galera_restore_allow_sst=true)")
    errors += command_errors(facts, {target: ["start"]})
    state = "; ".join(describe_node(h, facts.get(h) or {}) for h in hosts)
    if errors:
        message = f"Refused to rebuild {target}; {NOTHING} " + " | ".join(errors) + f". Nodes: {state}."
    else:
        position = summary.get("position") or {}
        how = {"ist": "joins by IST (" + ist["message"] + ")",
               "sst": ("joins by full SST from a donor" + (" (" + ist["message"] + ")" if ist and not ist["possible"]
                                                           else " (galera_restore_joiners=sst)")),
               "fresh": "needs a newer backup first (" + ist["message"] + ")"}[mode]
        message = (f"Rebuilding {target} of cluster {cluster} from backup {summary['id']} at "
                   f"{position.get('cluster_uuid')}:{position.get('seqno')}: it {how}. Nodes: {state}.")
    return dict(ok=not errors, errors=errors, message=message, cluster=cluster, backup=summary, target=target,
                donors=donors, mode=mode, ist=ist, state_uuid=state_uuid,
                survivors=[h for h in hosts if h != target])


def ist_verdict(summary: dict, donors: dict, state_uuid: str | None) -> dict:
    """Whether a node at the backup's position can join by IST from one of ``donors`` ({host: server
    facts with ``cached_downto``, ``last_committed``, ``gcache_size``}).

    IST needs the same state uuid and a donor whose gcache starts at or before ``seqno + 1``."""
    position = summary.get("position") or {}
    seqno, uuid = position.get("seqno"), position.get("cluster_uuid")
    figures = {h: dict(cached_downto=d.get("cached_downto"), last_committed=d.get("last_committed"),
                       gcache_size=d.get("gcache_size")) for h, d in donors.items()}
    if state_uuid and uuid != state_uuid:
        return dict(possible=False, seqno=seqno, donors=figures, behind=None, missing=None,
                    message=(f"the backup is of state uuid {uuid}, the running cluster's is {state_uuid} (it was "
                             "bootstrapped anew since): no IST across histories"))
    good = [h for h, f in figures.items() if isinstance(f["cached_downto"], int) and 0 < f["cached_downto"] <= seqno + 1]
    last = max([f["last_committed"] for f in figures.values() if isinstance(f["last_committed"], int)] or [seqno])
    behind = max(last - seqno, 0)
    if good:
        best = min(good, key=lambda h: figures[h]["cached_downto"])
        return dict(possible=True, seqno=seqno, donors=figures, behind=behind, missing=0, donor=best,
                    message=(f"{behind} write-set{'s' if behind != 1 else ''} behind the cluster (seqno {seqno} of "
                             f"{last}); {best}'s gcache holds them from seqno {figures[best]['cached_downto']}"))
    lowest = min([f["cached_downto"] for f in figures.values() if isinstance(f["cached_downto"], int)
                  and f["cached_downto"] > 0] or [None], key=lambda v: v if v is not None else 0)
    sizes = sorted({_catalog.human_bytes(f["gcache_size"]) for f in figures.values() if f["gcache_size"]})
    missing = (lowest - seqno - 1) if isinstance(lowest, int) else None
    where = ", ".join(f"{h}: from {f['cached_downto']}" for h, f in sorted(figures.items()))
    return dict(possible=False, seqno=seqno, donors=figures, behind=behind, missing=missing,
                message=(f"the backup is at seqno {seqno}, {behind} write-sets behind the cluster (at {last}); the "
                         f"donors' gcache (gcache.size {', '.join(sizes) or 'unknown'}) holds write-sets only "
                         f"{'from seqno ' + str(lowest) if lowest else 'of no range'} on ({where}): "
                         f"{missing if missing is not None else 'an unknown number of'} write-sets the node would "
                         "need are gone, so IST is impossible"))


# ---------------------------------------------------------------------------------------------
# How a node joined

_SAVED = re.compile(r"Found saved state: ([0-9a-f-]{36}):(-?\d+)")
_SST_RECEIVED = re.compile(r"SST received: ([0-9a-f-]{36}):(-?\d+)")
_IST_RECEIVED = re.compile(r"IST received: ([0-9a-f-]{36}):(-?\d+)")
_IST_RANGE = re.compile(r"Receiving IST: (\d+) writesets, seqnos (-?\d+)-(-?\d+)")
_DONOR = re.compile(r"requested state transfer from '[^']*'\. Selected \d+\.\d+ \(([^)]*)\)")
_STARTING = re.compile(r"\[Note\] (?:Starting MariaDB|[^ ]*mysqld|[^ ]*mariadbd)[^\n]*? as process (\d+)")


_STAMP_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T]+(\d{1,2}):(\d{2}):(\d{2})", re.M)
_SYNCHRONIZED = re.compile(r"^(.*)Synchronized with group, ready for connections", re.M)


def _stamp_of(line: str):
    match = _STAMP_LINE.match(line)
    if not match:
        return None
    day, hour, minute, second = match.groups()
    try:
        return datetime.strptime(f"{day} {int(hour):02d}:{minute}:{second}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def join_seconds(text: str) -> int | None:
    """Seconds from the server's start to "Synchronized with group" in its own log (whole seconds: the
    log's resolution), or None when either line is missing."""
    first = _stamp_of(text or "")
    synced = _SYNCHRONIZED.search(text or "")
    last = _stamp_of(synced.group(0)) if synced else None
    if first is None or last is None:
        return None
    return max(int((last - first).total_seconds()), 0)


def last_start(text: str) -> str:
    """The part of an error log from the server's last start on ("Starting MariaDB ... as process N")."""
    starts = [m.start() for m in _STARTING.finditer(text or "")]
    if not starts:
        return text or ""
    return text[text.rfind("\n", 0, starts[-1]) + 1:]


def how_joined(text: str, position: dict | None = None) -> dict:
    """How a node got its state, from its error log since its start (``text``).

    ``method``: ``IST`` (its own position was kept and only write-sets were received: the SST step,
    when MariaDB runs one, received the node's own position back), ``SST`` (a donor's whole state
    arrived, possibly followed by an IST of what happened meanwhile), ``none`` (no state transfer was
    needed) or ``unknown`` (the log says neither). ``position`` (``cluster_uuid``, ``seqno``) is the
    position the restore wrote, used when the log has no "Found saved state" line.
    """
    text = text or ""
    saved = _SAVED.search(text)
    local = (saved.group(1), int(saved.group(2))) if saved else None
    if local is None and position and position.get("cluster_uuid") and isinstance(position.get("seqno"), int):
        local = (position["cluster_uuid"], position["seqno"])
    sst = _SST_RECEIVED.search(text)
    ist = _IST_RECEIVED.search(text)
    ranges = _IST_RANGE.findall(text)
    donor = _DONOR.search(text)
    out = dict(method="unknown", local_position=f"{local[0]}:{local[1]}" if local else None, writesets=None,
               seqnos=None, donor=donor.group(1) if donor else None, evidence=[], log_seconds=join_seconds(text))
    if ranges:
        count, first, last = ranges[-1]
        out.update(writesets=int(count), seqnos=f"{first}-{last}")
    if sst:
        received = (sst.group(1), int(sst.group(2)))
        out["evidence"].append(sst.group(0))
        if local is not None and received == local and local[1] >= 0:
            out["method"] = "IST"
            if ist:
                out["evidence"].append(ist.group(0))
        else:
            out["method"] = "SST"
            out["sst_position"] = f"{received[0]}:{received[1]}"
        return out
    if ist or ranges:
        out["method"] = "IST"
        out["evidence"].append(ist.group(0) if ist else f"Receiving IST: {ranges[-1][0]} writesets")
        return out
    if "State transfer required" not in text and ("synced with group" in text or "Synchronized with group" in text):
        out["method"] = "none"
        out["evidence"].append("no state transfer was required")
    return out


# ---------------------------------------------------------------------------------------------
# Verification

def table_verdict(expected: list, recorded: dict, nodes: dict, skip=(), ignore_schemas=()) -> dict:
    """Judge every node's tables against the backup.

    ``expected``: [[schema, table, ...]] the backup held (its tables.json); ``recorded``: the manifest's
    ``verify.checksums`` ({"schema.table": dict(schema, table, checksum, rows)}); ``nodes``: {host:
    dict(tables=[[schema, table]], checksums={"schema.table": dict(checksum, rows)})}; ``skip``: keys a
    restore changes by design (the lease table), compared between the nodes only; ``ignore_schemas``:
    schemas left out altogether (a logical load never loads the collection's own lease schema).

    Returns ``dict(ok, missing={host: [tables]}, mismatched=[dict(table, node, checksum, expected)],
    differ=[tables whose nodes disagree], compared_recorded, compared_nodes, skipped, message)``.
    """
    skip = set(skip)
    ignored = set(ignore_schemas)
    recorded = {k: v for k, v in (recorded or {}).items()
                if not (isinstance(v, dict) and str(v.get("schema")) in ignored) and k.split(".", 1)[0] not in ignored}
    expected = [t for t in expected or [] if str(t[0]) not in ignored]
    nodes = {h: dict(got, checksums={k: v for k, v in (got.get("checksums") or {}).items()
                                     if k.split(".", 1)[0] not in ignored}) for h, got in nodes.items()}
    missing = {}
    for host, got in sorted(nodes.items()):
        present = {(str(s), str(t)) for s, t, *_rest in got.get("tables") or []}
        lost = [f"{s}.{t}" for s, t, *_rest in expected or [] if (str(s), str(t)) not in present]
        if lost:
            missing[host] = lost
    mismatched, differ = [], []
    keys = sorted(set().union(*[set((got.get("checksums") or {}).keys()) for got in nodes.values()]) if nodes else set())
    compared_recorded = 0
    for key in keys:
        values = {host: (got.get("checksums") or {}).get(key) for host, got in nodes.items()}
        figures = {host: (v or {}).get("checksum") for host, v in values.items()}
        if len(set(figures.values())) > 1:
            differ.append(key)
        want = (recorded or {}).get(key)
        if want is None or key in skip:
            continue
        compared_recorded += 1
        for host, figure in sorted(figures.items()):
            if figure != want.get("checksum"):
                mismatched.append(dict(table=key, node=host, checksum=figure, expected=want.get("checksum"),
                                       rows=(values[host] or {}).get("rows"), expected_rows=want.get("rows")))
    not_checked = sorted(set(recorded or {}) - set(keys))
    ok = not missing and not mismatched and not differ and not not_checked
    parts = []
    if missing:
        parts.append("missing tables: " + "; ".join(f"{h}: {', '.join(t[:10])}" for h, t in missing.items()))
    if mismatched:
        parts.append("checksums differ from the backup's: " + ", ".join(
            f"{m['table']} on {m['node']} ({m['checksum']} != {m['expected']})" for m in mismatched[:10]))
    if differ:
        parts.append("the nodes disagree on " + ", ".join(differ[:10]))
    if not_checked:
        parts.append("recorded but not checksummed here: " + ", ".join(not_checked[:10]))
    if not ok:
        message = "verification failed: " + "; ".join(parts)
    else:
        said = []
        if expected:
            said.append(f"{len(expected)} tables of the backup present on {len(nodes)} node{'s' if len(nodes) != 1 else ''}")
        if compared_recorded:
            said.append(f"{compared_recorded} checksum{'s' if compared_recorded != 1 else ''} equal to the backup's "
                        "restore verification on every node")
        others = len(keys) - compared_recorded
        if others:
            said.append(f"{others} {'more ' if compared_recorded else ''}table checksum{'s' if others != 1 else ''} "
                        "equal across the nodes")
        cleared = sorted(skip & set(keys) & set(recorded))
        if cleared:
            said.append(f"{', '.join(cleared)} changed by the restore (the backup's lease row was cleared)")
        if expected and not recorded:
            said.append("the backup recorded no checksums (galera_backup_verify=restore records them): the nodes "
                        "were compared with each other only")
        message = "; ".join(said) or "nothing to compare"
    return dict(ok=ok, missing=missing, mismatched=mismatched, differ=differ, compared_recorded=compared_recorded,
                compared_nodes=len(keys), skipped=sorted(skip & set(keys)), not_checked=not_checked, message=message)


def lease_keys(database: str) -> list:
    """The verification keys of the tables a restore changes by design."""
    return [f"{database}.{LEASE_TABLE}"]


# ---------------------------------------------------------------------------------------------
# The drill's record

def drill_record(cluster: str, result: str, started_at: str, finished_at: str, duration: float, host: str,
                 backup: dict | None, verify: dict | None = None, error: str | None = None,
                 step: str | None = None, source: str | None = None, phases: dict | None = None) -> dict:
    """What a restore drill writes (``drill-<cluster>.json``), read by ``_catalog.drill_freshness``."""
    backup = backup or {}
    position = backup.get("position") or {}
    return dict(format=_catalog.DRILL_FORMAT, kind=_catalog.DRILL_KIND, cluster=cluster, result=result,
                started_at=started_at, finished_at=finished_at, duration_seconds=round(float(duration), 1),
                host=host, source=source, step=step, error=(str(error)[:2000] if error else None),
                backup=dict(id=backup.get("id"), finished_at=backup.get("finished_at"),
                            chain=list(backup.get("chain") or []), method=backup.get("method"),
                            position=dict(cluster_uuid=position.get("cluster_uuid"), seqno=position.get("seqno")))
                if backup else None,
                verify=verify or None, phases=phases or {})

"""The soak's judgements (pure): the ledger of published backups, leftovers, health, a run's outcome.

Nothing here touches the cluster: the driver observes, these functions decide, so each rule is unit-tested
(tests/unit/test_soak.py) against the cases the soak meets. Each rule is the soak's own, written from the
contract (docs/safety.md), not from the product's code: a bug in the product must not hide in its checker.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

ID_TIME = re.compile(r"_(\d{8}T\d{6}Z)(?:-([0-9a-f]{8}))?$")


def id_time(backup_id: str) -> datetime | None:
    match = ID_TIME.search(backup_id or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def id_epoch(backup_id: str) -> float | None:
    moment = id_time(backup_id)
    return moment.timestamp() if moment else None


# ---------------------------------------------------------------------------------------------
# The ledger

class Ledger:
    """What was published, where, and what retention was allowed to remove.

    Retention keeps, in each node's backup directory, the newest ``retention`` backups and every backup
    of their chains; it runs only after a backup was published in that directory. A published backup may
    disappear only then and only when it is none of those. Anything else that disappears is a violation.
    """

    def __init__(self, retention: int):
        self.retention = retention
        self.published = {}   # id -> dict(node, cycle, chain, type, method, encrypted, started_at)
        self.present = {}     # node -> {id: summary}
        self.removed = {}     # id -> cycle (by retention, allowed)
        self.lost = {}        # id -> cycle (disappeared though it had to be kept)

    def keep_set(self, backups: dict) -> set:
        """The ids retention must keep among ``backups`` ({id: summary}): the newest ``retention`` and their chains."""
        newest = sorted(backups, key=lambda i: (sort_time(backups[i], i), i), reverse=True)[: self.retention]
        keep = set(newest)
        for backup_id in newest:
            keep.update(backups[backup_id].get("chain") or [])
        return keep

    def observe(self, cycle: int, node: str, listing: dict) -> dict:
        """Record the complete backups ``listing`` ({id: manifest summary}) seen on ``node`` after ``cycle``.

        Returns ``dict(new=[ids], removed=[ids], violations=[texts])``.
        """
        before = self.present.get(node, {})
        new = sorted(set(listing) - set(before))
        gone = sorted(set(before) - set(listing))
        violations = []
        for backup_id in new:
            if backup_id in self.removed or backup_id in self.lost:
                violations.append(f"{node}: {backup_id} reappeared after it was gone")
            self.published[backup_id] = dict(listing[backup_id], node=node, cycle=cycle)
        if gone:
            keep = self.keep_set({**before, **listing})
            for backup_id in gone:
                if not new:
                    violations.append(f"{node}: published backup {backup_id} disappeared in a cycle that published "
                                      f"nothing on {node} (retention runs only after a new backup there)")
                    self.lost[backup_id] = cycle
                elif backup_id in keep:
                    violations.append(f"{node}: published backup {backup_id} disappeared though retention "
                                      f"(keep {self.retention}) had to keep it (newest {self.retention} or their chains)")
                    self.lost[backup_id] = cycle
                else:
                    self.removed[backup_id] = cycle
        self.present[node] = dict(listing)
        return dict(new=new, removed=[g for g in gone if g in self.removed and self.removed[g] == cycle],
                    violations=violations)

    def summary(self) -> dict:
        return dict(published=len(self.published), removed_by_retention=len(self.removed), lost=sorted(self.lost),
                    present={n: sorted(ids) for n, ids in self.present.items()})


def sort_time(summary: dict, backup_id: str) -> str:
    """A sortable time of a backup: the manifest's start, else the id's."""
    started = (summary or {}).get("started_at")
    if started:
        return str(started)
    moment = id_time(backup_id)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


# ---------------------------------------------------------------------------------------------
# Leftovers

SECRET_KINDS = ("option_file", "key_file", "login_dir")


def leftover_violations(cycle: int, node: str, leftovers: list, later_starts: dict, margin: float = 0) -> list:
    """What of ``leftovers`` on ``node`` at the end of ``cycle`` breaks the rule.

    ``leftovers``: dicts ``kind`` (partial, verify_copy, run_dir, option_file, key_file, login_dir), ``name``,
    ``cycle`` (the cycle that made it, or None when unknown), ``alive`` (its run's process still runs).
    ``mtime`` (when it last changed, epoch), ``alive`` (its run's process still runs).
    ``later_starts``: {node: [(cycle, moment) of each run that reached its start step (which sweeps) on that node]}.
    ``margin``: the product sweeps a dead run's leftover only once it is older than this (the lease TTL: a run whose
    lease expired less than that ago may still have a controller coming to read it; docs/backup.md).

    - an option file, key file or login scratch directory (they hold the password or the key) must not
      outlive its run: one from an earlier cycle is a violation wherever it is;
    - a partial backup, a verification copy or a run directory of an earlier cycle's dead run is a
      violation once a later run on the same node reached its start step (where dead runs are swept) more than
      ``margin`` after the leftover last changed;
    - anything whose cycle cannot be told, and whose run is dead, is a violation (it cannot be proven recent).
    """
    out = []
    for item in leftovers:
        made = item.get("cycle")
        if item.get("alive"):
            out.append(f"{node}: {item['kind']} {item['name']} belongs to a run still alive after the cycle ended")
            continue
        if made is None:
            out.append(f"{node}: {item['kind']} {item['name']} of no known cycle is left")
            continue
        if made >= cycle:
            continue
        if item["kind"] in SECRET_KINDS:
            out.append(f"{node}: {item['kind']} {item['name']} of cycle {made} outlived its run")
            continue
        changed = item.get("mtime")
        swept_by = [c for c, moment in later_starts.get(node, []) if made < c <= cycle
                    and (moment is None or changed is None or moment - changed > margin)]
        if swept_by:
            out.append(f"{node}: {item['kind']} {item['name']} of cycle {made} is still there after the run of cycle "
                       f"{swept_by[0]} started on {node} (dead runs' leftovers older than {margin:g} s are swept at start)")
    return out


def cycle_of(moment: float | None, starts: list) -> int | None:
    """The cycle (1-based index into ``starts``, the cycles' start times) during which ``moment`` fell."""
    if moment is None or not starts or moment < starts[0][1] - 5:
        return None
    found = None
    for index, started in starts:
        if moment >= started - 5:  # the node's clock and the id's whole seconds: a few seconds of slack
            found = index
    return found


# ---------------------------------------------------------------------------------------------
# Health

def unhealthy(nodes: dict, lease: dict | None, size: int = 3) -> list:
    """Why the cluster is not whole: every node Synced, Primary, ready, in one component of ``size``, with
    wsrep_desync OFF, and no live lease. ``nodes``: {name: status dict or None (unreachable)}."""
    out = []
    confs = set()
    for name, st in sorted(nodes.items()):
        if not st:
            out.append(f"{name} unreachable")
            continue
        if st.get("wsrep_local_state_comment") != "Synced":
            out.append(f"{name} is {st.get('wsrep_local_state_comment')}")
        if st.get("wsrep_cluster_status") != "Primary":
            out.append(f"{name} is in a {st.get('wsrep_cluster_status')} component")
        if str(st.get("wsrep_ready")) != "ON":
            out.append(f"{name} not ready")
        if str(st.get("wsrep_cluster_size")) != str(size):
            out.append(f"{name} sees {st.get('wsrep_cluster_size')} members")
        if str(st.get("wsrep_desync")) in ("ON", "1"):
            out.append(f"{name} has wsrep_desync=ON")
        confs.add(st.get("wsrep_cluster_state_uuid"))
    if len(confs) > 1:
        out.append(f"the nodes are in {len(confs)} clusters")
    if lease and not lease.get("expired"):
        out.append(f"a live lease: node {lease.get('node')} owner {lease.get('owner')}")
    return out


def desynced_nodes(nodes: dict) -> list:
    return sorted(n for n, st in nodes.items() if st and str(st.get("wsrep_desync")) in ("ON", "1"))


# ---------------------------------------------------------------------------------------------
# A run's outcome, from its output

FAILED = re.compile(r"(?:fatal|failed): \[([^\]]+)\]: FAILED! => ")
TASK = re.compile(r"^TASK \[(?:[^:\]]+ : )?(.+?)\] \*+", re.M)
PUBLISHED = re.compile(r"Backup (\S+) \(")
# One task desyncs the node and starts the run: it fails with ``desync.changed`` when the desync happened and
# the start did not.
START_TASK = "Desync the node under the cluster-wide lease and start the backup run (tool, checksums, verification)"
FINAL_TASK = "Fail the play"  # the role's last word on a failed run ("... now that the node is back")


def failures(output: str) -> list:
    """The failed tasks of an ansible-playbook output: ``[(task, host, result dict)]`` in order."""
    out = []
    tasks = [(m.start(), m.group(1)) for m in TASK.finditer(output)]
    decoder = json.JSONDecoder()
    for match in FAILED.finditer(output):
        task = next((name for at, name in reversed(tasks) if at < match.start()), None)
        try:
            result, _end = decoder.raw_decode(output[match.end():])
        except ValueError:
            result = dict(msg=output[match.end():match.end() + 400])
        out.append((task, match.group(1), result if isinstance(result, dict) else dict(msg=str(result))))
    return out


def task_results(output: str, task: str) -> list:
    """The ``ok``/``changed``/``fatal``/``skipping`` lines of one task: ``[(status, host)]``."""
    out = []
    for match in TASK.finditer(output):
        if match.group(1) != task:
            continue
        end = output.find("\nTASK [", match.end())
        body = output[match.end(): end if end >= 0 else len(output)]
        out.extend(re.findall(r"^(ok|changed|fatal|skipping|failed): \[([^\]]+)\]", body, re.M))
    return out


def outcome(rc: int | None, output: str, killed: bool) -> dict:
    """What a run did: ``kind`` published / refused / failed / killed, its ``reason`` (short) and ``message``."""
    published = PUBLISHED.findall(output)
    failed = failures(output)
    started = [host for status, host in task_results(output, START_TASK) if status == "changed"]
    desynced = bool(started) or any(task == START_TASK and (result.get("desync") or {}).get("changed")
                                    for task, _host, result in failed)
    message = ""
    for task, _host, result in failed:
        message = " ".join(str(result.get("msg") or "").split())
        if (task or "").startswith(FINAL_TASK) or not message:
            continue
        break
    final = next((" ".join(str(r.get("msg") or "").split()) for t, _h, r in reversed(failed)
                  if (t or "").startswith(FINAL_TASK)), "")
    out = dict(rc=rc, published=published[-1] if published else None, desynced=desynced, started=started,
               message=(final or message)[:2000])
    if killed:
        out.update(kind="killed", reason="controller killed" + (" after the desync" if desynced else ""))
    elif rc == 0 and published:
        out.update(kind="published", reason="")
    elif rc == 0:
        out.update(kind="anomaly", reason="the play succeeded without publishing a backup")
    elif not desynced:
        out.update(kind="refused", reason=reason(message or final))
    else:
        out.update(kind="failed", reason=reason(final or message))
    return out


REASONS = (
    ("ended without a result", "the runner ended without a result"),
    ("(killed?)", "the runner ended without a result"),
    ("another desync holds", "the lease is held by another run"),
    ("another owner acquired the desync lease", "lost the race for the lease"),
    ("desync lease is taken", "the lease is held by another run"),
    ("already desynced", "the node is already desynced"),
    ("has wsrep_desync=ON", "a member is desynced by someone else"),
    ("guard: the cluster shrank", "watchdog guard: the cluster shrank"),
    ("the cluster shrank", "watchdog guard: the cluster shrank"),
    ("guard:", "watchdog guard"),
    ("no longer desynced", "someone set wsrep_desync=OFF during the backup"),
    ("lease is no longer this run", "the lease changed hands during the backup"),
    ("No space left", "the backup directory is full"),
    ("free, but the backup needs", "not enough free space (pre-flight)"),
    ("not in a Primary component", "a member is not in the Primary component"),
    ("not Synced", "a member is not Synced"),
    ("members, 3 expected", "the cluster is not whole"),
    ("sees 2 members", "the cluster is not whole"),
    ("unreachable", "a host is unreachable"),
    ("WSREP has not yet prepared", "the node is not in the Primary component"),
    ("Lost connection", "lost the connection to the node"),
    ("Can't connect", "cannot connect to the node"),
    ("cannot connect", "cannot connect to the node"),
    ("killed", "the backup tool was killed"),
    ("signal", "the backup tool was killed"),
    ("exited with", "the backup tool failed"),
)


def reason(message: str) -> str:
    """A short reason for the table, from a failure message (the message itself is kept beside it)."""
    text = message or ""
    for needle, short in REASONS:
        if needle in text:
            return short
    return (text[:90] + "...") if len(text) > 90 else text


# ---------------------------------------------------------------------------------------------
# Secrets

def secret_hits(texts: dict, secrets: dict) -> list:
    """``[(where, secret name)]`` for each text in ``texts`` ({where: str}) that holds a secret ({name: value})."""
    out = []
    for where, text in texts.items():
        for name, value in secrets.items():
            if value and value in (text or ""):
                out.append((where, name))
    return out

"""The soak's own restore check of the newest restorable backup (every k-th cycle).

The product's ``dbtools.galera.galera_restore`` puts the backup (with its incremental chain) into an empty
directory on the node, as an operator would; then the soak starts a throwaway server on it (no network,
wsrep off, grant tables skipped) and checks what must hold of any backup taken under this soak: every
sysbench table passes CHECK TABLE, every write the soak's ticker had acknowledged before that cycle is
there and none of a later cycle, the tables the manifest checksummed at backup
time (verify=restore) have the same CHECKSUM TABLE now, and the soak's marks (one row written at the start
of each cycle) hold exactly those written up to the cycle that took the backup: nothing lost, nothing later.
The newest restorable backup is the newest physical one: galera_restore does not restore logical dumps,
which are checked with their checksums every cycle and by the product's restore test when drawn.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

from cluster import node_exec

SCRATCH = "/var/tmp/soak-restore"
SOCKET = SCRATCH + "/server.sock"


def _playbook(path: str, node: str, backup_dir: str, backup_id: str, encrypted: bool) -> None:
    key = '\n        encrypt_key: "{{ galera_backup_encrypt_key }}"' if encrypted else ""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"""---
- name: Soak restore check
  hosts: {node}
  gather_facts: false
  tasks:
    - name: Restore the backup and its chain into an empty directory
      dbtools.galera.galera_restore:
        path: {backup_dir}
        id: {backup_id}
        datadir: {SCRATCH}/data
        owner: mysql{key}
""")


def server_sql(node: str, query: str) -> list:
    done = node_exec(node, "mariadb", "--no-defaults", f"--socket={SOCKET}", "--user=root", "-N", "-B", "-e", query,
                     check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"restored copy: {query[:60]!r}: {done.stderr.strip()[-300:]}")
    return [line.split("\t") for line in done.stdout.splitlines()]


def verify(node: str, backup_dir: str, backup_id: str, summary: dict, marks_then: list, acked_before: dict,
           inventory: str, secrets_file: str, env: dict, log_path: str) -> dict:
    """Restore ``backup_id`` of ``node`` and check it; ``marks_then``: the soak's marks written before the
    backup was taken (the cycles up to the one that made it); ``acked_before``: {cycle: acknowledged ticks}
    of the cycles before that one. Returns ``dict(ok, problems, seconds, ...)``."""
    started = time.time()
    problems = []
    out = dict(node=node, id=backup_id, cycle_made=marks_then[-1] if marks_then else None, method=summary.get("method"), type=summary.get("type"),
               encrypted=summary.get("encrypted"))
    node_exec(node, "rm", "-rf", SCRATCH, check=False)
    node_exec(node, "install", "-d", "-o", "mysql", "-g", "mysql", "-m", "0700", SCRATCH)
    work = tempfile.mkdtemp(prefix="soak-restore.")
    try:
        playbook = os.path.join(work, "restore.yml")
        _playbook(playbook, node, backup_dir, backup_id, bool(summary.get("encrypted")))
        with open(log_path, "w", encoding="utf-8") as log:
            rc = subprocess.run(["ansible-playbook", "-i", inventory, playbook, "-e", f"@{secrets_file}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, check=False, timeout=1200).returncode
        if rc != 0:
            problems.append(f"galera_restore failed (rc {rc}; see {os.path.basename(log_path)})")
            return dict(out, ok=False, problems=problems, seconds=round(time.time() - started, 1))
        server = ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={SCRATCH}/data", f"--socket={SOCKET}",
                  "--skip-networking", f"--pid-file={SCRATCH}/server.pid", f"--log-error={SCRATCH}/server.err",
                  "--innodb-buffer-pool-size=64M", "--skip-log-bin", "--wsrep-on=OFF", "--skip-grant-tables",
                  "--skip-slave-start"]
        subprocess.run(["docker", "exec", "-d", node, *server], check=True, capture_output=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                server_sql(node, "SELECT 1")
                break
            except RuntimeError:
                time.sleep(1)
        else:
            err = node_exec(node, "tail", "-n", "20", f"{SCRATCH}/server.err", check=False).stdout
            problems.append(f"the restored copy's server did not start: {err[-500:]}")
            return dict(out, ok=False, problems=problems, seconds=round(time.time() - started, 1))
        for table in ("sbtest1", "sbtest2", "sbtest3", "sbtest4"):
            check = server_sql(node, f"CHECK TABLE sbtest.{table}")
            if not check or check[-1][-1] != "OK":
                problems.append(f"CHECK TABLE sbtest.{table}: {check}")
        marks = [int(r[0]) for r in server_sql(node, "SELECT cycle FROM soak.marks ORDER BY cycle")]
        out["marks"] = f"{marks[0]}..{marks[-1]} ({len(marks)})" if marks else "none"
        if marks != list(marks_then):
            problems.append(f"soak.marks holds cycles {marks}, not those written before the backup: {marks_then}")
        held = {}
        for cycle, seq in server_sql(node, "SELECT cycle, seq FROM soak.ticks"):
            held.setdefault(int(cycle), set()).add(int(seq))
        for cycle, acked in acked_before.items():
            missing = set(acked) - held.get(cycle, set())
            if missing:
                problems.append(f"{len(missing)} writes acknowledged in cycle {cycle}, before the backup, are missing")
        later = sorted(c for c in held if marks_then and c > marks_then[-1])
        if later:
            problems.append(f"the copy holds writes of later cycles {later}")
        out["ticks_checked"] = sum(len(a) for a in acked_before.values())
        recorded = summary.get("checksums") or {}
        compared = 0
        for entry in recorded.values():
            schema, table = entry.get("schema"), entry.get("table")
            if schema not in ("sbtest", "soak"):
                continue
            now = server_sql(node, f"CHECKSUM TABLE `{schema}`.`{table}` EXTENDED")[0][1]
            compared += 1
            if str(now) != str(entry.get("checksum")):
                problems.append(f"{schema}.{table}: CHECKSUM TABLE {now}, the manifest recorded {entry.get('checksum')}")
        out["checksums_compared"] = compared
    finally:
        node_exec(node, "sh", "-c", f"test -S {SOCKET} && mariadb-admin --no-defaults --socket={SOCKET} --user=root "
                  "shutdown; true", check=False, timeout=300)
        for _attempt in range(60):
            if node_exec(node, "test", "-e", f"{SCRATCH}/server.pid", check=False).returncode != 0:
                break
            time.sleep(1)
        node_exec(node, "rm", "-rf", SCRATCH, check=False)
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
    out.update(ok=not problems, problems=problems, seconds=round(time.time() - started, 1))
    return out


def pick(ledger_present: dict, published: dict) -> tuple | None:
    """The newest physical backup present on any node: (node, id, summary), or None."""
    best = None
    for node, ids in ledger_present.items():
        for backup_id, summary in ids.items():
            if summary.get("method") not in ("mariabackup", "xtrabackup"):
                continue
            key = (summary.get("started_at") or "", backup_id)
            if best is None or key > best[0]:
                best = (key, node, backup_id, dict(summary, cycle=published.get(backup_id, {}).get("cycle")))
    return None if best is None else best[1:]


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True)

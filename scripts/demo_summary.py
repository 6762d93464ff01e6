"""The short report at the end of scripts/demo, read from the demo's full log.

The log is the output of ``molecule converge -s default`` with the ``ansible.posix.profile_tasks``
callback (every task header is followed by a timestamp line whose last figure is the time since the
playbook started). From it:

- the backup: the role's "Report the backup" message (id, type, method, size, verification, flow
  control sent while desynced) and the node it ran on;
- how long the node was out of sync: from the end of "Desync the node under the cluster-wide lease"
  (wsrep_desync=ON) to the end of the finish step that resyncs it ("Drain the receive queue, resync the
  node and wait for Synced; publish ..."; an upper bound: the publish after Synced counts);
- the write rate: sysbench's 2-second intervals ("Print the write rate") placed on the same clock by the
  start of the task that started sysbench, averaged before the desync and while desynced.

Usage: demo_summary.py LOG   (exit status 1, with the reason, when the log holds no finished backup)
"""

from __future__ import annotations

import os
import re
import sys
import textwrap

import yaml

TASK = re.compile(r"^TASK \[(?:[^\]]*? : )?(?P<name>.*)\] \*+\s*$")
STAMP = re.compile(r"^\w+ \d{2} \w+ \d{4} +\d{2}:\d{2}:\d{2} [+-]\d{4} \(\d+:\d{2}:\d{2}\.\d{3}\) +"
                   r"(?P<total>\d+):(?P<m>\d{2}):(?P<s>\d{2}\.\d{3}) \*+\s*$")
RESULT = re.compile(r"^(?P<status>ok|changed|fatal): \[(?P<host>[^\]]+)\]")
REPORT = re.compile(
    r"Backup (?P<id>\S+) \((?P<type>\w+)(?: on \S+)?, (?P<method>[\w-]+), (?P<size>[\d.]+ \w+)(?P<encrypted>, encrypted)?, "
    r"verified: (?P<verify>\w+)\) at \S+; (?P<tool>[\d.]+) s in the tool, (?P<drain>[\d.]+|None) s draining, "
    r"(?P<sync>[\d.]+|None) s to Synced, flow control sent while desynced: (?P<fc>\S+?)\.?$")
INTERVAL = re.compile(r"^\s*-\s*['\"]?(?P<t>\d+)s (?P<tps>[\d.]+) tps['\"]?\s*$")

DESYNC_TASK = "Desync the node under the cluster-wide lease and start the backup run (tool, checksums, verification)"
DESYNC_TASK_BEFORE = "Desync the node under the cluster-wide lease"  # 0.3.0: the desync was a task of its own
RESYNC_TASK = "Drain the receive queue, resync the node and wait for Synced; publish the verified backup or discard the run"
# The resync task's name before 0.4.0 (its own task then): logs of older runs still read.
RESYNC_TASK_BEFORE = "Drain the receive queue, resync the node and wait for Synced"
SYSBENCH_TASK = "Run sysbench oltp_write_only in the background during the backup"
REPORT_TASK = "Report the backup"
RATE_TASK = "Print the write rate (tps every 2 s) while the backup ran"


class NoBackup(Exception):
    """The log does not show a finished backup."""


def tasks(lines: list) -> list:
    """Every task of the log in order: dict(name, start (s since the playbook started), lines of its output)."""
    out = []
    for i, line in enumerate(lines):
        match = TASK.match(line)
        if not match:
            if out:
                out[-1]["lines"].append(line)
            continue
        start = None
        if i + 1 < len(lines):
            stamp = STAMP.match(lines[i + 1])
            if stamp:
                start = int(stamp["total"]) * 3600 + int(stamp["m"]) * 60 + float(stamp["s"])
        out.append(dict(name=match["name"], start=start, lines=[]))
    return out


def end_of(all_tasks: list, name: str) -> float | None:
    """When the last task called ``name`` ended: the start of the task after it."""
    for i in range(len(all_tasks) - 1, -1, -1):
        if all_tasks[i]["name"] == name:
            return all_tasks[i + 1]["start"] if i + 1 < len(all_tasks) else None
    return None


def start_of(all_tasks: list, name: str) -> float | None:
    found = [t["start"] for t in all_tasks if t["name"] == name]
    return found[-1] if found else None


def result_blocks(task: dict) -> list:
    """(status, host, parsed YAML body) of each host result printed under a task."""
    blocks, current = [], None
    for line in task["lines"]:
        match = RESULT.match(line)
        if match:
            current = [match["status"], match["host"], []]
            blocks.append(current)
            rest = line[match.end():].strip()
            if rest.startswith("=>") and rest[2:].strip():
                current[2].append(rest[2:].strip())
        elif current is not None and (line.startswith(" ") or not line.strip()):
            current[2].append(line)
        else:
            current = None
    out = []
    for status, host, body in blocks:
        text = textwrap.dedent("\n".join(body)).strip()
        try:
            parsed = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            parsed = text
        out.append((status, host, parsed))
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summary(text: str) -> dict:
    lines = ANSI.sub("", text).splitlines()
    all_tasks = tasks(lines)
    report = None
    for task in all_tasks:
        if task["name"] != REPORT_TASK:
            continue
        for status, host, body in result_blocks(task):
            msg = body.get("msg") if isinstance(body, dict) else None
            if status == "ok" and isinstance(msg, str):
                found = REPORT.search(" ".join(msg.split()))
                if found:
                    report = dict(found.groupdict(), node=host)
    if report is None:
        raise NoBackup("the log shows no finished backup (no 'Report the backup' message)")

    desynced_at = end_of(all_tasks, DESYNC_TASK)
    if desynced_at is None:
        desynced_at = end_of(all_tasks, DESYNC_TASK_BEFORE)
    synced_at = end_of(all_tasks, RESYNC_TASK)
    if synced_at is None:
        synced_at = end_of(all_tasks, RESYNC_TASK_BEFORE)
    load_start = start_of(all_tasks, SYSBENCH_TASK)
    intervals = []
    for task in all_tasks:
        if task["name"] == RATE_TASK:
            intervals = [(int(m["t"]), float(m["tps"])) for m in map(INTERVAL.match, task["lines"]) if m]
    before = during = None
    if None not in (desynced_at, synced_at, load_start) and intervals:
        # sysbench's interval ending at t seconds covers [t - 2, t] after the load started.
        pre = [tps for t, tps in intervals if load_start + t <= desynced_at]
        mid = [tps for t, tps in intervals if load_start + t - 2 >= desynced_at and load_start + t <= synced_at]
        before = sum(pre) / len(pre) if pre else None
        during = sum(mid) / len(mid) if mid else None
    return dict(report, desynced_seconds=None if None in (desynced_at, synced_at) else round(synced_at - desynced_at, 1),
                tps_before=before, tps_during=during,
                tps_percent=round(100.0 * during / before) if before and during is not None else None)


def render(s: dict) -> str:
    fc = s["fc"]
    rate = "n/a (no sysbench interval fell before and during the desync)"
    if s["tps_percent"] is not None:
        rate = (f"{s['tps_during']:.0f} tps while desynced vs {s['tps_before']:.0f} tps before: "
                f"{s['tps_percent']} % of the rate before the backup")
    seconds = "unknown" if s["desynced_seconds"] is None else f"{s['desynced_seconds']} s"
    shared = (f"\n                 (the three nodes, sysbench and the backup share this machine's {os.cpu_count()} CPUs)"
              if s["tps_percent"] is not None and s["tps_percent"] < 90 and s["fc"] == "0" else "")
    return "\n".join([
        f"  backup:        {s['id']}",
        f"                 on {s['node']}: {s['type']} {s['method']}, {s['size']}"
        f"{', encrypted' if s['encrypted'] else ''}, verified by {s['verify']}",
        f"  desynced:      {seconds} (from the end of the desync step to Synced again; {s['tool']} s in the tool)",
        f"  flow control:  {fc} messages sent by the node while desynced"
        f"{' (the cluster never paused for it)' if fc == '0' else ''}",
        f"  writes:        {rate}{shared}",
        f"  manifest:      docker exec {s['node']} cat /var/backups/galera/{s['id']}/manifest.json",
    ])


def main(argv: list) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8", errors="replace") as stream:
        text = stream.read()
    try:
        print(render(summary(text)))
    except NoBackup as exc:
        print(f"no summary: {exc}; see {argv[1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

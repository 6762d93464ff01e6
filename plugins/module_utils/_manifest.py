# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The backup's names and records, in one place (private): backup ids, the manifest (format 1),
the failed-run record, the run record that marks an unfinished backup or copy as someone's, and
the atomic 0600 writes of all of them.

Names:
- a backup id is ``<cluster>_<node>_<YYYYmmddTHHMMSSZ>-<run>``: cluster and node as sanitised by
  ``sanitize``, the UTC start time and the run's 8 hex digits (ids written before runs had their own
  part end at the ``Z`` and still parse);
- ``<id>.partial`` is a backup being written, ``<id>.failed.json`` a failed run;
- ``.run.json`` inside an unfinished backup (or copy) names its run: cluster name and state uuid,
  owner, host, and the process (``_proc.identity``) that writes it.

Only what parses as an id of the given cluster, and whose manifest or run record names that cluster
(and its state uuid when both sides know it), is ever treated as ours. Cluster names may contain
``_``, so an id's prefix alone cannot prove whose it is (``prod`` + node ``east_db1`` and
``prod_east`` + node ``db1`` give the same prefix): the records do.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from datetime import datetime, timezone

FORMAT = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
RUN_RECORD = ".run.json"
FAILED_SUFFIX = ".failed.json"
PARTIAL_SUFFIX = ".partial"
PARTIAL_SUFFIXES = (".partial", ".partial.verify")
RUN_KIND = "dbtools.galera run"

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
ID_PATTERN = re.compile(r"^(?P<prefix>[A-Za-z0-9_.-]+)_(?P<time>[0-9]{8}T[0-9]{6}Z)(?:-(?P<run>[0-9a-f]{8}))?$")
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{8}$")
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


# ---------------------------------------------------------------------------------------------
# Names

def sanitize(name) -> str:
    """A cluster or host name the way backup ids spell it: [A-Za-z0-9_.-], other characters '-'."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", str(name))
    # "." and ".." alone would be path components, not names.
    return text if text.strip(".") else text.replace(".", "-")


def new_run_id() -> str:
    return secrets.token_hex(4)


def backup_id(cluster, node, moment: datetime, run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id or ""):
        raise ValueError(f"run id {run_id!r} is not 8 hex digits")
    stamp = moment.astimezone(timezone.utc).strftime(_ID_TIME_FORMAT)
    return f"{sanitize(cluster)}_{sanitize(node)}_{stamp}-{run_id}"


def is_partial(name: str) -> bool:
    """True for in-progress or scratch names (``.partial``, ``.partial.verify``, ``.partial.*``)."""
    return name.endswith(PARTIAL_SUFFIXES) or ".partial." in name


def parse_id(name) -> dict | None:
    """``dict(prefix, time, run)`` of a backup id (``run`` None for older ids), or None."""
    if not isinstance(name, str) or is_partial(name):
        return None
    match = ID_PATTERN.fullmatch(name)
    if not match:
        return None
    try:
        moment = datetime.strptime(match.group("time"), _ID_TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return dict(prefix=match.group("prefix"), time=moment, run=match.group("run"))


def valid_id(name) -> bool:
    """True when ``name`` is a backup id (of any cluster) that is safe as a directory name."""
    return parse_id(name) is not None


def id_of_cluster(name, cluster) -> bool:
    """True when ``name`` parses as a backup id whose prefix starts with this cluster's name.

    Necessary, not sufficient: see the module's docstring; the manifest or run record decides.
    """
    parsed = parse_id(name)
    return parsed is not None and cluster is not None and parsed["prefix"].startswith(sanitize(cluster) + "_")


def id_time(name) -> datetime | None:
    parsed = parse_id(name)
    return parsed["time"] if parsed else None


def partial_name(backup: str) -> str:
    return backup + PARTIAL_SUFFIX


def unpartial(name: str) -> str | None:
    """The backup id of ``<id>.partial``, or None for any other name."""
    if name.endswith(PARTIAL_SUFFIX) and name.count(PARTIAL_SUFFIX) == 1:
        base = name[: -len(PARTIAL_SUFFIX)]
        return base if valid_id(base) else None
    return None


# ---------------------------------------------------------------------------------------------
# Whose is it

def cluster_name(record: dict) -> str | None:
    """The cluster name of a manifest (``cluster.name``), a run record or a failed record (``cluster``)."""
    cluster = record.get("cluster") if isinstance(record, dict) else None
    if isinstance(cluster, dict):
        cluster = cluster.get("name")
    return None if cluster is None else str(cluster)


def cluster_uuid(record: dict) -> str | None:
    """The cluster state uuid a manifest or run record names, or None."""
    if not isinstance(record, dict):
        return None
    cluster = record.get("cluster")
    if isinstance(cluster, dict) and cluster.get("state_uuid"):
        return str(cluster["state_uuid"])
    position = record.get("position")
    if isinstance(position, dict) and position.get("cluster_uuid"):
        return str(position["cluster_uuid"])
    return None


def same_cluster(record: dict, name, state_uuid=None) -> bool:
    """True when ``record`` (manifest, run or failure record) names cluster ``name`` and, when both
    sides know it, the same cluster state uuid."""
    if name is None or cluster_name(record) != str(name):
        return False
    theirs = cluster_uuid(record)
    return not (state_uuid and theirs and str(state_uuid) != theirs)


# ---------------------------------------------------------------------------------------------
# The manifest

def check_manifest(manifest, name: str, where: str, problems: list) -> dict | None:
    """The manifest of backup directory ``name`` (read from ``where``, a path or URL) when it counts
    as a backup: a JSON object of format 1, naming that directory as its id, with result ok. Else None,
    with the reason appended to ``problems``. Used for local directories and remote stores alike."""
    if not isinstance(manifest, dict):
        problems.append(f"{where} is not a JSON object: that backup is not counted (and never deleted)")
        return None
    if manifest.get("format", FORMAT) != FORMAT:
        problems.append(f"{where} has format {manifest.get('format')!r}, this collection reads "
                        f"format {FORMAT}: that backup is not counted")
        return None
    manifest = dict(manifest)
    manifest.setdefault("id", name)
    if manifest["id"] != name:
        problems.append(f"{where} names id {manifest['id']!r}, not its directory {name!r}: "
                        "that backup is not counted (and never deleted)")
        return None
    if manifest.get("result", "ok") != "ok":
        problems.append(f"{where} has result {manifest.get('result')!r}: that backup is not counted")
        return None
    return manifest


def parse_manifest(data):
    """A manifest's bytes to a dict, or the string "invalid" when they are not a JSON object."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except (ValueError, UnicodeDecodeError):
        return "invalid"
    return value if isinstance(value, dict) else "invalid"


# ---------------------------------------------------------------------------------------------
# Run records

def run_record(run_id: str, backup: str, cluster: str | None, state_uuid: str | None, owner: str | None,
               host: str | None, process: dict, started_at: str, kind: str = "backup") -> dict:
    """What marks an unfinished backup (or copy) as one run's: written first, removed last."""
    return dict(format=FORMAT, kind=RUN_KIND, what=kind, run_id=run_id, backup=backup,
                cluster=dict(name=cluster, state_uuid=state_uuid), owner=owner, host=host,
                process=process, started_at=started_at)


def valid_run_record(record) -> bool:
    return (isinstance(record, dict) and record.get("kind") == RUN_KIND and isinstance(record.get("run_id"), str)
            and bool(RUN_ID_PATTERN.fullmatch(record["run_id"])))


# ---------------------------------------------------------------------------------------------
# Writing

def write_json_atomic(path: str, data, mode: int = 0o600, uid: int | None = None, gid: int | None = None) -> None:
    """Write ``data`` as JSON to ``path`` atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", mode, uid, gid)


def write_text_atomic(path: str, text: str, mode: int = 0o600, uid: int | None = None, gid: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, fsynced and renamed over
    it, so a reader sees the old file or the whole new one, never a part."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if uid is not None or gid is not None:
            os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: str):
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------------------------
# Building the records of a run (the role passes the steps' results; nothing is templated)

def _position(run: dict, out: dict, desync: dict) -> dict:
    galera = out.get("galera_info") or None
    uuid, seqno = None, None
    if galera:
        head = galera.split()[0]
        uuid, _sep, seq = head.partition(":")
        try:
            seqno = int(seq)
        except ValueError:
            seqno = None
    before = desync.get("before") if isinstance(desync.get("before"), dict) else {}
    return dict(
        galera=galera,
        cluster_uuid=uuid or run["cluster"]["state_uuid"],
        seqno=seqno if galera else before.get("last_committed"),
        source=(f"galera info file written by {run['tool']}" if galera else
                "wsrep_last_committed when the node was desynced, before the dump began (a lower bound)"),
        from_lsn=out.get("from_lsn"),
        to_lsn=out.get("to_lsn"),
        binlog=out.get("binlog"),
    )


def build(run: dict, out: dict, desync: dict, resync: dict, finished_at: str, settings: dict) -> dict:
    """The manifest (format 1) of a verified backup, from the run (preflight), the runner's result
    (``out``) and the desync and resync results. Written last, by ``_backup_job.publish``."""
    checksum = out["checksum"]
    verify = dict(out.get("verify") or {})
    verify.setdefault("level", settings.get("verify"))
    verify.setdefault("result", "ok")
    verify.setdefault("tables", None)
    verify.setdefault("checksums", {})
    fc_sent = resync.get("flow_control_sent") if isinstance(resync, dict) else None
    priority = out.get("priority") or {}
    ionice = settings.get("ionice_class")
    return dict(
        format=FORMAT,
        id=run["id"],
        run_id=run["run_id"],
        result="ok",
        type=run["type"],
        parent=run.get("parent"),
        chain=list(run.get("chain") or []) + [run["id"]],
        method=run["tool"],
        compress=settings.get("compress"),
        node=run["node"]["name"],
        wsrep_node_name=run["node"]["wsrep_node_name"],
        cluster=dict(run["cluster"]),
        server=dict(run["server"]),
        started_at=run["started_at"],
        finished_at=finished_at,
        duration_seconds=round(max(0.0, _seconds(finished_at) - float(run["started_epoch"])), 1),
        tool_seconds=out.get("tool_seconds"),
        tool_started_at=out.get("tool_started_at"),
        tool_finished_at=out.get("tool_finished_at"),
        bytes=checksum["bytes"],
        files=checksum["files"],
        sha256=checksum["sha256"],
        sha256_of=SUMS,
        position=_position(run, out, desync),
        encryption=out.get("encryption"),
        throttle=dict(
            throttle=settings.get("throttle"),
            nice=settings.get("nice"),
            ionice=ionice + (f"/{settings.get('ionice_level')}" if ionice == "best-effort" else ""),
            applied=dict(nice=priority.get("nice"), ionice=priority.get("ionice")),
        ),
        tables=out.get("tables"),
        desync=dict(
            owner=run.get("owner"),
            # None when unknown (no lease, counters reset): never a made-up 0.
            flow_control_sent=fc_sent if isinstance(fc_sent, int) and not isinstance(fc_sent, bool) else None,
            max_recv_queue_seen=resync.get("max_recv_queue_seen"),
            drained=resync.get("drained"),
            drain_seconds=resync.get("drain_seconds"),
            sync_seconds=resync.get("sync_seconds"),
            resynced=resync.get("desynced") is False,
            state_after=(resync.get("local_state_comment") or {}).get("after")
            if isinstance(resync.get("local_state_comment"), dict) else None,
        ),
        verify=verify,
    )


def failure_record(run: dict, error: str, step: str | None, resynced: bool) -> dict:
    """What ``<id>.failed.json`` says about a failed run (never counted as a backup)."""
    return dict(
        format=FORMAT,
        id=run["id"],
        run_id=run["run_id"],
        result="failed",
        error=str(error)[:4000],
        step=step,
        method=run.get("tool"),
        node=run["node"]["name"],
        wsrep_node_name=run["node"].get("wsrep_node_name"),
        cluster=dict(name=run["cluster"]["name"], state_uuid=run["cluster"].get("state_uuid")),
        started_at=run.get("started_at"),
        failed_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        resynced=bool(resynced),
    )


def _seconds(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return 0.0

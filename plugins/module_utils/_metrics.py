# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Prometheus metrics of the backup runs, for node_exporter's textfile collector (private).

After every run the role writes one file per cluster and node, ``<dir>/dbtools_galera_<cluster>_<node>.prom``
(``file_name``), in the text exposition format. A textfile collector has no memory, so each write
reads the previous file back (``parse``) and carries what must survive: the counters, the last
success and failure timestamps, and any group of metrics this write does not update. A missing,
garbled or foreign previous file is never an error: what cannot be read is left out, counters
restart at 0 (Prometheus treats that as a counter reset), and the problems are returned.

Groups of metrics, each replaced only by a write that passes its input (``render``):
- always: ``runs_total{result}``, ``failures_total{step}``, ``last_success_timestamp_seconds``,
  ``last_failure_timestamp_seconds`` (counters add up, timestamps keep the later one);
- ``result`` (the run's manifest or failure record, with ``desync``/``resync``, the galera_desync
  results): the figures of the last run on this node, each absent (never 0) when unknown;
- ``catalogue`` (``_catalog.read_dir`` of the backup directory): the restorable backups of this
  cluster kept there, and the finish times of the newest and oldest (timestamps, not ages: an age
  written into a file goes stale between two runs, ``time() - ts`` in PromQL does not);
- ``archive`` and ``drill``: written when the binlog archive and the restore drill pass theirs
  (see ``docs/prometheus/README.md``); nothing is written for them until then.

Every sample has the labels ``cluster`` and ``node``; label values are escaped as the format asks
(a cluster name may hold quotes, backslashes or newlines). Everything but ``write`` (and
``read_previous``) is a pure function. No Ansible imports.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import secrets
import stat
import time
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog, _manifest, _paths
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

PREFIX = "galera_backup_"
FILE_PREFIX = "dbtools_galera_"
FILE_SUFFIX = ".prom"
MODE = 0o644
MAX_PREVIOUS_BYTES = 1024 * 1024
NAME_PART_MAX = 80
STALE_TEMP_SECONDS = 3600
VARIABLE = "galera_backup_metrics_dir"
BASE_LABELS = ("cluster", "node")
RUN_RESULTS = ("success", "failure")
UNKNOWN = "unknown"
STEP_MAX = 120


class Family:
    """One metric family: its name (without the prefix), type, help, extra labels and group."""

    __slots__ = ("name", "type", "help", "labels", "group")

    def __init__(self, name: str, kind: str, text: str, labels: tuple = (), group: str = "always"):
        self.name = PREFIX + name
        self.type = kind
        self.help = text
        self.labels = tuple(labels)
        self.group = group


# The order here is the order in the file. Groups: see the module's docstring.
FAMILIES = (
    Family("last_success_timestamp_seconds", "gauge",
           "Unix time at which the last good (verified, published) backup taken on this node finished."),
    Family("last_failure_timestamp_seconds", "gauge",
           "Unix time at which the last failed backup run on this node ended."),
    Family("runs_total", "counter", "Backup runs on this node by result (success or failure).", ("result",)),
    Family("failures_total", "counter", "Failed backup runs on this node by the step that failed.", ("step",)),
    Family("last_duration_seconds", "gauge",
           "Duration of the last backup run on this node, from its start to its manifest or failure record.",
           group="result"),
    Family("last_size_bytes", "gauge", "Size of the last backup taken on this node (absent after a failed run).",
           group="result"),
    Family("last_info", "gauge", "Method, type and verification level of the last backup run on this node (always 1).",
           ("method", "type", "verify"), group="result"),
    Family("last_desync_seconds", "gauge",
           "Seconds from the desync lease of the last run (just before wsrep_desync=ON) to the end of the run, "
           "after the resync.", group="result"),
    Family("last_drain_seconds", "gauge",
           "Seconds the last run waited for the receive queue to drain before wsrep_desync=OFF.", group="result"),
    Family("last_sync_seconds", "gauge",
           "Seconds the last run waited after wsrep_desync=OFF for the node to be Synced.", group="result"),
    Family("last_recv_queue_peak", "gauge",
           "Largest receive queue (write-sets) seen while the last run drained the desynced node.", group="result"),
    Family("last_flow_control_sent", "gauge",
           "Flow-control messages the node sent while desynced by the last run (absent when unknown).",
           group="result"),
    Family("kept_backups", "gauge", "Restorable backups of this cluster in the backup directory of this node.",
           group="catalogue"),
    Family("newest_backup_timestamp_seconds", "gauge",
           "Unix time at which the newest restorable backup of this cluster in this node's directory finished.",
           group="catalogue"),
    Family("oldest_backup_timestamp_seconds", "gauge",
           "Unix time at which the oldest restorable backup of this cluster in this node's directory finished.",
           group="catalogue"),
    # Written only when the binlog archive passes ``archive`` (docs/prometheus/README.md).
    Family("binlog_archive_lag_seconds", "gauge",
           "Seconds the binlog archive was behind the server's newest binlog event when last checked.",
           group="archive"),
    Family("binlog_archive_gaps", "gauge", "GTID gaps found in the binlog archive when last checked.",
           group="archive"),
    Family("binlog_archive_checked_timestamp_seconds", "gauge", "Unix time of the last check of the binlog archive.",
           group="archive"),
    # Written only when the restore drill passes ``drill`` (docs/prometheus/README.md).
    Family("drill_last_success_timestamp_seconds", "gauge",
           "Unix time at which the last successful restore drill of this cluster on this node finished."),
    Family("drill_last_failure_timestamp_seconds", "gauge",
           "Unix time at which the last failed restore drill of this cluster on this node ended."),
    Family("drill_last_duration_seconds", "gauge", "Duration of the last restore drill on this node.", group="drill"),
)
BY_NAME = {f.name: f for f in FAMILIES}
GROUPS = ("result", "catalogue", "archive", "drill")
_TIMESTAMPS = (PREFIX + "last_success_timestamp_seconds", PREFIX + "last_failure_timestamp_seconds",
               PREFIX + "drill_last_success_timestamp_seconds", PREFIX + "drill_last_failure_timestamp_seconds")
_COUNTERS = tuple(f.name for f in FAMILIES if f.type == "counter")

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?Inf|NaN")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


# ---------------------------------------------------------------------------------------------
# The text format

def _text(value) -> str:
    """A label value as valid UTF-8 text (lone surrogates replaced)."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def escape_label(value) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    return _text(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text) -> str:
    return _text(text).replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)


def _labels_text(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def _parse_labels(line: str, pos: int):
    """(labels dict, position after '}') for the label set starting at ``line[pos] == '{'``; ValueError."""
    labels = {}
    pos += 1
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if not match:
            raise ValueError("label name expected")
        name = match.group(0)
        pos = match.end()
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if line[pos:pos + 1] != "=":
            raise ValueError("'=' expected")
        pos += 1
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if line[pos:pos + 1] != '"':
            raise ValueError("a quoted label value expected")
        pos += 1
        chars = []
        while True:
            if pos >= len(line):
                raise ValueError("unterminated label value")
            char = line[pos]
            if char == "\\":
                escaped = _ESCAPES.get(line[pos + 1:pos + 2])
                if escaped is None:
                    raise ValueError("invalid escape in a label value")
                chars.append(escaped)
                pos += 2
            elif char == '"':
                pos += 1
                break
            else:
                chars.append(char)
                pos += 1
        if name in labels:
            raise ValueError(f"label {name} repeated")
        labels[name] = "".join(chars)
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        else:
            raise ValueError("',' or '}' expected")


def parse_line(line: str):
    """``(name, labels, value)`` of one sample line of the text format, None for a blank or comment
    line; ValueError when it is not a sample."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    match = _METRIC_NAME.match(line)
    if not match:
        raise ValueError("metric name expected")
    name, pos = match.group(0), match.end()
    labels = {}
    if pos < len(line) and line[pos] == "{":
        labels, pos = _parse_labels(line, pos)
    rest = line[pos:].split()
    if len(rest) not in (1, 2) or (pos < len(line) and line[pos] not in " \t"):
        raise ValueError("one value (and an optional timestamp) expected after the labels")
    if len(rest) == 2 and not re.fullmatch(r"-?[0-9]+", rest[1]):
        raise ValueError("the timestamp is not an integer")
    if not _VALUE.fullmatch(rest[0]):
        raise ValueError("the value is not a number")
    return name, labels, float(rest[0])


def parse(text: str, cluster, node) -> tuple:
    """The samples of ``text`` that this collection wrote for ``cluster`` and ``node``:
    ``({name: {label items tuple: value}}, problems)``.

    Lines that are not valid samples, names that are not ours, other clusters' or nodes' samples,
    unexpected label sets and values that are not finite (or negative counters) are left out; the
    problems say how many and why. Never raises.
    """
    samples: dict = {}
    skipped: dict = {}
    cluster, node = _text(cluster), _text(node)
    for number, line in enumerate((text or "").splitlines(), 1):
        try:
            parsed = parse_line(line)
        except ValueError as exc:
            skipped.setdefault(f"unreadable line ({exc})", number)
            continue
        if parsed is None:
            continue
        name, labels, value = parsed
        family = BY_NAME.get(name)
        if family is None:
            skipped.setdefault("a metric this collection does not write", number)
            continue
        if set(labels) != set(BASE_LABELS + family.labels):
            skipped.setdefault("an unexpected label set", number)
            continue
        if labels["cluster"] != cluster or labels["node"] != node:
            skipped.setdefault("another cluster's or node's sample", number)
            continue
        if not math.isfinite(value) or (family.type == "counter" and value < 0):
            skipped.setdefault("a value that is not finite (or a negative counter)", number)
            continue
        key = tuple((k, labels[k]) for k in family.labels)
        samples.setdefault(name, {})[key] = value
    problems = [f"the previous metrics: {why}, first on line {line_no}: left out"
                for why, line_no in skipped.items()]
    return samples, problems


# ---------------------------------------------------------------------------------------------
# Figures of a run

def _number(value) -> float | None:
    """A finite, non-negative number, or None (bools, text and missing values are unknown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _epoch(value) -> float | None:
    """Unix time of ISO 8601 text ("2026-12-01T03:00:00Z", "2026-12-01 03:00:00" as the lease
    writes UTC), a datetime or a number; None when absent or invalid."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, str):
        moment = _catalog.parse_time(value)
        return moment.timestamp() if moment else None
    return _number(value)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def succeeded(result) -> bool:
    """True for the manifest of a good backup (``result: ok``), False for a failure record (or anything else)."""
    return isinstance(result, dict) and result.get("result") == "ok"


def result_time(result: dict, now: float) -> float:
    """When the run ended: the manifest's ``finished_at`` or the record's ``failed_at``, else ``now``."""
    for key in ("finished_at", "failed_at"):
        moment = _epoch(result.get(key))
        if moment is not None:
            return moment
    return now


def desync_seconds(desync, resync, end: float) -> float | None:
    """Seconds from the lease the run took (``acquired_at``, UTC, taken just before wsrep_desync=ON)
    to ``end``; None when the run did not desync the node under a lease (or it is not known)."""
    desync, resync = _dict(desync), _dict(resync)
    for lease in (desync.get("lease"), resync.get("lease_before")):
        start = _epoch(_dict(lease).get("acquired_at"))
        if start is not None and end >= start:
            return round(end - start, 3)
    return None


def result_samples(result: dict, desync=None, resync=None, now: float | None = None) -> dict:
    """The ``result`` group: the last run's figures, each left out when unknown."""
    now = time.time() if now is None else now
    good = succeeded(result)
    end = result_time(result, now)
    manifest_desync = _dict(result.get("desync")) if good else {}
    resync = _dict(resync)
    out: dict = {}

    def put(name: str, value, key: tuple = ()) -> None:
        if value is not None:
            out.setdefault(PREFIX + name, {})[key] = value

    duration = _number(result.get("duration_seconds"))
    if duration is None:
        start = _epoch(result.get("started_at"))
        duration = round(end - start, 3) if start is not None and end >= start else None
    put("last_duration_seconds", duration)
    put("last_size_bytes", _number(result.get("bytes")) if good else None)
    verify = result.get("verify")
    verify = _dict(verify).get("level") if isinstance(verify, dict) else verify
    put("last_info", 1, (("method", _label(result.get("method"))), ("type", _label(result.get("type"))),
                         ("verify", _label(verify))))
    put("last_desync_seconds", desync_seconds(desync, resync, end))

    def figure(resync_key: str, manifest_key: str):
        value = _number(resync.get(resync_key))
        return value if value is not None else _number(manifest_desync.get(manifest_key))

    put("last_drain_seconds", figure("drain_seconds", "drain_seconds"))
    put("last_sync_seconds", figure("sync_seconds", "sync_seconds"))
    put("last_recv_queue_peak", figure("max_recv_queue_seen", "max_recv_queue_seen"))
    put("last_flow_control_sent", figure("flow_control_sent", "flow_control_sent"))
    return out


def _label(value) -> str:
    return UNKNOWN if value is None or value == "" else _text(value)


def _step(result: dict) -> str:
    step = result.get("step")
    return _text(step)[:STEP_MAX] if step else UNKNOWN


def _backups(catalogue) -> list:
    if isinstance(catalogue, dict):
        return list(catalogue.get("backups") or [])
    return list(catalogue or [])


def _failures(catalogue) -> list:
    return list(catalogue.get("failures") or []) if isinstance(catalogue, dict) else []


def restorable_backups(catalogue, cluster, state_uuid=None) -> list:
    """Summaries (``_catalog.summarize``) of the restorable backups of ``cluster`` (name, and state
    uuid when both sides know it) among the catalogue's manifests (``_catalog.read_dir``'s dict or a
    list of manifests), newest first. Chains are judged within each (name, uuid) group."""
    ours = [b for b in _backups(catalogue) if isinstance(b, dict) and _manifest.same_cluster(b, cluster, state_uuid)]
    return [s for s in _catalog.summarize(ours) if s["restorable"]]


def catalogue_samples(catalogue, cluster, state_uuid=None) -> dict:
    """The ``catalogue`` group: restorable backups kept, and when the newest and oldest finished."""
    good = restorable_backups(catalogue, cluster, state_uuid)
    out = {PREFIX + "kept_backups": {(): float(len(good))}}
    if good:
        out[PREFIX + "newest_backup_timestamp_seconds"] = {(): _catalog.backup_time(good[0]).timestamp()}
        out[PREFIX + "oldest_backup_timestamp_seconds"] = {(): _catalog.backup_time(good[-1]).timestamp()}
    return out


def archive_samples(archive: dict) -> dict:
    """The ``archive`` group from ``dict(lag_seconds, gaps, checked_at)`` (the binlog archive's check)."""
    out = {}
    for name, value in (("binlog_archive_lag_seconds", _number(archive.get("lag_seconds"))),
                        ("binlog_archive_gaps", _number(archive.get("gaps"))),
                        ("binlog_archive_checked_timestamp_seconds", _epoch(archive.get("checked_at")))):
        if value is not None:
            out[PREFIX + name] = {(): value}
    return out


def drill_samples(drill: dict) -> dict:
    """The ``drill`` group from ``dict(result="ok"|"failed", duration_seconds)``."""
    duration = _number(drill.get("duration_seconds"))
    return {PREFIX + "drill_last_duration_seconds": {(): duration}} if duration is not None else {}


# ---------------------------------------------------------------------------------------------
# Merging and rendering

def _now_epoch(now) -> float:
    if now is None:
        return time.time()
    value = _epoch(now)
    if value is None:
        raise ValueError(f"now must be a datetime or a Unix time, got {now!r}")
    return value


def _later(samples: dict, name: str, value: float | None) -> None:
    if value is None:
        return
    current = samples.get(name, {}).get(())
    if current is None or value > current:
        samples[name] = {(): value}


def _add(samples: dict, name: str, key: tuple, amount: float = 1.0) -> None:
    family = samples.setdefault(name, {})
    family[key] = family.get(key, 0.0) + amount


def merge(previous: dict, cluster, node, result=None, catalogue=None, desync=None, resync=None, archive=None,
          drill=None, now=None) -> dict:
    """The samples to write: ``previous`` (``parse``'s samples) updated with what this write knows."""
    now_epoch = _now_epoch(now)
    for what, value in (("result", result), ("archive", archive), ("drill", drill)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{what} must be a dict or None, got {type(value).__name__}")
    result, archive, drill = result or None, archive or None, drill or None
    # Carried from the previous file as it was: the counters and timestamps (updated below), and
    # every group this write has no input for.
    carried = {"always"} | {group for group, given in zip(GROUPS, (result, catalogue, archive, drill))
                            if given is None}
    out = {name: dict(values) for name, values in previous.items()
           if name in BY_NAME and BY_NAME[name].group in carried}
    for result_name in RUN_RESULTS:
        out.setdefault(PREFIX + "runs_total", {}).setdefault((("result", result_name),), 0.0)
    state_uuid = _manifest.cluster_uuid(result) if result else None
    if result:
        end = result_time(result, now_epoch)
        if succeeded(result):
            _add(out, PREFIX + "runs_total", (("result", "success"),))
            _later(out, PREFIX + "last_success_timestamp_seconds", end)
        else:
            _add(out, PREFIX + "runs_total", (("result", "failure"),))
            _add(out, PREFIX + "failures_total", (("step", _step(result)),))
            _later(out, PREFIX + "last_failure_timestamp_seconds", end)
        out.update(result_samples(result, desync, resync, now_epoch))
    if catalogue is not None:
        out.update(catalogue_samples(catalogue, cluster, state_uuid))
        # A lost or garbled previous file must not make an old success look missing: the directory
        # still shows this node's newest good backup and failed run.
        for backup in restorable_backups(catalogue, cluster, state_uuid):
            if str(backup.get("node")) == str(node):
                _later(out, PREFIX + "last_success_timestamp_seconds", _catalog.backup_time(backup).timestamp())
                break
        for record in _failures(catalogue):
            if _manifest.same_cluster(record, cluster, state_uuid) and str(record.get("node")) == str(node):
                _later(out, PREFIX + "last_failure_timestamp_seconds", _epoch(record.get("failed_at")))
    if archive:
        out.update(archive_samples(archive))
    if drill:
        out.update(drill_samples(drill))
        ended = _epoch(drill.get("finished_at")) or now_epoch
        good = drill.get("result", "ok") == "ok"
        _later(out, PREFIX + ("drill_last_success_timestamp_seconds" if good else "drill_last_failure_timestamp_seconds"),
               ended)
    return out


def to_text(samples: dict, cluster, node) -> str:
    """The exposition text of ``samples`` (families in ``FAMILIES`` order, HELP and TYPE first)."""
    base = dict(cluster=cluster, node=node)
    lines = []
    for family in FAMILIES:
        values = samples.get(family.name)
        if not values:
            continue
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for key in sorted(values):
            lines.append(f"{family.name}{_labels_text(dict(base, **dict(key)))} {format_value(values[key])}")
    return "\n".join(lines) + "\n"


def render(cluster, node, result=None, catalogue=None, previous: str = "", desync=None, resync=None,
           archive=None, drill=None, now=None) -> str:
    """The metrics file for ``cluster`` and ``node`` after this write.

    ``result``: the manifest of a good backup or the failure record of a failed run (``step`` is the
    failure counter's label), with ``desync`` and ``resync``, the registered galera_desync results;
    ``catalogue``: ``_catalog.read_dir`` of the backup directory (after retention); ``previous``: the
    text of the previous file; ``archive``/``drill``: see the module's docstring. Inputs left at None
    keep what the previous file said.
    """
    samples, _problems = parse(previous, cluster, node)
    return to_text(merge(samples, cluster, node, result, catalogue, desync, resync, archive, drill, now), cluster, node)


# ---------------------------------------------------------------------------------------------
# The file

def _name_part(value) -> tuple:
    """(the part as backup ids spell it, capped, and whether that lost anything)."""
    text = _manifest.sanitize(value)
    plain = text == str(value) and "_" not in text and len(text) <= NAME_PART_MAX
    return text[:NAME_PART_MAX], plain


def file_name(cluster, node) -> str:
    """``dbtools_galera_<cluster>_<node>.prom``, or with ``~<8 hex>`` (a hash of both exact names)
    before ``.prom`` when a name had to be changed, holds ``_`` or was cut at 80 characters: then two clusters or nodes that
    spell alike (``a_b`` + ``c`` and ``a`` + ``b_c``, ``prod east`` and ``prod/east``) still get
    files of their own, and a plain name (no ``~``) can never be one of these."""
    cluster_part, cluster_plain = _name_part(cluster)
    node_part, node_plain = _name_part(node)
    name = f"{FILE_PREFIX}{cluster_part}_{node_part}"
    if not (cluster_plain and node_plain):
        digest = hashlib.sha256(f"{_text(cluster)}\0{_text(node)}".encode("utf-8")).hexdigest()[:8]
        name += f"~{digest}"
    return name + FILE_SUFFIX


def _open_dir(directory: str) -> tuple:
    """(an O_NOFOLLOW descriptor of the checked directory, its normalised path); GaleraError."""
    path = _paths.check_dir_text(directory, VARIABLE)
    fix = (f"Set {VARIABLE} to node_exporter's --collector.textfile.directory (Debian: "
           "/var/lib/prometheus/node-exporter), an existing directory. Nothing was changed.")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise GaleraError(f"{VARIABLE}={path} does not exist. {fix}", variable=VARIABLE) from None
    if stat.S_ISLNK(info.st_mode):
        raise GaleraError(f"{VARIABLE}={path} is a symbolic link; give the real directory. {fix}", variable=VARIABLE)
    if not stat.S_ISDIR(info.st_mode):
        raise GaleraError(f"{VARIABLE}={path} is not a directory. {fix}", variable=VARIABLE)
    if info.st_mode & stat.S_IWOTH:
        raise GaleraError(f"{VARIABLE}={path} is writable by every user (mode {stat.S_IMODE(info.st_mode):04o}): "
                          f"anyone could plant or swap the metrics there. Remove the others' write permission. "
                          f"Nothing was changed.", variable=VARIABLE)
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW), path
    except OSError as exc:
        raise GaleraError(f"{VARIABLE}={path} cannot be opened: {exc.strerror}. Nothing was changed.",
                          variable=VARIABLE) from exc


def read_previous(dir_fd: int, name: str) -> tuple:
    """(text of the previous file ``name`` in the directory, problems); "" when there is none or it
    is not a regular file (a symbolic link is never followed), too big or not UTF-8."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return "", []
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "", [f"the previous metrics file {name} is a symbolic link, not a regular file: not followed, "
                        "replaced by a file of its own"]
        return "", [f"the previous metrics file {name} cannot be read ({exc.strerror}): counters start again at 0"]
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "", [f"the previous metrics file {name} is not a regular file: ignored (and replaced)"]
        if info.st_size > MAX_PREVIOUS_BYTES:
            return "", [f"the previous metrics file {name} is larger than {MAX_PREVIOUS_BYTES} bytes: ignored"]
        data = os.read(fd, MAX_PREVIOUS_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return "", [f"the previous metrics file {name} is not UTF-8 text: ignored, counters start again at 0"]


def _sweep_temps(dir_fd: int, name: str, now: float) -> None:
    """Remove temporary files that a killed write of this same file left (ours by their exact name)."""
    pattern = re.compile(r"\." + re.escape(name) + r"\.[0-9a-f]{8}\.tmp")
    for entry in os.listdir(dir_fd):
        if not pattern.fullmatch(entry):
            continue
        try:
            info = os.lstat(entry, dir_fd=dir_fd)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMP_SECONDS:
                os.unlink(entry, dir_fd=dir_fd)
        except OSError:
            pass


def write(directory, cluster, node, result=None, catalogue=None, desync=None, resync=None, archive=None,
          drill=None, now=None) -> dict:
    """Write (atomically) ``<directory>/file_name(cluster, node)``: the previous file's samples
    updated by ``render``'s inputs. A temporary file in the same directory (never followed through a
    symbolic link, mode 0644) is fsynced and renamed over the file. Returns ``dict(path, changed,
    problems)``; GaleraError when the directory is refused (nothing written)."""
    dir_fd, real = _open_dir(directory)
    name = file_name(cluster, node)
    path = os.path.join(real, name)
    try:
        previous, problems = read_previous(dir_fd, name)
        samples, parse_problems = parse(previous, cluster, node)
        problems.extend(parse_problems)
        text = to_text(merge(samples, cluster, node, result, catalogue, desync, resync, archive, drill, now),
                       cluster, node)
        _sweep_temps(dir_fd, name, time.time())
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MODE, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fchmod(handle.fileno(), MODE)
                os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
    except OSError as exc:
        raise GaleraError(f"cannot write the metrics file {path}: {exc.strerror or exc}. The backup itself is not "
                          f"affected; fix {VARIABLE} or its permissions.", variable=VARIABLE, path=path) from exc
    finally:
        os.close(dir_fd)
    return dict(path=path, changed=True, problems=problems)

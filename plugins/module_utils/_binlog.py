# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The binary-log archive's rules (private): reading MariaDB binlog files, the PITR preconditions,
the archive index, continuity by GTID, gaps, retention, the node choice and the replay plan.

Everything but ``scan`` (which reads one file) is a pure function over plain dicts, unit-tested on
its own. The side effects (the lease, ``FLUSH BINARY LOGS``, copies, the catalogue table) live in
``_binlog_archive``; the stores' side in ``_binlog_store``. No Ansible imports.

Galera facts this relies on (measured on MariaDB 10.11.19 + Galera 4.23, three nodes, 2026-12-02):

- with ``wsrep_gtid_mode=ON`` and one ``wsrep_gtid_domain_id`` (D) on every node, each node with
  ``log_bin`` and ``log_slave_updates`` binlogs every cluster write under domain D with the SAME
  sequence number, whichever node took the write; the event bytes of a replicated transaction are
  identical on the nodes that applied it (same CRC32). The GTID's server id is one value on every
  node (the bootstrap node's ``server_id`` there, not the writer's), so this module compares GTIDs
  of the cluster domain by (domain, sequence number) only;
- writes that do not replicate (``wsrep_on=OFF`` in a session, non-InnoDB tables without
  replication) go to the node's own ``gtid_domain_id`` with its own ``server_id``: they exist on one
  node only and a cluster restore never replays them (they are counted, not archived as the
  cluster's history);
- event timestamps are the writer's: a replicated transaction has the same time on every node;
- write-sets a rejoining node receives by IST are binlogged there (with ``log_slave_updates``); a
  node filled by SST starts a new binlog history: its older files do not connect to the new ones;
- ``FLUSH BINARY LOGS`` rotates the log of the node it runs on only; each closed file starts with
  a ``Gtid_list`` event holding the binlog state before its first event and ends with a ``Rotate``;
- mariabackup on a node whose ``server_id`` is not the GTIDs' writes no GTID into its binlog info
  (it reads ``gtid_current_pos``, empty there), and mysqldump ``--master-data=2 --gtid`` prints the
  GTID as ``-- SET GLOBAL gtid_slave_pos=...`` at the END of the dump: ``position_gtid`` computes
  it from the file and offset both give.

Continuity rule. The archive applies each cluster GTID exactly once: the catalogue's cursor is the
last archived sequence number L of domain D. A run reads the closed binlog files of ONE node and
archives, in order, every file holding sequence numbers after L. A file that begins at or before L
(after the archiving node changed, the new node's file overlaps what the old node archived) is
stored whole, and its segment says where replay begins: ``start`` (exclusive: L), ``first`` (L+1)
and ``offset``, the byte offset of the event group of L+1 in the file. A node whose next group is
not L+1 has a hole there: when no node of the cluster can provide L+1 any more, the hole is
recorded as a ``gap`` segment with its GTID range (never papered over), otherwise another node
continues. Replay of a segment starts at ``offset`` (or after GTID ``start``), applies domain D
only, and stops after ``last``.
"""

from __future__ import annotations

import os
import re
import struct
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

FORMAT = 1
KIND = "dbtools.galera binlog archive"
AREA = "binlogs"  # <galera_backup_dir>/binlogs/<cluster>/, <store>/binlogs/<cluster>/
INDEX = "index.json"
LEASE_KEY = "binlog_archive"
NOTHING = "Nothing was changed."

MAGIC = b"\xfebin"
HEADER = 19
# Event types (MariaDB).
QUERY = 2
STOP = 3
ROTATE = 4
FORMAT_DESCRIPTION = 15
XID = 16
XA_PREPARE = 38
BINLOG_CHECKPOINT = 161
GTID = 162
GTID_LIST = 163
START_ENCRYPTION = 164
QUERY_COMPRESSED = 165
# Gtid_log_event flags2.
FL_STANDALONE = 1
FL_GROUP_COMMIT_ID = 2
_ENDING_QUERIES = ("COMMIT", "ROLLBACK", "XA COMMIT", "XA ROLLBACK")
_READ = 1 << 20

GTID_PATTERN = re.compile(r"^(\d{1,10})-(\d{1,10})-(\d{1,20})$")
SEGMENT_NAME = re.compile(r"^(?P<first>\d{20})_(?P<rest>[A-Za-z0-9_.-]+?)(?P<ext>\.binlog(?:\.zst)?(?:\.enc)?)$")
BINLOG_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.\d{6,}$")


# ---------------------------------------------------------------------------------------------
# Small helpers

def utc_text(moment) -> str | None:
    """Unix seconds or an aware datetime as ISO 8601 UTC text ("2026-12-02T02:34:04Z"); None for 0/None."""
    if moment is None or moment == 0:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(float(moment), timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def gtid_text(domain: int, server: int, seq: int) -> str:
    return f"{int(domain)}-{int(server)}-{int(seq)}"


def parse_gtid_list(text) -> dict:
    """``"1-1-10,13-3-1"`` (a GTID position, as ``gtid_binlog_pos`` or a backup's binlog info) to
    ``{domain: (server, seq)}``. An empty text is an empty position; anything else raises ValueError."""
    out = {}
    for part in str(text or "").replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        match = GTID_PATTERN.match(part)
        if not match:
            raise ValueError(f"{part!r} is not a GTID (domain-server-sequence)")
        domain, server, seq = (int(g) for g in match.groups())
        if domain in out:
            raise ValueError(f"domain {domain} appears twice in {text!r}")
        out[domain] = (server, seq)
    return out


def format_gtid_list(position: dict) -> str:
    return ",".join(gtid_text(d, s, q) for d, (s, q) in sorted(position.items()))


def seq_of(position_text, domain: int) -> int | None:
    """The sequence number of ``domain`` in a GTID position text; None when absent or unreadable."""
    try:
        entry = parse_gtid_list(position_text).get(int(domain))
    except (ValueError, TypeError):
        return None
    return entry[1] if entry else None


def range_text(domain: int, first: int, last: int, server: int | None = None) -> str:
    """A GTID range of the cluster domain for messages: "1-1-57 .. 1-1-63" (one: "1-1-57")."""
    if server is None:
        left, right = f"{domain}-?-{first}", f"{domain}-?-{last}"
    else:
        left, right = gtid_text(domain, server, first), gtid_text(domain, server, last)
    return left if first == last else f"{left} .. {right}"


def sanitize(name) -> str:
    """A node, cluster or file name as archive names spell it: [A-Za-z0-9_.-], others '-'."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", str(name))
    return text if text.strip(".") else text.replace(".", "-")


def segment_name(first: int, node: str, file: str, compress: bool, encrypt: bool) -> str:
    """``<first:020d>_<node>_<binlog file>.binlog[.zst][.enc]``: sorts by GTID, says where it came from."""
    return (f"{int(first):020d}_{sanitize(node)}_{sanitize(file)}.binlog" + (".zst" if compress else "")
            + (".enc" if encrypt else ""))


def is_segment_name(name) -> bool:
    return isinstance(name, str) and SEGMENT_NAME.fullmatch(name) is not None


def segment_first(name) -> int | None:
    match = SEGMENT_NAME.fullmatch(name) if isinstance(name, str) else None
    return int(match.group("first")) if match else None


# ---------------------------------------------------------------------------------------------
# Reading one binlog file

def _open(path: str):
    try:
        return open(path, "rb", buffering=_READ)  # pylint: disable=consider-using-with
    except OSError as exc:
        raise GaleraError(f"cannot read the binlog file {path}: {exc.strerror or exc}. The archiver reads the "
                          "server's binlog files directly: run it as root (become) on the node.", path=path) from None


def _events(handle, path: str, size: int):
    """Yield ``(pos, timestamp, kind, server, length)`` of every complete event of an open binlog
    file below ``size``, the handle positioned at the event's body; checks the magic number."""
    if handle.read(4) != MAGIC:
        raise GaleraError(f"{path} is not a binlog file (no binlog magic number).", path=path)
    pos = 4
    while pos + HEADER <= size:
        handle.seek(pos)
        timestamp, kind, server, length, _next, _flags = struct.unpack("<IBIIIH", handle.read(HEADER))
        if length < HEADER or pos + length > size:
            return
        yield pos, timestamp, kind, server, length
        pos += length


def _query_text(body: bytes) -> str:
    """The statement of a Query event body (post-header, status variables and database skipped)."""
    if len(body) < 13:
        return ""
    db_len = body[8]
    status_len = struct.unpack("<H", body[11:13])[0]
    start = 13 + status_len + db_len + 1
    return body[start:start + 64].decode("utf-8", "replace").strip()


def _gtid_list(body: bytes) -> dict:
    count = struct.unpack("<I", body[:4])[0] & 0x0FFFFFFF if len(body) >= 4 else 0
    entries = {}
    for index in range(count):
        chunk = body[4 + 16 * index: 20 + 16 * index]
        if len(chunk) < 16:
            break
        dom, srv, seq = struct.unpack("<IIQ", chunk)
        # One entry per (domain, server): the domain's position is its highest sequence number.
        if dom not in entries or seq > entries[dom][1]:
            entries[dom] = (srv, seq)
    return entries


def scan(path: str, domain: int, after: int | None = None, limit: int | None = None) -> dict:
    """What the binlog file ``path`` holds, for cluster domain ``domain``, read event by event.

    Returns ``dict(name, size, end, start, gtid_list, first, last, first_gtid, last_gtid, server,
    first_time, last_time, first_offset, count, holes, disorder, others, closed, rotate_to, closed_at,
    offset, offset_first, offset_time, checksum, truncated)``:

    - ``start``: domain D's sequence number in the file's leading ``Gtid_list`` (the state before the
      file), None when D is not in it; ``gtid_list`` that list as text;
    - ``first``/``last``: the first and last COMPLETE event group of domain D (a group ends with its
      XID, a COMMIT/ROLLBACK query, an XA PREPARE, or its only statement when standalone (DDL)),
      with GTIDs, the server id of the last, times (the first group's GTID event, the last group's
      ending event) and the byte offset of the first;
    - ``holes``: ``[first, last]`` ranges of D missing between consecutive groups; ``disorder``: a
      group at or below its predecessor (never seen from one server; refused by the archiver);
    - ``others``: ``{domain: [first, last, count]}`` of the other domains (node-local writes);
    - ``closed``: the file ends with a Rotate or Stop event (a closed file); ``rotate_to``,
      ``closed_at``; ``end``: the offset after the last complete event; ``truncated``: bytes after
      it (a crash cut the last event);
    - ``offset``/``offset_first``/``offset_time``: with ``after``, where the first complete group
      of D after ``after`` begins, its sequence number and time (where a replay resumes).

    ``limit``: read at most this many bytes (the active file, as far as it was written).
    Raises GaleraError for a file that is not a binlog or is encrypted (``encrypt_binlog``).
    """
    out = dict(name=os.path.basename(path), size=0, end=4, start=None, gtid_list="", first=None, last=None,
               first_gtid=None, last_gtid=None, server=None, first_time=None, last_time=None, first_offset=None,
               count=0, holes=[], disorder=[], others={}, closed=False, rotate_to=None, closed_at=None,
               offset=None, offset_first=None, offset_time=None, checksum=False, truncated=0)
    with _open(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        size = size if limit is None else min(size, int(limit))
        out["size"] = size
        crc, group, listed = 0, None, False
        for pos, timestamp, kind, server, length in _events(handle, path, size):
            body_length = length - HEADER
            ends_group = False
            if kind == FORMAT_DESCRIPTION:
                body = handle.read(body_length)
                # MariaDB (5.3 and later) ends the event with the checksum algorithm and a CRC.
                crc = 4 if len(body) >= 5 and body[-5] == 1 else 0
                out["checksum"] = bool(crc)
            elif kind == START_ENCRYPTION:
                raise GaleraError(f"{path} is encrypted by the server (encrypt_binlog=ON): the archiver cannot read "
                                  "its GTIDs. Archive with encrypt_binlog=OFF and galera_backup_encrypt (the archive "
                                  "is encrypted with the backup key). Nothing was changed.", path=path)
            elif kind == GTID_LIST and not listed:
                entries = _gtid_list(handle.read(body_length - crc))
                listed = True
                out["gtid_list"] = format_gtid_list(entries)
                out["start"] = entries[domain][1] if domain in entries else None
            elif kind == GTID:
                seq, dom, flags = struct.unpack("<QIB", handle.read(13))
                group = dict(seq=seq, domain=dom, server=server, time=timestamp, offset=pos,
                             standalone=bool(flags & FL_STANDALONE))
            elif kind in (XID, XA_PREPARE):
                ends_group = group is not None
            elif kind in (QUERY, QUERY_COMPRESSED) and group is not None:
                if group["standalone"]:
                    ends_group = True
                elif kind == QUERY:
                    text = _query_text(handle.read(min(body_length, 4096))).upper()
                    ends_group = text.startswith(_ENDING_QUERIES)
            elif kind == ROTATE:
                body = handle.read(body_length - crc)
                if timestamp:  # the Rotate written by FLUSH (a new file's leading fake Rotate has time 0)
                    out.update(closed=True, closed_at=utc_text(timestamp),
                               rotate_to=body[8:].decode("utf-8", "replace") or None)
            elif kind == STOP:
                out.update(closed=True, closed_at=utc_text(timestamp))
            if ends_group:
                _add_group(out, group, domain, timestamp, after)
                group = None
            out["end"] = pos + length
    out["truncated"] = size - out["end"]
    return out


def _add_group(out: dict, group: dict, domain: int, ended: int, after: int | None) -> None:
    seq = group["seq"]
    if group["domain"] != domain:
        entry = out["others"].setdefault(str(group["domain"]), [seq, seq, 0])
        entry[1], entry[2] = seq, entry[2] + 1
        return
    last = out["last"]
    if last is not None:
        if seq <= last:
            out["disorder"].append([last, seq])
        elif seq > last + 1:
            out["holes"].append([last + 1, seq - 1])
    if out["first"] is None:
        out.update(first=seq, first_gtid=gtid_text(domain, group["server"], seq), first_time=utc_text(group["time"]),
                   first_offset=group["offset"])
    out.update(last=seq, last_gtid=gtid_text(domain, group["server"], seq), last_time=utc_text(ended),
               server=group["server"], count=out["count"] + 1)
    if after is not None and out["offset"] is None and seq > after:
        out.update(offset=group["offset"], offset_first=seq, offset_time=utc_text(group["time"]))


def position_gtid(path: str, offset: int) -> str:
    """The GTID position (all domains, as ``gtid_binlog_pos``) at byte ``offset`` of binlog ``path``:
    its leading ``Gtid_list`` updated by every GTID event before ``offset``. What
    ``BINLOG_GTID_POS(file, offset)`` answers, without a login: for a backup whose tool recorded the
    binlog file and offset but no GTID (module docstring)."""
    state, listed = {}, False
    with _open(path) as handle:
        size = min(os.fstat(handle.fileno()).st_size, int(offset))
        crc = 0
        for _pos, _ts, kind, server, length in _events(handle, path, size):
            if kind == FORMAT_DESCRIPTION:
                body = handle.read(length - HEADER)
                crc = 4 if len(body) >= 5 and body[-5] == 1 else 0
            elif kind == GTID_LIST and not listed:
                state.update(_gtid_list(handle.read(length - HEADER - crc)))
                listed = True
            elif kind == GTID:
                seq, dom = struct.unpack("<QI", handle.read(12))
                state[dom] = (server, seq)
    return format_gtid_list(state)


def replay_range(path: str, domain: int, after: int, stop: int | None = None, stop_time=None) -> dict:
    """The byte range of binlog ``path`` that replays the cluster domain's groups after sequence
    number ``after`` up to ``stop`` (included) or, with ``stop_time`` (ISO text), every group
    committed at or before it (its ending event's time); neither: to the file's end.

    Returns ``dict(start, stop, count, first, last, last_time, reached)``: ``start``/``stop`` the
    offsets for ``mariadb-binlog --start-position``/``--stop-position`` (``stop`` is the end of the
    last group applied), ``count`` the groups applied (None offsets and 0: nothing to apply here),
    ``reached`` True when the stop point lies in this file (later files are not needed)."""
    moment = parse_time(stop_time) if stop_time is not None else None
    if stop_time is not None and moment is None:
        raise GaleraError(f"stop time {stop_time!r} is not an ISO 8601 time. {NOTHING}")
    out = dict(start=None, stop=None, count=0, first=None, last=None, last_time=None, reached=False)
    with _open(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        group = None
        for pos, timestamp, kind, _server, length in _events(handle, path, size):
            body_length = length - HEADER
            ends = False
            if kind == START_ENCRYPTION:
                raise GaleraError(f"{path} is encrypted by the server (encrypt_binlog=ON). {NOTHING}", path=path)
            elif kind == GTID:
                seq, dom, flags = struct.unpack("<QIB", handle.read(13))
                group = dict(seq=seq, domain=dom, offset=pos, standalone=bool(flags & FL_STANDALONE))
            elif kind in (XID, XA_PREPARE):
                ends = group is not None
            elif kind in (QUERY, QUERY_COMPRESSED) and group is not None:
                if group["standalone"]:
                    ends = True
                elif kind == QUERY:
                    ends = _query_text(handle.read(min(body_length, 4096))).upper().startswith(_ENDING_QUERIES)
            if not ends:
                continue
            done, group = group, None
            if done["domain"] != domain or done["seq"] <= after:
                continue
            if (stop is not None and done["seq"] > stop) or (moment is not None and timestamp > moment.timestamp()):
                out["reached"] = True
                break
            if out["start"] is None:
                out.update(start=done["offset"], first=done["seq"])
            out.update(stop=pos + length, last=done["seq"], last_time=utc_text(timestamp), count=out["count"] + 1)
            if stop is not None and done["seq"] >= stop:
                out["reached"] = True
                break
    return out


def replay_done(plan: dict, span: dict, last: int | None) -> bool:
    """Whether a replay of ``plan`` (``replay_plan``) is complete after a file whose ``replay_range``
    was ``span`` and with ``last`` the last sequence number applied so far: at the stop GTID, or, for
    a stop time, when this file held the first transaction after it. A segment's own end (its
    ``stop`` is the smaller of its last GTID and the target) never ends the replay."""
    if plan.get("stop") is not None:
        return last is not None and last >= int(plan["stop"])
    return bool(span.get("reached"))


_SERVER_ID_LINE = re.compile(r"^/\*M?!\d+ SET @@session\.server_id\s*=[^;]*;\s*$", re.IGNORECASE)


def replay_keeps(line: str) -> bool:
    """Whether a line of ``mariadb-binlog`` output is sent to the server in a replay. Only its
    ``SET @@session.server_id=...`` statements are left out: a Galera node with
    ``wsrep_gtid_mode=ON`` refuses them (error 1231, measured on 10.11.19), and the cluster gives the
    replayed transactions its own server id anyway."""
    return _SERVER_ID_LINE.match(line) is None


def parse_until(text) -> dict:
    """``galera_restore_until``: ``latest``, a GTID (``1-1-4711``) or a UTC time (ISO 8601) to
    ``dict(stop_gtid, stop_time, text)`` (both None for ``latest``); ValueError otherwise."""
    value = str(text or "").strip()
    if value.lower() == "latest":
        return dict(stop_gtid=None, stop_time=None, text="latest")
    if GTID_PATTERN.match(value):
        return dict(stop_gtid=value, stop_time=None, text=value)
    moment = parse_time(value)
    if moment is None or not re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", value):
        raise ValueError(f"{value!r} is neither 'latest', a GTID (domain-server-sequence) nor a UTC time "
                         "(2026-12-02T10:15:00Z)")
    return dict(stop_gtid=None, stop_time=utc_text(moment), text=value)


# ---------------------------------------------------------------------------------------------
# The preconditions of point-in-time recovery

SETTING_NAMES = ("log_bin", "log_slave_updates", "binlog_format", "wsrep_gtid_mode", "wsrep_gtid_domain_id",
                 "gtid_domain_id", "server_id", "log_bin_basename", "encrypt_binlog", "binlog_checksum",
                 "gtid_strict_mode", "version", "version_comment", "wsrep_node_name", "wsrep_on")


def _on(value) -> bool:
    return value is True or str(value).upper() in ("ON", "1", "TRUE", "YES")


def node_settings(variables: dict, flavor: str = "mariadb") -> dict:
    """The ``galera_info`` ``binlog`` field of one node: its binary-log settings, what point-in-time
    recovery still misses here (``missing``) and the lines to add under ``[mariadb]`` (``settings``).

    ``ready`` is this node's verdict; ``cluster_verdict`` adds what only all nodes together show
    (one cluster domain, distinct local domains)."""
    v = variables
    out = dict(enabled=_on(v.get("log_bin")), format=str(v.get("binlog_format") or "").upper() or None,
               log_slave_updates=_on(v.get("log_slave_updates")), gtid_mode=_on(v.get("wsrep_gtid_mode")),
               cluster_domain=_int(v.get("wsrep_gtid_domain_id")), local_domain=_int(v.get("gtid_domain_id")),
               server_id=_int(v.get("server_id")), basename=v.get("log_bin_basename") or None,
               encrypted=_on(v.get("encrypt_binlog")), checksum=v.get("binlog_checksum"), flavor=flavor,
               missing=[], settings=[])
    missing, settings = out["missing"], out["settings"]
    if flavor != "mariadb":
        missing.append(f"the binlog archive reads MariaDB GTIDs; this is {flavor} (Percona XtraDB Cluster and "
                       "MySQL-wsrep use gtid_mode=ON, enforce_gtid_consistency=ON, log_bin, log_replica_updates and "
                       "binlog_format=ROW: see docs/pitr.md; archiving them is not supported yet)")
        out["ready"] = False
        return out
    if not out["enabled"]:
        missing.append("the binary log is off (log_bin)")
        settings.append("log_bin = mariadb-bin")
    if not out["log_slave_updates"]:
        missing.append("log_slave_updates is OFF: the node would binlog only the writes it took itself")
        settings.append("log_slave_updates = ON")
    if out["format"] != "ROW":
        missing.append(f"binlog_format is {out['format'] or 'unknown'}, not ROW (Galera replicates rows)")
        settings.append("binlog_format = ROW")
    if not out["gtid_mode"]:
        missing.append("wsrep_gtid_mode is OFF: the nodes would not give cluster writes the same GTIDs")
        settings.append("wsrep_gtid_mode = ON")
    if out["cluster_domain"] is None:
        settings.append("wsrep_gtid_domain_id = 1   # the same on every node")
    if out["local_domain"] is not None and out["local_domain"] == out["cluster_domain"]:
        missing.append(f"gtid_domain_id equals wsrep_gtid_domain_id ({out['cluster_domain']}): local writes of "
                       "this node would take GTIDs of the cluster domain")
        settings.append("gtid_domain_id = <a number distinct per node and from wsrep_gtid_domain_id>")
    if out["encrypted"]:
        missing.append("encrypt_binlog is ON: the archiver cannot read encrypted binlog files (the archive is "
                       "encrypted with the backup key instead)")
        settings.append("encrypt_binlog = OFF")
    out["ready"] = not missing
    return out


def cluster_verdict(nodes: dict) -> dict:
    """PITR verdict over every node's ``node_settings`` (``{host: settings or None}``): ``ready``,
    ``problems`` naming the node and the fix (one text each), and the cluster ``domain``."""
    problems = []
    for host, s in sorted(nodes.items()):
        if not isinstance(s, dict):
            problems.append(f"{host}: its binlog settings could not be read")
            continue
        for text in s.get("missing") or []:
            problems.append(f"{host}: {text}")
    good = {h: s for h, s in nodes.items() if isinstance(s, dict)}
    domains = sorted({s.get("cluster_domain") for s in good.values() if s.get("cluster_domain") is not None})
    if len(domains) > 1:
        problems.append("the nodes have different wsrep_gtid_domain_id (" + ", ".join(
            f"{h}={s.get('cluster_domain')}" for h, s in sorted(good.items())) + "): set one value on every node")
    locals_seen = {}
    for host, s in sorted(good.items()):
        local = s.get("local_domain")
        if local is not None:
            locals_seen.setdefault(local, []).append(host)
    for local, hosts in sorted(locals_seen.items()):
        if len(hosts) > 1:
            problems.append(f"gtid_domain_id {local} is set on {', '.join(hosts)}: give each node its own, so that "
                            "node-local writes never collide")
    fixes = {h: list(s.get("settings") or []) for h, s in sorted(good.items()) if s.get("settings")}
    if problems:
        message = ("point-in-time recovery is not ready: " + "; ".join(problems)
                   + "".join(f". On {h} add under [mariadb] and restart: {', '.join(lines)}" for h, lines in fixes.items())
                   + " (docs/pitr.md)")
    else:
        message = (f"point-in-time recovery is ready on {', '.join(sorted(good)) or 'no node'}: every node binlogs "
                   f"every cluster write with GTIDs of cluster domain {domains[0] if domains else '?'}")
    return dict(ready=not problems, problems=problems, domain=domains[0] if len(domains) == 1 else None,
                settings=fixes, message=message)


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The archive index

def new_index(cluster: str, cluster_uuid: str | None, domain: int) -> dict:
    """An empty index (the catalogue's state) of cluster ``cluster`` and cluster domain ``domain``."""
    return dict(format=FORMAT, kind=KIND, cluster=str(cluster), cluster_uuid=cluster_uuid, domain=int(domain),
                revision=0, updated_at=None, start=None, last=None, last_gtid=None, last_time=None,
                archived_through=None, node=None, segments=[])


def valid_index(index) -> bool:
    return (isinstance(index, dict) and index.get("kind") == KIND and index.get("format") == FORMAT
            and isinstance(index.get("segments"), list) and isinstance(index.get("domain"), int))


def check_index(index, cluster: str, cluster_uuid: str | None, where: str) -> dict:
    """``index`` when it is an archive index of this cluster (name, and state uuid when both are
    known), else GaleraError: an archive is only ever written or pruned when provably ours."""
    if not valid_index(index):
        raise GaleraError(f"{where} is not a binlog archive index of this collection: nothing there is touched. "
                          f"Move it away if it is not needed. {NOTHING}")
    other_uuid = bool(cluster_uuid and index.get("cluster_uuid") and index["cluster_uuid"] != cluster_uuid)
    if index.get("cluster") != str(cluster) or other_uuid:
        raise GaleraError(f"{where} is the archive of another cluster ({index.get('cluster')}, state uuid "
                          f"{index.get('cluster_uuid')}; this is {cluster}, {cluster_uuid}): nothing there is touched. "
                          f"{NOTHING}")
    return index


def cursor(index: dict) -> int | None:
    """The last archived (or given up as a gap) sequence number of the cluster domain; None: nothing yet."""
    return index.get("last")


def segments_sorted(index: dict) -> list:
    return sorted(index.get("segments") or [], key=lambda s: (int(s["first"]), s.get("kind") != "gap"))


def plan_files(files: list, index: dict, node: str, allow_gap: dict | None = None, now: str | None = None,
               unlogged: list | None = None, after: int | None = None) -> dict:
    """The segments a run on ``node`` archives from its scanned closed files (``scan`` results with
    ``after`` = the cursor, in binlog order), continuing the index's cursor (the continuity rule of
    the module's docstring).

    Returns ``dict(segments=[new segments, storage fields not yet set], gap=None or dict(first,
    last), hole=None or dict(first, last, file), skipped=[file names already archived],
    through=time)``:

    - a file whose groups of the domain all lie at or below the cursor is skipped;
    - the first file holding cursor+1 becomes a segment starting at the cursor, ``offset`` where
      cursor+1 begins in it (its head, at or below the cursor, is stored but never replayed);
    - when this node's next group after the cursor is not cursor+1: with ``allow_gap`` (the caller
      proved that no node still has cursor+1: ``dict(first, last)`` from ``choose_node``), a gap
      segment is added and archiving goes on after it; otherwise it stops and ``hole`` says where;
    - with no cursor yet, ``after`` (``unbroken_from``) stands in for it: the archive starts where
      the node's unbroken history begins (``files`` scanned with that ``after``);
    - a break that lies in one range of ``unlogged`` (sequence numbers no node binlogged, from
      ``choose_node``) is no break: the segment holding it lists it (``unlogged``) and goes on;
    - ``through``: the close time of the newest file examined before archiving stopped: every
      write committed before that moment is archived (the archive's lag is measured from it).
    """
    domain = index["domain"]
    last = cursor(index)
    if last is None and after is not None:
        last = int(after)
    out = dict(segments=[], gap=None, hole=None, skipped=[], through=None)

    def hole(first, upto, info):
        """A gap segment when allowed (the new cursor), else None (archiving stops here)."""
        if allow_gap and int(allow_gap["first"]) == first and int(allow_gap["last"]) >= upto:
            out["gap"] = dict(first=first, last=upto)
            out["segments"].append(gap_segment(domain, first, upto, node, info.get("server"), now))
            return upto
        out["hole"] = dict(first=first, last=upto, file=info["name"])
        return None

    for info in files:
        if info.get("disorder"):
            raise GaleraError(f"{node}: binlog file {info['name']} has GTIDs of domain {domain} out of order "
                              f"({info['disorder'][0]}): this node's binlog is not one history. Archive from another "
                              f"node. {NOTHING}")
        if info.get("first") is None:  # no cluster write in this file: its Gtid_list still shows a break
            if last is not None and info.get("start") is not None and info["start"] > last:
                last = hole(last + 1, info["start"], info)
                if last is None:
                    break
            out["through"] = info.get("closed_at") or out["through"]
            continue
        if last is not None and info["last"] <= last:
            out["skipped"].append(info["name"])
            out["through"] = info.get("closed_at") or out["through"]
            continue
        crossed = []
        if last is None:
            start = info["first"] - 1
            first, offset, first_time = info["first"], info["first_offset"], info["first_time"]
        else:
            if info.get("offset_first") is not None:
                first, offset, first_time = info["offset_first"], info["offset"], info["offset_time"]
            else:
                first, offset, first_time = info["first"], info["first_offset"], info["first_time"]
            if first > last + 1 and within(unlogged, last + 1, first - 1):
                crossed.append(dict(first=last + 1, last=first - 1))
            elif first > last + 1:
                last = hole(last + 1, first - 1, info)
                if last is None:
                    break
            start = last
        inner = [dict(first=max(h[0], start + 1), last=h[1]) for h in info.get("holes") or [] if h[1] > start]
        crossed += [h for h in inner if within(unlogged, h["first"], h["last"]) and h not in crossed]
        inner = [h for h in inner if not within(unlogged, h["first"], h["last"])]
        if inner:  # a break inside the file: a segment is one unbroken range, so stop before it
            out["hole"] = dict(inner[0], file=info["name"])
            break
        extra = dict(unlogged=crossed) if crossed else {}
        out["segments"].append(dict(
            kind="file", node=node, file=info["name"], start=start, first=first, last=info["last"],
            first_gtid=gtid_text(domain, info.get("server") or 0, first), last_gtid=info["last_gtid"],
            offset=offset, end=info["end"], first_time=first_time, last_time=info["last_time"],
            closed_at=info.get("closed_at"), count=info["last"] - first + 1, others=info.get("others") or {},
            head_skipped=first != info["first"], **extra))
        last = info["last"]
        out["through"] = info.get("closed_at") or out["through"]
    return out


def gap_segment(domain: int, first: int, last: int, node: str | None, server: int | None = None,
                found_at: str | None = None) -> dict:
    return dict(kind="gap", start=first - 1, first=first, last=last, node=node,
                first_gtid=gtid_text(domain, server or 0, first), last_gtid=gtid_text(domain, server or 0, last),
                found_at=found_at, count=last - first + 1)


def add_segments(index: dict, segments: list, node: str, through: str | None, now: str) -> dict:
    """A new index: ``index`` with ``segments`` (continuing its cursor, checked) and the new cursor.
    Raises GaleraError when a segment would not start exactly at the cursor (skip or duplicate)."""
    new = dict(index, segments=list(index.get("segments") or []))
    last = cursor(new)
    for segment in segments:
        if last is not None and int(segment["start"]) != last:
            raise GaleraError(f"segment {segment.get('name') or segment.get('file')} starts after sequence number "
                              f"{segment['start']}, the archive's cursor is {last}: it would "
                              f"{'skip' if segment['start'] > last else 'repeat'} GTIDs. {NOTHING}")
        new["segments"].append(dict(segment))
        last = int(segment["last"])
        if new.get("start") is None:
            new["start"] = int(segment["start"])
        new.update(last=last, last_gtid=segment.get("last_gtid"),
                   last_time=segment.get("last_time") or new.get("last_time"))
    if segments:
        new["node"] = node
    if through and (new.get("archived_through") is None or
                    (parse_time(through) or datetime.min.replace(tzinfo=timezone.utc))
                    > (parse_time(new["archived_through"]) or datetime.min.replace(tzinfo=timezone.utc))):
        new["archived_through"] = through
    new["revision"] = int(new.get("revision") or 0) + 1
    new["updated_at"] = now
    return new


def check(index: dict, present=None) -> dict:
    """Continuity of the whole archive, as a restore would need it.

    ``present``: the segment names found where the archive is read (None: not checked). Returns
    ``dict(ok, gaps=[dict(first, last, reason, text)], missing=[names], first, last)``: recorded gaps,
    holes between segments (an index edited by hand or a lost row), overlaps, and segments whose
    file is missing (their range is a gap for a restore)."""
    domain = index["domain"]
    gaps, missing = [], []
    expected = index.get("start")
    server = None
    for segment in segments_sorted(index):
        first, last = segment_begins(segment), int(segment["last"])
        server = server if server is not None else _server_of(segment)
        if expected is not None and first > expected + 1:
            gaps.append(_gap(domain, expected + 1, first - 1, "no segment of the index holds these GTIDs", server))
        elif expected is not None and first <= expected:
            gaps.append(dict(first=first, last=min(last, expected), reason="overlap", text=(
                f"segments overlap at {range_text(domain, first, min(last, expected), server)}: the index is not "
                "one history")))
        if segment.get("kind") == "gap":
            gaps.append(_gap(domain, first, last, f"recorded as a gap: {segment.get('reason') or 'no node had them'}",
                             server))
        elif present is not None and segment.get("name") not in present:
            missing.append(segment.get("name"))
            gaps.append(_gap(domain, first, last, f"file {segment.get('name')} is missing", server))
        expected = max(expected if expected is not None else last, last)
    return dict(ok=not gaps, gaps=gaps, missing=missing, first=index.get("start"), last=index.get("last"))


def segment_begins(segment: dict) -> int:
    """The first sequence number a segment accounts for: its ``first``, or the one after its
    ``start`` when what lies between is unlogged (no node binlogged it: nothing to replay)."""
    first, start = int(segment["first"]), int(segment["start"])
    if first > start + 1 and within(segment.get("unlogged"), start + 1, first - 1):
        return start + 1
    return first


def unlogged_of(index: dict) -> list:
    """Every unlogged range the index's segments crossed, ``[dict(first, last)]`` in order."""
    return [dict(first=int(u["first"]), last=int(u["last"])) for s in segments_sorted(index)
            for u in s.get("unlogged") or []]


def _server_of(segment: dict) -> int | None:
    match = GTID_PATTERN.match(str(segment.get("last_gtid") or ""))
    return int(match.group(2)) if match and segment.get("kind") != "gap" else None


def _gap(domain: int, first: int, last: int, reason: str, server=None) -> dict:
    return dict(first=first, last=last, reason=reason,
                text=f"GTID gap {range_text(domain, first, last, server)} ({last - first + 1} transaction"
                     f"{'s' if last != first else ''}): {reason}")


# ---------------------------------------------------------------------------------------------
# Retention

def backup_floor(backups: list, cluster: str, domain: int) -> dict:
    """Where the archive must start for the backups kept: the smallest cluster-domain sequence
    number among the restorable backups' binlog positions (``position.binlog.gtid``). Returns
    ``dict(seq, id, without)``: ``seq`` None when no backup records a GTID of the domain (then
    retention deletes nothing); ``without`` the ids of backups that cannot start a replay."""
    best, best_id, without = None, None, []
    for backup in backups or []:
        if not isinstance(backup, dict):
            continue
        cluster_field = backup.get("cluster")
        name = cluster_field.get("name") if isinstance(cluster_field, dict) else cluster_field
        if name is not None and str(name) != str(cluster):
            continue
        position = backup.get("position") if isinstance(backup.get("position"), dict) else {}
        binlog = position.get("binlog") if isinstance(position.get("binlog"), dict) else {}
        seq = seq_of(binlog.get("gtid"), domain)
        if seq is None:
            without.append(backup.get("id"))
            continue
        if best is None or seq < best:
            best, best_id = seq, backup.get("id")
    return dict(seq=best, id=best_id, without=sorted(str(i) for i in without if i))


def plan_retention(index: dict, floor: int | None) -> dict:
    """Segments no kept backup needs: those whose every GTID is at or below ``floor`` (the oldest
    kept backup's position; a replay from it starts at floor+1). None: nothing is removed.
    Returns ``dict(remove=[segments], keep=[segments], start)``: ``start`` the archive's new start."""
    ordered = segments_sorted(index)
    if floor is None:
        return dict(remove=[], keep=ordered, start=index.get("start"))
    remove = [s for s in ordered if int(s["last"]) <= floor]
    keep = [s for s in ordered if int(s["last"]) > floor]
    start = index.get("start")
    if remove:
        start = max(int(s["last"]) for s in remove)
    return dict(remove=remove, keep=keep, start=start)


def apply_retention(index: dict, planned: dict, now: str) -> dict:
    if not planned["remove"]:
        return index
    return dict(index, segments=list(planned["keep"]), start=planned["start"], revision=int(index["revision"]) + 1,
                updated_at=now)


# ---------------------------------------------------------------------------------------------
# Which node archives

def coverage(files: list) -> list:
    """``[[after, upto]]``: the ranges of the cluster domain a node's binlog files hold without a
    break (``after`` exclusive), from its files' ``scan`` summaries in binlog order."""
    ranges = []
    for info in files:
        first, last, start = info.get("first"), info.get("last"), info.get("start")
        low = first - 1 if first is not None else start
        if low is None:
            continue
        high = last if last is not None else low
        for gap in info.get("holes") or []:
            _extend(ranges, low, gap[0] - 1)
            low = gap[1]
        _extend(ranges, low, high)
    return ranges


def history_holes(files: list) -> list:
    """``[[first, last]]``: the cluster-domain sequence numbers a node's binlog skipped while it
    was binlogging without a break, from its files' ``scan`` summaries in binlog order: holes
    between two groups of one file, and between files when the next file's ``Gtid_list`` says the
    node's state had not moved since the file before (no SST, restore or RESET MASTER between).
    A hole every node shows at the same place is a sequence number the cluster gave to something
    no node binlogged (see ``unlogged_ranges``)."""
    holes, seen = [], None
    for info in files:
        first, start = info.get("first"), info.get("start")
        if first is not None and seen is not None and start == seen and first > seen + 1:
            holes.append([seen + 1, first - 1])
        holes.extend([int(h[0]), int(h[1])] for h in info.get("holes") or [])
        if info.get("last") is not None:
            seen = info["last"]
        elif start is not None:
            seen = start if seen is None or start >= seen else seen
    return holes


def unlogged_ranges(holes: dict, ranges: dict, after: int | None = None) -> list:
    """The GTID ranges of the cluster domain that no node binlogged: ``[dict(first, last)]``.

    ``holes``: ``{host: history_holes}``, ``ranges``: ``{host: coverage}`` of the healthy, ready
    nodes. Galera gives a sequence number to every total-order (TOI) statement, also to a DDL
    that fails or changes nothing (``CREATE TABLE IF NOT EXISTS`` of an existing table), and no
    node binlogs those (measured on MariaDB 10.11). Such a range has nothing to replay: the archive
    goes on across it. Only with proof: at least two nodes show exactly this hole while
    binlogging without a break, and no node's binlog holds any of it. A hole only one node shows
    (a write with ``sql_log_bin=0`` there, binlogged by the others) stays a break of that node."""
    seen = {}
    for host, found in (holes or {}).items():
        for first, last in found or []:
            if after is None or last > after:
                seen.setdefault((int(first), int(last)), set()).add(host)
    out = []
    for (first, last), hosts in sorted(seen.items()):
        held = any(low < last and high >= first for found in (ranges or {}).values() for low, high in found or [])
        if len(hosts) >= 2 and not held:
            out.append(dict(first=first, last=last))
    return out


def bridge(ranges: list, unlogged: list) -> list:
    """``ranges`` (``coverage``) with the breaks that are exactly an unlogged range joined."""
    spans = {(int(u["first"]), int(u["last"])) for u in unlogged or []}
    out = []
    for low, high in ranges or []:
        if out and (out[-1][1] + 1, low) in spans:
            out[-1][1] = max(out[-1][1], high)
        else:
            out.append([low, high])
    return out


def within(unlogged, first: int, last: int) -> bool:
    """Whether the sequence numbers ``first``..``last`` all lie in one range of ``unlogged``."""
    return any(int(u["first"]) <= first and last <= int(u["last"]) for u in unlogged or [])


def unbroken_from(files: list, unlogged: list | None = None) -> int | None:
    """Where a node's unbroken binlog history up to its newest GTID begins (exclusive: the cluster
    domain's sequence number before it), from its files' ``scan`` summaries; breaks that are
    exactly an unlogged range do not count. None: no history of the domain. An archive that has
    no cursor yet starts there: nothing before a break can be continued from this node."""
    ranges = bridge(coverage(files), unlogged)
    return ranges[-1][0] if ranges else None


def _extend(ranges: list, low: int, high: int) -> None:
    if ranges and low <= ranges[-1][1] and low >= ranges[-1][0]:
        ranges[-1][1] = max(ranges[-1][1], high)
    else:
        ranges.append([low, high])


def covers(ranges, seq: int) -> int | None:
    """How far from ``seq`` (the cursor) a node's ranges reach without a break, or None when they do
    not hold ``seq``+1 (``seq`` must lie inside a range: its next GTID follows there)."""
    for low, high in ranges or []:
        if low <= seq <= high:
            return high
    return None


def choose_node(probes: dict, order=None) -> dict:
    """The node that archives this run, from every host's probe (``{host: probe or None}``).

    A candidate is healthy (Synced, Primary, ready) and PITR-ready. With no cursor yet: the
    candidate whose binlogs reach furthest back without a break up to its newest GTID. Else: the previous archiving node when it holds
    cursor+1, or the candidate holding cursor+1 that reaches furthest (ties: ``order``). When no
    candidate holds cursor+1, those GTIDs are gone from the cluster: the candidate whose history
    starts nearest after the cursor is chosen and the range between is named (``gap``), to be
    recorded as a gap (never papered over).

    Sequence numbers no node binlogged (``unlogged_ranges``, from the probes' ``holes``) do not
    break a node's binlogs here, and are passed to the archiver (``unlogged``) for the same reason.

    Returns ``dict(ok, node (inventory host), reason, gap=None or dict(first, last), candidates,
    refused={host: why}, cursor, keep_from, unlogged=[dict(first, last)])``; ``ok`` False with
    ``reason`` when no node can archive; ``keep_from`` the oldest backup position any node keeps
    (for retention)."""
    order = list(order or sorted(probes))
    refused, candidates = {}, []
    state = {}
    floors = []
    for host in order:
        probe = probes.get(host)
        if not isinstance(probe, dict) or not probe.get("probed"):
            refused[host] = (probe or {}).get("msg") or "no probe result (unreachable, or its server is down)"
            continue
        seq = (probe.get("oldest_backup") or {}).get("seq")
        if seq is not None:
            floors.append(int(seq))
        if not probe.get("healthy"):
            refused[host] = probe.get("health") or "not Synced in a Primary component"
            continue
        if not (probe.get("settings") or {}).get("ready"):
            refused[host] = "; ".join((probe.get("settings") or {}).get("missing") or ["binlog settings not ready"])
            continue
        candidates.append(host)
        seen = probe.get("archive") or {}
        if int(seen.get("revision") or 0) > int(state.get("revision") or 0):
            state = seen
    last = state.get("last")
    out = dict(ok=False, node=None, reason=None, gap=None, candidates=candidates, refused=refused, cursor=last,
               keep_from=min(floors) if floors else None, unlogged=[])
    if not candidates:
        out["reason"] = "no node can archive: " + "; ".join(f"{h}: {why}" for h, why in refused.items())
        return out
    ranges = {h: probes[h].get("coverage") or [] for h in candidates}
    out["unlogged"] = unlogged_ranges({h: probes[h].get("holes") or [] for h in candidates}, ranges, last)
    ranges = {h: bridge(found, out["unlogged"]) for h, found in ranges.items()}
    _choose(probes, order, candidates, refused, ranges, state, last, out)
    if out["unlogged"]:
        out["reason"] += ("; no node binlogged the sequence numbers " + ", ".join(
            f"{u['first']}..{u['last']}" for u in out["unlogged"]) + " (a DDL that failed or changed nothing "
            "takes one): nothing to replay there, the archive goes on across them")
    return out


def _choose(probes: dict, order: list, candidates: list, refused: dict, ranges: dict, state: dict, last,
            out: dict) -> None:
    """Fills in ``out`` (``choose_node``'s result): the node, the reason, a gap."""
    if last is None:
        # Only the unbroken run of GTIDs that reaches a node's newest counts: history before a break in its binlogs
        # cannot start an archive that has to continue from there (its file holding the break is not archived).
        def earliest(host):
            return (ranges[host][-1][0] if ranges[host] else float("inf"), order.index(host))
        out.update(ok=True, node=min(candidates, key=earliest),
                   reason="the archive starts on the node whose binlogs reach furthest back without a break")
        return
    reach = {h: covers(ranges[h], last) for h in candidates}
    previous = _previous_host(probes, order, state.get("node"), refused)
    holding = [h for h in candidates if reach[h] is not None]
    if previous in holding:
        out.update(ok=True, node=previous, reason=f"{previous} archived last and holds the GTIDs after {last}")
        return
    if holding:
        best = max(holding, key=lambda h: (reach[h], -order.index(h)))
        if previous:
            why = f"{previous} cannot ({refused.get(previous) or 'its binlogs do not continue the archive'}); "
        elif state.get("node"):
            why = f"{state['node']}, which archived last, did not answer; "
        else:
            why = ""
        out.update(ok=True, node=best, reason=f"{why}{best} holds the GTIDs after {last}: it continues (continuity by "
                                              "GTID)")
        return
    starts = {}
    for host in candidates:
        after = [low for low, _high in ranges[host] if low > last]
        if after:
            starts[host] = min(after)
    if not starts:
        node = previous if previous in candidates else candidates[0]
        out.update(ok=True, node=node, reason=f"no node holds GTIDs after {last} yet: nothing new to archive")
        return
    best = min(starts, key=lambda h: (starts[h], order.index(h)))
    out.update(ok=True, node=best, gap=dict(first=last + 1, last=starts[best]),
               reason=f"no node holds the GTIDs {last + 1}..{starts[best]} any more (binlogs purged, or nodes filled by "
                      f"SST): recorded as a gap; {best} continues after it")


def _previous_host(probes: dict, order: list, node, refused: dict):
    """The inventory host of ``node`` (the node that archived last): the host whose probe names it,
    else the host of that name, else the only host that did not answer (a node that is down cannot
    say its name); None when unknown."""
    if not node:
        return None
    for host in order:
        if (probes.get(host) or {}).get("node") == node:
            return host
    if node in order:
        return node
    silent = [h for h in order if h in refused and not (probes.get(h) or {}).get("node")]
    return silent[0] if len(silent) == 1 else None


# ---------------------------------------------------------------------------------------------
# The replay plan: what a restore to a point asks

def replay_plan(index: dict, start, stop_gtid=None, stop_time=None, present=None) -> dict:
    """The segments that replay the cluster's writes from a backup's position to a point.

    ``start``: the backup's GTID position (``position.binlog.gtid`` text) or the cluster domain's
    sequence number; replay begins after it. Stop at ``stop_gtid`` (a GTID text or sequence number,
    included), or at ``stop_time`` (ISO text: every transaction committed at or before it), or,
    with neither, at the newest archived GTID. ``present``: the segment names available where the
    files will be fetched from (None: not checked).

    Returns ``dict(domain, start, stop, stop_time, segments, files, first_gtid, last_gtid)``; each
    segment holds its index entry's storage fields (``name``, ``sha256``, ``bytes``, ``compress``,
    ``encryption``, ``offset``, ``node``, ``file``) and ``skip_through``, the last sequence number
    NOT to apply from it (its head overlaps the backup or the segment before: apply only groups of
    ``domain`` after it, e.g. ``mariadb-binlog --do-domain-ids=<domain> --start-position=<gtid>``
    with GTID ``<domain>-<server>-<skip_through>``, which is exclusive, or ``_binlog.scan(path,
    domain, after=skip_through)["offset"]``), and ``stop``, the last sequence number to apply (None
    with ``stop_time``: ``--stop-datetime``).

    Refuses (GaleraError with ``gap``, naming the GTID range) when the archive starts after the
    backup, when a recorded gap, a hole or a missing file lies in the range, or when the archive
    does not reach the stop point: a point-in-time restore never crosses a gap silently (R4).
    """
    domain = index["domain"]
    begin = start if isinstance(start, int) else seq_of(start, domain)
    if begin is None:
        raise GaleraError(f"the backup's binlog position {start!r} has no GTID of the cluster domain {domain}: it "
                          f"cannot start a replay. Take a backup with the binary log on (wsrep_gtid_mode). {NOTHING}")
    stop = None
    if stop_gtid is not None:
        stop = stop_gtid if isinstance(stop_gtid, int) else seq_of(stop_gtid, domain)
        if stop is None:
            raise GaleraError(f"stop GTID {stop_gtid!r} is not a GTID of the cluster domain {domain}. {NOTHING}")
        if stop < begin:
            raise GaleraError(f"the stop GTID {stop_gtid} is before the backup's position ({domain}-x-{begin}): "
                              f"choose a later point or an older backup. {NOTHING}")
    moment = None
    if stop_time is not None:
        moment = parse_time(stop_time)
        if moment is None:
            raise GaleraError(f"stop time {stop_time!r} is not an ISO 8601 time (2026-12-02T10:15:00Z). {NOTHING}")
    archive_start, last = index.get("start"), index.get("last")
    if archive_start is None or last is None:
        raise GaleraError(f"the binlog archive of {index.get('cluster')} is empty: nothing to replay. {NOTHING}")
    if archive_start > begin:
        raise _refusal(index, begin + 1, archive_start, "the archive begins after the backup's position: restore a "
                       "newer backup", begin, stop if stop is not None else last)
    if stop is not None and stop > last:
        raise _refusal(index, last + 1, stop, "not archived yet: run the archiver, or choose an earlier point",
                       begin, stop)
    if moment is not None:
        through = parse_time(index.get("archived_through")) or parse_time(index.get("last_time"))
        if through is None or moment > through:
            raise GaleraError(f"the binlog archive holds the writes committed up to "
                              f"{index.get('archived_through') or 'nothing'}, not up to {stop_time}: run the archiver, "
                              f"or choose an earlier time. {NOTHING}")
    target = stop if stop is not None else last
    for skipped in unlogged_of(index):
        if skipped["first"] <= target <= skipped["last"]:
            target = skipped["first"] - 1  # nothing was binlogged there: the replay ends at the group before
    chosen, expected = [], begin
    for segment in segments_sorted(index):
        first, seg_last = segment_begins(segment), int(segment["last"])
        if seg_last <= expected:
            continue
        if first > target:
            break
        if moment is not None and segment.get("kind") != "gap" and chosen:
            begins = parse_time(segment.get("first_time"))
            if begins is not None and begins > moment:
                break  # every write of this segment and after it came after the point in time
        if first > expected + 1:
            raise _refusal(index, expected + 1, first - 1, "no segment of the index holds them", begin, target)
        if segment.get("kind") == "gap":
            raise _refusal(index, max(first, expected + 1), min(seg_last, target),
                           segment.get("reason") or "recorded as a gap: no node had them any more", begin, target)
        if present is not None and segment.get("name") not in present:
            raise _refusal(index, max(first, expected + 1), min(seg_last, target),
                           f"archived file {segment.get('name')} is missing", begin, target)
        item = {k: segment.get(k) for k in ("name", "node", "file", "first", "last", "first_gtid", "last_gtid",
                                            "offset", "end", "sha256", "bytes", "source_sha256", "compress",
                                            "encryption", "first_time", "last_time")}
        item.update(skip_through=max(expected, int(segment["start"])),
                    stop=min(seg_last, target) if moment is None else None)
        chosen.append(item)
        expected = seg_last
        if moment is None and expected >= target:
            break
    if moment is None and expected < target:
        raise _refusal(index, expected + 1, target, "not archived", begin, target)
    server = _server_of(chosen[0]) if chosen else None
    return dict(domain=domain, start=begin, stop=target if moment is None else None, stop_time=stop_time,
                segments=chosen, files=[s["name"] for s in chosen],
                first_gtid=gtid_text(domain, server or 0, begin + 1) if chosen else None,
                last_gtid=gtid_text(domain, server or 0, target) if chosen and moment is None else None)


def _refusal(index: dict, first: int, last: int, reason: str, begin: int, target: int) -> GaleraError:
    domain = index["domain"]
    return GaleraError(f"the binlog archive cannot replay from {domain}-x-{begin} to {domain}-x-{target}: GTID gap "
                       f"{range_text(domain, first, last)} ({reason}). A point-in-time restore never crosses a gap: "
                       f"restore a backup taken after the gap, or stop before it. {NOTHING}",
                       gap=dict(first=first, last=last, domain=domain, reason=reason))

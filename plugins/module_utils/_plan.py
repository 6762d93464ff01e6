# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The backup's plan, decided on the controller before anything changes (private, pure).

``check_settings`` judges the role's settings; ``plan`` judges the cluster from every member's
galera_info result (one cluster, Primary, all Synced, none desynced, the expected size, no lease
held), chooses the node to back up (explicit, or the member with the fewest client commits: not the
one the application writes to) and names the run's lease owner. The role prints ``report`` and stops
on ``errors``; the filter plugin ``dbtools.galera.backup_plan`` exposes ``plan``.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog, _paths, _tools, _typed
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

NOTHING = "Nothing was changed."
PREFIX = "galera_backup_"


INTS = ("compress_level", "threads", "max_incrementals", "verify_sample", "throttle", "nice", "ionice_level",
        "max_duration", "min_free_bytes", "lease_ttl", "partial_margin", "retention", "keep_max_age", "drain_timeout",
        "sync_timeout", "progress_interval", "max_recv_queue", "min_cluster_size")
FLOATS = ("free_space_factor", "min_free_fraction", "sample_seconds", "hard_limit_fraction")


def typed_settings(s: dict) -> dict:
    """The role's settings with their numbers and booleans typed (``_typed``: ansible-core < 2.19)."""
    return _typed.typed(s, INTS, FLOATS, ("encrypt",))


def check_settings(s: dict) -> list:
    """What is wrong with the backup settings, as texts naming the variable (pure; [] when fine).

    The role's plan runs this on the controller before anything touches a node; preflight again.
    """
    s = typed_settings(s)
    errors = []

    def need(ok, text):
        if not ok:
            errors.append(text)

    v = "galera_backup_"
    need(s.get("lease_ttl", 10) >= 10, f"{v}lease_ttl={s.get('lease_ttl')} must be at least 10")
    need(s.get("max_duration", 1) >= 1, f"{v}max_duration={s.get('max_duration')} must be at least 1")
    need(s.get("retention", 1) >= 1, f"{v}retention={s.get('retention')} must be at least 1")
    for name in ("drain_timeout", "sync_timeout", "sample_seconds", "free_space_factor", "max_recv_queue",
                 "min_cluster_size", "max_incrementals", "throttle", "verify_sample", "min_free_bytes"):
        if name in s and s[name] is not None:
            need(s[name] >= 0, f"{v}{name}={s[name]:g} must not be negative")
    if "progress_interval" in s:
        need(s["progress_interval"] >= 1, f"{v}progress_interval={s['progress_interval']} must be at least 1")
    if "hard_limit_fraction" in s:
        need(0 <= s["hard_limit_fraction"] < 1, f"{v}hard_limit_fraction={s['hard_limit_fraction']} must be in [0, 1)")
    if s.get("min_free_fraction") is not None:
        need(0 <= s["min_free_fraction"] <= 1, f"{v}min_free_fraction={s['min_free_fraction']} must be 0 to 1")
    need(1 <= s.get("compress_level", 3) <= 19, f"{v}compress_level={s.get('compress_level')} must be 1 to 19")
    need(s.get("threads", 1) >= 1, f"{v}threads={s.get('threads')} must be at least 1")
    need(-20 <= s.get("nice", 0) <= 19, f"{v}nice={s.get('nice')} must be -20 to 19")
    need(0 <= s.get("ionice_level", 7) <= 7, f"{v}ionice_level={s.get('ionice_level')} must be 0 to 7")
    method = s.get("method", "auto")
    if s.get("encrypt"):
        need(s.get("compress") == "zstd", f"{v}encrypt needs {v}compress=zstd (the stream is compressed, then encrypted)")
        need(bool(s.get("encrypt_key") or s.get("encrypt_key_file")),
             f"{v}encrypt is true but neither {v}encrypt_key nor {v}encrypt_key_file is set")
        need(method != "mydumper", f"{v}encrypt cannot encrypt mydumper's files as a stream; use mariabackup, "
                                   "xtrabackup or mysqldump")
    need(s.get("type", "full") == "full" or method in ("auto",) + _tools.PHYSICAL,
         f"{v}type=incremental needs a physical method (mariabackup or xtrabackup), not {method}")
    need(s.get("verify", "checksum") != "prepare" or method in ("auto",) + _tools.PHYSICAL,
         f"{v}verify=prepare needs a physical backup (mariabackup or xtrabackup), not {method}; use checksum or restore")
    for name, label in (("dir", f"{v}dir"), ("verify_dir", f"{v}verify_dir"), ("metrics_dir", f"{v}metrics_dir")):
        if name != "dir" and not s.get(name):
            continue
        try:
            _paths.check_dir_text(s.get(name), label)
        except GaleraError as exc:
            errors.append(exc.msg.replace(" " + NOTHING, ""))
    if s.get("encrypt_key_file"):
        key_file = s["encrypt_key_file"]
        need(_paths.printable(key_file) and key_file.startswith("/") and ".." not in key_file.split("/"),
             f"{v}encrypt_key_file={key_file!r} must be an absolute, normalised path without control characters")
    for name in ("file_owner", "file_group"):
        try:
            _paths.check_name(s.get(name), f"{v}{name}", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$",
                              what="user or group name")
        except GaleraError as exc:
            errors.append(exc.msg.replace(" " + NOTHING, ""))
    for index, arg in enumerate(s.get("extra_args") or []):
        text = str(arg)
        need(_paths.printable(text), f"{v}extra_args[{index}] holds a control character")
        if text.startswith("--defaults") or text.startswith("--no-defaults"):
            errors.append(f"{v}extra_args[{index}]={text!r}: the option file is the collection's (credentials); use "
                          "the login variables instead")
            continue
        option = text.split("=", 1)[0]
        if option in OWN_OPTIONS:
            errors.append(f"{v}extra_args[{index}]={text!r}: the collection sets {option} itself (where the backup "
                          "goes and what it is); use the role's variables instead")
    if "retention" in s or s.get("keep_tiers") or s.get("keep_max_age"):
        tiers = s.get("keep_tiers") or {}
        try:
            if not isinstance(tiers, dict):
                raise ValueError("keep_tiers must be a dict of tiers (hourly, daily, weekly, monthly, yearly)")
            _catalog.retention_policy(s.get("retention") or None, max_age=s.get("keep_max_age") or None, **tiers)
        except (TypeError, ValueError) as exc:
            errors.append(f"{v}retention / {v}keep / {v}keep_max_age: {exc}")
    for index, dest in enumerate(s.get("copies") or []):
        errors.extend(f"{v}copies[{index}]: {text}" for text in check_copy(dest))
    return errors


# Options of the backup tools that say where the backup goes or what it is: the collection's own.
OWN_OPTIONS = frozenset((
    "--target-dir", "--extra-lsndir", "--stream", "--incremental-lsn", "--incremental-basedir", "--incremental-dir",
    "--backup", "--prepare", "--copy-back", "--move-back", "--datadir", "--outputdir", "-o", "--galera-info",
    "--socket", "--host", "--port", "--user", "--password", "-p", "-u", "-h", "-S", "--result-file", "-r",
))


def check_copy(dest) -> list:
    """What is wrong with one galera_backup_copies entry, from its text (the stores check the rest)."""
    if not isinstance(dest, dict):
        return ["must be a dict with name, type and the destination's options"]
    errors = []
    name = dest.get("name")
    if name is not None:
        try:
            _paths.check_name(str(name), "name", pattern=r"^[A-Za-z0-9_.-]{1,64}$", what="destination name")
        except GaleraError:
            errors.append(f"name={name!r} must be letters, digits, '_', '.', '-' (at most 64), not '.' or '..'")
    kind = dest.get("type")
    if kind not in ("ssh", "s3"):
        errors.append(f"type={kind!r} must be ssh or s3")
    for key in ("host", "user", "bucket"):
        value = dest.get(key)
        if value is not None and (not _paths.printable(str(value)) or str(value).startswith("-")
                                  or any(c in str(value) for c in " \t'\"\\`$;|&<>()*?")):
            errors.append(f"{key}={value!r} holds characters a {key} name never has")
    for key in ("path", "prefix", "identity_file", "known_hosts_file"):
        value = dest.get(key)
        if value is not None and (not _paths.printable(str(value)) or ".." in str(value).split("/")):
            errors.append(f"{key}={value!r} must be printable and hold no '..' component")
    keep = dest.get("keep")
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
        errors.append(f"keep={keep!r} must be an integer of at least 1")
    tiers = dest.get("keep_tiers")
    if tiers is not None:
        try:
            if not isinstance(tiers, dict):
                raise ValueError("keep_tiers must be a dict of tiers")
            _catalog.retention_policy(keep or None, max_age=dest.get("max_age") or None, **tiers)
        except (TypeError, ValueError) as exc:
            errors.append(f"keep_tiers: {exc}")
    return errors


def _get(info, *keys):
    for key in keys:
        if not isinstance(info, dict):
            return None
        info = info.get(key)
    return info


def default_owner(awx_job_id=None, controller: str | None = None, now: datetime | None = None) -> str:
    """One lease owner per run: the AWX job, else the controller and the time (microseconds)."""
    if awx_job_id not in (None, ""):
        return f"galera_backup:awx-job-{awx_job_id}"
    now = now or datetime.now(timezone.utc)
    return f"galera_backup:{controller or socket.gethostname()}:{now.strftime('%Y%m%dT%H%M%S.%f')}"


def plan(members: dict, hosts: list, alive: list, settings: dict, node: str = "", expected_size: int = 0,
         owner: str = "", awx_job_id=None, controller: str | None = None) -> dict:
    """Judge the cluster and the settings, choose the node. ``members``: {host: galera_info result}.

    Returns ``dict(ok, errors, message, node, owner, choice, expected_size, rates, report)``.
    """
    settings = typed_settings(settings)
    errors = [f"settings: {text}" for text in check_settings(settings)]
    hosts = list(hosts or [])
    expected = int(expected_size) if expected_size and int(expected_size) > 0 else len(hosts)
    down = [h for h in hosts if h not in (alive or [])]
    if down:
        errors.append(f"hosts of the play failed or are unreachable: {', '.join(down)}")
    infos = {h: members.get(h) or {} for h in hosts}
    uuids = {_get(i, "cluster", "state_uuid") for h, i in infos.items() if h not in down}
    if len(uuids) > 1:
        errors.append(f"the members belong to different clusters (state uuids {', '.join(sorted(map(str, uuids)))})")
    lines = []
    for host, info in infos.items():
        state = _get(info, "node", "local_state_comment") or "unreachable"
        status = _get(info, "node", "cluster_status") or "?"
        size = _get(info, "cluster", "size")
        desync = _get(info, "node", "desync")
        lines.append(f"{host}: {state} / {status} size {size if size is not None else '?'} wsrep_desync "
                     f"{'ON' if desync else 'OFF' if desync is False else '?'}")
        if host in down:
            continue
        if status != "Primary":
            errors.append(f"{host} is not in a Primary component ({status})")
        if state != "Synced":
            errors.append(f"{host} is {state}, not Synced (a node donating or desynced by someone else is left alone)")
        if desync:
            errors.append(f"{host} has wsrep_desync=ON (desynced by someone else)")
        if size is not None and int(size) != expected:
            errors.append(f"{host} sees {size} members, {expected} expected (galera_backup_cluster_size, default: "
                          "the play's host count)")
    # Two hosts of the play answering as one server: a login (host, port, socket) points at another node.
    seen = {}
    for host, info in infos.items():
        if host in down:
            continue
        ident = _get(info, "status", "wsrep_gcomm_uuid") or _get(info, "node", "node_name")
        if ident and ident in seen:
            errors.append(f"{seen[ident]} and {host} reach the same server ({_get(info, 'node', 'node_name')}): the "
                          f"login settings of one of them (galera_login_host/_port/_unix_socket) point at another "
                          f"node; each host must reach its own server")
        elif ident:
            seen[ident] = host
    leases = [_get(i, "lease") for i in infos.values()]
    held = next((row for row in leases if isinstance(row, dict) and not row.get("expired")), None)
    if held:
        errors.append(f"another desync holds the lease: node {held.get('node')} by owner '{held.get('owner')}' until "
                      f"{held.get('expires_at')} UTC (one node of a cluster is desynced at a time)")

    rates = {h: _get(i, "writes", "local_commits_per_second") for h, i in infos.items()}
    chosen, choice = None, ""
    if node:
        chosen = node
        choice = f"galera_backup_node={node} (explicit)"
        if node not in hosts:
            errors.append(f"galera_backup_node={node} is not a host of this play ({', '.join(hosts)})")
    elif hosts:
        # Fewest client commits wins; on a tie the member listed last (often not the application's primary).
        candidates = [h for h in reversed(hosts) if h not in down]
        if candidates:
            chosen = min(candidates, key=lambda h: float(rates.get(h) or 0))
            choice = (f"fewest client commits during the {settings.get('sample_seconds')} s sample: "
                      + ", ".join(f"{h} {rates.get(h)}/s" for h in sorted(rates)))
    run_owner = owner or default_owner(awx_job_id, controller)
    try:
        _paths.check_name(run_owner, "galera_backup_lease_owner", pattern=r"^[^\x00-\x1f\x7f]{1,255}$", what="owner")
    except GaleraError as exc:
        errors.append(exc.msg.replace(" " + NOTHING, ""))
    ok = not errors
    settings_errors = [e for e in errors if e.startswith("settings: ")]
    if ok:
        message = f"Backing up {chosen} as owner '{run_owner}': {choice}"
    elif settings_errors:
        message = ("The backup settings are wrong; nothing was changed: "
                   + "; ".join(e[len("settings: "):] for e in settings_errors) + ".")
    else:
        message = (f"The cluster is not healthy enough for a backup; nothing was changed. Expected {expected} Synced "
                   f"members of one Primary cluster: " + "; ".join(errors) + ". Members: " + "; ".join(lines)
                   + ". A node desynced or donating by someone else is left alone: wait for it, or back up when the "
                   "cluster is whole.")
    return dict(ok=ok, errors=errors, message=message, node=chosen, owner=run_owner, choice=choice,
                expected_size=expected, rates=rates, report=lines,
                method=resolve_method(settings.get("method", "auto"), _get(infos.get(chosen) or {}, "server", "flavor")))


def resolve_method(method: str, flavor) -> str:
    """The tool for ``galera_backup_method``: V(auto) is mariabackup on MariaDB, xtrabackup elsewhere."""
    if method != "auto":
        return method
    return "mariabackup" if flavor == "mariadb" else "xtrabackup"

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The desynced node out of the load balancers and back: HAProxy's runtime API (private).

A desynced node falls behind the cluster: clients it serves read stale rows and wait on its backup's
IO. So the node is taken out of rotation before the desync (``drain``) and put back after it is
Synced again (``ready``), by ``galera_lb`` from the controller or the HAProxy host, and by the
on-node watchdog after a resync it makes itself.

The runtime API (HAProxy's "stats socket", a Unix socket or a TCP address, at ``level admin``) is
spoken in its non-interactive mode: one command per connection, HAProxy answers and closes. Three
commands are ever sent, built only from names that passed ``NAME`` (HAProxy's own characters for
proxy and server names; never a space, ``;`` that separates commands, ``#`` that makes an id, ``/``
or ``\\``): ``show servers state <backend>``, ``set server <backend>/<server> state drain|ready``
and ``shutdown sessions server <backend>/<server>``. Every change is read back.

The rules: ``drain`` leaves a server that is already out of rotation (drain or maintenance, set by an
operator or a health agent) as it is and says so, so that only what we took out is put back;
``ready`` clears only the forced drain or maintenance (what ``set server ... state`` sets), never an
inherited or configured one. Several instances are handled one after the other; every one is tried
and the failures are reported together, with what was changed.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

DRAIN = "drain"
READY = "ready"
STATES = (DRAIN, READY)
DEFAULT_TIMEOUT = 5.0

# HAProxy's characters for proxy and server names, and nothing else (fullmatch).
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SOCKET_PATH = 107  # sun_path
MAX_ANSWER = 4 << 20

# srv_admin_state bits of `show servers state` (HAProxy management guide, section 9.3).
FMAINT, IMAINT, CMAINT, FDRAIN, IDRAIN, RMAINT, HMAINT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
MAINT = FMAINT | IMAINT | RMAINT        # in maintenance (CMAINT alone only records the configuration's "disabled")
DRAINING = FDRAIN | IDRAIN
FORCED = FMAINT | FDRAIN                # what `set server ... state ready` clears
OPERATIONAL = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}

# The fields of one instance, as galera_lb's haproxy items and galera_desync's watchdog_haproxy items take
# them (and galera_backup_haproxy's). ``host`` and ``become`` tell the role where to run the step.
ITEM_SPEC = dict(
    name=dict(type="str"),
    socket=dict(type="str"),
    address=dict(type="str"),
    backend=dict(type="str", required=True),
    server=dict(type="str", required=True),
    shutdown_sessions=dict(type="bool", default=False),
    host=dict(type="str"),
    become=dict(type="bool"),
)


class Instance:
    """One HAProxy runtime API and the server that stands for the node in one backend."""

    def __init__(self, name: str, backend: str, server: str, socket_path: str | None = None,
                 address: tuple | None = None, shutdown_sessions: bool = False):
        self.name = name
        self.backend = backend
        self.server = server
        self.socket_path = socket_path
        self.address = address
        self.shutdown_sessions = shutdown_sessions

    @property
    def where(self) -> str:
        if self.socket_path:
            return f"unix socket {self.socket_path}"
        host, port = self.address
        return f"tcp {'[' + host + ']' if ':' in host else host}:{port}"

    @property
    def label(self) -> str:
        """``HAProxy lb1 (tcp 10.0.0.5:9999), server galera/node3``; the place only when the name is not it."""
        place = "" if self.name in (self.socket_path, self.where.split(" ", 1)[1]) else f" ({self.where})"
        return f"HAProxy {self.name}{place}, server {self.backend}/{self.server}"

    def __repr__(self) -> str:
        return f"Instance({self.name!r}, {self.where}, {self.backend}/{self.server})"


# -- input (pure) ------------------------------------------------------------------------------------

def check_name(value, field: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise GaleraError(f"{field}={value!r} is not a plain HAProxy name: only letters, digits, '-', '_', '.' and ':' "
                          "(1 to 100 characters) are accepted, so nothing else can reach the runtime API's command "
                          "line. Give the name as haproxy.cfg spells it. Nothing was changed.", field=field)
    return value


def parse_address(text, field: str) -> tuple:
    """``host:port`` or ``[ipv6]:port`` to ``(host, port)``."""
    fix = (f"Give {field} as host:port (or [ipv6]:port), the address of a 'stats socket ipv4@host:port level admin' "
           "line of haproxy.cfg. Nothing was changed.")
    if not isinstance(text, str) or not text or _CONTROL.search(text):
        raise GaleraError(f"{field}={text!r} is not a host:port address. {fix}", field=field)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ok = bool(sep) and ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    else:
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and bool(_HOST.fullmatch(host))
    if not ok or not port.isdigit() or not 0 < int(port) < 65536:
        raise GaleraError(f"{field}={text!r} is not a host:port address. {fix}", field=field)
    return host, int(port)


def instance(spec: dict, field: str) -> Instance:
    """An ``Instance`` from one item (``field`` names it in messages, e.g. ``haproxy[0]``); GaleraError if wrong."""
    if not isinstance(spec, dict):
        raise GaleraError(f"{field} must be a dict with socket or address, backend and server, got {spec!r}. Nothing was changed.",
                          field=field)
    sock, address = spec.get("socket"), spec.get("address")
    if bool(sock) == bool(address):
        raise GaleraError(f"{field} needs exactly one of socket (a Unix socket path on the host the step runs on) "
                          "and address (host:port of a TCP stats socket). Nothing was changed.", field=field)
    parsed = None
    if sock:
        if not isinstance(sock, str) or _CONTROL.search(sock) or not sock.startswith("/") \
                or len(sock.encode()) > MAX_SOCKET_PATH:
            raise GaleraError(f"{field}.socket={sock!r} is not an absolute path of at most {MAX_SOCKET_PATH} bytes "
                              "without control characters. Nothing was changed.", field=field)
    else:
        parsed = parse_address(address, f"{field}.address")
    backend = check_name(spec.get("backend"), f"{field}.backend")
    server = check_name(spec.get("server"), f"{field}.server")
    name = spec.get("name") or sock or address
    if not isinstance(name, str) or _CONTROL.search(name) or len(name) > 200:
        raise GaleraError(f"{field}.name={name!r} must be a printable label of at most 200 characters. Nothing was changed.", field=field)
    return Instance(name, backend, server, socket_path=sock or None, address=parsed,
                    shutdown_sessions=bool(spec.get("shutdown_sessions")))


def instances(specs, field: str) -> list:
    """Every item checked before anything is sent; names must not repeat."""
    out = [instance(spec, f"{field}[{i}]") for i, spec in enumerate(specs or [])]
    seen = set()
    for inst in out:
        key = (inst.socket_path or inst.address, inst.backend, inst.server)
        if key in seen:
            raise GaleraError(f"{field} names {inst.where} {inst.backend}/{inst.server} twice. Nothing was changed.", field=field)
        seen.add(key)
    return out


def watchdog_split(insts: list) -> tuple:
    """(the instances the on-node watchdog can reach: a TCP address, the others: a socket on some host)."""
    return [i for i in insts if i.address], [i for i in insts if not i.address]


# -- the commands (built from checked names only) ---------------------------------------------------

def show_command(inst: Instance) -> str:
    return f"show servers state {check_name(inst.backend, 'backend')}"


def set_command(inst: Instance, state: str) -> str:
    if state not in STATES:
        raise ValueError(state)
    return f"set server {check_name(inst.backend, 'backend')}/{check_name(inst.server, 'server')} state {state}"


def shutdown_command(inst: Instance) -> str:
    return f"shutdown sessions server {check_name(inst.backend, 'backend')}/{check_name(inst.server, 'server')}"


# -- answers (pure) ------------------------------------------------------------------------------------

def admin_view(admin: int, operational: int | None = None) -> dict:
    """What an operator reads of a server's state: rotation (ready, drain, maint) and health."""
    if admin & MAINT:
        rotation = "maint"
    elif admin & DRAINING:
        rotation = DRAIN
    else:
        rotation = READY
    return dict(state=rotation, admin_state=admin,
                operational=OPERATIONAL.get(operational, str(operational)) if operational is not None else None)


def parse_servers_state(text: str, backend: str) -> dict:
    """``{server: view}`` of one backend from ``show servers state <backend>``.

    Raises GaleraError (``answer``) when the text is not a state dump: HAProxy's own error then.
    """
    lines = text.strip("\n").split("\n") if text else []
    if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("#"):
        raise GaleraError(f"answered {first_line(text)!r} instead of a server state dump", answer=text[:500])
    columns = lines[1].lstrip("#").split()
    try:
        at = {name: columns.index(name) for name in ("be_name", "srv_name", "srv_op_state", "srv_admin_state")}
    except ValueError as exc:
        raise GaleraError(f"answered a server state dump without the expected columns ({exc})",
                          answer=text[:500]) from exc
    servers = {}
    for line in lines[2:]:
        fields = line.split()
        if not fields or line.startswith("#") or len(fields) <= max(at.values()):
            continue
        if fields[at["be_name"]] != backend:
            continue
        try:
            view = admin_view(int(fields[at["srv_admin_state"]]), int(fields[at["srv_op_state"]]))
        except ValueError:
            continue
        servers[fields[at["srv_name"]]] = view
    return servers


def first_line(text) -> str:
    return (text or "").strip().split("\n", 1)[0][:200]


def refusal_hint(answer: str) -> str:
    text = answer.lower()
    if "permission denied" in text:
        return ("the stats socket is not at level admin: give its 'stats socket' line in haproxy.cfg 'level admin' "
                "(operator and user levels may not change a server's state)")
    if "unknown command" in text:
        return "this is not an HAProxy runtime API of version 1.6 or later at that address"
    if "no such" in text or "can't find" in text:
        return "the configuration changed meanwhile (a reload?); check the backend and server names"
    return "see HAProxy's answer"


# -- talking to it -----------------------------------------------------------------------------------

def unreachable_hint(inst: Instance) -> str:
    if inst.socket_path:
        return ("Check that HAProxy runs on the host this step runs on (the item's host, default the controller), "
                f"that haproxy.cfg has 'stats socket {inst.socket_path} level admin', and that the user may open the "
                "socket (the item's become).")
    return ("Check that HAProxy runs, that haproxy.cfg has 'stats socket ipv4@<address>:<port> level admin' on an "
            "address this host reaches, and that no firewall is in between.")


def command(inst: Instance, text: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Send one command (HAProxy's non-interactive mode) and return the whole answer.

    GaleraError (``unreachable``) when the API cannot be reached or does not answer; ``sent`` says
    whether the command had left before that (HAProxy may then have applied it).
    """
    if "\n" in text or ";" in text:
        raise ValueError("one command per connection")
    sent = False
    try:
        if inst.socket_path:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.settimeout(timeout)
                conn.connect(inst.socket_path)
            except BaseException:
                conn.close()
                raise
        else:
            conn = socket.create_connection(inst.address, timeout=timeout)
        with conn:
            conn.settimeout(timeout)
            conn.sendall(text.encode("ascii") + b"\n")
            sent = True
            chunks, size = [], 0
            while size < MAX_ANSWER:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except OSError as exc:
        reason = "no answer within {0:g}s".format(timeout) if isinstance(exc, socket.timeout) else str(exc)
        raise GaleraError(f"cannot reach the runtime API of {inst.label}: {reason}. {unreachable_hint(inst)}",
                          unreachable=True, sent=sent) from exc
    return b"".join(chunks).decode("utf-8", "replace")


def read_state(inst: Instance, timeout: float = DEFAULT_TIMEOUT, talk=command) -> dict:
    """The server's view in the instance; GaleraError naming the fix when the backend or server is not there."""
    answer = talk(inst, show_command(inst), timeout)
    if "can't find backend" in answer.lower():
        raise GaleraError(f"{inst.label}: HAProxy has no backend {inst.backend!r}. Give the backend's name as "
                          "haproxy.cfg spells it ('show backend' lists them).")
    try:
        servers = parse_servers_state(answer, inst.backend)
    except GaleraError as exc:
        raise GaleraError(f"{inst.label}: HAProxy {exc.msg}; {refusal_hint(answer)}.", **exc.details) from exc
    if inst.server not in servers:
        known = ", ".join(sorted(servers)) or "none"
        raise GaleraError(f"{inst.label}: backend {inst.backend} has no server {inst.server!r} (it has: {known}). "
                          "Give the name of this node's server line.", servers=sorted(servers))
    return servers[inst.server]


def converge(inst: Instance, want: str, check_mode: bool = False, timeout: float = DEFAULT_TIMEOUT,
             talk=command) -> dict:
    """Bring one instance's server to ``want``; the result says before, after, the commands and any note.

    A GaleraError raised after a command may have been applied carries the ``result`` with ``changed: true``
    (a caller then puts back what may have been taken out).
    """
    if want not in STATES:
        raise GaleraError(f"state must be one of {', '.join(STATES)}, got {want!r}. Nothing was changed.")
    before = read_state(inst, timeout, talk)
    result = dict(name=inst.name, where=inst.where, backend=inst.backend, server=inst.server, before=before,
                  after=before, changed=False, commands=[], note=None)
    commands = []
    if want == DRAIN:
        if before["state"] != READY:
            result["note"] = (f"{inst.label} was already out of rotation ({before['state']}, admin state "
                              f"{before['admin_state']:#x}): left as it is, and not put back by this run")
            return result
        commands.append(set_command(inst, DRAIN))
        if inst.shutdown_sessions:
            commands.append(shutdown_command(inst))
        predicted = admin_view(before["admin_state"] | FDRAIN)
    else:
        if not before["admin_state"] & FORCED:
            if before["state"] != READY:
                result["note"] = (f"{inst.label} is out of rotation for a reason 'ready' does not clear "
                                  f"({before['state']}, admin state {before['admin_state']:#x}: inherited from a "
                                  "tracked server, or a failed DNS resolution): left as it is")
            return result
        commands.append(set_command(inst, READY))
        predicted = admin_view(before["admin_state"] & ~FORCED)
    if check_mode:
        result.update(changed=True, after=dict(predicted, operational=before["operational"]), commands=commands)
        return result
    for text in commands:
        result["commands"].append(text)
        try:
            answer = talk(inst, text, timeout)
        except GaleraError as exc:
            result["changed"] = result["changed"] or bool(exc.get("sent"))
            raise GaleraError(f"{exc.msg.rstrip('.')} (sending '{text}').", result=result) from exc
        if answer.strip():
            raise GaleraError(f"{inst.label}: HAProxy refused '{text}' with {first_line(answer)!r}; "
                              f"{refusal_hint(answer)}.", result=result)
        result["changed"] = True
    try:
        after = read_state(inst, timeout, talk)
    except GaleraError as exc:
        raise GaleraError(f"{exc.msg.rstrip('.')} (reading back after '{commands[0]}' was accepted).",
                          result=result) from exc
    result["after"] = after
    if want == DRAIN:
        ok = bool(after["admin_state"] & FDRAIN) and not after["admin_state"] & FMAINT
    else:
        ok = not after["admin_state"] & FORCED
    if not ok:
        raise GaleraError(f"{inst.label}: HAProxy accepted '{commands[0]}' but reads back {after['state']} "
                          f"(admin state {after['admin_state']:#x}); something else changed it meanwhile (an "
                          "agent check, another tool).", result=result)
    return result


def apply(insts: list, want: str, check_mode: bool = False, timeout: float = DEFAULT_TIMEOUT, talk=command) -> dict:
    """Every instance to ``want``, each tried; GaleraError listing the failures and what was changed."""
    results, failures = [], []
    for inst in insts:
        try:
            results.append(converge(inst, want, check_mode, timeout, talk))
        except GaleraError as exc:
            result = exc.get("result") or dict(name=inst.name, where=inst.where, backend=inst.backend,
                                               server=inst.server, before=None, after=None, changed=False,
                                               commands=[], note=None)
            result["error"] = exc.msg
            results.append(result)
            failures.append(exc.msg)
    changed = [r for r in results if r["changed"]]
    out = dict(changed=bool(changed), state=want, instances=results)
    if failures:
        if changed:
            done = ", ".join(f"HAProxy {r['name']} server {r['backend']}/{r['server']}" for r in changed)
            tail = f"Set to {want} (or maybe, where the answer was lost): {done}."
        else:
            tail = "Nothing was changed."
        raise GaleraError(" ".join(msg.rstrip(".") + "." for msg in failures) + " " + tail, **out)
    return out


def summary(result: dict) -> str:
    """One line per run for logs: each instance's before -> after."""
    parts = []
    for r in result.get("instances") or []:
        before = (r.get("before") or {}).get("state")
        after = (r.get("after") or {}).get("state")
        text = f"{r['name']} {r['backend']}/{r['server']} {before} -> {after}"
        if r.get("error"):
            text += f" (failed: {r['error']})"
        parts.append(text)
    return "; ".join(parts) or "no HAProxy instance"


# -- Percona XtraDB Cluster's pxc_maint_mode (a server variable of the node) -------------------------

PXC_MAINTENANCE = "MAINTENANCE"
PXC_DISABLED = "DISABLED"


def pxc_maint_mode(node) -> str | None:
    """``pxc_maint_mode`` of the node (DISABLED, SHUTDOWN, MAINTENANCE), or None where it does not exist."""
    rows = node.query("SHOW GLOBAL VARIABLES LIKE 'pxc_maint_mode'", record=False)
    return str(rows[0][1]).upper() if rows else None


def pxc_refusal(flavor: str, value: str | None, node_name: str) -> str | None:
    """Why ``pxc_maint_mode: true`` cannot work on this node, or None (pure)."""
    if flavor != "percona-xtradb-cluster" or value is None:
        return (f"pxc_maint_mode: true needs Percona XtraDB Cluster, but node {node_name} is {flavor} "
                f"{'without' if value is None else 'with'} a pxc_maint_mode variable; tell its load balancer "
                "through galera_lb or your own tasks instead, and set pxc_maint_mode: false")
    return None


def set_pxc_maint_mode(node, value: str) -> None:
    """``SET GLOBAL pxc_maint_mode``; MAINTENANCE returns after the server's pxc_maint_transition_period
    (10 s by default), the time ProxySQL is given to notice."""
    if value not in (PXC_MAINTENANCE, PXC_DISABLED):
        raise ValueError(value)
    node.query(f"SET GLOBAL pxc_maint_mode = '{value}'")

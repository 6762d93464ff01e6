# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What every module of the collection does around its own work (private).

Build the argument spec, connect when the module talks to a server, turn expected failures
(``GaleraError``) into ``fail_json`` with the message naming the cause and the fix, and always close
the connection. Nothing here knows what a module does.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

# Result keys Ansible reads itself: an error's details never set them (``unreachable`` would
# turn a failed login into an unreachable host). ``changed`` may be given: a step that changed
# something before failing says so.
_RESERVED = frozenset(("msg", "failed", "unreachable", "skipped", "invocation", "ansible_facts", "warnings",
                       "deprecations", "exception"))


def build_module(argument_spec: dict, connection: bool = True, **kwargs) -> AnsibleModule:
    spec = _connection.connection_argument_spec() if connection else {}
    spec.update(argument_spec)
    return AnsibleModule(argument_spec=spec, **kwargs)


def check_non_negative(module, names) -> None:
    bad = [f"{n}={module.params[n]}" for n in names if module.params.get(n) is not None and module.params[n] < 0]
    if bad:
        module.fail_json(msg="these options must not be negative: " + ", ".join(bad) + ". Nothing was changed.")


def result_details(exc: GaleraError, **extra) -> dict:
    """The error's details fit for a module result (no key Ansible reserves, none starting with _)."""
    details = {k: v for k, v in exc.details.items() if k not in _RESERVED and not k.startswith("_")}
    details.update(extra)
    return details


def fail(module, exc: GaleraError, **extra) -> None:
    module.fail_json(msg=exc.msg, **result_details(exc, **extra))


def on_node(module: AnsibleModule, work):
    """``work(node)`` on a connection opened for it and closed after, for a module that talks to the server
    in one of its steps only; a refused query becomes a ``GaleraError`` naming the privilege hint."""
    _connection.require_pymysql(module)
    session = _connection.Session(module.params)
    try:
        return work(_wsrep.Node(session.connection()))
    except _connection.pymysql.err.MySQLError as exc:
        raise GaleraError(refused(exc), errno=_connection.mysql_errno(exc)) from None
    finally:
        session.close()


def refused(exc) -> str:
    """The message of a query the server refused (a PyMySQL error), with what to check."""
    return f"the server refused a query: {exc}. {_connection.privilege_hint(_connection.mysql_errno(exc))}"


def run(module: AnsibleModule, work, lazy: bool = False) -> None:
    """Connect, call ``work(node)`` for the result dict, exit or fail with a clear message.

    With ``lazy``, ``work(session)`` gets the ``_connection.Session`` unopened: a module that waits
    for a server to come up connects (and reconnects) itself through it. Either way the connection
    is closed once, whatever happens.
    """
    _connection.require_pymysql(module)
    check_non_negative(module, [k for k in ("login_port", "connect_timeout") if k in module.params])
    session = _connection.Session(module.params)
    node = None
    try:
        if lazy:
            result = work(session)
        else:
            node = _wsrep.Node(session.connection())
            result = work(node)
    except GaleraError as exc:
        fail(module, exc, **({"queries": node.queries} if node is not None else {}))
    except _connection.pymysql.err.MySQLError as exc:
        module.fail_json(msg=refused(exc), errno=_connection.mysql_errno(exc),
                         **({"queries": node.queries} if node is not None else {}))
    finally:
        session.close()
    if node is not None:
        result.setdefault("queries", node.queries)
    module.exit_json(**result)


def run_local(module: AnsibleModule, work) -> None:
    """Call ``work()`` for the result dict of a module that talks to no server; exit or fail."""
    try:
        result = work()
    except GaleraError as exc:
        fail(module, exc)
    module.exit_json(**result)

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What every module of the collection does around its own work (private).

Build the argument spec, connect, turn expected failures into ``fail_json`` with a
message naming the cause and the fix, and always close the connection.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _lease, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._desync import Refused


def build_module(argument_spec: dict, **kwargs) -> AnsibleModule:
    spec = _connection.connection_argument_spec()
    spec.update(argument_spec)
    return AnsibleModule(argument_spec=spec, **kwargs)


def check_non_negative(module, names) -> None:
    bad = [f"{n}={module.params[n]}" for n in names if module.params.get(n) is not None and module.params[n] < 0]
    if bad:
        module.fail_json(msg="these options must not be negative: " + ", ".join(bad))


def run(module: AnsibleModule, work) -> None:
    """Connect, call ``work(node)`` for the result dict, exit or fail with a clear message."""
    _connection.require_pymysql(module)
    check_non_negative(module, [k for k in ("login_port", "connect_timeout") if k in module.params])
    try:
        conn = _connection.connect(module.params)
    except _connection.GaleraConnectionError as exc:
        module.fail_json(msg=exc.msg, errno=exc.errno)
    node = _wsrep.Node(conn)
    try:
        result = work(node)
    except (Refused, _lease.LeaseError) as exc:
        module.fail_json(msg=exc.msg, queries=node.queries)
    except _connection.pymysql.err.MySQLError as exc:
        module.fail_json(msg=f"the server refused a query: {exc}. Check the connecting user's privileges "
                             "(it needs SUPER or an equivalent to set wsrep_desync).",
                         queries=node.queries, errno=_connection.mysql_errno(exc))
    finally:
        try:
            conn.close()
        except Exception:
            pass
    result.setdefault("queries", node.queries)
    module.exit_json(**result)

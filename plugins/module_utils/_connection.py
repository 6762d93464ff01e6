# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Connection to a MariaDB/MySQL server through PyMySQL (private to this collection).

The options and their meaning follow community.mysql, so that ``module_defaults``
written for that collection work here too. Failures raise ``GaleraError`` with ``errno`` and
``unreachable`` (the server is not there yet, as opposed to a refusal) in its details.
"""

from __future__ import annotations

import configparser
import os
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

try:
    import pymysql
    import pymysql.err
    import pymysql.constants.CLIENT
except ImportError:
    pymysql = None
    PYMYSQL_IMPORT_ERROR = traceback.format_exc()
else:
    PYMYSQL_IMPORT_ERROR = None

# Where MariaDB and MySQL packages put the server socket, tried in order when the
# target is "localhost" and no socket is named (what the mysql client does too).
DEFAULT_SOCKETS = (
    "/run/mysqld/mysqld.sock",
    "/var/run/mysqld/mysqld.sock",
    "/var/lib/mysql/mysql.sock",
    "/tmp/mysql.sock",
)

# Errors that mean "the server is not there (yet)", as opposed to a refusal.
UNREACHABLE_ERRNOS = frozenset((2002, 2003, 2006, 2013, 2055))

ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_LOCK_DEADLOCK = 1213
ER_LOCK_WAIT_TIMEOUT = 1205


def connection_argument_spec() -> dict:
    """The connection options shared by every module of the collection."""
    return dict(
        login_user=dict(type="str", aliases=["login_username"]),
        login_password=dict(type="str", no_log=True),
        login_host=dict(type="str", default="localhost"),
        login_port=dict(type="int", default=3306),
        login_unix_socket=dict(type="str"),
        config_file=dict(type="path", default="~/.my.cnf"),
        ca_cert=dict(type="path", aliases=["ssl_ca"]),
        client_cert=dict(type="path", aliases=["ssl_cert"]),
        client_key=dict(type="path", aliases=["ssl_key"]),
        check_hostname=dict(type="bool"),
        connect_timeout=dict(type="int", default=30),
    )


def require_pymysql(module) -> None:
    if pymysql is None:
        module.fail_json(msg=missing_required_lib("PyMySQL"), exception=PYMYSQL_IMPORT_ERROR)


def read_client_section(path: str | None) -> dict:
    """The ``[client]`` section of a MySQL option file, as a dict ({} when absent)."""
    if not path or not os.path.exists(path):
        return {}
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False, interpolation=None)
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(_skip_includes(stream))
    except (OSError, configparser.Error) as exc:
        raise GaleraError(
            f"cannot read config_file {path}: {exc}. Fix the file or point config_file elsewhere.",
            errno=None, unreachable=False,
        ) from exc
    if not parser.has_section("client"):
        return {}
    return {k.replace("_", "-"): _unquote(v) for k, v in parser.items("client")}


def _skip_includes(stream):
    for line in stream:
        if not line.lstrip().startswith("!"):
            yield line


def _unquote(value):
    if value and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def connect_kwargs(params: dict, address: tuple | None = None) -> dict:
    """PyMySQL keyword arguments for the module parameters.

    Explicit options win over the option file; the option file wins over defaults.
    "localhost" with no socket named means the local server socket, as for the mysql client.

    ``address`` ``(host, port)`` forces TCP to exactly that server: every socket (login_unix_socket,
    the option file's ``socket``, the usual local paths) and the option file's ``host`` and ``port``
    are ignored. Credentials and TLS options still apply. This is how another node of the cluster
    is reached: a socket there would silently lead to the local server instead.
    """
    cfg_path = os.path.expanduser(params["config_file"]) if params.get("config_file") else None
    client = read_client_section(cfg_path)

    kwargs = dict(
        connect_timeout=params.get("connect_timeout") or 30,
        autocommit=True,
        charset="utf8mb4",
        # affected_rows() counts the rows an UPDATE matched, not only those it changed: the lease's
        # "is this row still ours" checks rely on it (an UPDATE to the same value changes nothing).
        client_flag=pymysql.constants.CLIENT.FOUND_ROWS if pymysql is not None else 0,
    )
    user = params.get("login_user") or client.get("user")
    if user:
        kwargs["user"] = user
    password = params.get("login_password")
    if password is None:
        password = client.get("password")
    if password is not None:
        kwargs["password"] = password

    if address is not None:
        host, port = address
        if not host:
            raise GaleraError("no host to connect to over TCP. Nothing was changed.", errno=None, unreachable=False)
        kwargs["host"] = host
        kwargs["port"] = int(port or 3306)
    else:
        _where(params, client, cfg_path, kwargs)

    ca = params.get("ca_cert") or client.get("ssl-ca")
    cert = params.get("client_cert") or client.get("ssl-cert")
    key = params.get("client_key") or client.get("ssl-key")
    if ca or cert or key:
        if ca:
            kwargs["ssl_ca"] = ca
        if cert:
            kwargs["ssl_cert"] = cert
        if key:
            kwargs["ssl_key"] = key
        kwargs["ssl_verify_cert"] = bool(ca)
        check = params.get("check_hostname")
        kwargs["ssl_verify_identity"] = bool(ca) if check is None else check
    return kwargs


def _where(params: dict, client: dict, cfg_path, kwargs: dict) -> None:
    """Socket or host and port from the options, then the option file, then the usual sockets."""
    host = params.get("login_host") or "localhost"
    if host == "localhost" and client.get("host"):
        host = client["host"]
    port = params.get("login_port") or 3306
    if port == 3306 and client.get("port"):
        try:
            port = int(client["port"])
        except ValueError as exc:
            raise GaleraError(f"config_file {cfg_path}: port {client['port']!r} is not a number. Fix the file or "
                              "point config_file elsewhere.", errno=None, unreachable=False) from exc
    socket = params.get("login_unix_socket") or client.get("socket")
    if not socket and host == "localhost":
        socket = next((s for s in DEFAULT_SOCKETS if os.path.exists(s)), None)
    if socket:
        kwargs["unix_socket"] = socket
    else:
        kwargs["host"] = host
        kwargs["port"] = port


def describe_target(kwargs: dict) -> str:
    where = kwargs.get("unix_socket") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"{kwargs.get('user', 'the current OS user')}@{where}"


def connect(params: dict, address: tuple | None = None):
    """Open a PyMySQL connection, or raise GaleraError naming cause and fix.

    The error's details carry ``errno`` and ``unreachable`` (True when the server is not there,
    as opposed to refusing the login). ``address``: see ``connect_kwargs``.
    """
    kwargs = connect_kwargs(params, address)
    target = describe_target(kwargs)
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.OperationalError as exc:
        errno = exc.args[0] if exc.args else None
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        unreachable = errno in UNREACHABLE_ERRNOS
        if errno == ER_ACCESS_DENIED:
            fix = "check login_user/login_password (or the [client] section of config_file)"
        elif unreachable:
            fix = ("check that the server runs and that login_host/login_port or login_unix_socket "
                   "point at it")
        else:
            fix = "check the connection options"
        raise GaleraError(f"cannot connect to {target}: ({errno}) {text}; {fix}", errno=errno,
                          unreachable=unreachable) from exc
    except (pymysql.err.MySQLError, OSError) as exc:
        raise GaleraError(f"cannot connect to {target}: {exc}; check the connection and TLS options",
                          errno=None, unreachable=False) from exc


class Session:
    """One server connection, opened on first use, reopened after ``drop()``, closed once.

    ``address`` forces TCP to that ``(host, port)`` (see ``connect_kwargs``); ``init`` are
    statements run on every new connection (for example a session lock timeout).
    """

    def __init__(self, params: dict, address: tuple | None = None, init: tuple = ()):
        self.params = params
        self.address = address
        self.init = tuple(init)
        self.conn = None

    def connection(self):
        if self.conn is None:
            conn = connect(self.params, self.address)
            try:
                with conn.cursor() as cur:
                    for statement in self.init:
                        cur.execute(statement)
            except Exception:
                _close_quietly(conn)
                raise
            self.conn = conn
        return self.conn

    def drop(self) -> None:
        """Forget the connection (lost, or to be reopened); the next use connects again."""
        conn, self.conn = self.conn, None
        if conn is not None:
            _close_quietly(conn)

    close = drop

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:  # already closed, or the server went away: nothing is left to release
        pass


def lost_connection(exc) -> bool:
    """True when ``exc`` (a PyMySQL error) says the server went away rather than refused."""
    return mysql_errno(exc) in UNREACHABLE_ERRNOS or isinstance(exc, (OSError, EOFError))


def privilege_hint(errno) -> str:
    """What to check when the server refused a query with ``errno``."""
    if errno in (ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED, ER_ACCESS_DENIED):
        return ("The connecting user lacks a privilege: see the README's least-privilege grants "
                "(the error names the one missing).")
    return "Check the server's error log and the connecting user's privileges."


def mysql_errno(exc) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Connection to a MariaDB/MySQL server through PyMySQL (private to this collection).

The options and their meaning follow community.mysql, so that ``module_defaults``
written for that collection work here too.
"""

from __future__ import annotations

import configparser
import os
import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    import pymysql
    import pymysql.err
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


class GaleraConnectionError(Exception):
    """A connection could not be made; ``msg`` names the cause and the fix."""

    def __init__(self, msg: str, errno: int | None = None, unreachable: bool = False):
        super().__init__(msg)
        self.msg = msg
        self.errno = errno
        self.unreachable = unreachable


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
        raise GaleraConnectionError(
            f"cannot read config_file {path}: {exc}. Fix the file or point config_file elsewhere."
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


def connect_kwargs(params: dict) -> dict:
    """PyMySQL keyword arguments for the module parameters.

    Explicit options win over the option file; the option file wins over defaults.
    "localhost" with no socket named means the local server socket, as for the mysql client.
    """
    cfg_path = os.path.expanduser(params["config_file"]) if params.get("config_file") else None
    client = read_client_section(cfg_path)

    kwargs = dict(
        connect_timeout=params.get("connect_timeout") or 30,
        autocommit=True,
        charset="utf8mb4",
    )
    user = params.get("login_user") or client.get("user")
    if user:
        kwargs["user"] = user
    password = params.get("login_password")
    if password is None:
        password = client.get("password")
    if password is not None:
        kwargs["password"] = password

    host = params.get("login_host") or "localhost"
    if host == "localhost" and client.get("host"):
        host = client["host"]
    port = params.get("login_port") or 3306
    if port == 3306 and client.get("port"):
        try:
            port = int(client["port"])
        except ValueError as exc:
            raise GaleraConnectionError(f"config_file {cfg_path}: port {client['port']!r} is not a number") from exc
    socket = params.get("login_unix_socket") or client.get("socket")
    if not socket and host == "localhost":
        socket = next((s for s in DEFAULT_SOCKETS if os.path.exists(s)), None)
    if socket:
        kwargs["unix_socket"] = socket
    else:
        kwargs["host"] = host
        kwargs["port"] = port

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


def describe_target(kwargs: dict) -> str:
    where = kwargs.get("unix_socket") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"{kwargs.get('user', 'the current OS user')}@{where}"


def connect(params: dict):
    """Open a PyMySQL connection, or raise GaleraConnectionError naming cause and fix."""
    kwargs = connect_kwargs(params)
    target = describe_target(kwargs)
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.OperationalError as exc:
        errno = exc.args[0] if exc.args else None
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        if errno == ER_ACCESS_DENIED:
            fix = "check login_user/login_password (or the [client] section of config_file)"
        elif errno in UNREACHABLE_ERRNOS:
            fix = ("check that the server runs and that login_host/login_port or login_unix_socket "
                   "point at it")
            return _raise(f"cannot connect to {target}: ({errno}) {text}; {fix}", errno, True)
        else:
            fix = "check the connection options"
        _raise(f"cannot connect to {target}: ({errno}) {text}; {fix}", errno, False)
    except (pymysql.err.MySQLError, OSError) as exc:
        _raise(f"cannot connect to {target}: {exc}; check the connection and TLS options", None, False)


def _raise(msg, errno, unreachable):
    raise GaleraConnectionError(msg, errno=errno, unreachable=unreachable)


def mysql_errno(exc) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None

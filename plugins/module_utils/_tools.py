# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The backup tools' command lines and their option file (private).

Every command is an argv list: no value ever passes through a shell. Credentials reach the tools only
through a 0600 option file (``--defaults-extra-file``), never their command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ansible_collections.dbtools.galera.plugins.module_utils import _paths
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

PHYSICAL = ("mariabackup", "xtrabackup")
LOGICAL = ("mydumper", "mysqldump")
METHODS = PHYSICAL + LOGICAL
# Alternatives for each tool, the first one found is used.
ALTERNATIVES = {
    "mariabackup": ("mariabackup", "mariadb-backup"),
    "xtrabackup": ("xtrabackup",),
    "mydumper": ("mydumper",),
    "myloader": ("myloader",),
    "mysqldump": ("mariadb-dump", "mysqldump"),
    "client": ("mariadb", "mysql"),
    "binlog": ("mariadb-binlog", "mysqlbinlog"),
    "server": ("mariadbd", "mysqld"),
    "install_db": ("mariadb-install-db", "mysql_install_db"),
    "extract": ("mbstream", "xbstream"),
    "zstd": ("zstd",),
    "openssl": ("openssl",),
    "nice": ("nice",),
    "ionice": ("ionice",),
}
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find(tool: str) -> str | None:
    """The path of the first installed alternative of ``tool`` (also looked for in sbin directories)."""
    for name in ALTERNATIVES.get(tool, (tool,)):
        found = shutil.which(name)
        if not found:
            for directory in SBIN:
                candidate = os.path.join(directory, name)
                if os.access(candidate, os.X_OK):
                    found = candidate
                    break
        if found:
            return found
    return None


def needed(method: str, compress: str, verify: str, encrypt: bool) -> list:
    """The tools a run needs on the node, by their role names."""
    tools = [method, "client"]
    if compress == "zstd" or method in PHYSICAL:
        tools.append("zstd")
    if encrypt:
        tools.append("openssl")
    if verify in ("prepare", "restore") and method in PHYSICAL and compress == "zstd":
        tools.append("extract")
    if verify == "restore":
        tools.append("server")
        if method == "mydumper":
            tools.append("myloader")
        if method in LOGICAL:
            tools.append("install_db")
    return tools


def missing(tools) -> list:
    return [tool for tool in tools if find(tool) is None]


def install_hint(tools) -> str:
    names = {"mariabackup": "mariadb-backup", "xtrabackup": "percona-xtrabackup", "mydumper": "mydumper",
             "myloader": "mydumper", "mysqldump": "mariadb-client", "client": "mariadb-client",
             "server": "mariadb-server", "install_db": "mariadb-server", "extract": "mariadb-backup",
             "zstd": "zstd", "openssl": "openssl"}
    return ", ".join(sorted({names.get(t, t) for t in tools}))


# ---------------------------------------------------------------------------------------------
# The option file

def _quote(value) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def option_file_text(login: dict) -> str:
    """The ``[client]`` section for the tools, from the connection options (community.mysql's names).

    Refuses values an option file cannot hold safely (a newline would start a new option).
    """
    lines = ["# Written by dbtools.galera for one backup run, mode 0600, removed when the run ends.", "[client]"]
    pairs = []
    if login.get("login_user"):
        pairs.append(("user", login["login_user"]))
    if login.get("login_password"):
        pairs.append(("password", login["login_password"]))
    socket = login.get("login_unix_socket")
    host = login.get("login_host") or "localhost"
    if socket:
        pairs.append(("socket", socket))
    elif host != "localhost":
        pairs.append(("host", host))
        pairs.append(("port", int(login.get("login_port") or 3306)))
        pairs.append(("protocol", "TCP"))
    for option, name in (("ssl-ca", "ca_cert"), ("ssl-cert", "client_cert"), ("ssl-key", "client_key")):
        if login.get(name):
            pairs.append((option, login[name]))
    if login.get("ca_cert") and (login.get("check_hostname") is None or login.get("check_hostname")):
        pairs.append(("ssl-verify-server-cert", None))
    for option, value in pairs:
        if value is not None and not _paths.printable(str(value)):
            what = "the password" if option == "password" else f"{option} {value!r}"
            raise GaleraError(f"{what} holds a control character (a newline?), which an option file for the backup "
                              "tools cannot carry. Change it. Nothing was changed.")
        lines.append(option if value is None else f"{option}={_quote(value)}")
    return "\n".join(lines) + "\n"


def write_private(path: str, text: str) -> None:
    """Create ``path`` 0600 with ``text`` (never readable by others, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------------------------
# Command lines

def priority_prefix(nice: int, ionice_class: str, ionice_level: int) -> list:
    """``nice``/``ionice`` in front of a command: lower CPU and IO priority for the backup's processes."""
    prefix = []
    if nice:
        path = find("nice")
        if path:
            prefix += [path, "-n", str(int(nice))]
    if ionice_class in ("best-effort", "idle"):
        path = find("ionice")
        if path:
            prefix += [path, "-c", "2" if ionice_class == "best-effort" else "3"]
            if ionice_class == "best-effort":
                prefix += ["-n", str(int(ionice_level))]
    return prefix


def client_argv(cnf: str, sql: str) -> list:
    """The mariadb/mysql client through the option file, batch mode, one statement."""
    return [find("client") or "mariadb", f"--defaults-extra-file={cnf}", "-N", "-B", "-e", sql]


def physical_argv(tool_path: str, cnf: str, stream: bool, target: str, lsndir: str, incremental_lsn=None,
                  throttle: int = 0, extra=()) -> list:
    # --defaults-extra-file must come first for mariabackup/xtrabackup.
    argv = [tool_path, f"--defaults-extra-file={cnf}", "--backup", "--galera-info", f"--target-dir={target}",
            f"--extra-lsndir={lsndir}"]
    if stream:
        argv.append("--stream=xbstream")
    if incremental_lsn:
        argv.append(f"--incremental-lsn={int(incremental_lsn)}")
    if throttle:
        argv.append(f"--throttle={int(throttle)}")
    return argv + list(extra)


def mydumper_argv(tool_path: str, cnf: str, outdir: str, threads: int, compress: bool, logfile: str,
                  extra=()) -> list:
    argv = [tool_path, f"--defaults-file={cnf}", f"--outputdir={outdir}", f"--threads={int(threads)}",
            "--trx-consistency-only", "--triggers", "--events", "--routines", f"--logfile={logfile}"]
    if compress:
        argv.append("--compress")
    return argv + list(extra)


def mysqldump_argv(tool_path: str, cnf: str, binlog: bool = False, extra=()) -> list:
    argv = [tool_path, f"--defaults-extra-file={cnf}", "--single-transaction", "--all-databases", "--routines",
            "--events", "--triggers", "--hex-blob"]
    if binlog:
        # The binary log position (and GTID) the dump corresponds to, as a comment in the dump.
        argv += ["--master-data=2", "--gtid"]
    return argv + list(extra)


def zstd_argv(level: int, threads: int) -> list:
    return [find("zstd") or "zstd", "-q", f"-T{int(threads)}", f"-{int(level)}", "-c"]


def quote_identifier(name: str) -> str:
    """An SQL identifier in backticks, embedded backticks doubled."""
    return "`" + str(name).replace("`", "``") + "`"


# ---------------------------------------------------------------------------------------------
# Pipelines of the tools (argv lists joined by pipes, never a shell)

def tail(path: str, lines: int = 20, start: int = 0) -> str:
    """The last lines of a log file (from byte ``start``), for an error message ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(start, size - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


class Pipeline:
    """Processes connected stdout to stdin, like ``a | b | c`` without a shell.

    ``stdin``: None (nothing), a path to read, or PIPE (write to ``.stdin`` yourself). ``stdout``: a
    path to write, PIPE (read ``.stdout`` yourself) or None (discarded). Every stage's stderr goes to
    ``log`` (appended). ``wait()`` raises GaleraError naming the first stage that failed and the log's tail.
    """

    def __init__(self, stages, log: str, stdin=None, stdout=None, names=None, env=None):
        self.stages = [list(argv) for argv in stages]
        self.names = list(names or [os.path.basename(argv[0]) for argv in self.stages])
        self.log = log
        self.procs = []
        logfile = open(log, "ab")  # pylint: disable=consider-using-with
        # Several pipelines may share a log: this one's messages start here.
        self.log_start = logfile.tell()
        self._opened = [logfile]
        previous = None
        try:
            if stdin == subprocess.PIPE:
                first_in = subprocess.PIPE
            elif stdin:
                first_in = open(stdin, "rb")  # pylint: disable=consider-using-with
                self._opened.append(first_in)
            else:
                first_in = subprocess.DEVNULL
            for index, argv in enumerate(self.stages):
                last = index == len(self.stages) - 1
                if not last:
                    out = subprocess.PIPE
                elif stdout == subprocess.PIPE:
                    out = subprocess.PIPE
                elif stdout:
                    out = open(stdout, "xb")  # pylint: disable=consider-using-with
                    os.chmod(stdout, 0o600)
                    self._opened.append(out)
                else:
                    out = subprocess.DEVNULL
                # pylint: disable-next=ansible-bad-function  # a pipeline: run_command cannot chain processes
                proc = subprocess.Popen(argv, stdin=first_in if index == 0 else previous.stdout, stdout=out,
                                        stderr=logfile, env=env, close_fds=True)
                if previous is not None:
                    previous.stdout.close()  # the next stage owns it now: EOF and SIGPIPE flow through
                self.procs.append(proc)
                previous = proc
        except OSError as exc:
            self.kill()
            self._close()
            raise GaleraError(f"cannot start {self.names[len(self.procs)]}: {exc}") from exc
        self.stdin = self.procs[0].stdin if stdin == subprocess.PIPE else None
        self.stdout = self.procs[-1].stdout if stdout == subprocess.PIPE else None

    @property
    def pids(self) -> list:
        return [proc.pid for proc in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass

    def _close(self) -> None:
        for handle in self._opened:
            try:
                handle.close()
            except OSError:
                pass

    def wait(self, what: str) -> None:
        codes = [proc.wait() for proc in self.procs]
        self._close()
        # A stage killed by SIGPIPE (or failing to write) often failed because a later one did: name every
        # stage that failed, with this pipeline's own messages.
        failed = [(name, code) for name, code in zip(self.names, codes) if code != 0]
        if failed:
            text = ", ".join(f"{name} exited with {code}" for name, code in failed)
            raise GaleraError(f"{what}: {text}: {tail(self.log, start=self.log_start) or 'no message'}",
                              stage=failed[-1][0], rc=failed[-1][1])

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Processes on the node (private): liveness that survives pid reuse, detached children, process
groups, and the systemd scope a detached child moves into where systemd runs.

A run or a watchdog is identified by ``(boot_id, pid, start_ticks)``: a pid alone can be reused by
an unrelated process, after a reboot or a long time; the start time in clock ticks since boot
(``/proc/<pid>/stat`` field 22) and the kernel's boot id tell the same process from another.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str | None:
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _stat_fields(pid: int) -> list | None:
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks after boot; None when there is no such process."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def pid_alive(pid) -> bool:
    """True when ``pid`` names a live process (not a zombie)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def identity(pid: int | None = None) -> dict:
    """What tells this process (default: the caller) apart from any other, now and after reboots."""
    pid = os.getpid() if pid is None else pid
    return dict(pid=pid, boot_id=boot_id(), start_ticks=start_ticks(pid))


def same_process_alive(ident: dict | None) -> bool | None:
    """Whether the process recorded by ``identity`` still runs on this machine.

    True or False when that can be known here; None when the record is of another boot id we cannot
    judge (no boot id recorded) or is not a record. A different boot id is False: the machine
    rebooted since, so that process is gone.
    """
    if not isinstance(ident, dict) or not isinstance(ident.get("pid"), int):
        return None
    recorded_boot = ident.get("boot_id")
    current_boot = boot_id()
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return False
    if not recorded_boot or not current_boot:
        return None
    if not pid_alive(ident["pid"]):
        return False
    ticks = ident.get("start_ticks")
    return ticks is None or start_ticks(ident["pid"]) == ticks


def detach_stdio(keep: int | None = None) -> None:
    """Standard streams on /dev/null, every other descriptor but ``keep`` closed, HUP ignored."""
    os.chdir("/")
    os.umask(0o077)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if keep is None or keep < 3:
        os.closerange(3, 65536)
    else:
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def spawn_detached(child, setup=None) -> int:
    """Run ``child()`` in a detached grandchild (new session, no terminal, stdio on /dev/null).

    Returns the grandchild's pid once it has forked and, with ``setup``, once ``setup()`` has
    returned in the grandchild (after it detached, before ``child()``): what ``setup`` raises there
    is raised here as an OSError naming it, and ``child`` does not run. ``child`` runs with every
    module import already loaded (Ansible removes the module's files after it returns), must not
    return into the caller's code and should not raise; the grandchild exits when it returns. The
    grandchild is the leader of its own process group, so ``kill_group`` stops it with everything
    it started. Raises OSError when it could not fork.
    """
    read_end, write_end = os.pipe()
    try:
        first = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if first:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read().decode("utf-8", "replace")
        os.waitpid(first, 0)
        kind, _sep, rest = data.partition(" ")
        if kind == "ok" and rest.strip().isdigit():
            return int(rest)
        raise OSError(rest.strip() if kind == "error" and rest.strip() else
                      "the detached process did not start (its fork failed)")
    try:
        os.close(read_end)
        os.setsid()
        second = os.fork()
        if second:
            os._exit(0)
        os.setpgid(0, 0)
        detach_stdio(keep=write_end)
        try:
            if setup is not None:
                setup()
        except BaseException as exc:  # reported to the caller, who decides what to do
            os.write(write_end, f"error {exc}".encode("utf-8", "replace"))
            os._exit(1)
        os.write(write_end, f"ok {os.getpid()}".encode())
        os.close(write_end)
        child()
    except BaseException:  # never return into the module's code from a child
        pass
    os._exit(0)


def kill_group(pgid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group ``pgid``, then SIGKILL what is left after ``grace`` seconds.

    True when the group is gone (or was gone already).
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _attempt in range(50):
        if not _group_alive(pgid):
            return True
        time.sleep(0.1)
    return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of the group (children nobody reaped yet) do not count.
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields and len(fields) > 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


def scope_argv(unit: str, pid: int, description: str) -> list | None:
    """The busctl call that moves ``pid`` into a new transient scope ``unit``, or None without busctl.

    A process in its own scope is no longer part of the SSH session's cgroup, so systemd-logind's
    KillUserProcesses=yes does not kill it when the session ends (what ``systemd-run --scope`` does
    for a new command, done here for a process that already runs).
    """
    busctl = shutil.which("busctl")
    if not busctl:
        return None
    return [busctl, "call", "--quiet", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
            unit, "fail", "3",
            "PIDs", "au", "1", str(int(pid)),
            "Description", "s", description,
            "CollectMode", "s", "inactive-or-failed",
            "0"]


def move_to_scope(unit: str, pid: int, description: str) -> str:
    """Move ``pid`` into its own systemd scope where systemd runs; say what happened (for logs)."""
    if not systemd_running():
        return "no systemd: stays in the caller's process group and cgroup"
    argv = scope_argv(unit, pid, description)
    if argv is None:
        return "systemd runs but busctl is missing: stays in the caller's cgroup"
    try:
        # pylint: disable-next=ansible-bad-function  # detached processes: no AnsibleModule
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not start scope {unit}: {exc}"
    if done.returncode != 0:
        return f"could not start scope {unit}: {done.stderr.strip() or done.returncode}"
    return f"in its own systemd scope {unit}"


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by ``nice`` (never raise it); the processes it starts inherit it.
    A process that cannot change it (a restricted container) goes on at its priority."""
    if int(nice or 0) > 0:
        try:
            os.nice(int(nice))
        except OSError:
            pass

"""Freeze the Galera applier thread of one of the project's node containers, from the host.

    python3 tests/tools/freeze_applier.py galera-node3 15     # freeze for 15 s, then release

This models a backup that slows a node's applier (IO load, a lock) without slowing its group
communication: the node's receive queue grows, and unless the node is desynced it sends flow
control and the whole cluster stops writing. The thread is stopped alone with ptrace
(PTRACE_SEIZE + PTRACE_INTERRUPT on its thread id) and released with PTRACE_DETACH; it needs root
(CAP_SYS_PTRACE) on the host. Only containers of this project are targeted: the container's
mariadbd is found through its PID namespace and the thread through performance_schema.threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import json
import os
import subprocess
import sys
import time

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _ptrace(request: int, tid: int) -> None:
    if _libc.ptrace(request, tid, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def applier_thread_os_ids(container: str) -> list[int]:
    """Thread ids (inside the container's PID namespace) of the wsrep applier threads."""
    out = subprocess.run(
        ["docker", "exec", container, "mariadb", "-N", "-B", "-e",
         "SELECT THREAD_OS_ID FROM performance_schema.threads WHERE NAME = 'thread/sql/wsrep_applier_thread'"],
        check=True, capture_output=True, text=True).stdout
    ids = [int(x) for x in out.split() if x.isdigit() and int(x) > 0]
    if not ids:
        raise RuntimeError(f"{container}: no wsrep applier thread in performance_schema.threads "
                           "(is performance_schema enabled and the node a Galera member?)")
    return ids


def container_id(container: str) -> str:
    inspect = json.loads(subprocess.run(["docker", "inspect", container], check=True, capture_output=True,
                                        text=True).stdout)[0]
    return inspect["Id"]


def container_pids(cid: str, names: tuple[str, ...]) -> list[int]:
    """Host pids of the processes named ``names`` (their comm) that run in container ``cid``."""
    pids = []
    for comm in glob.glob("/proc/[0-9]*/comm"):
        pid_dir = os.path.dirname(comm)
        try:
            with open(comm, encoding="ascii", errors="replace") as handle:
                if handle.read().strip() not in names:
                    continue
            with open(os.path.join(pid_dir, "cgroup"), encoding="ascii", errors="replace") as handle:
                if cid not in handle.read():
                    continue
        except OSError:
            continue
        pids.append(int(os.path.basename(pid_dir)))
    return pids


def host_tid(container: str, ns_tid: int) -> int:
    """Map a thread id of the container's PID namespace to the host's, via NSpid of mariadbd's tasks."""
    for pid in container_pids(container_id(container), ("mariadbd",)):
        for status in glob.glob(f"/proc/{pid}/task/*/status"):
            try:
                with open(status, encoding="ascii") as handle:
                    for line in handle:
                        if line.startswith("NSpid:"):
                            ids = [int(x) for x in line.split()[1:]]
                            if ids[-1] == ns_tid:
                                return ids[0]
            except OSError:
                continue
    raise RuntimeError(f"{container}: thread {ns_tid} of mariadbd not found on the host")


@contextlib.contextmanager
def frozen(container: str):
    """Keep the container's applier threads stopped for the duration of the ``with`` block.

    Yields the host thread ids; they are released on exit, whatever happens inside.
    """
    tids = [host_tid(container, t) for t in applier_thread_os_ids(container)]
    stopped = []
    try:
        for tid in tids:
            _ptrace(PTRACE_SEIZE, tid)
            stopped.append(tid)
            _ptrace(PTRACE_INTERRUPT, tid)
            os.waitpid(tid, WALL)
        yield tids
    finally:
        for tid in stopped:
            try:
                _ptrace(PTRACE_DETACH, tid)
            except OSError:
                pass


def freeze(container: str, seconds: float) -> dict:
    started = time.monotonic()
    with frozen(container) as tids:
        time.sleep(seconds)
    return {"container": container, "threads": tids, "frozen_seconds": round(time.monotonic() - started, 2)}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: freeze_applier.py CONTAINER SECONDS")
    print(json.dumps(freeze(sys.argv[1], float(sys.argv[2]))))

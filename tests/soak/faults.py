"""The faults the soak injects, and the watcher that finds the moment to inject them.

The watcher follows one run from the outside: the lease (whose owner names the run), the backup node's
``wsrep_desync`` and the runner's state file (``/run/dbtools-galera/run-*/state.json``, streamed by a small
program inside the node). When the run enters the cycle's drawn phase, it waits the drawn offset and injects;
if the run never enters it (it ended or failed before), the fault is injected at once in whatever phase the
run is, and the report says which phase was drawn and which was hit.

Every injector acts on what the soak itself started or on the node's own processes found by id: the
playbook's process group, the runner's process group (from its pid file), the soak's sysbench; never by a
broad name.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time

import plan
from cluster import NETWORK, Cluster, docker, node_exec, node_sql

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
import freeze_applier  # noqa: E402  pylint: disable=wrong-import-position
import proctree  # noqa: E402  pylint: disable=wrong-import-position

# Streams the run directories' state files, one JSON line every 0.2 s, until its stdin closes (or 30 min).
STREAM = r"""
import json, os, sys, threading, time
def boot():
    try:
        return open('/proc/sys/kernel/random/boot_id').read().strip()
    except OSError:
        return None
def alive(ident):
    if not isinstance(ident, dict) or not isinstance(ident.get('pid'), int):
        return None
    try:
        fields = open('/proc/%d/stat' % ident['pid']).read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields[0] == 'Z':
        return False
    return ident.get('start_ticks') in (None, int(fields[19])) and ident.get('boot_id') in (None, boot())
def watch_stdin():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch_stdin, daemon=True).start()
base = '/run/dbtools-galera'
end = time.time() + 1800
while time.time() < end:
    runs = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for name in names:
        if not name.startswith('run-'):
            continue
        try:
            state = json.load(open(os.path.join(base, name, 'state.json')))
        except (OSError, ValueError):
            runs.append(dict(name=name))
            continue
        runs.append(dict(name=name, id=state.get('id'), step=state.get('step'), done=state.get('done'),
                         result=state.get('result'), started_at=state.get('started_at'),
                         pid=(state.get('process') or {}).get('pid'), alive=alive(state.get('process'))))
    try:
        sys.stdout.write(json.dumps(dict(t=time.time(), runs=runs)) + '\n')
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        os._exit(0)
    time.sleep(0.2)
"""


class RunStream(threading.Thread):
    """The runner states of a node, kept fresh by the in-node program above."""

    def __init__(self, node: str, since: float):
        super().__init__(daemon=True)
        self.node = node
        self.since = since
        self.latest = None
        self.started = {}  # runs of this cycle seen on the node (they passed the start step): name -> started (epoch)
        self.proc = subprocess.Popen(["docker", "exec", "-i", node, "python3", "-c", STREAM],  # pylint: disable=consider-using-with
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self):
        for line in self.proc.stdout:
            try:
                self.latest = json.loads(line)
            except ValueError:
                continue
            self.started.update((r["name"], _epoch(r["started_at"])) for r in self.runs(self.since))

    def runs(self, since: float | None = None) -> list:
        """Runs whose state file says they started at or after ``since`` (epoch; whole seconds)."""
        latest = self.latest or {}
        since = self.since if since is None else since
        out = []
        for run in latest.get("runs", []):
            started = run.get("started_at")
            if started and _epoch(started) >= since - 1:
                out.append(run)
        return out

    def live(self) -> list:
        return [r for r in (self.latest or {}).get("runs", []) if r.get("alive")]

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _epoch(text: str) -> float:
    from datetime import datetime, timezone  # pylint: disable=import-outside-toplevel
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# The injectors

class Fault:
    """Base: ``inject()`` at the moment (returns quickly; long faults run on in a thread), ``wait()`` until it ended."""

    name = "none"

    def __init__(self, ctx, params: dict):
        self.ctx = ctx
        self.params = dict(params)
        self.detail = {}
        self.ended_at = None
        self.thread = None

    def inject(self) -> None:
        self.ended_at = time.time()

    def _background(self, body) -> None:
        def wrapped():
            try:
                body()
            except Exception as exc:  # pylint: disable=broad-except
                self.detail["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                self.ended_at = time.time()
        self.thread = threading.Thread(target=wrapped, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = 900) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def emergency_end(self) -> None:
        """Undo what may still be in effect (the soak is stopping)."""


class ControllerKill(Fault):
    name = "controller_kill"

    def inject(self):
        proc = self.ctx.playbook
        if proc.poll() is None:
            # The playbook and every process it started (its workers call setsid: a group kill misses them).
            victims = proctree.kill_tree(proc.pid)
            self.detail["killed_pgid"] = proc.pid
            self.detail["killed"] = len(victims)
            left = proctree.leftovers(victims)
            if left:
                self.detail["left_running"] = left
            self.ctx.killed = True
        else:
            self.detail["note"] = "the playbook had already ended"
        self.ended_at = time.time()


KILL_GROUP = r"""
import os, signal, sys
leader = int(sys.argv[1])
killed = []
for pid in os.listdir('/proc'):
    if not pid.isdigit() or int(pid) == leader:
        continue
    try:
        if os.getpgid(int(pid)) != leader:
            continue
        name = open('/proc/%s/comm' % pid).read().strip()
        os.kill(int(pid), signal.SIGKILL)
        killed.append('%s:%s' % (pid, name))
    except (OSError, ProcessLookupError):
        continue
print(' '.join(killed))
"""


class ToolKill(Fault):
    """SIGKILL to every process of the runner's process group but the runner: the tool and its pipeline (or
    the verification's: the prepare, the checks, the restore test's server)."""

    name = "tool_kill"

    def inject(self):
        # The runner may not have started its tool yet (listing tables, or not started at all): the fault is the
        # tool's death, so it waits (at most 10 s) for a process in the runner's group to kill.
        deadline = time.monotonic() + 10
        while True:
            runs = [r for r in self.ctx.stream.live() if r.get("pid") and not r.get("done")]
            for run in runs:
                done = node_exec(self.ctx.node, "python3", "-c", KILL_GROUP, str(run["pid"]), check=False)
                if done.stdout.split():
                    self.detail.setdefault("killed", []).extend(done.stdout.split())
                    self.detail["step"] = run.get("step")
            if self.detail.get("killed") or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not self.detail.get("killed"):
            self.detail["note"] = "no live backup tool on the node within 10 s: nothing was killed"
        self.ended_at = time.time()


class NetworkCut(Fault):
    name = "network_cut"

    def inject(self):
        node = self.ctx.node
        ip = _ip(node)
        docker("network", "disconnect", NETWORK, node)
        self.detail.update(ip=ip, seconds=self.params["seconds"])

        def body():
            try:
                time.sleep(self.params["seconds"])
            finally:
                self.reconnect()
            self.detail["ip_after"] = _ip(node)
        self._background(body)

    def reconnect(self):
        done = docker("network", "connect", NETWORK, self.ctx.node, check=False)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise RuntimeError(f"reconnecting {self.ctx.node}: {done.stderr.strip()}")
        # `docker network connect` appends the node's name to its /etc/hosts once more. Galera's rsync SST joiner
        # binds every address its name resolves to (rsync --address <name>): the duplicate fails with "address in
        # use", so this node could never rejoin after a later restart (soak seed soak-20261202, cycles 7 and 21). A
        # real network cut leaves /etc/hosts alone: so does the soak, which writes the name's line back once.
        ip = _ip(self.ctx.node)
        if ip:
            fixed = node_exec(self.ctx.node, "python3", "-c", HOSTS_FIX, "/etc/hosts", self.ctx.node, ip, check=False)
            self.detail["hosts"] = (fixed.stdout + fixed.stderr).strip()[-200:]

    def emergency_end(self):
        self.reconnect()


def one_hosts_line(text: str, name: str, ip: str) -> str:
    """/etc/hosts with ``name`` on exactly one line, ``ip name``: docker's duplicates (and an old address) gone."""
    kept = [line for line in text.splitlines() if name not in line.split("#")[0].split()[1:]]
    return "\n".join(kept + [f"{ip}\t{name}"]) + "\n"


# Runs in the node (python3 -c HOSTS_FIX PATH NAME IP): /etc/hosts is a bind mount there, so it is rewritten in
# place, never replaced.
HOSTS_FIX = inspect.getsource(one_hosts_line) + r"""
import sys
path, name, ip = sys.argv[1:4]
with open(path, "r+", encoding="utf-8") as f:
    text = f.read()
    f.seek(0)
    f.write(one_hosts_line(text, name, ip))
    f.truncate()
print(f"{len([l for l in text.splitlines() if name in l.split('#')[0].split()[1:]])} line(s) naming {name} -> 1")
"""


def _ip(node):
    out = json.loads(docker("inspect", node).stdout)[0]["NetworkSettings"]["Networks"]
    return (out.get(NETWORK) or {}).get("IPAddress")


class MemberRestart(Fault):
    name = "member_restart"

    def inject(self):
        member = self.params["member"]
        self.detail["member"] = member

        def body():
            try:
                stop = node_exec(member, "galera-node", "stop", check=False, timeout=600)
                self.detail["stop"] = (stop.stdout + stop.stderr).strip()[-200:]
                time.sleep(self.params["down_seconds"])
            finally:
                start = node_exec(member, "galera-node", "start", check=False, timeout=900)
                self.detail["start"] = (start.stdout + start.stderr).strip()[-300:]
                self.detail["start_rc"] = start.returncode
        self._background(body)

    def emergency_end(self):
        node_exec(self.params["member"], "galera-node", "start", check=False, timeout=900)


FILL = r"""
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
st = os.statvfs(os.path.dirname(path))
try:
    os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
except OSError:
    pass
block = b'\0' * (1 << 16)
try:
    while True:
        os.write(fd, block)
except OSError:
    pass
os.close(fd)
st = os.statvfs(os.path.dirname(path))
print(st.f_bavail * st.f_frsize)
"""


class DiskFull(Fault):
    """The backup directory's filesystem (the soak's tmpfs) filled to the last byte, then freed."""

    name = "disk_full"

    def inject(self):
        path = self.ctx.fill_file
        done = node_exec(self.ctx.node, "python3", "-c", FILL, path, check=False)
        self.detail.update(file=path, free_after=done.stdout.strip(), error=done.stderr.strip()[-200:] or None)

        def body():
            try:
                time.sleep(self.params["hold_seconds"])
            finally:
                self.free()
        self._background(body)

    def free(self):
        node_exec(self.ctx.node, "rm", "-f", self.ctx.fill_file, check=False)

    def emergency_end(self):
        self.free()


class DbaDesync(Fault):
    name = "dba_desync"

    def inject(self):
        member = self.params["member"]
        self.detail["member"] = member
        cluster = Cluster()

        def body():
            try:
                try:
                    cluster.admin(member, "SET GLOBAL wsrep_desync = ON")
                except Exception:  # pylint: disable=broad-except
                    node_sql(member, "SET GLOBAL wsrep_desync = ON")
                self.detail["set"] = True
                time.sleep(self.params["seconds"])
            finally:
                self.clear(cluster)
                cluster.close()
        self._background(body)

    def clear(self, cluster=None):
        try:
            (cluster or Cluster()).admin(self.params["member"], "SET GLOBAL wsrep_desync = OFF")
        except Exception:  # pylint: disable=broad-except
            node_sql(self.params["member"], "SET GLOBAL wsrep_desync = OFF")

    def emergency_end(self):
        self.clear()


class SecondRun(Fault):
    name = "second_run"

    def inject(self):
        self.detail["node"] = self.params["node"]
        self.ctx.second = self.ctx.start_playbook("b", self.params["node"])

        def body():
            self.ctx.second.proc.wait(timeout=1800)
        self._background(body)


class ApplierFreeze(Fault):
    name = "applier_freeze"

    def inject(self):
        node = self.ctx.node

        def body():
            self.detail.update(freeze_applier.freeze(node, self.params["seconds"]))
        self._background(body)


INJECTORS = {cls.name: cls for cls in (Fault, ControllerKill, ToolKill, NetworkCut, MemberRestart, DiskFull, DbaDesync,
                                       SecondRun, ApplierFreeze)}


# ---------------------------------------------------------------------------------------------
# The watcher

class Watcher(threading.Thread):
    """Follows the cycle's run through its phases and injects the cycle's fault at its moment."""

    def __init__(self, ctx, cycle: plan.Cycle):
        super().__init__(daemon=True)
        self.ctx = ctx
        self.cycle = cycle
        self.fault = INJECTORS[cycle.fault](ctx, cycle.params)
        self.phases = []          # [(phase, first seen at)]
        self.injected_at = None
        self.hit = None
        self.halt = threading.Event()
        self.cluster = Cluster()

    def phase(self) -> str:
        lease = self.cluster.lease()
        ours = isinstance(lease, dict) and lease.get("owner") == self.ctx.owner("a")
        try:
            desync = self.cluster.conns[self.ctx.node].query("SHOW GLOBAL VARIABLES LIKE 'wsrep_desync'")[0][1] == "ON"
        except Exception:  # pylint: disable=broad-except
            desync = None
        runs = self.ctx.stream.runs(self.ctx.started_at)
        state = max(runs, key=lambda r: (not r.get("done"), r.get("started_at") or ""), default=None)
        current = plan.classify_phase(ours, desync, state)
        if self.ctx.playbook.poll() is not None and current == "before_desync":
            current = "after"
        if self.phases and plan.phase_order(current) < plan.phase_order(self.phases[-1][0]):
            # A run does not go back: its state file removed at the end reads like "no runner yet".
            current = self.phases[-1][0]
        if not self.phases or self.phases[-1][0] != current:
            self.phases.append((current, time.time()))
        return current

    def run(self):
        try:
            self._run()
        except Exception as exc:  # pylint: disable=broad-except
            self.fault.detail["watcher_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.cluster.close()

    def _run(self):
        target = self.cycle.phase
        if target is None:
            while not self.halt.is_set() and self.ctx.playbook.poll() is None:
                self.phase()
                time.sleep(0.2)
            self.fault.inject()
            return
        while not self.halt.is_set():
            current = self.phase()
            if current == target:
                time.sleep(self.cycle.offset)
                break
            if plan.phase_order(current) > plan.phase_order(target):
                break
            time.sleep(0.15)
        self.hit = self.phase()
        self.injected_at = time.time()
        self.fault.inject()
        # Keep recording the phases the run goes through afterwards.
        while not self.halt.is_set() and (self.ctx.playbook.poll() is None or self.ctx.stream.live()):
            self.phase()
            time.sleep(0.3)

    def stop(self):
        self.halt.set()
        self.join(timeout=60)

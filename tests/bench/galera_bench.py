"""Benchmark: a backup on a live Galera cluster, three ways, under the same write load.

    scripts/bench                     # sets everything up and runs this; see README "Benchmark"

On the local three-node Docker cluster, with sysbench writing on galera-node1, the same backup
load runs on galera-node3 three times:

  naive   mariabackup on the Synced node
  manual  the field notes' procedure: SET GLOBAL wsrep_desync=ON, mariabackup, OFF at once
  role    ansible-playbook dbtools.galera.backup (plan, one pre-flight call, desync with lease
          and watchdog, the backup run with its checksums, drain, resync, publish, retention)

The backup load is a real mariabackup run (throttled, so that its copy phase lasts some
seconds) plus the applier freeze of design.md: during the tool's copy phase node3's wsrep
applier thread is stopped with ptrace, which models a disk so busy with the backup that the
node cannot apply write sets (its group communication goes on). The freeze ends when the tool
asks for its backup lock (BACKUP STAGE BLOCK_DDL/BLOCK_COMMIT wait for the applier) or exits.
The load is closed-loop by default (--rate 0): sysbench threads wait for their commits, as an
application's connection pool does, so throughput lost in a stall is lost, not queued.

Every 0.2 s the bench reads wsrep_last_committed and the flow-control counters of the writer
and the backup node. Flow control and the writer's paused fraction are counted from the tool's
start until the node is Synced (the backup cycle) and, for flow control, also over the whole run,
which for the role includes its health check and pre-flight on the still Synced node. It prints
one table, writes the figures as JSON and the write rate over time as a PNG. It then times the
ad-hoc module galera_desync against community.mysql.mysql_variables setting the same variable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pymysql

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import freeze_applier  # noqa: E402  pylint: disable=wrong-import-position
from local_cluster import admin_connection as connect  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
INVENTORY = os.path.join(ROOT, "extensions", "molecule", "resources", "inventory.ini")
WRITER, BACKUP_NODE = "galera-node1", "galera-node3"
TOOL_NAMES = ("mariabackup", "mariadb-backup")
SAMPLE_SECONDS = 0.2
ARMS = ("naive", "manual", "role")
ARM_TITLES = {
    "naive": "naive: backup on a Synced node",
    "manual": "manual: desync ON, backup, OFF at once",
    "role": "dbtools.galera.backup",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def status(conn, *names: str) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT LOWER(VARIABLE_NAME), VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                    "WHERE VARIABLE_NAME IN (" + ",".join(["%s"] * len(names)) + ")", [n.upper() for n in names])
        return dict(cur.fetchall())


# The procedure's driver on the host (the playbook, the docker exec of the manual steps) runs at this nice value
# (--controller-nice; default 0). On cgroup v1 every process of the host weighs as much as all containers together,
# so a busy controller on the cluster's own machine may take CPU that a controller on another machine would not.
CONTROLLER_NICE = [0]


def niced(argv: list) -> list:
    return ["nice", "-n", str(CONTROLLER_NICE[0]), *argv] if CONTROLLER_NICE[0] else list(argv)


def docker_exec(container: str, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(niced(["docker", "exec", container, *argv]), check=check, capture_output=True, text=True,
                          timeout=timeout)


def node_sql(container: str, query: str) -> str:
    return docker_exec(container, "mariadb", "-N", "-B", "-e", query).stdout.strip()


@dataclass
class Sample:
    t: float
    committed: int
    paused_ns: int
    fc_sent: int
    queue: int
    state: str
    node_age: float = 0.0  # seconds since the backup node's values were read


class Sampler(threading.Thread):
    """Reads the writer's commit counter and the backup node's queue and flow control.

    The two are read by two threads: a status read of the backup node can hang while its applier is frozen
    (measured: 15 s once, in a manual run), and the writer's commits must still be sampled meanwhile. Each
    sample carries the newest values read from the backup node (``node_age``: how old they are)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._writer = connect(WRITER)
        self._node = connect(BACKUP_NODE)
        self._node_reads: list = []  # (time, values); appended by the node thread only
        self._node_thread = threading.Thread(target=self._read_node, daemon=True)

    def _read_node(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic()
            values = status(self._node, "wsrep_flow_control_sent", "wsrep_local_recv_queue",
                            "wsrep_local_state_comment")
            self._node_reads.append((time.monotonic(), values))
            self._halt.wait(max(0.0, SAMPLE_SECONDS - (time.monotonic() - t)))

    def run(self) -> None:
        self._node_thread.start()
        while not self._halt.is_set():
            t = time.monotonic()
            w = status(self._writer, "wsrep_last_committed", "wsrep_flow_control_paused_ns")
            if self._node_reads:
                read_at, n = self._node_reads[-1]
                self.samples.append(Sample(t, int(w["wsrep_last_committed"]), int(w["wsrep_flow_control_paused_ns"]),
                                           int(n["wsrep_flow_control_sent"]), int(n["wsrep_local_recv_queue"]),
                                           n["wsrep_local_state_comment"], round(t - read_at, 2)))
            self._halt.wait(max(0.0, SAMPLE_SECONDS - (time.monotonic() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self._node_thread.join(timeout=30)
        self._writer.close()
        self._node.close()

    def node_gap(self) -> float:
        """The longest time the backup node's values were not read anew (s)."""
        reads = [t for t, _values in self._node_reads]
        return round(max((b - a for a, b in zip(reads, reads[1:])), default=0.0), 1)


class ToolFreezer(threading.Thread):
    """Waits for the backup tool to start on the node, then freezes the node's applier for the
    tool's copy phase: until the tool asks for its backup lock (a BACKUP STAGE past START, or
    FLUSH TABLES WITH READ LOCK), which waits for the applier, or exits, or ``limit`` seconds
    pass. This is a disk too busy with the backup for the node to apply write sets; at the end
    of the copy the node is as far behind as the backup made it. Records when the tool ran."""

    LOCK_QUERY = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%' "
                  "AND INFO NOT LIKE 'BACKUP STAGE START%' OR INFO LIKE 'FLUSH TABLE%WITH READ LOCK%'")

    def __init__(self, limit: float) -> None:
        super().__init__(daemon=True)
        self.limit = limit
        self.tool_start: float | None = None
        self.tool_end: float | None = None
        self.frozen_seconds = 0.0
        self.error: str | None = None
        self._cid = freeze_applier.container_id(BACKUP_NODE)
        self._conn = connect(BACKUP_NODE)
        self._halt = threading.Event()

    def _tool_running(self) -> bool:
        """A ``mariabackup --backup`` runs on the node (not a ``--version`` of a pre-flight check)."""
        for pid in freeze_applier.container_pids(self._cid, TOOL_NAMES):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if b"\0--backup\0" in handle.read() + b"\0":
                        return True
            except OSError:
                continue
        return False

    def _tool_locking(self) -> bool:
        with self._conn.cursor() as cur:
            cur.execute(self.LOCK_QUERY)
            return cur.fetchone()[0] > 0

    def run(self) -> None:
        try:
            while not self._tool_running():
                if self._halt.wait(0.05):
                    return
            self.tool_start = time.monotonic()
            with freeze_applier.frozen(BACKUP_NODE):
                while (self._tool_running() and not self._tool_locking()
                       and time.monotonic() - self.tool_start < self.limit):
                    time.sleep(0.05)
                self.frozen_seconds = time.monotonic() - self.tool_start
            while self._tool_running():
                time.sleep(0.05)
            self.tool_end = time.monotonic()
        except (OSError, RuntimeError, pymysql.MySQLError) as exc:
            self.error = str(exc)
        finally:
            self._conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=900)


class Load:
    """sysbench oltp_write_only on the writer for one arm (closed loop, or at ``rate`` per second)."""

    def __init__(self, rate: int, threads: int, seconds: int) -> None:
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["docker", "exec", WRITER, "sysbench", "oltp_write_only", "--mysql-socket=/run/mysqld/mysqld.sock",
             "--mysql-user=root", "--mysql-db=sbtest", "--tables=4", "--table-size=20000",
             f"--threads={threads}", f"--rate={rate}", f"--time={seconds}", "--report-interval=5",
             "--mysql-ignore-errors=all", "run"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> str:
        docker_exec(WRITER, "pkill", "-INT", "-x", "sysbench", check=False)
        out = self.proc.communicate(timeout=60)[0]
        return out


def wait_synced(timeout: float = 300) -> float:
    """Until the backup node is Synced, not desynced and caught up; returns when it was."""
    conn = connect(BACKUP_NODE)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = status(conn, "wsrep_local_state_comment", "wsrep_local_recv_queue")
            with conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.wsrep_desync")
                desync = cur.fetchone()[0]
            if s["wsrep_local_state_comment"] == "Synced" and not desync and int(s["wsrep_local_recv_queue"]) == 0:
                return time.monotonic()
            time.sleep(0.1)
    finally:
        conn.close()
    raise RuntimeError(f"{BACKUP_NODE} did not return to Synced within {timeout} s")


def mariabackup_command(throttle: int, target: str) -> list[str]:
    """The same backup the role makes: streamed xbstream, zstd, galera info; throttled IO."""
    return ["sh", "-c",
            "set -e; rm -rf /var/backups/bench && mkdir -p /var/backups/bench/tmp && "
            f"mariabackup --backup --galera-info --stream=xbstream --target-dir=/var/backups/bench/tmp "
            f"--throttle={throttle} 2>/var/backups/bench/backup.log | zstd -q -T1 -3 -o /var/backups/bench/{target}"]


def set_desync(value: str) -> None:
    node_sql(BACKUP_NODE, f"SET GLOBAL wsrep_desync={value}")


def run_procedure(arm: str, throttle: int, freezer: ToolFreezer) -> dict:
    """The backup procedure of one arm; returns its timestamps."""
    marks: dict = {"start": time.monotonic()}
    if arm == "naive":
        docker_exec(BACKUP_NODE, *mariabackup_command(throttle, "naive.xbstream.zst"))
    elif arm == "manual":
        set_desync("ON")
        docker_exec(BACKUP_NODE, *mariabackup_command(throttle, "manual.xbstream.zst"))
        set_desync("OFF")
    else:
        counter = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dbtools-bench-tasks-{os.getpid()}.json")
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", TASK_COUNTER_FILE=counter,
                   ANSIBLE_CALLBACK_PLUGINS=os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="task_counter")
        run = subprocess.run(
            niced(["ansible-playbook", "-i", INVENTORY, "dbtools.galera.backup",
                   "-e", f"galera_backup_node={BACKUP_NODE}", "-e", "galera_backup_method=mariabackup",
                   "-e", "galera_backup_verify=checksum", "-e", "galera_backup_retention=1",
                   "-e", "galera_backup_lease_owner=bench",
                   "-e", json.dumps({"galera_backup_extra_args": [f"--throttle={throttle}"]})]),
            capture_output=True, text=True, env=env, check=False, timeout=1800)
        if run.returncode != 0:
            raise RuntimeError("the backup playbook failed:\n" + run.stdout[-3000:] + run.stderr[-3000:])
        with open(counter, encoding="utf-8") as handle:
            counts = json.load(handle)
        os.unlink(counter)
        marks["tasks_on_node"] = counts["tasks"].get(BACKUP_NODE, 0)
        marks["round_trips"] = sum(counts["round_trips"].values())
        marks["task_names_on_node"] = counts["names"].get(BACKUP_NODE, [])
        marks["timeline"] = counts.get("timeline", [])
    marks["end"] = time.monotonic()
    marks["synced"] = wait_synced()
    freezer.stop()
    if freezer.error:
        raise RuntimeError(f"freezing the applier failed: {freezer.error}")
    if freezer.tool_start is None or freezer.tool_end is None:
        raise RuntimeError("the backup tool was not seen running on the node")
    marks["tool_start"], marks["tool_end"] = freezer.tool_start, freezer.tool_end
    marks["frozen_seconds"] = freezer.frozen_seconds
    return marks


def between(samples: list[Sample], t0: float, t1: float) -> list[Sample]:
    return [s for s in samples if t0 <= s.t <= t1]


def rate(samples: list[Sample]) -> float:
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return 0.0
    return (samples[-1].committed - samples[0].committed) / (samples[-1].t - samples[0].t)


def longest_zero_stretch(samples: list[Sample]) -> float:
    """Longest time during which the cluster committed nothing, at the sampling resolution."""
    longest, since = 0.0, None
    for prev, cur in zip(samples, samples[1:]):
        if cur.committed == prev.committed:
            since = prev.t if since is None else since
            longest = max(longest, cur.t - since)
        else:
            since = None
    return longest


def node_synced_at(samples: list[Sample], marks: dict) -> float:
    """When the node was first seen Synced after the tool ended. The backup cycle ends there: the
    role goes on with its manifest and retention after that, on a Synced node."""
    return next((x.t for x in samples if x.t >= marks["tool_end"] and x.state == "Synced"), marks["synced"])


def arm_figures(arm: str, samples: list[Sample], marks: dict, baseline_window: float, tail: float) -> dict:
    t0 = marks["start"]
    synced_at = node_synced_at(samples, marks)
    base = rate(between(samples, t0 - baseline_window, t0))
    during = between(samples, marks["tool_start"], marks["tool_end"])
    resync = between(samples, marks["tool_end"], synced_at)
    whole = between(samples, t0, marks["synced"] + tail)
    cycle = between(samples, marks["tool_start"], synced_at)
    paused_s = (cycle[-1].paused_ns - cycle[0].paused_ns) / 1e9 if cycle else 0.0
    span = cycle[-1].t - cycle[0].t if cycle else 1.0
    tool_seconds = marks["tool_end"] - marks["tool_start"]
    wall = marks["synced"] - t0
    play = between(samples, t0, max(marks["end"], synced_at))
    timeline = marks.get("timeline")
    return {
        "arm": arm,
        "title": ARM_TITLES[arm],
        "baseline_tps": round(base, 1),
        "backup_window_seconds": round(tool_seconds, 1),
        "tps_during_backup_pct": round(100 * rate(during) / base, 1) if base else None,
        "tps_backup_end_to_synced_pct": round(100 * rate(resync) / base, 1) if base and len(resync) > 1 else None,
        "longest_zero_commit_seconds": round(longest_zero_stretch(whole), 1),
        "flow_control_sent_by_backup_node": cycle[-1].fc_sent - cycle[0].fc_sent if cycle else None,
        "flow_control_sent_whole_run": whole[-1].fc_sent - whole[0].fc_sent if whole else None,
        "flow_control_per_minute_before": fc_per_minute(between(samples, t0 - baseline_window, t0)),
        "writer_paused_fraction": round(paused_s / span, 3) if span else None,
        "max_recv_queue": max((s.queue for s in whole), default=0),
        "backup_end_to_synced_seconds": round(synced_at - marks["tool_end"], 1),
        "applier_frozen_seconds": round(marks["frozen_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "overhead_seconds": round(wall - tool_seconds, 1),
        "tps_whole_run_pct": round(100 * rate(play) / base, 1) if base and len(play) > 1 else None,
        "tasks_on_backup_node": marks.get("tasks_on_node"),
        "module_round_trips": marks.get("round_trips"),
        "task_names_on_backup_node": marks.get("task_names_on_node"),
        "flow_control_by_task": flow_control_by_task(samples, marks),
        # The role arm: ansible-playbook's own start (to its first task) and end (after its last task).
        "controller_start_seconds": round(timeline[0][3] - t0, 1) if timeline else None,
        "controller_end_seconds": round(marks["end"] - max(t[3] for t in timeline), 1) if timeline else None,
    }


def fc_per_minute(window: list[Sample]) -> float | None:
    """Flow control the backup node sent per minute in ``window`` (before the procedure: the machine's noise)."""
    if len(window) < 2 or window[-1].t <= window[0].t:
        return None
    return round(60 * (window[-1].fc_sent - window[0].fc_sent) / (window[-1].t - window[0].t), 1)


def flow_control_by_task(samples: list[Sample], marks: dict) -> list | None:
    """The role arm's tasks in order: [name, start and end (s from the tool's start), flow control the backup
    node sent meanwhile, its largest receive queue]; None for the other arms."""
    timeline = marks.get("timeline")
    if not timeline:
        return None
    spans = {}
    order = []
    for name, host, what, when in timeline:
        if what == "start":
            order.append(name)
            spans[len(order) - 1] = [name, when, when]
        elif order:
            spans[len(order) - 1][2] = max(spans[len(order) - 1][2], when)
    out = []
    for _index, (name, start, end) in sorted(spans.items()):
        before = [x for x in samples if x.t <= start] or samples[:1]
        upto = [x for x in samples if x.t <= end] or samples[:1]
        window = between(samples, start, end)
        out.append([name, round(start - marks["tool_start"], 1), round(end - marks["tool_start"], 1),
                    upto[-1].fc_sent - before[-1].fc_sent, max((x.queue for x in window), default=0)])
    return out


def probe_process_starts(args, starts: int = 5, gap: float = 3.0) -> dict:
    """Under the same load, the flow control the backup node sends when one small Python process starts in its
    container (the floor under any module run there), against the same span without one: how much of the
    role's flow control while the node is Synced is the machine's cost of starting a process."""
    wait_synced()
    log(f"probe: {starts} Python process starts in {BACKUP_NODE} under load")
    sampler = Sampler()
    sampler.start()
    load = Load(args.rate, args.threads, 3600)
    spans = []
    try:
        time.sleep(args.warmup)
        quiet_start = time.monotonic()
        time.sleep(starts * gap)
        quiet_end = time.monotonic()
        for _start in range(starts):
            t = time.monotonic()
            docker_exec(BACKUP_NODE, "python3", "-c", "import json, socket, ssl, subprocess")
            spans.append((t, time.monotonic()))
            time.sleep(max(0.0, gap - (time.monotonic() - t)))
        probe_end = time.monotonic()
    finally:
        load.stop()
        sampler.stop()
    quiet = between(sampler.samples, quiet_start, quiet_end)
    probed = between(sampler.samples, spans[0][0], probe_end)
    out = dict(starts=starts, seconds_per_start=round(statistics.median(e - b for b, e in spans), 2),
               flow_control_quiet=quiet[-1].fc_sent - quiet[0].fc_sent if quiet else None,
               flow_control_with_starts=probed[-1].fc_sent - probed[0].fc_sent if probed else None,
               span_seconds=round(starts * gap, 1))
    log(f"probe: {json.dumps(out)}")
    return out


def run_arm(arm: str, args) -> tuple[dict, list[Sample], dict]:
    wait_synced()
    log(f"arm {arm}: {ARM_TITLES[arm]}")
    sampler = Sampler()
    sampler.start()
    load = Load(args.rate, args.threads, 3600)
    freezer = ToolFreezer(args.freeze)
    try:
        time.sleep(args.warmup + args.baseline)
        freezer.start()
        marks = run_procedure(arm, args.throttle, freezer)
        time.sleep(args.tail)
    finally:
        freezer.stop()
        load_out = load.stop()
        sampler.stop()
        if arm != "naive":
            # whatever happened, the node is not left desynced by the bench
            if node_sql(BACKUP_NODE, "SELECT @@GLOBAL.wsrep_desync") != "0":
                set_desync("OFF")
    if "FATAL" in load_out:
        raise RuntimeError("sysbench failed:\n" + load_out[-2000:])
    figures = arm_figures(arm, sampler.samples, marks, args.baseline, args.tail)
    figures["backup_node_read_gap_seconds"] = sampler.node_gap()
    log(f"arm {arm}: {json.dumps(figures)}")
    return figures, sampler.samples, marks


def time_adhoc(repeats: int) -> dict:
    """Wall time of one ad-hoc call: galera_desync vs community.mysql.mysql_variables."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")

    def call(module: str, module_args: str) -> float:
        t = time.monotonic()
        run = subprocess.run(["ansible", "-i", INVENTORY, BACKUP_NODE, "-m", module, "-a", module_args],
                             capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"ansible -m {module} -a '{module_args}' failed:\n{run.stdout}{run.stderr}")
        return time.monotonic() - t

    socket = "login_unix_socket=/run/mysqld/mysqld.sock"
    ours: list[float] = []
    theirs: list[float] = []
    for _repeat in range(repeats):
        wait_synced()
        ours.append(call("dbtools.galera.galera_desync", "state=desynced owner=bench"))
        ours.append(call("dbtools.galera.galera_desync", "state=synced owner=bench"))
        wait_synced()
        theirs.append(call("community.mysql.mysql_variables", f"variable=wsrep_desync value=ON {socket}"))
        theirs.append(call("community.mysql.mysql_variables", f"variable=wsrep_desync value=OFF {socket}"))
    result = {
        "repeats": repeats,
        "galera_desync_median_seconds": round(statistics.median(ours), 2),
        "mysql_variables_median_seconds": round(statistics.median(theirs), 2),
    }
    result["ratio"] = round(result["galera_desync_median_seconds"] / result["mysql_variables_median_seconds"], 2)
    return result


def plot(series: dict, figures: list[dict], path: str) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), sharex=True, sharey=True,
                             squeeze=False)
    axes = [row[0] for row in axes]
    for ax, fig_row in zip(axes, figures):
        arm = fig_row["arm"]
        samples, marks = series[arm]
        t0 = marks["tool_start"]
        xs, ys = [], []
        for prev, cur in zip(samples, samples[1:]):
            xs.append(cur.t - t0)
            ys.append((cur.committed - prev.committed) / (cur.t - prev.t))
        # one-second moving average of the 0.2 s rates, for readability; no line across a gap in the samples
        k = max(1, int(round(1 / SAMPLE_SECONDS)))
        smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
        smooth = [float("nan") if cur.t - prev.t > 1.0 else value
                  for value, prev, cur in zip(smooth, samples, samples[1:])]
        ax.plot(xs, smooth, color="tab:blue", linewidth=1.2, label="cluster commits/s (writer)")
        ax.axvspan(0, marks["tool_end"] - t0, color="tab:orange", alpha=0.15, label="backup tool running")
        ax.axvspan(0, marks["frozen_seconds"], color="tab:red", alpha=0.12, label="applier frozen")
        ax.axvline(node_synced_at(samples, marks) - t0, color="tab:green", linestyle="--", linewidth=1, label="node Synced")
        ax.set_title(f"{fig_row['title']}: {fig_row['tps_during_backup_pct']}% of baseline during the backup, "
                     f"longest stall {fig_row['longest_zero_commit_seconds']} s, "
                     f"flow control sent {fig_row['flow_control_sent_by_backup_node']}", fontsize=9)
        ax.set_ylabel("tps")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("seconds since the backup tool started on galera-node3")
    fig.suptitle("Cluster write rate while galera-node3 is backed up (sysbench on galera-node1)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(figures: list[dict], adhoc: dict | None) -> None:
    rows = [
        ("write tps during the backup, % of baseline", "tps_during_backup_pct"),
        ("write tps from backup end to Synced, % of baseline", "tps_backup_end_to_synced_pct"),
        ("longest stretch with zero commits (s)", "longest_zero_commit_seconds"),
        ("flow control sent by the backup node, tool start to Synced", "flow_control_sent_by_backup_node"),
        ("writer paused by flow control, tool start to Synced (fraction)", "writer_paused_fraction"),
        ("flow control sent by the backup node, whole run", "flow_control_sent_whole_run"),
        ("the same, per minute in the baseline before the procedure (noise)", "flow_control_per_minute_before"),
        ("largest receive queue on the backup node", "max_recv_queue"),
        ("backup end to Synced (s; the role verifies, drains, resyncs)", "backup_end_to_synced_seconds"),
        ("backup tool time (s)", "backup_window_seconds"),
        ("wall time, procedure start to end (s)", "wall_seconds"),
        ("overhead: wall time minus tool time (s)", "overhead_seconds"),
        ("  of which ansible-playbook's start, to its first task (s)", "controller_start_seconds"),
        ("  of which ansible-playbook's end, after its last task (s)", "controller_end_seconds"),
        ("cluster write rate over the whole run, % of baseline", "tps_whole_run_pct"),
        ("tasks that ran a module on the backup node", "tasks_on_backup_node"),
        ("module round trips, all hosts (retries included)", "module_round_trips"),
        ("baseline tps", "baseline_tps"),
    ]
    width = max(len(r[0]) for r in rows)
    runs = max(len(f.get("runs") or [None]) for f in figures)
    cell = 22 if runs > 1 else 12

    def text(f, key):
        spread = (f.get("spread") or {}).get(key)
        if spread and spread[0] != spread[1]:
            return f"{f.get(key)} ({spread[0]}-{spread[1]})"
        return str(f.get(key))

    print()
    if runs > 1:
        print(f"median of {runs} runs per arm (lowest-highest)")
    print(" " * width + "".join(f"{f['arm']:>{cell}}" for f in figures))
    for label, key in rows:
        print(f"{label:<{width}}" + "".join(f"{text(f, key):>{cell}}" for f in figures))
    if adhoc:
        print(f"\nad-hoc call, median of {adhoc['repeats'] * 2}: galera_desync {adhoc['galera_desync_median_seconds']} s, "
              f"community.mysql.mysql_variables {adhoc['mysql_variables_median_seconds']} s, ratio {adhoc['ratio']}")


def combine(rows: list[dict]) -> dict:
    """One arm's figures over several runs: the median of each number, ``spread`` (lowest, highest), the runs
    themselves in ``runs``, and the per-task flow control of the run whose overhead is the median."""
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0], runs=rows, spread={})
    for key, value in rows[0].items():
        values = [r.get(key) for r in rows]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and None not in values:
            middle = statistics.median(values)
            out[key] = round(middle, 3) if isinstance(middle, float) else middle
            out["spread"][key] = [min(values), max(values)]
    typical = representative(rows)
    out["flow_control_by_task"] = typical.get("flow_control_by_task")
    out["representative_run"] = rows.index(typical)
    return out


def representative(rows: list[dict]) -> dict:
    """The run whose overhead is the median (the lower middle one of an even count)."""
    ordered = sorted(rows, key=lambda r: r.get("overhead_seconds") or 0)
    return ordered[(len(ordered) - 1) // 2]


def prepare_data() -> None:
    if node_sql(WRITER, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'sbtest'") != "4":
        log("creating the sysbench tables (4 x 20000 rows)")
        node_sql(WRITER, "CREATE DATABASE IF NOT EXISTS sbtest")
        docker_exec(WRITER, "sysbench", "oltp_write_only", "--mysql-socket=/run/mysqld/mysqld.sock",
                    "--mysql-user=root", "--mysql-db=sbtest", "--tables=4", "--table-size=20000", "prepare")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out"), help="directory for JSON and PNG")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of naive,manual,role")
    parser.add_argument("--rate", type=int, default=0,
                        help="sysbench transactions per second; 0 (default): closed loop, each thread waits for its "
                             "commit like a connection pool, so throughput lost in a stall stays lost")
    parser.add_argument("--threads", type=int, default=2, help="sysbench threads")
    parser.add_argument("--freeze", type=float, default=60,
                        help="the applier stays frozen during the tool's copy phase, at most this long (s)")
    parser.add_argument("--throttle", type=int, default=30,
                        help="mariabackup --throttle (IO operations per second), sets how long the tool runs")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--baseline", type=float, default=10)
    parser.add_argument("--tail", type=float, default=5)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per arm, alternating between the arms; the table gives each figure's median and "
                             "range, the plot the run with the median overhead")
    parser.add_argument("--adhoc-repeats", type=int, default=5, help="0 skips the ad-hoc timing")
    parser.add_argument("--no-probe", dest="probe", action="store_false",
                        help="skip the probe of what one process start in the backup node costs in flow control")
    parser.add_argument("--controller-nice", type=int, default=0,
                        help="nice value of the procedure's driver on the host (the playbook, the manual steps' docker "
                             "exec), 19 standing in for a controller on another machine (measured: it does not change "
                             "the flow control the role causes, docs/benchmark.md); 0 runs it like the nodes")
    args = parser.parse_args()
    CONTROLLER_NICE[0] = args.controller_nice
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    if os.geteuid() != 0:
        parser.error("the applier freeze uses ptrace on the node's mariadbd from the host: run as root")
    os.makedirs(args.out, exist_ok=True)
    prepare_data()
    by_arm: dict = {arm: [] for arm in arms}
    # Runs of the arms alternate, so a slow spell of the machine weighs on each arm alike.
    for round_no in range(args.repeat):
        for arm in arms:
            if args.repeat > 1:
                log(f"round {round_no + 1} of {args.repeat}")
            by_arm[arm].append(run_arm(arm, args))
    figures, series = [], {}
    for arm in arms:
        rows = [fig_row for fig_row, _samples, _marks in by_arm[arm]]
        figures.append(combine(rows))
        _fig, samples, marks = by_arm[arm][rows.index(representative(rows))]
        series[arm] = (samples, marks)
    adhoc = time_adhoc(args.adhoc_repeats) if args.adhoc_repeats else None
    probe = probe_process_starts(args) if args.probe else None
    samples_out = {arm: [{"t": round(x.t - marks["tool_start"], 2), "committed": x.committed,
                          "paused_ns": x.paused_ns, "fc_sent": x.fc_sent, "queue": x.queue, "state": x.state}
                         for x in samples] for arm, (samples, marks) in series.items()}
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "arms": figures, "adhoc": adhoc,
              "process_start_probe": probe,
              "samples": samples_out,
              "server": node_sql(BACKUP_NODE, "SELECT CONCAT(VERSION(), ' / galera ', "
                                              "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                                              "WHERE VARIABLE_NAME = 'WSREP_PROVIDER_VERSION'))")}
    with open(os.path.join(args.out, "bench.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    plot(series, [f["runs"][f["representative_run"]] if "runs" in f else f for f in figures],
         os.path.join(args.out, "bench.png"))
    print_table(figures, adhoc)
    if probe:
        print(f"\n{probe['starts']} Python process starts in {BACKUP_NODE} ({probe['seconds_per_start']} s each), "
              f"{probe['span_seconds']} s: {probe['flow_control_with_starts']} flow-control messages; the same span "
              f"without them: {probe['flow_control_quiet']}")
    for fig in figures:
        if fig.get("flow_control_by_task"):
            print(f"\n{fig['arm']}: flow control sent by {BACKUP_NODE} per task (s from the tool's start)")
            for name, start, end, sent, queue in fig["flow_control_by_task"]:
                print(f"  {start:7.1f} {end:7.1f} {sent:5d}  queue<={queue:<6d} {name}")
    print(f"\nfigures: {os.path.join(args.out, 'bench.json')}\nplot:    {os.path.join(args.out, 'bench.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

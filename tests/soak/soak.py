"""Chaos soak of the backup cycle: many runs of dbtools.galera.backup under write load, one random fault each,
at a random moment, and the invariants checked after every cycle.

    scripts/soak [--cycles 50] [--seed S] [--faults none,controller_kill,...] [--only 7,12]

Run by scripts/soak (which brings the Docker cluster up) as root: the applier freeze uses ptrace on the
node's mariadbd and the backup directories live on a tmpfs mounted into each node from the host. Each cycle:

1. writes the soak's mark (one row: the cycle's number) and starts sysbench on galera-node1;
2. runs the backup playbook with the cycle's draws (node, method, type, verification, encryption) and the
   soak's login (a password account with the least privileges) and test key, and injects the cycle's fault
   at the drawn moment (``faults.Watcher``);
3. waits for the run, the fault and the node's runner to end, then for the whole cluster (every node Synced in
   one Primary component, wsrep_desync OFF, no live lease), at most lease TTL + margin; a node still desynced
   then fails the soak at once;
4. pauses the load and checks: CHECKSUM TABLE equal on the three nodes; the ledger (every published backup
   is still there unless retention had to remove it, and its files match SHA256SUMS and the manifest); no
   partial backup, verification copy, run directory, option file or key file left from an earlier cycle;
   the password and the key nowhere (outputs, node files, every process's argv sampled every 0.1 s); every
   k-th cycle, the newest restorable backup restored and checked (``restore.py``).

The report (``report.py``) goes to soak/out: soak.json, table.md, soak.png, and per cycle the playbooks'
outputs and what the soak saw. docs/soak.md says how to read and replay it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets as pysecrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cluster as cl  # noqa: E402  pylint: disable=wrong-import-position
import faults as fl  # noqa: E402  pylint: disable=wrong-import-position
import judge  # noqa: E402  pylint: disable=wrong-import-position
import plan  # noqa: E402  pylint: disable=wrong-import-position
import proctree  # noqa: E402  pylint: disable=wrong-import-position
import report  # noqa: E402  pylint: disable=wrong-import-position
import restore  # noqa: E402  pylint: disable=wrong-import-position

ROOT = cl.ROOT
INVENTORY = os.path.join(ROOT, "extensions", "molecule", "resources", "inventory.ini")
FS = "/var/backups/soak"             # the soak's tmpfs on each node
BACKUP_DIR = FS + "/galera"
VERIFY_DIR = FS + "/.dbtools-galera-verify"  # the role's default: beside the backup directory
FILL_FILE = FS + "/.soak-fill"  # the disk_full fault's filler, beside the backup directory
ACCOUNT = "soak_backup"

# The role's settings the soak runs with (besides each cycle's draws).
SETTINGS = dict(
    galera_backup_dir=BACKUP_DIR,
    galera_backup_retention=3,
    galera_backup_lease_ttl=30,
    galera_backup_drain_timeout=60,
    galera_backup_sync_timeout=120,
    galera_backup_max_duration=900,
    galera_backup_progress_interval=5,
    galera_backup_sample_seconds=0.5,
    galera_backup_verify_sample=0,
)

NODE_SCAN = ["/var/log/dbtools-galera", "/run/dbtools-galera", "/tmp", "/var/tmp", "/var/log/mysql", "/root/.ansible",
             FS]
NODE_SCAN_SUFFIX = [["/var/lib/mysql", ".err"], ["/var/lib/mysql", ".log"]]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class ArgvScanner(threading.Thread):
    """Every 0.1 s, every process's command line on the host (the containers' processes included)."""

    def __init__(self, secrets: dict):
        super().__init__(daemon=True)
        self.needles = {k: v.encode() for k, v in secrets.items()}
        self.hits = []
        self.samples = 0
        self.halt = threading.Event()

    def run(self):
        me = str(os.getpid())
        while not self.halt.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        line = handle.read()
                except OSError:
                    continue
                for name, value in self.needles.items():
                    if value in line:
                        shown = line.replace(value, b"<" + name.encode() + b">").replace(b"\0", b" ")
                        self.hits.append(dict(t=time.time(), pid=int(pid), secret=name,
                                              argv=shown.decode(errors="replace")[:300]))
            self.samples += 1
            self.halt.wait(0.1)

    def take(self) -> list:
        hits, self.hits = self.hits, []
        return hits

    def stop(self):
        self.halt.set()
        self.join(timeout=10)


class Run:
    """One ansible-playbook of the cycle (tag a: the cycle's run; b: a second run)."""

    def __init__(self, proc, log_path: str, owner: str, node: str, started: float):
        self.proc, self.log_path, self.owner, self.node, self.started = proc, log_path, owner, node, started
        self.ended = None

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


class Ctx:
    """What the fault injectors of one cycle need to know and do."""

    def __init__(self, soak, cycle: plan.Cycle, cycle_dir: str):
        self.soak = soak
        self.cycle = cycle
        self.cycle_dir = cycle_dir
        self.node = cycle.node
        self.fill_file = FILL_FILE
        self.killed = False
        self.second = None
        self.main = None
        self.stream = None
        self.started_at = time.time()

    @property
    def playbook(self):
        return self.main.proc

    def owner(self, tag: str) -> str:
        return f"soak-{self.soak.seed}-{self.cycle.index:03d}-{tag}"

    def start_playbook(self, tag: str, node: str) -> Run:
        variables = dict(SETTINGS, **self.cycle.role_vars())
        variables.update(galera_backup_node=node, galera_backup_lease_owner=self.owner(tag))
        vars_path = os.path.join(self.cycle_dir, f"vars-{tag}.json")
        with open(vars_path, "w", encoding="utf-8") as handle:
            json.dump(variables, handle, indent=1)
        argv = ["ansible-playbook", "-i", INVENTORY, "dbtools.galera.backup", "-e", f"@{self.soak.secrets_file}",
                "-e", f"@{vars_path}"]
        if self.cycle.verbosity:
            argv.append(self.cycle.verbosity)
        log_path = os.path.join(self.cycle_dir, f"playbook-{tag}.log")
        with open(log_path, "w", encoding="utf-8") as out:
            out.write("$ " + " ".join(argv) + "\n")
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.soak.env,  # pylint: disable=consider-using-with
                                    start_new_session=True, cwd=ROOT)
        return Run(proc, log_path, self.owner(tag), node, time.time())


class Soak:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.faults = args.faults
        self.out = args.out
        self.ttl = SETTINGS["galera_backup_lease_ttl"]
        self.margin = args.margin
        self.ledger = judge.Ledger(SETTINGS["galera_backup_retention"])
        self.cluster = None
        self.load = None
        self.scanner = None
        self.results = []
        self.violations = []
        self.starts = []          # [(cycle, start time)]
        self.started_on = {n: [] for n in cl.NODES}
        self.marks = []
        self.acked = {}           # cycle -> acknowledged ticks
        self.baseline = {}
        self.private = tempfile.mkdtemp(prefix="dbtools-soak.")
        self.secrets = dict(password="Soak-" + pysecrets.token_hex(12), key="soak-key-" + pysecrets.token_hex(16))
        self.secrets_file = os.path.join(self.private, "secrets.json")
        self.local_tmp = os.path.join(self.out, "controller-tmp")
        self.env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
                        ANSIBLE_LOCAL_TEMP=self.local_tmp, ANSIBLE_RETRY_FILES_ENABLED="0")
        self.fatal = None

    # -- setup ---------------------------------------------------------------------------
    def setup(self):
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(self.local_tmp, exist_ok=True)
        with open(os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
            json.dump(dict(galera_login_user=ACCOUNT, galera_login_password=self.secrets["password"],
                           galera_backup_encrypt_key=self.secrets["key"]), fh)
        self.cluster = cl.Cluster()
        problems = self.wait_whole(time.time() + 300)
        if problems:
            raise SystemExit(f"the cluster is not whole before the soak: {'; '.join(problems)}. Bring it up first "
                             "(scripts/soak does: molecule create/prepare -s default).")
        cl.prepare_sbtest()
        cl.prepare_marks(self.cluster)
        cl.create_account(ACCOUNT, self.secrets["password"])
        for node in cl.NODES:
            cl.umount_tmpfs(node, FS)
            cl.mount_tmpfs(node, FS, self.args.tmpfs_size)
        self.baseline = {node: self.leftover_names(self.inspect(node, verify=False)) for node in cl.NODES}
        self.load = cl.Load(self.args.load_rate, self.args.load_threads)
        self.scanner = ArgvScanner(self.secrets)
        self.scanner.start()

    def cleanup(self):
        if self.scanner:
            self.scanner.stop()
        if self.load:
            self.load.stop()
        if self.args.keep_state:
            log(f"--keep-state: {FS} stays mounted on the nodes, the account {ACCOUNT} and schema soak stay")
        else:
            for node in cl.NODES:
                try:
                    cl.node_exec(node, "rm", "-rf", BACKUP_DIR, VERIFY_DIR, FILL_FILE, check=False)
                    cl.umount_tmpfs(node, FS)
                    cl.node_exec(node, "rm", "-rf", restore.SCRATCH, check=False)
                except Exception as exc:  # pylint: disable=broad-except
                    log(f"cleanup on {node}: {exc}")
            try:
                cl.drop_account(ACCOUNT)
                cl.node_sql(cl.WRITER, "DROP DATABASE IF EXISTS soak")
            except Exception as exc:  # pylint: disable=broad-except
                log(f"cleanup: {exc}")
        if self.cluster:
            self.cluster.close()
        shutil.rmtree(self.private, ignore_errors=True)
        shutil.rmtree(self.local_tmp, ignore_errors=True)

    # -- observation ---------------------------------------------------------------------
    def inspect(self, node: str, verify: bool = True) -> dict:
        with open(os.path.join(HERE, "node_inspect.py"), encoding="utf-8") as handle:
            program = handle.read()
        cfg = dict(backup_dir=BACKUP_DIR, verify_dir=VERIFY_DIR, verify=verify, scan=NODE_SCAN,
                   scan_suffix=NODE_SCAN_SUFFIX)
        done = cl.node_exec(node, "python3", "-c", program, json.dumps(cfg), input_text=json.dumps(self.secrets),
                            check=False, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"inspecting {node} failed: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout)

    @staticmethod
    def leftover_names(seen: dict) -> set:
        names = {p["name"] for p in seen["partials"]} | {v["name"] for v in seen["verify_copies"]}
        names |= {r["name"] for r in seen["run_dirs"]} | {d["name"] for d in seen["login_dirs"]}
        return names

    def wait_whole(self, deadline: float) -> list:
        problems = ["not checked"]
        while True:
            problems = judge.unhealthy(self.cluster.statuses(), self._lease())
            if not problems or time.time() >= deadline:
                return problems
            time.sleep(0.5)

    def _lease(self):
        lease = self.cluster.lease()
        return {"node": "?", "owner": "? (no node could be asked)", "expired": False} if lease == "unknown" else lease

    # -- a cycle -------------------------------------------------------------------------
    def run_cycle(self, index: int) -> dict:
        cycle = plan.draw(self.seed, index, self.faults)
        cycle_dir = os.path.join(self.out, "cycles", f"{index:03d}")
        shutil.rmtree(cycle_dir, ignore_errors=True)
        os.makedirs(cycle_dir)
        log(f"cycle {index}: {cycle.describe()}; fault {cycle.fault} {cycle.params or ''} at {cycle.phase or '-'}"
            f"{f' +{cycle.offset}s' if cycle.phase else ''}")
        result = dict(cycle=index, draw=cycle.as_dict(), violations=[], warnings=[], events={})
        events = result["events"]
        ctx = Ctx(self, cycle, cycle_dir)
        self.starts.append((index, ctx.started_at))
        cl.mark(self.cluster, index, self.seed)
        self.marks.append(index)
        self.load.start()
        ticker = cl.Ticker(index)
        ticker.start()
        sampler = cl.Sampler()
        sampler.start()
        ctx.stream = fl.RunStream(cycle.node, ctx.started_at)
        ctx.stream.start()
        watcher = None
        try:
            events["start"] = time.time()
            ctx.main = ctx.start_playbook("a", cycle.node)
            watcher = fl.Watcher(ctx, cycle)
            watcher.start()
            self._wait_proc(ctx.main, result, "the cycle's run")
            events["run_end"] = ctx.main.ended
            watcher.join(timeout=1800)
            watcher.fault.wait(1800)
            if ctx.second is not None:
                self._wait_proc(ctx.second, result, "the second run")
                events["second_end"] = ctx.second.ended
            events["fault_end"] = watcher.fault.ended_at
            events["runner_end"] = self._wait_runners(ctx, result)
            events["end"] = max(t for t in (events["run_end"], events.get("second_end"), events["fault_end"],
                                            events["runner_end"]) if t)
            deadline = events["end"] + self.ttl + self.margin
            problems = self.wait_whole(deadline)
            events["whole"] = time.time() if not problems else None
            if problems:
                statuses = self.cluster.statuses()
                desynced = judge.desynced_nodes(statuses)
                text = (f"the cluster was not whole {self.ttl + self.margin} s (lease TTL + margin) after the cycle "
                        f"ended: {'; '.join(problems)}")
                result["violations"].append(text)
                self.fatal = text if desynced else f"the cluster did not recover: {text}"
                if not desynced:
                    # Not desynced but not whole (a member that does not come back): note how long it takes.
                    late = self.wait_whole(time.time() + 600)
                    events["whole"] = time.time() if not late else None
        finally:
            if watcher is not None:
                watcher.stop()
                if self.fatal:
                    self._emergency(watcher)
            ctx.stream.close()
            samples = sampler.stop()
            self.acked[index] = ticker.stop()
            self.load.stop()
        with open(os.path.join(cycle_dir, "samples.json"), "w", encoding="utf-8") as handle:
            json.dump(samples, handle, default=str)
        fault_end = events.get("fault_end") or events.get("run_end")
        result["to_whole_after_fault"] = round(events["whole"] - fault_end, 1) if events.get("whole") and fault_end else None
        result["to_whole_after_end"] = round(events["whole"] - events["end"], 1) if events.get("whole") else None
        result["phases"] = [[p, round(t - events["start"], 2)] for p, t in watcher.phases]
        result["phase_hit"] = watcher.hit
        result["injected_after"] = round(watcher.injected_at - events["start"], 2) if watcher.injected_at else None
        result["fault"] = watcher.fault.detail
        result["desync"] = cl.desync_figures(samples)
        result["run"] = judge.outcome(ctx.main.proc.returncode, ctx.main.output(), ctx.killed)
        if ctx.second is not None:
            result["second"] = judge.outcome(ctx.second.proc.returncode, ctx.second.output(), False)
        # Which nodes a run of this cycle reached its start step on (where dead runs' leftovers are swept).
        # When: the runner's start seen on the backup node, else (a second run elsewhere) its playbook's end, which
        # is later than its start step: a leftover is then judged against a later moment, never an earlier one.
        started = {n: events["run_end"] for n in result["run"]["started"]}
        for node in (result.get("second") or {}).get("started") or []:
            started[node] = max(started.get(node, 0), events.get("second_end") or events["run_end"])
        if ctx.stream.started:
            started[ctx.node] = min(ctx.stream.started.values())
        for node in sorted(started):
            self.started_on[node].append((index, started[node]))
        if self.fatal:
            return result
        self.check(index, ctx, result)
        return result

    def _wait_proc(self, run: Run, result: dict, what: str) -> None:
        try:
            run.proc.wait(timeout=self.args.run_timeout)
        except subprocess.TimeoutExpired:
            result["violations"].append(f"{what} did not end within {self.args.run_timeout} s: killed")
            proctree.kill_tree(run.proc.pid)
            run.proc.wait(timeout=60)
        run.ended = time.time()

    def _wait_runners(self, ctx: Ctx, result: dict) -> float:
        """Until no backup runner lives on the node (a killed controller's runner finishes its backup)."""
        deadline = time.time() + SETTINGS["galera_backup_max_duration"] + 120
        seen_live = False
        while time.time() < deadline:
            live = ctx.stream.live()
            if not live:
                return time.time()
            seen_live = True
            time.sleep(0.5)
        result["violations"].append(f"a backup runner still ran on {ctx.node} long after the run ended"
                                    f"{' (seen)' if seen_live else ''}")
        return time.time()

    def _emergency(self, watcher) -> None:
        try:
            watcher.fault.emergency_end()
        except Exception as exc:  # pylint: disable=broad-except
            log(f"undoing the fault: {exc}")

    # -- the invariants after a cycle ------------------------------------------------------
    def check(self, index: int, ctx: Ctx, result: dict) -> None:
        v = result["violations"]
        left = (result.get("fault") or {}).get("left_running")
        if left:
            v.append(f"processes of the killed controller still ran 15 s after the kill: {left}")
        # Watchdogs disarm within a few seconds of the lease's release.
        # Data: equal on every node once the load paused; nothing lost.
        quiet = cl.quiesce(self.cluster)
        if not quiet["ok"]:
            v.append(f"the nodes did not converge after the load paused: {quiet.get('statuses')}")
        else:
            sums = cl.checksums(self.cluster)
            result["checksums"] = sums[cl.WRITER]
            for node, values in sums.items():
                if values != sums[cl.WRITER]:
                    v.append(f"CHECKSUM TABLE differs on {node}: {values} vs {cl.WRITER} {sums[cl.WRITER]}")
            for node in cl.NODES:
                marks = [int(r[0]) for r in self.cluster.admin(node, "SELECT cycle FROM soak.marks ORDER BY cycle")]
                if marks != self.marks:
                    v.append(f"{node}: soak.marks holds {marks}, the soak wrote {self.marks}")
                held = cl.ticks(self.cluster, node)
                for cycle, acked in self.acked.items():
                    missing = sorted(set(acked) - held.get(cycle, set()))
                    if missing:
                        v.append(f"{node}: {len(missing)} acknowledged writes of cycle {cycle} are missing "
                                 f"(seq {missing[:10]}...)")
            result["ticks"] = dict(acknowledged=len(self.acked[index]))
        # Every node's backups, leftovers and files.
        seen = {}
        for node in cl.NODES:
            seen[node] = self.inspect(node)
            with open(os.path.join(ctx.cycle_dir, f"inspect-{node}.json"), "w", encoding="utf-8") as handle:
                json.dump(seen[node], handle, indent=1, default=str)
        published = {}
        for node, data in seen.items():
            for backup_id, item in data["backups"].items():
                if item["problems"]:
                    v.append(f"{node}: published backup {backup_id} does not verify: {'; '.join(item['problems'])}")
            observed = self.ledger.observe(index, node, data["backups"])
            v.extend(observed["violations"])
            if observed["new"] or observed["removed"]:
                published[node] = dict(new=observed["new"], removed=observed["removed"])
        result["ledger"] = published
        # A reported backup is there; a failed or killed run published nothing.
        for tag, run in (("run", result.get("run")), ("second", result.get("second"))):
            if not run:
                continue
            if run["published"] and run["published"] not in self.ledger.published:
                v.append(f"the {tag} reported backup {run['published']}, which is not in its directory")
            if run["kind"] in ("refused", "failed") and run["published"]:
                v.append(f"the {tag} failed but reported a backup {run['published']}")
        new_ids = [i for p in published.values() for i in p["new"]]
        reported = {r["published"] for r in (result.get("run"), result.get("second")) if r and r.get("published")}
        for backup_id in new_ids:
            if backup_id not in reported and not ctx.killed:
                v.append(f"{backup_id} appeared though no run of the cycle reported it")
        # Leftovers.
        for node, data in seen.items():
            items = self.leftovers(node, data)
            result.setdefault("leftovers", {})[node] = items
            v.extend(judge.leftover_violations(index, node, items, self.started_on, self.ttl))
            live_watchdogs = [w["name"] for w in data["watchdogs"] if w.get("alive")]
            if live_watchdogs:
                result["warnings"].append(f"{node}: watchdog(s) still alive after the cycle: {live_watchdogs}")
        # Secrets: node files, outputs, the controller's temporary files, every argv.
        for node, data in seen.items():
            for path, name in data["secret_hits"]:
                v.append(f"{node}: the {name} is in {path}")
        texts = {}
        for name in sorted(os.listdir(ctx.cycle_dir)):
            path = os.path.join(ctx.cycle_dir, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as handle:
                    texts[f"soak/out/cycles/{index:03d}/{name}"] = handle.read()
        for top, _dirs, files in os.walk(self.local_tmp):
            for name in files:
                try:
                    with open(os.path.join(top, name), encoding="utf-8", errors="replace") as handle:
                        texts[os.path.join(top, name)] = handle.read()
                except OSError:
                    continue
        for where, name in judge.secret_hits(texts, self.secrets):
            v.append(f"the {name} is in {where}")
        for hit in self.scanner.take():
            v.append(f"the {hit['secret']} was in the argv of process {hit['pid']}: {hit['argv']}")
        # Every k-th cycle: the newest restorable backup, restored and checked.
        if self.args.restore_every and index % self.args.restore_every == 0:
            picked = restore.pick(self.ledger.present, self.ledger.published)
            if picked:
                node, backup_id, summary = picked
                made = summary.get("cycle")
                marks_then = [m for m in self.marks if made is not None and m <= made]
                acked_before = {c: a for c, a in self.acked.items() if made is not None and c < made}
                log(f"cycle {index}: restore check of {backup_id} on {node}")
                checked = restore.verify(node, BACKUP_DIR, backup_id, summary, marks_then, acked_before, INVENTORY,
                                         self.secrets_file, self.env, os.path.join(ctx.cycle_dir, "restore.log"))
                result["restore"] = checked
                for problem in checked["problems"]:
                    v.append(f"restore check of {backup_id}: {problem}")
            else:
                result["warnings"].append("no physical backup to restore-check yet")

    def leftovers(self, node: str, data: dict) -> list:
        """What of a run may be left on the node, each with the cycle that made it (judge.leftover_violations)."""
        base = self.baseline.get(node, set())
        items = []

        def made(backup_id=None, moment=None):
            when = judge.id_epoch(backup_id) if backup_id else moment
            return judge.cycle_of(when, self.starts)

        for p in data["partials"]:
            if p["name"] not in base:
                items.append(dict(kind="partial", name=p["name"], cycle=made(p["name"][:-len(".partial")]),
                                  alive=p.get("alive"), mtime=p.get("mtime")))
        for p in data["verify_copies"]:
            if p["name"] not in base:
                items.append(dict(kind="verify_copy", name=p["name"], cycle=made(p["name"].split(".partial")[0]),
                                  alive=p.get("alive"), mtime=p.get("mtime")))
        for r in data["run_dirs"]:
            if r["name"] in base:
                continue
            cycle = made(r.get("id"), r.get("mtime"))
            items.append(dict(kind="run_dir", name=r["name"], cycle=cycle, alive=r.get("alive"), mtime=r.get("mtime")))
            for secret_file, kind in (("client.cnf", "option_file"), ("backup.key", "key_file")):
                if secret_file in r["files"]:
                    items.append(dict(kind=kind, name=f"{r['name']}/{secret_file}", cycle=cycle, alive=r.get("alive")))
        for d in data["login_dirs"]:
            if d["name"] not in base:
                items.append(dict(kind="login_dir", name=d["name"], cycle=made(moment=d.get("mtime")), alive=False))
        return items

    # -- the whole soak --------------------------------------------------------------------
    def meta(self) -> dict:
        return dict(seed=self.seed, faults=self.faults, cycles_requested=self.args.cycles, only=self.args.only,
                    settings=dict(lease_ttl=self.ttl, margin=self.margin, role=SETTINGS, load_rate=self.args.load_rate,
                                  load_threads=self.args.load_threads, restore_every=self.args.restore_every,
                                  tmpfs=self.args.tmpfs_size, account=ACCOUNT),
                    fatal=self.fatal, argv_samples=self.scanner.samples if self.scanner else 0,
                    ledger=self.ledger.summary(), load_restarts=self.load.restarts if self.load else 0)

    def run(self) -> int:
        indexes = self.args.only or list(range(1, self.args.cycles + 1))
        started = time.time()
        try:
            self.setup()
            for index in indexes:
                t0 = time.time()
                try:
                    result = self.run_cycle(index)
                except Exception as exc:  # pylint: disable=broad-except
                    result = dict(cycle=index, draw=plan.draw(self.seed, index, self.faults).as_dict(),
                                  violations=[f"the soak itself failed: {type(exc).__name__}: {exc}"],
                                  error=traceback.format_exc())
                    self.fatal = self.fatal or f"the soak failed in cycle {index}: {exc}"
                result["seconds"] = round(time.time() - t0, 1)
                self.results.append(result)
                for text in result["violations"]:
                    self.violations.append(dict(cycle=index, text=text))
                    log(f"cycle {index}: VIOLATION: {text}")
                run = result.get("run") or {}
                log(f"cycle {index}: {report.outcome_text(run)} in {result['seconds']} s"
                    f"{'; 2nd: ' + report.outcome_text(result.get('second')) if result.get('second') else ''}; "
                    f"whole {result.get('to_whole_after_fault')} s after the fault")
                report.write(self.out, self.meta(), self.results, self.violations)
                if self.fatal:
                    log(f"stopping: {self.fatal}")
                    break
        finally:
            self.cleanup()
        meta = dict(self.meta(), seconds=round(time.time() - started, 1))
        report.write(self.out, meta, self.results, self.violations)
        report.plot(self.out, dict(meta, violations_all=self.violations), self.results)
        print()
        print(report.text_table(self.results))
        summary = report.summary(self.results, self.violations)
        print(json.dumps(summary, indent=1))
        print(f"\nseed {self.seed}: {len(self.results)} cycles, {len(self.violations)} invariant violations; "
              f"{os.path.join(self.out, 'soak.json')}, table.md, soak.png")
        return 1 if self.violations or self.fatal else 0


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--seed", default=None, help="the seed of every draw (default: a random one, printed)")
    parser.add_argument("--faults", default=",".join(plan.FAULTS),
                        help=f"comma-separated subset of {','.join(plan.FAULTS)}")
    parser.add_argument("--only", default="", help="replay only these cycles of the seed (comma-separated numbers)")
    parser.add_argument("--out", default=os.path.join(ROOT, "soak", "out"))
    parser.add_argument("--margin", type=float, default=90,
                        help="seconds beyond the lease TTL within which the cluster must be whole after a cycle")
    parser.add_argument("--restore-every", type=int, default=5, help="restore-check the newest backup every k cycles")
    parser.add_argument("--load-rate", type=int, default=100, help="sysbench transactions per second on galera-node1")
    parser.add_argument("--load-threads", type=int, default=2)
    parser.add_argument("--run-timeout", type=int, default=1500, help="a playbook running longer is a violation")
    parser.add_argument("--tmpfs-size", default="1g", help="size of the backup filesystem on each node")
    parser.add_argument("--keep-state", action="store_true", help="leave the backups, account and marks in place")
    args = parser.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(plan.FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(plan.FAULTS)}")
    args.only = [int(x) for x in args.only.split(",") if x.strip()] if args.only else []
    if args.seed is None:
        args.seed = str(random.SystemRandom().randrange(100000, 999999))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the applier freeze uses ptrace on the node's mariadbd, and the backup "
                         "filesystem is mounted into the nodes from the host")
    log(f"soak: seed {args.seed}, {len(args.only) or args.cycles} cycles, faults {','.join(args.faults)}")
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())

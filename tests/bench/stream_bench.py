"""Benchmark: local-then-copy against streamed backups (galera_backup_stream_to), wall time and peak local disk.

    flock /work/cluster.lock python tests/bench/stream_bench.py [--mib 512] [--dest ssh s3] [--json out.json]

On the local three-node Docker cluster (it must be up: scripts/bench or `molecule create/prepare -s default`),
with the off-host stores of tests/tools/backup_store.py (an sshd container and moto's S3 server on the
cluster's network), it loads --mib MiB of incompressible rows into benchdb.t, then backs up galera-node3
with ``ansible-playbook dbtools.galera.backup`` twice per destination:

  local-then-copy  galera_backup_copies=[that store]: the backup is written to galera_backup_dir, checksummed
                   and read back there, then copied and verified at the store (the role's copy step)
  streamed         galera_backup_stream_to=that store: compressed stream straight to the store, hashed and
                   tested as it passes, verified there; galera_backup_dir keeps only the record

Wall time is the whole playbook (plan, pre-flight, desync, backup, resync, publish, copies). Peak local disk
is the most ``du -sb`` saw in that run's galera_backup_dir on galera-node3, sampled every 0.2 s (and in the
verification scratch directory, unused with verify=checksum). Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
import backup_store  # noqa: E402  pylint: disable=wrong-import-position

INVENTORY = os.path.join(ROOT, "extensions", "molecule", "resources", "inventory.ini")
NODE = "galera-node3"
NETWORK = "dbtools-galera"
STORE = "galera-bench-store"
KEY, KNOWN = "/root/.ssh/dbtools_bench_key", "/root/.ssh/dbtools_bench_known_hosts"
MODES = ("local-then-copy", "streamed")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def docker(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, input=input_text)


def node(script: str, check: bool = True) -> str:
    return docker("exec", NODE, "sh", "-c", script, check=check).stdout.strip()


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Peak:
    """The largest ``du -sb`` of some directories on the node while a run lasts."""

    def __init__(self, paths):
        self.paths = paths
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.is_set():
            out = docker("exec", NODE, "sh", "-c", "du -sbc " + " ".join(self.paths) + " 2>/dev/null | tail -1",
                         check=False).stdout.split()
            if out and out[0].isdigit():
                self.peak = max(self.peak, int(out[0]))
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.done.set()
        self.thread.join()


def destinations(state: dict) -> dict:
    ssh, s3 = state["ssh"], state["s3"]
    return {
        "ssh": dict(name="bench-ssh", type="ssh", host=ssh["ip"], user=ssh["user"], path=ssh["path"] + "/bench",
                    identity_file=KEY, known_hosts_file=KNOWN, keep=1),
        "s3": dict(name="bench-s3", type="s3", endpoint_url=s3["endpoint_url"], bucket=s3["bucket"],
                   region=s3["region"], prefix="bench/", access_key=s3["access_key"], secret_key=s3["secret_key"],
                   keep=1),
    }


def run_backup(dest: dict, mode: str, directory: str, workdir: str) -> dict:
    settings = dict(galera_backup_node=NODE, galera_backup_dir=directory, galera_backup_verify="checksum",
                    galera_backup_retention=1, galera_backup_lease_owner="stream-bench",
                    galera_backup_sample_seconds=0.5, galera_backup_copies=[dest])
    if mode == "streamed":
        settings["galera_backup_stream_to"] = dest["name"]
    extra = os.path.join(workdir, "vars.json")  # 0600: it holds the S3 test credentials
    with open(os.open(extra, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    node(f"rm -rf {directory}")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"))
    started = time.monotonic()
    with Peak([directory, "/var/backups/.dbtools-galera-verify"]) as peak:
        proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, "dbtools.galera.backup", "-e", f"@{extra}"],
                              capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{mode} to {dest['name']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    backup = node(f"ls -1 {directory}").split()[0]
    manifest = json.loads(node(f"cat {directory}/{backup}/manifest.json"))
    return dict(dest=dest["type"], mode=mode, wall_seconds=round(wall, 1), peak_local_bytes=peak.peak,
                backup_bytes=manifest["bytes"], tool_seconds=manifest.get("tool_seconds"), id=backup)


def load(mib: int) -> None:
    log(f"loading {mib} MiB of incompressible rows into benchdb.t")
    node("mariadb -e \"DROP DATABASE IF EXISTS benchdb; CREATE DATABASE benchdb; CREATE TABLE benchdb.t "
         "(id INT AUTO_INCREMENT PRIMARY KEY, v BLOB NOT NULL) ENGINE=InnoDB\"")
    for batch in range(mib // 64):
        log(f"  batch {batch + 1} of {mib // 64}")
        node("mariadb -e \"INSERT INTO benchdb.t (v) SELECT random_bytes(1000) FROM benchdb.seq_1_to_65536\"")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--mib", type=int, default=512, help="table data to load (MiB, a multiple of 64)")
    parser.add_argument("--dest", nargs="+", choices=["ssh", "s3"], default=["ssh", "s3"])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    image = docker("inspect", NODE, "--format", "{{.Config.Image}}").stdout.strip()
    workdir = tempfile.mkdtemp(prefix="stream-bench.")
    state_dir = os.path.join(workdir, "store")
    results = []
    try:
        log("starting the stores")
        state = backup_store.up(NETWORK, STORE, image, state_dir)
        node("install -d -m 0700 /root/.ssh")
        docker("cp", state["ssh"]["private_key"], f"{NODE}:{KEY}")
        docker("exec", "-i", NODE, "sh", "-c", f"cat > {KNOWN} && chmod 600 {KEY} {KNOWN}",
               input_text=state["ssh"]["known_hosts_line"] + "\n")
        load(args.mib)
        dests = destinations(state)
        for kind in args.dest:
            for mode in MODES:
                log(f"{mode} to {kind}")
                results.append(run_backup(dests[kind], mode, f"/var/backups/bench-{mode}", workdir))
                log(f"  {results[-1]['wall_seconds']} s, peak local {human(results[-1]['peak_local_bytes'])}")
    finally:
        node("rm -rf /var/backups/bench-local-then-copy /var/backups/bench-streamed "
             f"{KEY} {KNOWN}; mariadb -e 'DROP DATABASE IF EXISTS benchdb'", check=False)
        backup_store.down(STORE, state_dir)
        subprocess.run(["rm", "-rf", workdir], check=False)
    print(f"\n{args.mib} MiB of table data on {NODE}; wall time of ansible-playbook dbtools.galera.backup, "
          "peak bytes in galera_backup_dir\n")
    print(f"{'store':<6} {'mode':<16} {'wall s':>8} {'tool s':>7} {'peak local':>12} {'backup':>10}")
    for row in results:
        print(f"{row['dest']:<6} {row['mode']:<16} {row['wall_seconds']:>8} {row['tool_seconds']!s:>7} "
              f"{human(row['peak_local_bytes']):>12} {human(row['backup_bytes']):>10}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(dict(mib=args.mib, results=results), handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the soak reads on a node after each cycle (run INSIDE the node container, standard library only).

    docker exec -i NODE python3 -c "$(cat node_inspect.py)" '{"backup_dir": ...}'  < secrets.json

The host passes this file's text as the program (no secret in it) and the secrets on stdin (never on a
command line). It prints one JSON document: the backups of the directory (complete ones with their
manifests and a check of every file against SHA256SUMS and of SHA256SUMS against the manifest), the
partial backups, failure records, verification copies, run directories (with the files they still hold),
watchdogs, the login check's scratch directories, and every file under the scanned paths holding a secret.
"""

import hashlib
import json
import os
import sys

BOOT_ID = "/proc/sys/kernel/random/boot_id"
RUN_BASE = "/run/dbtools-galera"
MAX_SCAN = 512 << 20


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def boot_id():
    try:
        with open(BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def start_ticks(pid):
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(ident):
    """Whether the process an identity record (pid, boot_id, start_ticks) names still runs here."""
    if not isinstance(ident, dict) or not isinstance(ident.get("pid"), int):
        return None
    if ident.get("boot_id") and ident["boot_id"] != boot_id():
        return False
    ticks = start_ticks(ident["pid"])
    if ticks is None:
        return False
    return ident.get("start_ticks") is None or ticks == ident["start_ticks"]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(1 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def check_backup(path, manifest):
    """Problems of a complete backup: SHA256SUMS against the manifest, every file against SHA256SUMS."""
    problems = []
    sums = os.path.join(path, "SHA256SUMS")
    if not os.path.isfile(sums):
        return ["no SHA256SUMS"]
    if sha256(sums) != manifest.get("sha256"):
        problems.append("SHA256SUMS does not match the manifest's sha256")
    listed = {}
    with open(sums, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            digest, _sep, rel = line.rstrip("\n").partition("  ")
            listed[os.path.normpath(rel)] = digest
    present = set()
    for top, _dirs, files in os.walk(path):
        for name in files:
            rel = os.path.relpath(os.path.join(top, name), path)
            if rel not in ("manifest.json", "SHA256SUMS"):
                present.add(os.path.normpath(rel))
    for rel in sorted(set(listed) - present):
        problems.append(f"{rel} is listed but missing")
    for rel in sorted(present - set(listed)):
        problems.append(f"{rel} is not listed in SHA256SUMS")
    for rel in sorted(set(listed) & present):
        if sha256(os.path.join(path, rel)) != listed[rel]:
            problems.append(f"{rel} does not match its checksum")
    if manifest.get("result") != "ok" or (manifest.get("verify") or {}).get("result") != "ok":
        problems.append(f"the manifest says result {manifest.get('result')}, verify {(manifest.get('verify') or {}).get('result')}")
    return problems


def summary(manifest):
    keys = ("id", "run_id", "type", "parent", "chain", "method", "node", "started_at", "finished_at", "bytes", "tables",
            "sha256")
    out = {k: manifest.get(k) for k in keys}
    out.update(encrypted=bool(manifest.get("encryption")), verify=(manifest.get("verify") or {}).get("level"),
               checksums=(manifest.get("verify") or {}).get("checksums") or {},
               position=manifest.get("position") or {}, desync=manifest.get("desync") or {})
    return out


def mtime(path):
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return None


def backups(directory, verify):
    out = dict(backups={}, partials=[], failed=[], other=[])
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json")) and not name.endswith(".partial"):
            manifest = read_json(os.path.join(path, "manifest.json")) or {}
            item = summary(manifest)
            item["problems"] = check_backup(path, manifest) if verify else []
            out["backups"][name] = item
        elif name.endswith(".partial"):
            record = read_json(os.path.join(path, ".run.json")) or {}
            out["partials"].append(dict(name=name, run_id=record.get("run_id"), started_at=record.get("started_at"),
                                        alive=alive(record.get("process")), mtime=mtime(path),
                                        has_manifest=os.path.isfile(os.path.join(path, "manifest.json"))))
        elif name.endswith(".failed.json"):
            record = read_json(path) or {}
            out["failed"].append(dict(name=name, error=record.get("error"), step=record.get("step")))
        else:
            out["other"].append(name)
    return out


def verify_copies(directory):
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for name in names:
        record = read_json(os.path.join(directory, name, ".run.json")) or {}
        out.append(dict(name=name, run_id=record.get("run_id"), alive=alive(record.get("process")),
                        mtime=mtime(os.path.join(directory, name))))
    return out


def run_dirs():
    out, watchdogs = [], []
    try:
        names = sorted(os.listdir(RUN_BASE))
    except OSError:
        return out, watchdogs
    for name in names:
        path = os.path.join(RUN_BASE, name)
        if name.startswith("run-") and os.path.isdir(path):
            state = read_json(os.path.join(path, "state.json")) or {}
            out.append(dict(name=name, files=sorted(os.listdir(path)), id=state.get("id"), step=state.get("step"),
                            done=state.get("done"), result=state.get("result"), error=state.get("error"),
                            started_at=state.get("started_at"), alive=alive(state.get("process")), mtime=mtime(path)))
        elif name.startswith("watchdog-") and name.endswith(".pid"):
            watchdogs.append(dict(name=name, alive=alive(read_json(path)), mtime=mtime(path)))
    return out, watchdogs


def login_dirs():
    out = []
    for base in ("/tmp", "/var/tmp"):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        out.extend(dict(name=os.path.join(base, n), mtime=mtime(os.path.join(base, n)))
                   for n in sorted(names) if n.startswith("dbtools-galera-login."))
    return out


def scan(paths, secrets):
    """Files under ``paths`` holding a secret: [(path, name)]. Secrets are compared as UTF-8 bytes."""
    needles = {name: value.encode("utf-8") for name, value in secrets.items() if value}
    hits = []
    for top in paths:
        if os.path.isfile(top):
            walker = [(os.path.dirname(top), [], [os.path.basename(top)])]
        else:
            walker = os.walk(top)
        for folder, _dirs, files in walker:
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > MAX_SCAN:
                        continue
                    with open(path, "rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                for secret, value in needles.items():
                    if value in data:
                        hits.append([path, secret])
    return hits


def main():
    cfg = json.loads(sys.argv[1])
    secrets = json.loads(sys.stdin.read() or "{}")
    out = backups(cfg["backup_dir"], cfg.get("verify", True))
    out["verify_copies"] = verify_copies(cfg["verify_dir"])
    out["run_dirs"], out["watchdogs"] = run_dirs()
    out["login_dirs"] = login_dirs()
    paths = [p for p in cfg.get("scan", []) if os.path.exists(p)]
    for pattern_dir, suffix in cfg.get("scan_suffix", []):
        try:
            paths.extend(os.path.join(pattern_dir, n) for n in os.listdir(pattern_dir) if n.endswith(suffix))
        except OSError:
            pass
    out["secret_hits"] = scan(paths, secrets) if secrets else []
    out["scanned"] = paths
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

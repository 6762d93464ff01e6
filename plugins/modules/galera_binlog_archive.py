#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_binlog_archive
short_description: Archive a Galera cluster's binary logs with continuity proven by GTID
version_added: 0.3.0
description:
  - The node-side steps of the binary-log archive (point-in-time recovery), as the C(dbtools.galera.binlog_archive)
    playbook sequences them. The archive index lives in the cluster's own catalogue tables (C(binlog_archive),
    C(binlog_segments) in O(lease_database)), so whichever node archives continues where the last one stopped;
    C(index.json) beside the files is a copy for restores without the cluster. See docs/pitr.md.
  - O(step=probe) reads, on one node, its health, its binary-log settings (what point-in-time recovery misses, and the
    settings to add), the GTID ranges its binlog files hold, the catalogue's cursor and the oldest backup in
    O(dir). Read-only (it keeps a scan cache of the closed binlog files in the archive directory).
  - O(step=archive), on the node the playbook chose, takes the cluster-wide lease C(binlog_archive) (a second archiver
    is refused, naming the holder), runs C(FLUSH BINARY LOGS), and copies every closed binlog file holding GTIDs after
    the catalogue's cursor to O(dir)C(/binlogs/<cluster>/) and to every O(copies) store, compressed, encrypted with the
    backup key when O(encrypt), each verified where it went. It commits the new segments (first/last GTID and event
    time, sha256, MAC), publishes the index, and removes the segments no kept backup needs.
  - O(step=check) reports whether the archive is whole where it is kept (this node's copies and every store), its gaps
    by GTID range and its lag. O(step=plan) answers what a restore to a point would replay from O(source), or refuses
    naming the GTID gap. O(step=refresh) writes the newest index into this node's archive directory and removes this
    node's copies of segments retention dropped.
  - O(step=replay), on the first node of a restored cluster (the C(galera_restore_until) of
    C(dbtools.galera.restore_cluster)), applies the archived writes from the backup's GTID position O(start) up to
    O(until) through the SQL client (C(mariadb-binlog) of the cluster domain only, decrypted and checked on the fly),
    reading the index and the files from O(source). It refuses, naming the GTID range, when the archive has a gap
    between the backup and the target. The login needs the privileges of the replayed statements and
    C(BINLOG REPLAY) (or C(SUPER)).
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - O(step=archive) in check mode flushes nothing and reports what would be archived from the closed files.
      - O(step=replay) in check mode reports the plan (the files and the GTID range) and applies nothing; it connects
        to no server then, and needs O(cluster).
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  step:
    description: Which step to run (see the description).
    type: str
    required: true
    choices: [probe, archive, check, plan, refresh, replay]
  cluster:
    description: The archive's name; default the node's C(wsrep_cluster_name).
    type: str
  dir:
    description: The node's backup directory (the role's C(galera_backup_dir)); the archive is in its C(binlogs/<cluster>/).
    type: path
    default: /var/backups/galera
  file_owner:
    description: Owner of the archive's files (0600) and directories (0700).
    type: str
    default: root
  file_group:
    description: Group of the archive's files and directories.
    type: str
    default: root
  copies:
    description:
      - The off-host stores that receive the archive, as the role's C(galera_backup_copies) (C(name), C(type) V(ssh),
        V(s3) or V(local), and that store's options); their C(keep) rules do not apply to binlogs.
    type: list
    elements: dict
    default: []
    suboptions:
      type:
        description: V(ssh), V(s3) or V(local).
        type: str
        required: true
        choices: [ssh, s3, local]
      name:
        description: The store's name (O(source) names it).
        type: str
      keep:
        description: The backups' retention there (not applied to binlogs).
        type: raw
      keep_tiers:
        description: The backups' calendar tiers there (not applied to binlogs).
        type: dict
      max_age:
        description: The backups' age limit there (not applied to binlogs).
        type: int
      host:
        description: With V(ssh), the host.
        type: str
      port:
        description: With V(ssh), the port.
        type: int
        default: 22
      user:
        description: With V(ssh), the user.
        type: str
        default: root
      path:
        description: With V(ssh), the directory of the backups there.
        type: str
      identity_file:
        description: With V(ssh), the private key on the node.
        type: path
      known_hosts_file:
        description: With V(ssh), the known_hosts file on the node.
        type: path
      strict_host_key_checking:
        description: With V(ssh), V(yes) or V(accept-new).
        type: str
        choices: ["yes", accept-new]
        default: "yes"
      bwlimit:
        description: With V(ssh), KiB/s at most (0 is no limit).
        type: int
        default: 0
      bucket:
        description: With V(s3), the bucket.
        type: str
      prefix:
        description: With V(s3), the key prefix.
        type: str
        default: ""
      endpoint_url:
        description: With V(s3), the endpoint of an S3-compatible server.
        type: str
      region:
        description: With V(s3), the region.
        type: str
      access_key:
        description: With V(s3), the access key.
        type: str
      secret_key:
        description: With V(s3), the secret key.
        type: str
      storage_class:
        description: With V(s3), the storage class of the data.
        type: str
      validate_certs:
        description: With V(s3), whether to check the endpoint's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: With V(s3), a CA bundle on the node.
        type: path
  compress:
    description: V(zstd) compresses each segment (C(.zst)); V(none) stores the binlog file as it is.
    type: str
    choices: [zstd, none]
    default: zstd
  encrypt:
    description: Encrypt each segment with the backup key (AES-256-CTR by openssl, a sealed MAC record per segment).
    type: bool
    default: false
  encrypt_key:
    description: The backup key (its first line). Never logged.
    type: str
  encrypt_key_file:
    description: A file on the node whose first line is the backup key.
    type: path
  owner:
    description: Who archives (the lease's owner), e.g. C(binlog_archive:awx-job-42). Required with O(step=archive).
    type: str
  lease_database:
    description: The database of the lease table and the catalogue tables.
    type: str
    default: dbtools_galera
  lease_ttl:
    description: Seconds the archive lease lasts; renewed after each segment. An archiver that died frees it after that.
    type: int
    default: 600
  gap:
    description:
      - From the playbook's node choice (C(dbtools.galera.binlog_archive_node)), when no node of the cluster holds the
        GTIDs after the cursor any more, C(first) and C(last) sequence numbers, recorded as a gap of the archive.
        Without it, a node whose binlogs do not continue the cursor stops there and reports the C(hole).
    type: dict
  unlogged:
    description:
      - From the playbook's node choice, the sequence-number ranges (C(first), C(last)) of the cluster domain that no
        node binlogged, proven by at least two nodes that show the same hole while binlogging without a break and by
        no node holding any of it. Galera numbers every total-order statement, also a DDL that fails or changes
        nothing, which no node writes to its binlog. The archive goes on across these ranges (nothing there to
        replay) and records them in the segment that crosses them; any other hole stays a break.
    type: list
    elements: dict
    default: []
    suboptions:
      first:
        description: The first sequence number of the range.
        type: int
        required: true
      last:
        description: The last sequence number of the range.
        type: int
        required: true
  keep_from:
    description:
      - The oldest backup position (cluster-domain sequence number) kept on the other nodes (from their probes).
        Segments wholly at or below the lowest of it, the backups in O(dir) and those in every store, are removed.
    type: int
  retention:
    description: Remove the segments no kept backup needs after archiving.
    type: bool
    default: true
  metrics_dir:
    description: Write the archive's lag and gaps into the node_exporter textfile of this cluster and node there.
    type: path
  verify:
    description: With O(step=check), V(sha256) also reads every archived file back and compares it with the index.
    type: str
    choices: [none, sha256]
    default: none
  fail_on_gap:
    description: With O(step=check), fail (with the summary as the message) when the archive has a gap.
    type: bool
    default: true
  until:
    description:
      - With O(step=replay), the point to restore to, V(latest) (every archived write), a GTID of the cluster domain
        (C(1-1-4711), included) or a UTC time (ISO 8601, C(2026-12-02T10:15:00Z)), meaning every transaction committed
        at or before it (binlog event times are whole seconds).
    type: str
    default: latest
  source:
    description: With O(step=plan) or O(step=replay), where the files come from, V(local) (this node) or the O(copies) name.
    type: str
    default: local
  start:
    description: With O(step=plan) or O(step=replay), the backup's GTID position (its manifest's C(position.binlog.gtid)).
    type: str
  stop_gtid:
    description: With O(step=plan), the last GTID to replay.
    type: str
  stop_time:
    description: With O(step=plan), replay the writes committed up to this time (ISO 8601 UTC).
    type: str
seealso:
  - module: dbtools.galera.galera_binlog_info
  - module: dbtools.galera.galera_info
"""

EXAMPLES = r"""
- name: Archive the binary logs (the playbook dbtools.galera.binlog_archive does this on the chosen node)
  dbtools.galera.galera_binlog_archive:
    step: archive
    owner: "binlog_archive:{{ awx_job_id | default('manual') }}"
    copies: "{{ galera_backup_copies }}"

- name: Is the archive whole?
  dbtools.galera.galera_binlog_archive:
    step: check

- name: What would a restore to 10:15 replay from the SSH store?
  dbtools.galera.galera_binlog_archive:
    step: plan
    source: store
    start: "{{ manifest.position.binlog.gtid }}"
    stop_time: "2026-12-02T10:15:00Z"
"""

RETURN = r"""
settings:
  description: With O(step=probe), this node's binlog settings, C(ready), C(missing) and the C(settings) to add.
  returned: step=probe
  type: dict
coverage:
  description: With O(step=probe), the cluster-domain ranges C([after, upto]) this node's binlog files hold unbroken.
  returned: step=probe
  type: list
holes:
  description:
    - With O(step=probe), the cluster-domain ranges C([first, last]) this node's binlog skipped while it binlogged
      without a break (the node choice compares them across the nodes to find what no node binlogged).
  returned: step=probe
  type: list
unlogged:
  description: With O(step=archive), the ranges (C(first), C(last)) no node binlogged that this run's segments cross.
  returned: step=archive
  type: list
  elements: dict
archived:
  description: The segments this run added, each with C(kind), C(name), C(file), C(first), C(last) and GTIDs.
  returned: step=archive
  type: list
  elements: dict
gap:
  description: The gap this run recorded (C(first), C(last)), or null.
  returned: step=archive
  type: dict
already_archived:
  description: The closed binlog files of this node whose GTIDs were all archived already (by this or another node).
  returned: step=archive
  type: list
  elements: str
hole:
  description: Where this node's binlogs stop continuing the archive (another node continues next run), or null.
  returned: step=archive
  type: dict
lag_seconds:
  description: Seconds since the moment up to which every committed write is archived (the archive's RPO now).
  returned: step=archive, step=check
  type: float
rpo:
  description: One line saying how far the archive reaches and its lag.
  returned: step=archive
  type: str
gaps:
  description: The archive's gaps, each with C(first), C(last), C(reason) and C(text) naming the GTID range.
  returned: step=archive, step=check
  type: list
  elements: dict
summary:
  description: With O(step=check), one line starting C(OK) or C(CRITICAL).
  returned: step=check
  type: str
applied:
  description: With O(step=replay), how many transactions of the cluster domain were applied.
  returned: step=replay
  type: int
events_per_second:
  description: With O(step=replay), the replay speed (transactions per second, fetch and decoding included).
  returned: step=replay
  type: float
cleared_lease:
  description:
    - With O(step=replay), the archive lease row the replay brought back (an archiver of the old history held it while
      its release was not archived yet), removed after the replay; null when there was none.
  returned: step=replay
  type: dict
gtid_binlog_pos:
  description: With O(step=replay), the node's C(gtid_binlog_pos) after the replay.
  returned: step=replay
  type: str
plan:
  description: With O(step=plan) or O(step=replay), the segments to replay, each with C(skip_through) and C(stop) (see docs/pitr.md).
  returned: step=plan, step=replay
  type: dict
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog_archive, _restore_job
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run, run_local


def main():
    module = build_module(
        dict(
            step=dict(type="str", required=True, choices=["probe", "archive", "check", "plan", "refresh", "replay"]),
            cluster=dict(type="str"),
            dir=dict(type="path", default="/var/backups/galera"),
            file_owner=dict(type="str", default="root"),
            file_group=dict(type="str", default="root"),
            copies=dict(type="list", elements="dict", default=[],
                        options=dict(_restore_job.store_options(), keep_tiers=dict(type="dict"), max_age=dict(type="int")),
                        required_if=[("type", "ssh", ("host", "path")), ("type", "s3", ("bucket",))]),
            compress=dict(type="str", choices=["zstd", "none"], default="zstd"),
            encrypt=dict(type="bool", default=False),
            encrypt_key=dict(type="str", no_log=True),
            encrypt_key_file=dict(type="path", no_log=False),
            owner=dict(type="str"),
            lease_database=dict(type="str", default="dbtools_galera"),
            lease_ttl=dict(type="int", default=600),
            gap=dict(type="dict"),
            unlogged=dict(type="list", elements="dict", default=[],
                          options=dict(first=dict(type="int", required=True), last=dict(type="int", required=True))),
            keep_from=dict(type="int"),
            retention=dict(type="bool", default=True),
            metrics_dir=dict(type="path"),
            verify=dict(type="str", choices=["none", "sha256"], default="none"),
            fail_on_gap=dict(type="bool", default=True),
            source=dict(type="str", default="local"),
            start=dict(type="str"),
            stop_gtid=dict(type="str"),
            stop_time=dict(type="str"),
            until=dict(type="str", default="latest"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["step"] == "archive" and not p["owner"]:
        module.fail_json(msg="step=archive needs owner (who archives: the lease names it). Nothing was changed.")
    if p["lease_ttl"] < 30:
        module.fail_json(msg=f"lease_ttl must be at least 30 seconds, got {p['lease_ttl']}. Nothing was changed.")
    if p["step"] in ("plan", "replay") and not p["start"]:
        module.fail_json(msg=f"step={p['step']} needs start (the backup's GTID position). Nothing was changed.")

    if p["step"] == "replay" and module.check_mode:
        # The plan only, without a server: a restore's first node runs none in check mode.
        run_local(module, lambda: _binlog_archive.replay_plan_offline(p))

    def work(node):
        archiver = _binlog_archive.Archiver(node, p, check_mode=module.check_mode, warn=module.warn)
        if p["step"] == "probe":
            return archiver.probe()
        if p["step"] == "archive":
            result = archiver.archive()
            result.update(archiver.metrics(result))
            for text in result.pop("warnings", []):
                module.warn(text)
            return result
        if p["step"] == "refresh":
            return archiver.refresh()
        if p["step"] == "plan":
            return archiver.plan()
        if p["step"] == "replay":
            return archiver.replay()
        result = archiver.check()
        result.update(archiver.metrics(result))
        for text in result.pop("warnings", []):
            module.warn(text)
        if p["fail_on_gap"] and result["gaps"]:
            raise GaleraError(result["summary"], **{k: v for k, v in result.items() if k != "summary"})
        return result

    run(module, work)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_backup_job
short_description: The node-side steps of one galera_backup run (pre-flight, start, wait, abort, finish)
version_added: 0.3.0
description:
  - The steps the P(dbtools.galera.galera_backup#role) role runs on the node it backs up, in this order;
    O(step=start) with O(desync_options) desyncs the node first and O(step=finish) with O(resync_options)
    resyncs it before publishing, both with the rules of M(dbtools.galera.galera_desync). Use the role;
    the module is documented so its output can be read.
  - O(step=preflight) makes every check that can refuse, while the node is still Synced, and changes
    nothing - the settings and paths (absolute, normalised, not a system or data directory, an existing
    directory owned by O(backup.file_owner) and not writable by others), the tools, the tools' own login
    landing on this node (a load balancer or another socket would copy another node's files), the
    encryption key, the parent of an incremental backup, free space for the backup and the
    verification copy, and room for the write-sets a desynced node keeps in gcache for up to
    O(backup.max_duration) seconds. It returns RV(run), which the later steps take back.
  - O(step=start) with O(desync_options) first desyncs the node under the cluster-wide lease, as
    M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:state=desynced) with a watchdog
    does (refusals change nothing), after this step's own checks of the directory and the key; one call
    instead of two saves the node a module start while it is still Synced. When a later part of the step
    fails, the node stays desynced and the result's RV(desync) says so; the role's O(step=finish)
    resyncs it.
  - O(step=start) creates what the run needs (the directory when missing, 0700; a private run
    directory with the tools' 0600 option file and key file; the C(.partial) directory with a run
    record), removes what provably dead runs of the same cluster left, and starts the run as a
    detached process - the backup tool, then checksums and the verification. The watchdog renews
    the desync lease while that process lives, so the node stays desynced until the backup is
    written and verified.
  - O(step=wait) waits up to O(timeout) seconds and reports progress; it fails with the run's error.
  - O(step=preflight) and O(step=finish) run at the CPU priority of the backup tool (O(backup.nice)), with
    the processes they start, so the server keeps the CPU while the node is Synced.
  - O(step=abort) stops the run's whole process group.
  - O(step=finish) with O(resync_options) first ends the desync with the rules of
    M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:state=synced) (stop a run still
    going, drain the receive queue, C(wsrep_desync=OFF), wait for Synced, release the lease) - the same
    process then publishes, so the node does not pay a new module's start right after it is Synced, when
    any CPU it loses makes its applier lag and send flow control. A resync that fails does not stop the
    publish or discard; the step then fails with the resync's error, RV(resync) holding its result.
  - O(step=finish) publishes a verified backup (C(manifest.json) written last, files 0600 owned by
    O(backup.file_owner), the directory renamed to its final name without ever replacing one) and
    applies retention (the newest O(backup.retention) restorable backups of the cluster, with their
    chains), or discards this run's own partial backup and records the failure in C(<id>.failed.json);
    it always removes the run's private files, and with O(backup.metrics_dir) writes the node_exporter
    textfile of the cluster and node (a failure to write it is a warning, never the run's failure).
  - With O(backup.stream_to), the backup is streamed to that entry of O(backup.copies) (SSH or S3,
    multipart) instead of being written here; its sha256 (and MAC, encrypted) is computed and its
    compression tested as it passes. Only its local record (manifest, C(meta/), C(tables.json),
    C(backup.log), C(SHA256SUMS)) is kept in O(backup.dir). O(step=finish) sends the record's files,
    verifies every file at the destination, writes C(manifest.json) there last, publishes the record
    here and applies retention there with that entry's rules. Pre-flight refuses
    O(backup.verify=prepare) and O(backup.verify=restore), mydumper and O(backup.compress=none) with it,
    and checks that the destination answers.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: O(step=preflight) runs its checks; the other steps change nothing and report what they would do.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  step:
    description: The step to run.
    type: str
    required: true
    choices: [preflight, start, wait, abort, finish]
  node:
    description: The inventory name of the node, as it appears in the backup id and the manifest.
    type: str
  owner:
    description: The desync lease owner of the run (the role's C(galera_backup_lease_owner) or per-run owner).
    type: str
  node_info:
    description: The M(dbtools.galera.galera_info) result of this node (O(step=preflight)).
    type: dict
  run:
    description: The RV(run) that O(step=preflight) returned (every later step).
    type: dict
  watchdog_state:
    description: The watchdog's state file from the M(dbtools.galera.galera_desync) result, for progress and guards.
    type: str
  timeout:
    description: With O(step=wait), seconds to wait for the run before reporting progress.
    type: float
    default: 10
  failure:
    description: With O(step=finish), why the run failed (empty for a run that succeeded up to the resync).
    type: str
    default: ""
  failed_step:
    description: With O(step=finish), the step that failed.
    type: str
  desync:
    description:
      - With O(step=finish), the result of the desync, RV(desync) of O(step=start) with O(desync_options) (or of
        M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:state=desynced)).
    type: dict
  desync_options:
    description:
      - With O(step=start), desync the node in this step, before anything is created, with these options of
        M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:state=desynced) (the lease is
        used, never forced; the watchdog holds on to the run's pid file). Without it, desync the node before
        this step.
    type: dict
    version_added: 0.4.0
    suboptions:
      owner:
        description: The desync lease owner (see M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:owner)).
        type: str
        required: true
      lease_database:
        description: The database of the lease table.
        type: str
        default: dbtools_galera
      lease_ttl:
        description: Seconds the lease is valid; the watchdog renews it while the run lives.
        type: int
        default: 3600
      min_cluster_size:
        description: The number of other members that must stay in the cluster while this node is desynced.
        type: int
        default: 2
      drain_timeout:
        description: Seconds to wait for the queue to drain when the desync is rolled back or the watchdog resyncs.
        type: int
        default: 600
      timeout:
        description: Seconds to wait for Synced after such a resync.
        type: int
        default: 300
      poll_interval:
        description: Seconds between two reads of the node's status while waiting.
        type: float
        default: 0.5
      watchdog_max_hold:
        description: Seconds after which the watchdog stops renewing the lease for the run.
        type: int
        default: 21600
      watchdog_max_recv_queue:
        description: Queue guard of the watchdog, in write-sets; V(0) disables it.
        type: int
        default: 0
      watchdog_hard_limit_fraction:
        description: Queue guard of the watchdog, a fraction of C(gcs.recv_q_hard_limit).
        type: float
        default: 0.5
      watchdog_min_free_bytes:
        description: Free-space guard of gcache's filesystem, checked before the desync too.
        type: int
        default: 1073741824
      watchdog_min_free_fraction:
        description: Free-space guard, a fraction of the filesystem's size, from V(0) to V(1).
        type: float
        default: 0.05
      pxc_maint_mode:
        description: Percona XtraDB Cluster only; set C(pxc_maint_mode=MAINTENANCE) before the desync.
        type: bool
        default: false
      watchdog_haproxy:
        description:
          - HAProxy instances the watchdog puts the node back in after a resync it makes itself
            (see M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:watchdog_haproxy)).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: A label for messages.
            type: str
          socket:
            description: Path of the runtime API's Unix socket.
            type: str
          address:
            description: C(host:port) of a TCP runtime API, as the node reaches it.
            type: str
          backend:
            description: The backend that balances the Galera nodes.
            type: str
            required: true
          server:
            description: The name of this node's C(server) line in that backend.
            type: str
            required: true
          shutdown_sessions:
            description: Not used here.
            type: bool
            default: false
          host:
            description: Not used here.
            type: str
          become:
            description: Not used here.
            type: bool
  resync:
    description:
      - With O(step=finish) and no O(resync_options), the M(dbtools.galera.galera_desync)
        O(dbtools.galera.galera_desync#module:state=synced) result of the resync made before this step.
    type: dict
  resync_options:
    description:
      - With O(step=finish), end the desync in this step, before publishing, with these options of
        M(dbtools.galera.galera_desync) O(dbtools.galera.galera_desync#module:state=synced) (the lease is
        used, never forced).
    type: dict
    version_added: 0.4.0
    suboptions:
      owner:
        description: The lease owner the desync was taken as.
        type: str
        required: true
      lease_database:
        description: The database of the lease table.
        type: str
        default: dbtools_galera
      drain_timeout:
        description: Seconds to wait for the receive queue to drain before the resync.
        type: int
        default: 600
      timeout:
        description: Seconds to wait for Synced after the resync.
        type: int
        default: 300
      poll_interval:
        description: Seconds between status reads.
        type: float
        default: 0.5
      pxc_maint_mode:
        description: Set C(pxc_maint_mode=DISABLED) after the resync (Percona XtraDB Cluster).
        type: bool
        default: false
  backup:
    description: The backup settings; the role passes its C(galera_backup_*) variables (documented there).
    type: dict
    required: true
    suboptions:
      dir: {description: The backup directory on the node., type: str, required: true}
      method:
        description: The backup tool; V(auto) is mariabackup on MariaDB, xtrabackup elsewhere.
        type: str
        default: auto
        choices: [auto, mariabackup, xtrabackup, mydumper, mysqldump]
      compress: {description: V(zstd) or V(none)., type: str, default: zstd, choices: [zstd, none]}
      compress_level: {description: zstd level., type: int, default: 3}
      threads: {description: Threads of zstd and mydumper., type: int, default: 2}
      extra_args: {description: Extra arguments of the backup tool., type: list, elements: str, default: []}
      type: {description: V(full) or V(incremental)., type: str, default: full, choices: [full, incremental]}
      max_incrementals: {description: Incrementals on one full backup., type: int, default: 6}
      verify:
        description: Verification level.
        type: str
        default: checksum
        choices: [checksum, prepare, restore]
      verify_sample: {description: Tables checksummed by the restore test (0 is all)., type: int, default: 20}
      verify_dir:
        description: Scratch directory of prepare/restore verification; empty is C(.dbtools-galera-verify) beside O(backup.dir).
        type: str
        default: ""
      free_space_factor: {description: Free space needed as a multiple of the data size., type: float, default: 1.2}
      file_owner: {description: Owner of the backup files., type: str, default: root}
      file_group: {description: Group of the backup files., type: str, default: root}
      throttle: {description: mariabackup/xtrabackup C(--throttle)., type: int, default: 0}
      nice: {description: CPU priority of the backup's processes., type: int, default: 10}
      ionice_class:
        description: IO class of the backup's processes.
        type: str
        default: best-effort
        choices: [best-effort, idle, none]
      ionice_level: {description: best-effort IO level., type: int, default: 7}
      max_duration: {description: Seconds the run may take before it is stopped., type: int, default: 21600}
      min_free_bytes:
        description: Bytes the watchdog keeps free where gcache spills; pre-flight counts them as unavailable.
        type: int
        default: 1073741824
      min_free_fraction:
        description: Fraction of that filesystem the watchdog keeps free (the larger of the two counts).
        type: float
        default: 0.05
      encrypt: {description: Encrypt the backup., type: bool, default: false}
      encrypt_key: {description: The key (its first line); never logged., type: str, default: ""}
      encrypt_key_file: {description: A file on the node whose first line is the key., type: str, default: ""}
      lease_database: {description: The lease database., type: str, default: dbtools_galera}
      lease_ttl: {description: Seconds of the desync lease., type: int, default: 300}
      partial_margin:
        description: Seconds after which a dead run's leftovers may be removed (default O(backup.lease_ttl)).
        type: int
      retention: {description: Restorable backups kept after a good backup (with the chains they need)., type: int, default: 7}
      keep_tiers:
        description: Calendar tiers of retention (hourly, daily, weekly, monthly, yearly), besides O(backup.retention).
        type: dict
        default: {}
      keep_max_age:
        description: Keep every restorable backup younger than this many seconds, besides the other rules; 0 is off.
        type: int
        default: 0
      metrics_dir:
        description: Directory of node_exporter's textfile collector; empty writes no metrics.
        type: str
        default: ""
      stream_to:
        description:
          - The C(name) of the entry of O(backup.copies) to stream the backup to (no local copy of the data);
            empty writes the backup here.
        type: str
        default: ""
      copies:
        description:
          - The role's C(galera_backup_copies) while O(backup.stream_to) is set (the role passes an empty list
            otherwise); only the entry O(backup.stream_to) names is used.
          - Each entry has the options of M(dbtools.galera.galera_backup_copy)'s
            O(dbtools.galera.galera_backup_copy#module:dest) and C(name), C(keep), C(keep_tiers), C(max_age).
        type: list
        elements: dict
        default: []
        suboptions:
          type:
            description: V(ssh) or V(s3) (V(local) is refused for streaming).
            type: str
            required: true
            choices: [ssh, s3, local]
          name:
            description: The destination's name, which O(backup.stream_to) gives.
            type: str
          keep:
            description: Backups kept at the destination (default O(backup.retention)).
            type: raw
          keep_tiers:
            description: Calendar tiers kept at the destination (default O(backup.keep_tiers)).
            type: dict
          max_age:
            description: Age in seconds below which every backup is kept at the destination (default O(backup.keep_max_age)).
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
notes:
  - The run's process is detached from the module (new session, its own process group, standard streams on
    /dev/null); the credentials reach the tools only through the 0600 option file, which the run removes when
    it ends, whatever happened.
seealso:
  - module: dbtools.galera.galera_desync
  - module: dbtools.galera.galera_backup_info
"""

EXAMPLES = r"""
# The galera_backup role runs these steps; this is what it does, in short.
- name: Check the node and the settings (nothing changes)
  dbtools.galera.galera_backup_job:
    step: preflight
    node: "{{ inventory_hostname }}"
    owner: "{{ owner }}"
    node_info: "{{ galera_info_result }}"
    backup: {dir: /var/backups/galera, verify: prepare}
  register: job

- name: Desync the node under the lease and start the backup run
  dbtools.galera.galera_backup_job:
    step: start
    run: "{{ job.run }}"
    backup: {dir: /var/backups/galera, verify: prepare}
    desync_options: {owner: "{{ owner }}", lease_ttl: 300}
  register: started

- name: Wait for it
  dbtools.galera.galera_backup_job:
    step: wait
    run: "{{ job.run }}"
    backup: {dir: /var/backups/galera}
  register: progress
  until: progress.done
  retries: 2000
  delay: 0
"""

RETURN = r"""
run:
  description: The run - its id, paths and facts - for the later steps (O(step=preflight) and O(step=start)).
  returned: success of preflight and start
  type: dict
  sample: {"id": "dbtools_galera-node3_20261201T101500Z-1a2b3c4d", "run_id": "1a2b3c4d", "tool": "mariabackup",
           "type": "full", "partial": "/var/backups/galera/dbtools_galera-node3_20261201T101500Z-1a2b3c4d.partial"}
done:
  description: With O(step=wait), whether the run ended (successfully; a failed run fails the step).
  returned: step wait
  type: bool
progress:
  description: With O(step=wait), the run's step, bytes written, seconds and the watchdog's view (queue, lease).
  returned: step wait
  type: dict
  sample: {"step": "running mariabackup", "bytes": 104857600, "elapsed": 12.5, "recv_queue": 3,
           "lease_seconds_left": 281, "guard": null}
out:
  description: With O(step=wait), the run's result when done (position, checksums, verification).
  returned: step wait, when done
  type: dict
published:
  description: With O(step=finish), the final path of the published backup, or null.
  returned: step finish
  type: str
manifest:
  description: With O(step=finish), the manifest written into the published backup.
  returned: step finish, when published
  type: dict
failure_record:
  description: With O(step=finish), the failed-run record written, or null.
  returned: step finish
  type: str
retention:
  description: With O(step=finish) after a good backup, what retention removed and kept (see M(dbtools.galera.galera_backup_prune)).
  returned: step finish, when published
  type: dict
resync:
  description:
    - With O(step=finish) and O(resync_options), the resync's result, in the shape of
      M(dbtools.galera.galera_desync)'s (C(desynced), C(local_state_comment), C(drain_seconds), C(sync_seconds),
      C(flow_control_sent), C(lease)...); with C(failed) and C(msg) when the resync failed. Predicted in check mode.
  returned: step finish, with resync_options
  type: dict
  version_added: 0.4.0
desync:
  description:
    - With O(step=start) and O(desync_options), the desync's result, in the shape of
      M(dbtools.galera.galera_desync)'s (C(changed), C(desynced), C(local_state_comment), C(lease), C(watchdog),
      C(pxc_maint_mode)...). Also in the result of a step that failed after the desync (the node is desynced).
      Predicted in check mode.
  returned: step start, with desync_options
  type: dict
  version_added: 0.4.0
metrics:
  description: With O(step=finish) and O(backup.metrics_dir), the metrics file written.
  returned: step finish, when metrics_dir is set
  type: str
stream_retention:
  description: With O(step=finish) after a good streamed backup, what retention removed and kept at the destination.
  returned: step finish, when streamed and published
  type: dict
stream_discarded:
  description: With O(step=finish) after a failed streamed backup, whether its staging place at the destination was removed.
  returned: step finish, when streamed and failed
  type: bool
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _backup_job, _desync, _proc, _restore_job
from ansible_collections.dbtools.galera.plugins.module_utils._desync import Desyncer
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, on_node, run_local

BACKUP_SPEC = dict(
    dir=dict(type="str", required=True),
    method=dict(type="str", default="auto", choices=["auto", "mariabackup", "xtrabackup", "mydumper", "mysqldump"]),
    compress=dict(type="str", default="zstd", choices=["zstd", "none"]),
    compress_level=dict(type="int", default=3),
    threads=dict(type="int", default=2),
    extra_args=dict(type="list", elements="str", default=[]),
    type=dict(type="str", default="full", choices=["full", "incremental"]),
    max_incrementals=dict(type="int", default=6),
    verify=dict(type="str", default="checksum", choices=["checksum", "prepare", "restore"]),
    verify_sample=dict(type="int", default=20),
    verify_dir=dict(type="str", default=""),
    free_space_factor=dict(type="float", default=1.2),
    file_owner=dict(type="str", default="root"),
    file_group=dict(type="str", default="root"),
    throttle=dict(type="int", default=0),
    nice=dict(type="int", default=10),
    ionice_class=dict(type="str", default="best-effort", choices=["best-effort", "idle", "none"]),
    ionice_level=dict(type="int", default=7),
    max_duration=dict(type="int", default=21600),
    min_free_bytes=dict(type="int", default=1 << 30),
    min_free_fraction=dict(type="float", default=0.05),
    encrypt=dict(type="bool", default=False),
    encrypt_key=dict(type="str", default="", no_log=True),
    encrypt_key_file=dict(type="str", default=""),
    lease_database=dict(type="str", default="dbtools_galera"),
    lease_ttl=dict(type="int", default=300),
    partial_margin=dict(type="int"),
    retention=dict(type="int", default=7),
    metrics_dir=dict(type="str", default=""),
    keep_tiers=dict(type="dict", default={}),
    keep_max_age=dict(type="int", default=0),
    stream_to=dict(type="str", default=""),
    copies=dict(type="list", elements="dict", default=[],
                options=dict(_restore_job.store_options(), keep_tiers=dict(type="dict"), max_age=dict(type="int")),
                required_if=[("type", "ssh", ("host", "path")), ("type", "s3", ("bucket",))]),
)

DESYNC_SPEC = dict(owner=dict(type="str", required=True), **_desync.OPTIONS)

RESYNC_SPEC = dict(owner=dict(type="str", required=True),
                   **{k: _desync.OPTIONS[k] for k in ("lease_database", "drain_timeout", "timeout", "poll_interval",
                                                      "pxc_maint_mode")})


def main():
    module = build_module(
        dict(
            step=dict(type="str", required=True, choices=["preflight", "start", "wait", "abort", "finish"]),
            node=dict(type="str"),
            owner=dict(type="str"),
            node_info=dict(type="dict"),
            run=dict(type="dict"),
            watchdog_state=dict(type="str"),
            timeout=dict(type="float", default=10),
            failure=dict(type="str", default=""),
            failed_step=dict(type="str"),
            desync=dict(type="dict"),
            resync=dict(type="dict"),
            resync_options=dict(type="dict", options=RESYNC_SPEC),
            desync_options=dict(type="dict", options=DESYNC_SPEC),
            backup=dict(type="dict", required=True, options=BACKUP_SPEC),
        ),
        supports_check_mode=True,
        required_if=[("step", "preflight", ("node", "node_info")), ("step", "start", ("run",)),
                     ("step", "wait", ("run",)), ("step", "abort", ("run",)), ("step", "finish", ("run",))],
    )
    p = module.params
    options, desync_options = p["resync_options"], p["desync_options"]
    for name in ("resync_options", "desync_options"):
        problem = _desync.option_problem(p[name]) if p[name] else None
        if problem:
            module.fail_json(msg=f"{name}: {problem}. Nothing was changed.")

    # The steps that run while the node is Synced (pre-flight; finish, after the resync) yield the CPU to its
    # server: under load, any CPU its applier loses makes it lag and send flow control.
    if p["step"] in ("preflight", "finish"):
        _proc.lower_priority(p["backup"]["nice"])

    def on_desyncer(settings, state):
        def work(node):
            desyncer = Desyncer(dict(settings, lease=True, force=False, max_recv_queue=None), node, module.check_mode,
                                module.warn)
            out = desyncer.desynced() if state == "desynced" else desyncer.synced()
            out.pop("diff", None)
            out.pop("lease_before", None)
            return out

        return on_node(module, work)

    def resync():
        return on_desyncer(dict(options, watchdog=False, watchdog_haproxy=[]), "synced")

    def desync(pid_file):
        return on_desyncer(dict(desync_options, watchdog=True, watchdog_hold_pid_file=pid_file), "desynced")

    def work():
        step = p["step"]
        if step == "preflight":
            run = _backup_job.preflight(p)
            return dict(changed=False, run=run, msg=f"pre-flight passed for {run['id']}: " + "; ".join(run["checks"]))
        if module.check_mode:
            out = dict(changed=step in ("start", "finish"), done=True, running=False, run=p["run"],
                       msg=f"check mode: step {step} not run")
            if step == "finish" and options:
                out["resync"] = resync()
            if step == "start" and desync_options:
                out["desync"] = desync(_backup_job.checked_run(p["run"])["pid_file"])
            return out
        if step == "finish":
            return _backup_job.finish(p, resync if options else None)
        if step == "start":
            return _backup_job.start(p, desync if desync_options else None)
        return getattr(_backup_job, step)(p)

    run_local(module, work)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_backup_copy
short_description: Copy a backup off the host, verify it at the destination, apply retention there
version_added: 0.2.0
description:
  - Copies one backup directory written by the P(dbtools.galera.galera_backup#role) role (its files,
    C(SHA256SUMS) and C(manifest.json)) to another host over SSH, to an S3-compatible bucket or to another
    directory of this host (a mounted disk), then
    checks every file AT the destination against C(SHA256SUMS), and checks that the destination's
    C(SHA256SUMS) is the one the manifest names (its sha256 is the manifest's C(sha256)).
  - Runs on the host that holds the backup. The local backup is only read, never changed or deleted,
    whatever happens.
  - SSH (O(dest.type=ssh)) copies with C(rsync -a --partial) into C(<path>/<id>.partial/), verifies
    there with C(sha256sum -c SHA256SUMS), then renames the directory to C(<path>/<id>) in one atomic
    C(mv -T). A directory ending C(.partial) is never a backup; an interrupted copy resumes where it
    stopped on the next run.
  - A local directory (O(dest.type=local)) is written like an SSH destination, C(<path>/<id>.partial/)
    renamed to C(<path>/<id>) once verified.
  - S3 (O(dest.type=s3)) uploads every file to C(<prefix><id>/<file>) (multipart for big files), streams
    each object back to hash it, and uploads C(manifest.json) last, once the data is verified. A backup
    without C(manifest.json) at the destination does not count (it is an upload in progress or an
    interrupted one).
  - Idempotent. When the destination already holds the backup, with the same manifest, and it verifies,
    nothing is copied (C(changed=false)). When the copy there does not verify (a file damaged or
    missing at the destination), it is repaired - it stops counting as a backup first (the SSH directory
    goes back to C(.partial), the S3 C(manifest.json) is deleted), the damaged files are copied again,
    and the whole copy is verified again - and the run reports C(changed=true) and the files in
    RV(repaired), with a warning.
  - Refuses, changing nothing, when the destination holds a different backup under the same id (its
    manifest names another C(sha256)).
  - While a copy is unfinished it carries a run record C(.run.json) (cluster name and state uuid, backup
    id, host, process, start time), written first and removed when the copy is complete.
  - With O(keep), O(max_age) or O(keep_tiers), applies retention at the destination once the copy is
    verified, to the backups of the same cluster found there, chain-aware (a kept incremental backup is
    kept with every backup its chain needs, up to the full backup). Only what provably belongs to the
    cluster is ever deleted, see O(keep) and O(partial_margin). RV(reasons) says why each kept backup
    stays.
  - "A destination that refuses to delete a backup (an S3 bucket with Object Lock, with a retention period or a
    legal hold on its objects) does not fail the run. The backup is kept whole, with the backups its chain
    needs, and reported in RV(refused), RV(problems) and a warning that says C(kept: the destination refuses
    deletion) and why, for example C(Object Lock COMPLIANCE until 2026-12-18T03:01:10Z). Each run asks again,
    once; the first run after the lock has passed deletes it."
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._retention
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reads the destination (an existing copy is verified, which reads it whole) and reports
      what would be copied, repaired and removed, and why each kept backup stays; changes nothing. A deletion
      that an S3 Object Lock would refuse is foreseen (the objects' lock is read) and reported as kept.
  diff_mode:
    support: full
    details: With retention, before and after lists of the cluster's backups and unfinished copies at the
      destination, then one line per backup saying why it is kept (the rules) or removed.
  platform:
    platforms: posix
options:
  src:
    description:
      - One backup directory, C(<galera_backup_dir>/<id>). It must hold C(manifest.json) and
        C(SHA256SUMS), and the sha256 of C(SHA256SUMS) must be the manifest's C(sha256).
      - Only the files C(SHA256SUMS) lists, C(SHA256SUMS) and C(manifest.json) are copied. Other files in
        the directory are left out (listed in RV(excluded), with a warning).
    type: path
    required: true
  dest:
    description: Where to copy the backup.
    type: dict
    required: true
    suboptions:
      type:
        description:
          - V(ssh) for a directory on another host (rsync over ssh), V(s3) for an S3-compatible bucket,
            V(local) for a directory on this host (for example a mounted network or USB disk).
        type: str
        required: true
        choices: [ssh, s3, local]
      host:
        description: With V(ssh), the destination host (name or address). Required with V(ssh).
        type: str
      port:
        description: With V(ssh), the SSH port.
        type: int
        default: 22
      user:
        description: With V(ssh), the user to log in as (key authentication only, C(BatchMode=yes)).
        type: str
        default: root
      path:
        description:
          - With V(ssh), the remote directory that holds the backups (created when missing), absolute or
            relative to the user's login directory (no C(~) expansion). Required with V(ssh).
          - With V(local), the directory on this host that holds the backups (created when missing).
            Required with V(local).
          - The backup lands in C(<path>/<id>).
        type: str
      identity_file:
        description: With V(ssh), the private key on this host to log in with. Default, the user's keys and agent.
        type: path
      known_hosts_file:
        description:
          - With V(ssh), the known_hosts file that holds the destination's host key.
          - Default, the system's (C(~/.ssh/known_hosts) of the user that runs the module and
            C(/etc/ssh/ssh_known_hosts)).
        type: path
      strict_host_key_checking:
        description:
          - With V(ssh), V(yes) refuses a host whose key is not already in the known_hosts file.
          - V(accept-new) adds the key of a host seen for the first time (trust on first use) and still
            refuses a host whose known key has changed.
        type: str
        choices: ['yes', accept-new]
        default: 'yes'
      bwlimit:
        description: With V(ssh), the bandwidth limit in KiB/s (rsync C(--bwlimit)); V(0) means no limit.
        type: int
        default: 0
      bucket:
        description: With V(s3), the bucket. Required with V(s3).
        type: str
      prefix:
        description:
          - With V(s3), the key prefix of the backups; the backup lands under C(<prefix><id>/).
          - A prefix that does not end with C(/) gets one.
        type: str
        default: ''
      endpoint_url:
        description:
          - With V(s3), the URL of an S3-compatible server (MinIO, Ceph RGW, ...). Default, AWS S3.
          - With an endpoint URL, buckets are addressed path-style (C(<endpoint>/<bucket>/<key>)).
        type: str
      region:
        description: With V(s3), the region. Default, from the AWS configuration (C(AWS_REGION), C(~/.aws/config)).
        type: str
      access_key:
        description:
          - With V(s3), the access key id. Default, the usual AWS chain (C(AWS_ACCESS_KEY_ID),
            C(~/.aws/credentials), an instance role).
          - Give O(dest.access_key) and O(dest.secret_key) together, or neither.
        type: str
      secret_key:
        description:
          - With V(s3), the secret access key, given to the S3 library in memory (never on a command line,
            never logged or returned). Default, the usual AWS chain.
        type: str
      storage_class:
        description: With V(s3), the storage class of the uploaded objects (for example V(STANDARD_IA)). Default, the bucket's.
        type: str
      validate_certs:
        description: With V(s3), whether to check the server's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: With V(s3), a CA bundle (PEM) to check the server's certificate with.
        type: path
  keep:
    description:
      - Retention at the destination after the copy verified. The O(keep) newest restorable backups of the
        backup's cluster found there are kept, with every backup their chains need, and so is every backup
        that O(max_age) or O(keep_tiers) keeps; the other backups of that cluster are deleted there. The
        newest restorable backup is always kept, and so is the backup this run copied.
      - A backup there is the cluster's only when its name is a backup id of the cluster and its
        C(manifest.json) names the same cluster name and the same cluster state uuid (see O(cluster_uuid)).
        Anything else at the destination (other clusters, other files and prefixes such as C(prod_logs/))
        is never touched. Backups that look like the cluster's but cannot be proven to be (an unreadable
        manifest, another state uuid) are reported in RV(problems) and never deleted.
      - Unfinished copies of the cluster there (SSH and local C(<id>.partial) directories, S3 prefixes without
        C(manifest.json)) are deleted only when their run record C(.run.json) names this cluster and backup
        and is older than O(partial_margin), or was written on this host by a process that has ended. One
        without a valid run record is reported and never deleted; one whose process still runs is left alone
        (RV(in_flight)).
      - Default, no retention at the destination when neither O(max_age) nor O(keep_tiers) is given either.
    type: int
  cluster_uuid:
    description:
      - The cluster state uuid (C(wsrep_cluster_state_uuid)) whose backups retention may delete at the
        destination; backups of the same cluster name with another state uuid are kept and reported.
      - Default, the state uuid the copied backup's manifest records. When given, it must be that one.
    type: str
  partial_margin:
    description:
      - Age in seconds past which an unfinished copy of the cluster (by its run record's start time) counts
        as abandoned and retention deletes it, whoever wrote it. Keep it above the longest copy or backup
        (the role's C(galera_backup_max_duration), 6 hours by default, plus a margin).
    type: int
    default: 22200
  name:
    description: A label for the destination, used in messages and returned in RV(dest).
    type: str
notes:
  - Secrets never appear on a command line. SSH authenticates with keys (C(BatchMode=yes), no password
    prompts); the S3 secret key stays inside the module's process.
  - The SSH destination needs C(rsync), C(sha256sum) and a POSIX C(sh) (coreutils); this host needs
    C(ssh) and C(rsync). S3 needs the C(boto3) Python library on this host.
  - Verification reads the whole copy at the destination, on every run (also when nothing is copied).
  - Names alone never prove whose a backup is (cluster names may contain C(_)); the manifest or the run
    record inside decides.
  - "S3 and Object Lock: uploads to a bucket with Object Lock carry a checksum (C(Content-MD5), or
    C(x-amz-checksum-sha256) for multipart uploads), as S3 requires when a default retention applies.
    Retention deletes a backup only when none of its objects is locked (their C(ObjectLockRetainUntilDate) has
    passed and no legal hold is on): on a versioned bucket a plain delete only adds a delete marker and the
    locked data stays, billed, so hiding it would only make a backup that still exists invisible. Deletion
    never removes object versions; add a lifecycle rule (C(NoncurrentVersionExpiration)) to the bucket to
    free the space of deleted backups. Reading the lock needs C(s3:GetBucketObjectLockConfiguration),
    C(s3:GetObjectRetention) and C(s3:GetObjectLegalHold); without them a refused deletion is still reported
    (and, when the manifest was already deleted and no data object was, the manifest is put back so the
    backup stays whole)."
seealso:
  - module: dbtools.galera.galera_backup_info
  - module: dbtools.galera.galera_backup_prune
"""

EXAMPLES = r"""
- name: Copy the newest backup to the backup server, keep 7 there
  dbtools.galera.galera_backup_copy:
    src: "/var/backups/galera/{{ backup_id }}"
    dest:
      type: ssh
      host: backup1.example.com
      user: galera-backup
      path: /srv/backups/galera
      identity_file: /root/.ssh/galera_backup_ed25519
      known_hosts_file: /etc/ssh/galera_backup_known_hosts
      bwlimit: 51200
    keep: 7
    name: backup1

- name: Copy it to a bucket with Object Lock, keeping a week of dailies, 8 weeklies and 24 monthlies there
  dbtools.galera.galera_backup_copy:
    src: "/var/backups/galera/{{ backup_id }}"
    dest:
      type: s3
      bucket: galera-backups-locked
      access_key: "{{ vault_s3_access_key }}"
      secret_key: "{{ vault_s3_secret_key }}"
    keep_tiers:
      daily: 7
      weekly: 8
      monthly: 24

- name: Copy it to an S3-compatible bucket too
  dbtools.galera.galera_backup_copy:
    src: "/var/backups/galera/{{ backup_id }}"
    dest:
      type: s3
      bucket: galera-backups
      prefix: prod/
      endpoint_url: https://s3.example.com
      access_key: "{{ vault_s3_access_key }}"
      secret_key: "{{ vault_s3_secret_key }}"
      storage_class: STANDARD_IA
    keep: 30
  register: copied

- name: Show where it went
  ansible.builtin.debug:
    msg: "{{ copied.url }}: {{ copied.files }} files verified; removed there: {{ copied.removed }}"
"""

RETURN = r"""
dest:
  description: The destination, without any secret.
  returned: always
  type: dict
  sample: {"type": "ssh", "name": "backup1", "host": "backup1.example.com", "port": 22, "user": "galera-backup",
           "path": "/srv/backups/galera"}
url:
  description: Where the backup is at the destination.
  returned: always
  type: str
  sample: ssh://galera-backup@backup1.example.com:22/srv/backups/galera/dbtools_galera-node3_20261125T030000Z
id:
  description: The backup id.
  returned: always
  type: str
  sample: dbtools_galera-node3_20261125T030000Z
bytes:
  description: The size of the backup (every file copied), in bytes.
  returned: always
  type: int
  sample: 1288490188
files:
  description: How many files the backup has at the destination (with C(SHA256SUMS) and C(manifest.json)).
  returned: always
  type: int
  sample: 3
verified:
  description: Whether this run verified the copy at the destination (false in check mode when there is no copy yet).
  returned: always
  type: bool
  sample: true
copied:
  description: Whether files were (or, in check mode, would be) copied.
  returned: always
  type: bool
  sample: true
repaired:
  description: Files of an existing copy at the destination that did not verify and were (would be) copied again.
  returned: always
  type: list
  elements: str
  sample: ["backup.xbstream.zst"]
seconds:
  description: Seconds the module took.
  returned: always
  type: float
  sample: 42.7
removed:
  description: The backup ids retention deleted (would delete, in check mode) at the destination.
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261118T030000Z"]
removed_partial:
  description: Abandoned unfinished copies of the same cluster deleted at the destination (directory
    names for SSH and local, id prefixes for S3).
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261124T030000Z.partial"]
in_flight:
  description: Unfinished copies of the same cluster at the destination that retention left alone (their
    run is alive, or younger than O(partial_margin)).
  returned: always
  type: list
  elements: str
  sample: []
kept:
  description: The backup ids of the cluster kept at the destination by retention (empty without retention).
  returned: always
  type: list
  elements: str
  sample: ["dbtools_galera-node3_20261124T030000Z", "dbtools_galera-node3_20261125T030000Z"]
reasons:
  description: For each backup kept at the destination, the rules that keep it, comma-separated (as
    M(dbtools.galera.galera_backup_prune) returns them; C(copied by this run) for this run's backup, C(the
    destination refuses deletion) and why for a refused one). Empty without retention.
  returned: always
  type: dict
  sample: {"dbtools_galera-node3_20261125T030000Z": "newest restorable, keep 1 of 7, daily 2026-11-25, copied by this run"}
refused:
  description: The backups (and unfinished copies) of the cluster retention would have deleted but the destination
    refuses to (S3 Object Lock), each with the reason and the lock's end (C(until), null when unknown or a legal hold).
  returned: always
  type: list
  elements: dict
  sample: [{"id": "dbtools_galera-node3_20261118T030000Z", "reason": "Object Lock COMPLIANCE until 2026-12-18T03:01:10Z",
            "until": "2026-12-18T03:01:10Z"}]
oldest_kept:
  description: Per cluster state uuid, the oldest restorable backup kept at the destination, with its times and
    position (see M(dbtools.galera.galera_backup_prune)'s RV(dbtools.galera.galera_backup_prune#module:oldest_kept)).
    Empty without retention.
  returned: always
  type: list
  elements: dict
  sample: []
excluded:
  description: Files of the backup directory that C(SHA256SUMS) does not list, which were not copied.
  returned: always
  type: list
  elements: str
  sample: []
problems:
  description: What retention found at the destination and left alone because it looks like the cluster's
    but cannot be proven to be (unreadable manifests, another state uuid, an unfinished copy without a
    run record, ...).
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _copy, _module, _retention


def argument_spec():
    return dict(
        src=dict(type="path", required=True),
        dest=dict(
            type="dict", required=True,
            options=_copy.store_fields(),
            required_if=[("type", "ssh", ("host", "path")), ("type", "s3", ("bucket",)), ("type", "local", ("path",))],
        ),
        keep=dict(type="int"),
        **_retention.retention_argument_spec(),
        name=dict(type="str"),
        cluster_uuid=dict(type="str"),
        partial_margin=dict(type="int", default=_retention.DEFAULT_MARGIN),
    )


def main():
    module = _module.build_module(argument_spec(), connection=False, supports_check_mode=True)
    _copy.run(module)


if __name__ == "__main__":
    main()

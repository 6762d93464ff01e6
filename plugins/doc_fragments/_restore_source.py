# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Private doc fragment of dbtools.galera: do not use it outside this collection.


class ModuleDocFragment:
    # Where a restore reads its backup from and the options of its long steps (module_utils/_restore_job.py
    # common_options), shared by galera_restore_node, galera_restore_drill and galera_restore_logical.
    DOCUMENTATION = r"""
options:
  dir:
    description: The backup directory on the host, the source when O(source) is not given.
    type: path
    default: /var/backups/galera
  encrypt_key:
    description: The key of encrypted backups (its first line), for example an Ansible Vault variable. Never logged.
    type: str
  encrypt_key_file:
    description: A file on the host whose first line is the key of encrypted backups.
    type: path
  work_dir:
    description:
      - Where backups fetched from a store are kept (created 0711 when missing; each backup in it is 0700), and
        where a drill restores its scratch copy.
    type: path
    default: /var/backups/galera-restore
  run_id:
    description: The run a starting step returned (V(wait)).
    type: str
  timeout:
    description: V(wait) returns after at most this many seconds, done or not.
    type: float
    default: 10
  source:
    description:
      - An off-host store to restore from, the same fields as an item of the role variable C(galera_backup_copies)
        (see M(dbtools.galera.galera_backup_copy)'s O(dbtools.galera.galera_backup_copy#module:dest)).
    type: dict
    suboptions:
      type:
        description: V(ssh), V(s3) or V(local).
        type: str
        required: true
        choices: [ssh, s3, local]
      name:
        description: The store's name, for messages.
        type: str
      keep:
        description: Ignored (the retention of the copy).
        type: raw
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
        description: With V(ssh) or V(local), the directory of the backups.
        type: str
      identity_file:
        description: With V(ssh), the private key on this node.
        type: path
      known_hosts_file:
        description: With V(ssh), the known_hosts file holding the store's host key.
        type: path
      strict_host_key_checking:
        description: With V(ssh), V(yes) or V(accept-new).
        type: str
        choices: ['yes', accept-new]
        default: 'yes'
      bwlimit:
        description: With V(ssh), the bandwidth limit in KiB/s.
        type: int
        default: 0
      bucket:
        description: With V(s3), the bucket.
        type: str
      prefix:
        description: With V(s3), the key prefix.
        type: str
        default: ''
      endpoint_url:
        description: With V(s3), the URL of an S3-compatible server.
        type: str
      region:
        description: With V(s3), the region.
        type: str
      access_key:
        description: With V(s3), the access key id.
        type: str
      secret_key:
        description: With V(s3), the secret access key (never logged).
        type: str
      storage_class:
        description: Ignored when reading.
        type: str
      validate_certs:
        description: With V(s3), whether to check the server's certificate.
        type: bool
        default: true
      ca_bundle:
        description: With V(s3), a CA bundle.
        type: path
"""

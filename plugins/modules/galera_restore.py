#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_restore
short_description: Restore a physical Galera backup and its incremental chain into a data directory
version_added: 0.3.0
description:
  - Takes one backup of a backup directory on the host (a node's C(galera_backup_dir), or a store's copy),
    checks every member of its chain (present, good, the key is the key of every encrypted member, the MACs of
    encrypted files), then extracts, decrypts, decompresses and prepares the full backup and each incremental
    in order into O(datadir), and gives it to O(owner).
  - O(datadir) must be empty or absent; the module never deletes or overwrites data. Refuses, changing nothing,
    a missing or broken chain, a logical dump, a wrong key, and a O(datadir) that is C(/) or a system directory.
  - A failure after the extraction began empties O(datadir) again (it was empty), and leaves the backups as they were.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Runs every check and reports what it would restore.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  path:
    description: The backup directory holding the backup and its chain.
    type: path
    required: true
  id:
    description: The backup's id (directory name); empty takes the newest restorable backup (of O(cluster)).
    type: str
    default: ""
  cluster:
    description: With no O(id), only consider backups of this cluster name.
    type: str
    default: ""
  datadir:
    description: The empty (or absent) data directory to restore into.
    type: path
    required: true
  owner:
    description: User (and group) that own the restored files, the server's user.
    type: str
    default: mysql
  encrypt_key:
    description: The key of an encrypted backup (its first line), for example an Ansible Vault variable. Never logged.
    type: str
  encrypt_key_file:
    description: A file on the host whose first line is the key of an encrypted backup.
    type: path
notes:
  - The server is not started and no cluster is touched.
seealso:
  - module: dbtools.galera.galera_backup_info
"""

EXAMPLES = r"""
- name: Restore the newest backup's chain into an empty data directory
  dbtools.galera.galera_restore:
    path: /var/backups/galera
    id: dbtools_db3_20261201T030000Z-1a2b3c4d
    datadir: /var/lib/mysql
    encrypt_key_file: /root/galera-backup.key
"""

RETURN = r"""
chain:
  description: The backups applied, the full backup first.
  returned: success
  type: list
  elements: str
position:
  description: The Galera position (cluster uuid and seqno) of the restored data, from the manifest.
  returned: success
  type: dict
  sample: {"cluster_uuid": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef", "seqno": 42117}
integrity:
  description: How the encrypted files were checked (V(verified) with MACs, V(legacy) for older backups, or V(none)).
  returned: success
  type: str
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _restore
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run_local


def main():
    module = build_module(
        dict(
            path=dict(type="path", required=True),
            id=dict(type="str", default=""),
            cluster=dict(type="str", default=""),
            datadir=dict(type="path", required=True),
            owner=dict(type="str", default="mysql"),
            encrypt_key=dict(type="str", no_log=True),
            encrypt_key_file=dict(type="path"),
        ),
        connection=False,
        supports_check_mode=True,
        mutually_exclusive=[("encrypt_key", "encrypt_key_file")],
    )
    run_local(module, lambda: _restore.restore_into(module.params, module.check_mode))


if __name__ == "__main__":
    main()

# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Private doc fragment of dbtools.galera: do not use it outside this collection.


class ModuleDocFragment:
    # The connection options of every module (module_utils/_connection.py), named as in community.mysql.
    DOCUMENTATION = r"""
options:
  login_user:
    description:
      - The user to connect as.
      - When not set, the C(user) of the C([client]) section of O(config_file), else the
        operating system user running the module (on Debian-family servers C(root) logs in
        through the local socket without a password).
    type: str
    aliases: [login_username]
  login_password:
    description:
      - The password of O(login_user). Never logged.
      - When not set, the C(password) of the C([client]) section of O(config_file).
    type: str
  login_host:
    description:
      - The host of the server. V(localhost) with no O(login_unix_socket) means the local
        server socket, found in the usual places (as the mysql client does).
    type: str
    default: localhost
  login_port:
    description:
      - The TCP port of the server, when connecting over the network.
    type: int
    default: 3306
  login_unix_socket:
    description:
      - The path of the server's Unix socket. Takes precedence over O(login_host).
      - Connections to other nodes of the cluster (the takeover of an expired desync lease) ignore it,
        as they ignore the C(socket) of O(config_file). They go over TCP to the address the node
        recorded, with the same credentials and TLS options.
    type: str
  config_file:
    description:
      - A MySQL option file whose C([client]) section supplies C(user), C(password),
        C(host), C(port), C(socket) and C(ssl-*) values that are not set as options.
      - A missing file is ignored.
    type: path
    default: ~/.my.cnf
  ca_cert:
    description:
      - The CA certificate to verify the server's TLS certificate with. Enables TLS.
    type: path
    aliases: [ssl_ca]
  client_cert:
    description:
      - The client's TLS certificate.
    type: path
    aliases: [ssl_cert]
  client_key:
    description:
      - The client's TLS private key.
    type: path
    aliases: [ssl_key]
  check_hostname:
    description:
      - Whether the server's TLS certificate must match O(login_host). Defaults to true when
        O(ca_cert) is set.
    type: bool
  connect_timeout:
    description:
      - Seconds to wait for the connection.
    type: int
    default: 30
requirements:
  - PyMySQL >= 1.0 on the host the module runs on
notes:
  - Options follow M(community.mysql.mysql_variables), so C(module_defaults) written for
    community.mysql can be reused through the C(group/dbtools.galera.galera) action group.
  - The recommended pattern runs the module on the Galera node itself, connecting through the
    local socket.
"""

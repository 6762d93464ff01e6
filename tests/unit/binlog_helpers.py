# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Synthetic MariaDB binlog files for the binlog archive's tests (format: MariaDB binlog v4, CRC32),
and one real file written by MariaDB 10.11.19 in a three-node Galera cluster."""

from __future__ import annotations

import base64
import struct
import zlib

MAGIC = b"\xfebin"
BASE_TIME = 1795000000  # 2026-11-18T...


class Writer:
    """Builds a binlog file event by event (timestamps default to BASE_TIME + seq)."""

    def __init__(self, server: int = 1, checksum: bool = True):
        self.data = bytearray(MAGIC)
        self.server = server
        self.checksum = checksum
        self.fde()

    def event(self, kind: int, body: bytes, ts: int = BASE_TIME, server: int | None = None) -> "Writer":
        length = 19 + len(body) + (4 if self.checksum else 0)
        header = struct.pack("<IBIIIH", ts, kind, self.server if server is None else server, length,
                             len(self.data) + length, 0)
        event = header + body
        if self.checksum:
            event += struct.pack("<I", zlib.crc32(event) & 0xFFFFFFFF)
        self.data += event
        return self

    def fde(self) -> "Writer":
        body = struct.pack("<H", 4) + b"10.11.19-MariaDB-test".ljust(50, b"\0") + struct.pack("<I", BASE_TIME) \
            + bytes([19]) + bytes(range(1, 30)) + bytes([1 if self.checksum else 0])
        # The FDE carries its checksum algorithm, then its own CRC (added by event()).
        length = 19 + len(body) + 4
        header = struct.pack("<IBIIIH", BASE_TIME, 15, self.server, length, len(self.data) + length, 0)
        event = header + body
        self.data += event + struct.pack("<I", zlib.crc32(event) & 0xFFFFFFFF)
        return self

    def gtid_list(self, entries: dict) -> "Writer":
        body = struct.pack("<I", len(entries))
        for domain, (server, seq) in sorted(entries.items()):
            body += struct.pack("<IIQ", domain, server, seq)
        return self.event(163, body)

    def gtid(self, seq: int, domain: int = 1, server: int | None = None, ts: int | None = None,
             standalone: bool = False) -> "Writer":
        body = struct.pack("<QIB", seq, domain, 1 if standalone else 0) + b"\0" * 6
        return self.event(162, body, ts if ts is not None else BASE_TIME + seq, server)

    def query(self, text: str, ts: int | None = None, db: bytes = b"t") -> "Writer":
        body = struct.pack("<IIBHH", 11, 0, len(db), 0, 0) + db + b"\0" + text.encode()
        return self.event(2, body, ts or BASE_TIME)

    def xid(self, ts: int | None = None) -> "Writer":
        return self.event(16, struct.pack("<Q", 7), ts or BASE_TIME)

    def rows(self, size: int = 40) -> "Writer":
        return self.event(30, b"r" * size)  # a Write_rows event: its content does not matter here

    def trx(self, seq: int, domain: int = 1, server: int | None = None, ts: int | None = None) -> "Writer":
        when = ts if ts is not None else BASE_TIME + seq
        return self.gtid(seq, domain, server, when).query("BEGIN", when).rows().xid(when)

    def ddl(self, seq: int, text: str = "CREATE TABLE t.x (id INT PRIMARY KEY)") -> "Writer":
        return self.gtid(seq, standalone=True).query(text, BASE_TIME + seq)

    def rotate(self, name: str = "mariadb-bin.000009", ts: int = BASE_TIME + 10000) -> "Writer":
        return self.event(4, struct.pack("<Q", 4) + name.encode(), ts)

    def stop(self, ts: int = BASE_TIME + 10000) -> "Writer":
        return self.event(3, b"", ts)

    def raw(self, data: bytes) -> "Writer":
        self.data += data
        return self

    def save(self, path) -> str:
        with open(path, "wb") as handle:
            handle.write(bytes(self.data))
        return str(path)


def closed_file(path, seqs, start=None, domain: int = 1, name_next: str = "mariadb-bin.000099",
                closed_at: int = BASE_TIME + 10000, server: int = 1) -> str:
    """A closed binlog file (Gtid_list ``start``, one transaction per sequence number, a Rotate)."""
    writer = Writer(server=server)
    writer.gtid_list({} if start is None else {domain: (1, start)})
    for seq in seqs:
        writer.trx(seq, domain, server=1)
    return writer.rotate(name_next, closed_at).save(path)


# mariadb-bin.000004 of node 3 (server_id 3, gtid_domain_id 13) of a MariaDB 10.11.19 Galera cluster with
# wsrep_gtid_mode=ON, wsrep_gtid_domain_id=1: two DDL (1-1-1, 1-1-2), four row transactions (1-1-3 .. 1-1-6,
# written on nodes 1, 2 and 3 and all binlogged as server 1), a node-local write 13-3-1 (wsrep_on=OFF),
# then the Stop event of a clean shutdown.
REAL_N3 = (
    "eNq9lG9IE3EYx3/b3c1L8+9erETxTALPbmPnDItMOvOqla7aViD4ZrIy0WblLKlXKvmyFwal5MKyhJVghRIZ+CKxMspe9CYyDEMI"
    "JQzMQkKr3/Pbzd25tpf94Ls9u+d7z/P9HOx+19T5utpT61MphNAKFtLBB41Eq0UULeJOc6XnXJ2nvMxs3eY9USMWNovmhsZa9I8D"
    "Y4w7khGLMhCNTwZCs4jOZHGLZVk9/kpMTAxZ14r/fmgjjZJxHJxAN3l/pgBC9wF7NkgXMQopQjU0b0HTjHWQNDEUOg1PxFtjxo/O"
    "YoVT9CGP/dKDzbfBU4DlxwWLwuPgmw+V6T+uPAWnHq4dxRonzqSIMzNU4IpzQ2WgmvxeOhflYpsf7XXKklvmyiW3VCa5ZM4/MT/R"
    "rln9jQzUR69u3UMtra1uwzpLTEkR5rw4q1tTwy4lAg5QgfdbPFx+nZezO9zcEae9UnJWcYfkKoE7D5d4Tnbstzvk3Xafr7G87OqD"
    "rawm6w09ZKVUWTeGyosv3jnA2QvXbFiTJKvd4ZKdbph8mGw+LlUck11cviiI/B9bmxFuMYaHL5NbNiujdX6k8yA9RSF98O1YAjhN"
    "YecWKuJksGdFp6QZvDD9Cpxp8CMHSyJOgxJ4on8UaXjqKeCho3kW5n9e0vDcpOLxFAqFfArXMajheUnF4CkZ++TT8Cyu54EnAepw"
    "Lm3S8KSTrAlK4M76hmsBNc8uGniYaJ6hrNHvATWPj47HYxNsfD+7by6g5umiY/CUDjeLATXPM40T8wAf6PXK4nJAzTNDnKwS+H3p"
    "xwNBNU8SA01DNM/2ls+1QTVPKROPp0go4he6H/cF1TynmBg81astaUE1Tyezjocmr1yEPL/mXEE1z0Pi3KAEnh0pXr0HPJQyaIpR"
    "v2aSIzxZb6bs4OwFZzG8twxx/z9Wq4DFP7k7Pw23GcMLSgwxmLrbv54BpynsPGlYx+TFBahpYGgcnGmUwnSZOLOV0Kbnj66P4DYF"
    "bRNWD2kv5gzf+Qv2QAFH"
)


def real_n3(path) -> str:
    with open(path, "wb") as handle:
        handle.write(zlib.decompress(base64.b64decode("".join(REAL_N3))))
    return str(path)

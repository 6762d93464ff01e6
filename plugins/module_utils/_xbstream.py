# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read an xbstream (mariabackup/xtrabackup ``--stream=xbstream``) as it passes (private).

``copy(src, dst, keep)`` copies the stream unchanged from one binary file object to another and
returns the small metadata files named in ``keep`` (the Galera position, the LSN checkpoints, the
binary log position), so they are known without extracting the backup. A stream that does not start
with the xbstream magic, or ends inside a chunk, raises ``GaleraError``.
"""

from __future__ import annotations

import os
import struct

from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

MAGIC = b"XBSTCK01"
CHUNK_EOF = ord("E")
BLOCK = 1 << 20
MAX_KEPT = 1 << 20
# Metadata files worth keeping, under the names of both tools (MariaDB 11 renamed them).
META_FILES = (
    "xtrabackup_galera_info", "mariadb_backup_galera_info",
    "xtrabackup_checkpoints", "mariadb_backup_checkpoints",
    "xtrabackup_info", "mariadb_backup_info",
    "xtrabackup_binlog_info", "mariadb_backup_binlog_info",
)


class _Reader:
    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.total = 0

    def read(self, n: int) -> bytes:
        """Exactly n bytes, copied through; b'' at a clean end between chunks."""
        parts, left = [], n
        while left:
            data = self.src.read(min(left, BLOCK))
            if not data:
                if left == n:
                    return b""
                raise GaleraError(f"the xbstream ends inside a chunk after {self.total} bytes: the backup tool "
                                  "stopped before it finished")
            self.dst.write(data)
            self.total += len(data)
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n:
            data = self.src.read(min(n, BLOCK))
            if not data:
                raise GaleraError(f"the xbstream ends inside a file after {self.total} bytes: the backup tool "
                                  "stopped before it finished")
            self.dst.write(data)
            self.total += len(data)
            n -= len(data)


def copy(src, dst, keep=META_FILES) -> dict:
    """Copy an xbstream from ``src`` to ``dst``; ``dict(bytes, chunks, files={name: bytes})``."""
    reader = _Reader(src, dst)
    kept = {}
    chunks = 0
    while True:
        magic = reader.read(len(MAGIC))
        if not magic:
            break
        if magic != MAGIC:
            raise GaleraError(f"the backup tool's output is not an xbstream: bad chunk magic at byte "
                              f"{reader.total - len(magic)}")
        _flags, chunk_type, path_len = struct.unpack("<BBI", reader.read(6))
        path = reader.read(path_len).decode("utf-8", "replace")
        chunks += 1
        if chunk_type == CHUNK_EOF:
            continue
        payload_len, _offset = struct.unpack("<QQ", reader.read(16))
        reader.read(4)  # the payload's checksum
        name = os.path.basename(path)
        if name in keep and payload_len <= MAX_KEPT and "/" not in path.strip("./"):
            kept.setdefault(name, bytearray()).extend(reader.read(payload_len))
        else:
            reader.skip(payload_len)
    if chunks == 0:
        raise GaleraError("the backup tool wrote an empty xbstream")
    return dict(bytes=reader.total, chunks=chunks, files={name: bytes(data) for name, data in kept.items()})

# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pass an xbstream (mariabackup/xtrabackup --stream=xbstream) from stdin to stdout unchanged,
and keep copies of its small metadata files on the side.

    mariabackup --backup --stream=xbstream ... | xbstream_tee.py META_DIR | zstd -o backup.xbstream.zst

At the end META_DIR holds xtrabackup_galera_info (cluster position), xtrabackup_checkpoints
(LSNs) and xtrabackup_info, and stream.json with the stream's byte count. Without this the
position would only be known after extracting the whole backup. A stream that ends inside a
chunk, or does not start with the xbstream magic, exits non-zero (so the pipeline fails).
"""

import json
import os
import struct
import sys

MAGIC = b"XBSTCK01"
KEEP = ("xtrabackup_galera_info", "xtrabackup_checkpoints", "xtrabackup_info", "mariadb_backup_galera_info",
        "mariadb_backup_checkpoints", "mariadb_backup_info")
CHUNK_EOF = ord("E")
BLOCK = 1 << 20


class Stream:
    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.total = 0

    def read(self, n):
        """Read exactly n bytes (copying them through); b'' at a clean end, error if cut."""
        parts, left = [], n
        while left:
            data = self.src.read(min(left, BLOCK))
            if not data:
                if left == n:
                    return b""
                raise EOFError(f"xbstream ends inside a chunk after {self.total} bytes")
            self.dst.write(data)
            self.total += len(data)
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def skip(self, n):
        while n:
            data = self.src.read(min(n, BLOCK))
            if not data:
                raise EOFError(f"xbstream ends inside a payload after {self.total} bytes")
            self.dst.write(data)
            self.total += len(data)
            n -= len(data)


def main():
    meta_dir = sys.argv[1]
    os.makedirs(meta_dir, mode=0o700, exist_ok=True)
    stream = Stream(sys.stdin.buffer, sys.stdout.buffer)
    kept = {}
    chunks = 0
    while True:
        magic = stream.read(len(MAGIC))
        if not magic:
            break
        if magic != MAGIC:
            raise SystemExit(f"not an xbstream: bad chunk magic at byte {stream.total - len(magic)}")
        _flags, chunk_type, path_len = struct.unpack("<BBI", stream.read(6))
        path = stream.read(path_len).decode("utf-8", "replace")
        chunks += 1
        if chunk_type == CHUNK_EOF:
            continue
        payload_len, _offset = struct.unpack("<QQ", stream.read(16))
        stream.read(4)  # payload checksum
        name = os.path.basename(path)
        if name in KEEP and payload_len < (1 << 20):
            kept.setdefault(name, bytearray()).extend(stream.read(payload_len))
        else:
            stream.skip(payload_len)
    sys.stdout.buffer.flush()
    if chunks == 0:
        raise SystemExit("empty xbstream: the backup tool wrote nothing")
    for name, data in kept.items():
        with open(os.path.join(meta_dir, name), "wb") as out:
            out.write(data)
    with open(os.path.join(meta_dir, "stream.json"), "w", encoding="utf-8") as out:
        json.dump({"stream_bytes": stream.total, "chunks": chunks, "files": sorted(kept)}, out)


if __name__ == "__main__":
    main()

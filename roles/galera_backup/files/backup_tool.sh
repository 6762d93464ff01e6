# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Node-side steps of the galera_backup role. The role copies this script to a private
# temporary directory and runs one step at a time; each step prints one JSON object on
# its last line of stdout and exits non-zero with the reason on stderr when it fails.
#
#   backup_tool.sh whoami           the node name and datadir the tool's connection reaches
#   backup_tool.sh keyid            the id of the encryption key in $KEY_FILE (never the key)
#   backup_tool.sh tables           list the source's tables (largest first) into $OUT/tables.txt
#   backup_tool.sh backup           run the backup tool into $OUT (under a time limit, pid in $TOOL_PID)
#   backup_tool.sh progress         wait a little for it, then print bytes written and the watchdog's view
#   backup_tool.sh checksum         write $OUT/SHA256SUMS and check it (and the zstd streams)
#   backup_tool.sh prepare          extract a copy into $VERIFY (or $TARGET) and prepare it, applying
#                                   the incrementals of $CHAIN in order (physical methods)
#   backup_tool.sh restore          start a throwaway server on the copy and check the tables
#
# Settings come from the environment (never secrets: credentials are in the 0600 option file):
#   METHOD (mariabackup|xtrabackup|mydumper|mysqldump), COMPRESS (zstd|none), LEVEL, THREADS,
#   OUT (the .partial backup directory), CNF (option file), TOOLS (directory of this script),
#   VERIFY (scratch directory for prepare/restore), SAMPLE (tables to checksum, 0 = all),
#   EXTRA_ARGS (newline-separated extra arguments for the tool), MAX_DURATION (seconds), TOOL_PID
#   (pid file of the running tool), WATCHDOG_STATE (the watchdog's state file), PROGRESS_WAIT,
#   INCREMENTAL_LSN (back up only pages changed since this LSN), CHAIN (newline-separated backup
#   directories this one builds on, the full backup first), KEY_FILE (a 0600 file whose first line
#   is the encryption key: streams are encrypted, never written in plain text), THROTTLE
#   (mariabackup/xtrabackup --throttle), NICE and IONICE_CLASS/IONICE_LEVEL (CPU and IO priority
#   of the backup), TARGET (prepare into this directory instead of $VERIFY/data).
set -euo pipefail
umask 077
step=${1:?usage: backup_tool.sh whoami|keyid|tables|backup|progress|checksum|prepare|restore}

fail() { echo "$*" >&2; exit 1; }
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
first_cmd() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 && { echo "$c"; return 0; }; done; return 1; }
physical() { [ "$METHOD" = mariabackup ] || [ "$METHOD" = xtrabackup ]; }
extra_args=()
if [ -n "${EXTRA_ARGS:-}" ]; then mapfile -t extra_args <<< "$EXTRA_ARGS"; fi
log_tail() { [ -f "$1" ] && tail -n 25 "$1" >&2; return 0; }

# Encryption: AES-256 in CTR mode, key derived with PBKDF2-SHA256; the key is read from a file,
# never from the command line. Compressed first (zstd's frame checksums then detect a wrong key).
CIPHER=aes-256-ctr
KDF_ITER=200000
encrypt() { openssl enc -e -"$CIPHER" -pbkdf2 -md sha256 -iter "$KDF_ITER" -salt -pass "file:$KEY_FILE"; }
decrypt() { openssl enc -d -"$CIPHER" -pbkdf2 -md sha256 -iter "$KDF_ITER" -pass "file:$1"; }
# The id of the key in $KEY_FILE (a hash of it, never the key); fails naming the file it cannot read.
key_id() {
    [ -r "${KEY_FILE:-}" ] || fail "the encryption key file ${KEY_FILE:-(none)} cannot be read"
    python3 - "$KEY_FILE" <<'PY' || fail "cannot read an encryption key from $KEY_FILE"
import hashlib, sys
with open(sys.argv[1], "rb") as handle:
    key = handle.readline().rstrip(b"\r\n")
if not key:
    sys.exit("the encryption key file is empty")
print(hashlib.sha256(b"dbtools.galera key id\n" + key).hexdigest()[:16])
PY
}
# The key id a backup directory's manifest records, or "" when it is not encrypted.
manifest_key_id() {
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print((m.get("encryption") or {}).get("key_id") or "")' "$1/manifest.json"
}
# The stream of a backup directory's compressed (and maybe encrypted) file, decompressed.
open_stream() {
    local f=$1
    case "$f" in
    *.zst.enc) decrypt "${KEY_FILE:?the backup is encrypted: give its key}" < "$f" | zstd -dcq ;;
    *.zst) zstd -dcq "$f" ;;
    *) fail "unknown stream $f" ;;
    esac
}
# Writes a stream from stdin to $1 (+ .zst, + .enc), compressed and maybe encrypted.
write_stream() {
    if [ -n "${KEY_FILE:-}" ]; then
        zstd -q -T"$THREADS" -"$LEVEL" | encrypt > "$1.zst.enc"
    else
        zstd -q -T"$THREADS" -"$LEVEL" -o "$1.zst"
    fi
}

client() { mariadb --defaults-extra-file="$CNF" "$@" 2>/dev/null || mysql --defaults-extra-file="$CNF" "$@"; }

user_tables_sql="SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES
  WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
  ORDER BY DATA_LENGTH + INDEX_LENGTH DESC, 1"

case "$step" in
whoami)
    # Where the tool's own connection lands: must be this node, whose files are copied.
    row=$(client -N -B -e "SELECT @@wsrep_node_name, @@datadir") || fail "cannot log in with the backup's option file"
    echo "{\"node_name\": $(json_str "$(cut -f1 <<< "$row")"), \"datadir\": $(json_str "$(cut -f2 <<< "$row")")}"
    ;;
keyid)
    id=$(key_id)
    echo "{\"key_id\": \"$id\", \"cipher\": \"$CIPHER\", \"kdf\": \"pbkdf2\", \"digest\": \"sha256\", \"iterations\": $KDF_ITER}"
    ;;
tables)
    client -N -B -e "$user_tables_sql" > "$OUT/tables.txt"
    echo "{\"tables\": $(wc -l < "$OUT/tables.txt")}"
    ;;

backup)
    # Run the tool under a hard time limit, its process group named in $TOOL_PID: the
    # watchdog renews the desync lease while that process lives, and stops it when the
    # receive queue guard trips. Progress is read with the 'progress' step meanwhile.
    # A backup is only worth keeping if the node stayed desynced under our lease all along.
    # The watchdog's reason: final once it resynced, or its guard as soon as it tripped (it
    # records the guard before it stops the tool, then drains, which may take a while).
    watchdog_ended() {
        python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))
print(s.get("reason") or "" if s.get("resynced") else ("guard: " + s["guard"]) if s.get("guard") else "")' \
            "$WATCHDOG_STATE" 2>/dev/null || true
    }
    ended=$(watchdog_ended)
    [ -z "$ended" ] || fail "the watchdog ended the desync before the backup started: $ended"
    rm -f "$OUT/.result"
    set +e
    # Lower CPU and IO priority for the tool and its pipeline, so the node stays a useful member.
    priority=()
    [ "${NICE:-0}" = 0 ] || priority+=(nice -n "$NICE")
    if [ -n "${IONICE_CLASS:-}" ] && [ "$IONICE_CLASS" != none ] && command -v ionice >/dev/null 2>&1; then
        priority+=(ionice -c "$IONICE_CLASS")
        [ "$IONICE_CLASS" = 3 ] || priority+=(-n "${IONICE_LEVEL:-7}")
    fi
    timeout --kill-after=30 "${MAX_DURATION:-21600}" "${priority[@]}" bash "$0" backup-run &
    echo $! > "$TOOL_PID"
    date +%s > "$TOOL_PID.started"
    wait $!
    rc=$?
    set -e
    rm -f "$TOOL_PID"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        fail "the backup ran longer than galera_backup_max_duration=${MAX_DURATION}s and was stopped"
    fi
    if [ $rc -eq 143 ]; then
        ended=$(watchdog_ended)
        fail "the backup was stopped (SIGTERM)${ended:+ by the watchdog: $ended}"
    fi
    [ $rc -eq 0 ] || exit $rc
    ended=$(watchdog_ended)
    [ -z "$ended" ] || fail "the watchdog ended the desync during the backup: $ended"
    cat "$OUT/.result"
    rm -f "$OUT/.result"
    ;;

progress)
    # Wait up to PROGRESS_WAIT seconds for the tool to end, then report what an operator
    # watching wants: still running?, bytes written, elapsed, and the watchdog's view.
    pid=$(cat "$TOOL_PID" 2>/dev/null || true)
    for _ in $(seq 1 "${PROGRESS_WAIT:-10}"); do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    running=false
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && running=true
    bytes=$(du -sb "$OUT" 2>/dev/null | cut -f1)
    python3 - "$running" "${bytes:-0}" "$WATCHDOG_STATE" "$TOOL_PID" <<'PY'
import json, os, sys, time
running, written, state_file, pid_file = sys.argv[1] == "true", int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    with open(state_file) as handle:
        state = json.load(handle)
except (OSError, ValueError):
    state = {}
lease = state.get("lease") or {}
try:
    with open(pid_file + ".started") as handle:
        started = int(handle.read())
except (OSError, ValueError):
    started = None
print(json.dumps({"running": running, "bytes": written,
                  "elapsed": round(time.time() - started, 1) if started else None,
                  "recv_queue": state.get("recv_queue"), "lease_expires": lease.get("expires_at"),
                  "lease_seconds_left": lease.get("seconds_left"), "guard": state.get("guard")}))
PY
    ;;

backup-run)
    log=$OUT/backup.log
    trap 'log_tail "$log"' ERR
    # The priorities this process (and so the tool and its pipeline) really runs with.
    applied_nice=$(ps -o ni= -p $$ 2>/dev/null | tr -d ' ' || true)
    [[ "$applied_nice" =~ ^-?[0-9]+$ ]] || applied_nice=null
    applied_ionice=$(ionice -p $$ 2>/dev/null || echo unknown)
    case "$METHOD" in
    mariabackup|xtrabackup)
        mkdir -p "$OUT/meta"
        tool_args=()
        [ -z "${INCREMENTAL_LSN:-}" ] || tool_args+=(--incremental-lsn="$INCREMENTAL_LSN")
        [ "${THROTTLE:-0}" = 0 ] || tool_args+=(--throttle="$THROTTLE")
        if [ "$COMPRESS" = zstd ]; then
            # --defaults-extra-file must come first for mariabackup/xtrabackup.
            "$METHOD" --defaults-extra-file="$CNF" --backup --galera-info --stream=xbstream \
                --target-dir="$OUT/.tmp" --extra-lsndir="$OUT/meta" "${tool_args[@]}" "${extra_args[@]}" 2> "$log" \
                | python3 "$TOOLS/xbstream_tee.py" "$OUT/meta" \
                | write_stream "$OUT/backup.xbstream"
            rm -rf "$OUT/.tmp"
        else
            "$METHOD" --defaults-extra-file="$CNF" --backup --galera-info --target-dir="$OUT/data" \
                --extra-lsndir="$OUT/meta" "${tool_args[@]}" "${extra_args[@]}" 2> "$log"
            for f in xtrabackup_galera_info mariadb_backup_galera_info; do
                [ -f "$OUT/data/$f" ] && cp "$OUT/data/$f" "$OUT/meta/"
            done
        fi
        grep -q "completed OK!" "$log" || fail "$METHOD did not report 'completed OK!'"
        ;;
    mydumper)
        compress=()
        [ "$COMPRESS" = zstd ] && compress=(--compress)
        mydumper --defaults-file="$CNF" --outputdir="$OUT/data" --threads="$THREADS" --trx-consistency-only \
            --triggers --events --routines "${compress[@]}" --logfile="$log" "${extra_args[@]}"
        [ -f "$OUT/data/metadata" ] || fail "mydumper wrote no metadata file: the dump is incomplete"
        grep -q "Finished dump at" "$OUT/data/metadata" || fail "mydumper's metadata has no 'Finished dump at'"
        ;;
    mysqldump)
        dump=$(first_cmd mariadb-dump mysqldump) || fail "neither mariadb-dump nor mysqldump is installed"
        if [ "$COMPRESS" = zstd ]; then
            "$dump" --defaults-extra-file="$CNF" --single-transaction --all-databases --routines --events \
                --triggers --hex-blob "${extra_args[@]}" 2> "$log" \
                | write_stream "$OUT/dump.sql"
            open_stream "$(ls "$OUT"/dump.sql.zst*)" | tail -n 1 | grep -q "Dump completed" \
                || fail "$dump output does not end with '-- Dump completed'"
        else
            "$dump" --defaults-extra-file="$CNF" --single-transaction --all-databases --routines --events \
                --triggers --hex-blob "${extra_args[@]}" 2> "$log" > "$OUT/dump.sql"
            tail -n 1 "$OUT/dump.sql" | grep -q "Dump completed" || fail "$dump output does not end with '-- Dump completed'"
        fi
        ;;
    *) fail "unknown METHOD '$METHOD'" ;;
    esac
    position=""
    for f in "$OUT"/meta/xtrabackup_galera_info "$OUT"/meta/mariadb_backup_galera_info; do
        [ -f "$f" ] && position=$(head -n 1 "$f") && break
    done
    to_lsn="" from_lsn="" backup_type=""
    # MariaDB 11 names it mariadb_backup_checkpoints.
    checkpoints=$(ls "$OUT"/meta/xtrabackup_checkpoints "$OUT"/meta/mariadb_backup_checkpoints 2>/dev/null | head -n 1 || true)
    if [ -n "$checkpoints" ]; then
        checkpoint() { awk -F' = ' -v k="$1" '$1 == k {print $2}' "$checkpoints"; }
        to_lsn=$(checkpoint to_lsn) from_lsn=$(checkpoint from_lsn) backup_type=$(checkpoint backup_type)
    fi
    if [ -n "${INCREMENTAL_LSN:-}" ]; then
        [ "$backup_type" = incremental ] || fail "$METHOD did not write an incremental backup (backup_type '$backup_type')"
        [ "$from_lsn" = "$INCREMENTAL_LSN" ] || fail "the incremental starts at LSN $from_lsn, not at its parent's $INCREMENTAL_LSN"
    fi
    echo "{\"galera_info\": $(json_str "$position"), \"to_lsn\": $(json_str "$to_lsn"), \"from_lsn\": $(json_str "$from_lsn"),"\
        "\"nice\": $applied_nice, \"ionice\": $(json_str "$applied_ionice")}" > "$OUT/.result"
    ;;

checksum)
    cd "$OUT"
    find . -type f ! -name SHA256SUMS ! -name manifest.json -print0 | sort -z | xargs -0 -r sha256sum > SHA256SUMS
    sha256sum --quiet -c SHA256SUMS >&2 || fail "a backup file does not match the checksum just recorded"
    while IFS= read -r -d '' z; do
        zstd -tq "$z" || fail "compressed file $z is corrupt"
    done < <(find . -name '*.zst' -print0)
    # Encrypted streams: decrypting with the key must give an intact zstd stream.
    while IFS= read -r -d '' z; do
        decrypt "$KEY_FILE" < "$z" | zstd -tq || fail "encrypted file $z does not decrypt to an intact stream with key file ${KEY_FILE:-(none)}"
    done < <(find . -name '*.zst.enc' -print0)
    files=$(wc -l < SHA256SUMS)
    bytes=$(du -sb --exclude=.tmp . | cut -f1)
    echo "{\"files\": $files, \"bytes\": $bytes, \"sha256\": \"$(sha256sum SHA256SUMS | cut -d' ' -f1)\"}"
    ;;

prepare)
    physical || fail "prepare applies to mariabackup and xtrabackup backups, not $METHOD"
    target=${TARGET:-$VERIFY/data}
    rm -rf "$VERIFY" && mkdir -p "$VERIFY"
    mkdir -p "$target"
    [ -z "$(ls -A "$target")" ] || fail "the directory to prepare into, $target, is not empty. Nothing was changed."
    # The chain to apply in order: the full backup, its incrementals, then this one.
    members=()
    if [ -n "${CHAIN:-}" ]; then mapfile -t members <<< "$CHAIN"; fi
    members+=("$OUT")
    # Check every encrypted member against the key before extracting anything.
    have_key=""
    [ -z "${KEY_FILE:-}" ] || have_key=$(key_id)
    for m in "${members[@]}"; do
        [ -d "$m" ] || fail "backup $m of the chain is missing"
        [ -f "$m/manifest.json" ] || continue
        want=$(manifest_key_id "$m")
        [ -z "$want" ] || [ "$want" = "$have_key" ] \
            || fail "backup $(basename "$m") is encrypted with key id $want, but the key given has id ${have_key:-(none)}: wrong key. Nothing was changed."
    done
    extract() {
        local src=$1 dest=$2 stream extractor
        mkdir -p "$dest"
        stream=$(ls "$src"/backup.xbstream.zst* 2>/dev/null | head -n 1 || true)
        if [ -n "$stream" ]; then
            extractor=$(first_cmd mbstream xbstream) || fail "neither mbstream nor xbstream is installed"
            open_stream "$stream" | "$extractor" -x -C "$dest" || fail "cannot extract $stream"
        elif [ -d "$src/data" ]; then
            cp -a "$src/data/." "$dest/"
        else
            fail "no backup stream or data directory in $src"
        fi
    }
    prepare_log=$VERIFY/prepare.log
    extract "${members[0]}" "$target"
    last=$(( ${#members[@]} - 1 ))
    # xtrabackup must not roll back uncommitted transactions until the last member is applied.
    apply_only=()
    [ "$METHOD" = xtrabackup ] && [ "$last" -gt 0 ] && apply_only=(--apply-log-only)
    "$METHOD" --prepare --target-dir="$target" "${apply_only[@]}" >> "$prepare_log" 2>&1 \
        || { log_tail "$prepare_log"; fail "$METHOD --prepare of $(basename "${members[0]}") failed"; }
    for i in $(seq 1 "$last"); do
        inc=$VERIFY/incremental.$i
        extract "${members[$i]}" "$inc"
        apply_only=()
        [ "$METHOD" = xtrabackup ] && [ "$i" -lt "$last" ] && apply_only=(--apply-log-only)
        "$METHOD" --prepare --target-dir="$target" --incremental-dir="$inc" "${apply_only[@]}" >> "$prepare_log" 2>&1 \
            || { log_tail "$prepare_log"; fail "$METHOD --prepare of incremental $(basename "${members[$i]}") failed"; }
        rm -rf "$inc"
    done
    echo "{\"prepared\": true, \"members\": ${#members[@]}}"
    ;;

restore)
    server=$(first_cmd mariadbd mysqld /usr/sbin/mariadbd /usr/sbin/mysqld) || fail "no mariadbd/mysqld to restore into"
    if ! physical; then
        rm -rf "$VERIFY" && mkdir -p "$VERIFY/data"
        if command -v mariadb-install-db >/dev/null 2>&1; then
            mariadb-install-db --no-defaults --datadir="$VERIFY/data" --user=root \
                --auth-root-authentication-method=socket > "$VERIFY/install.log" 2>&1 \
                || { log_tail "$VERIFY/install.log"; fail "mariadb-install-db failed"; }
        else
            "$server" --no-defaults --initialize-insecure --datadir="$VERIFY/data" --user=root > "$VERIFY/install.log" 2>&1 \
                || { log_tail "$VERIFY/install.log"; fail "$server --initialize-insecure failed"; }
        fi
    fi
    [ -d "$VERIFY/data" ] || fail "no prepared copy in $VERIFY (run prepare first)"
    sock=$VERIFY/verify.sock
    stop_server() {
        local pid
        pid=$(cat "$VERIFY/verify.pid" 2>/dev/null || true)
        if [ -S "$sock" ]; then
            mariadb-admin -S "$sock" shutdown 2>/dev/null || mysqladmin -S "$sock" shutdown 2>/dev/null || true
        fi
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
        # Wait for it to be gone, so the copy can be removed right after.
        for _ in $(seq 1 120); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        return 0
    }
    trap stop_server EXIT
    # No network, no Galera, no binary log: the copy must not talk to the cluster. It runs as
    # root because the backup directory is private to root (0700), and only serves its socket.
    "$server" --no-defaults --user=root --datadir="$VERIFY/data" --socket="$sock" --skip-networking \
        --pid-file="$VERIFY/verify.pid" --log-error="$VERIFY/verify.err" --innodb-buffer-pool-size=64M \
        --skip-log-bin --wsrep-on=OFF </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 120); do
        mariadb -S "$sock" -N -e "SELECT 1" >/dev/null 2>&1 && break
        sleep 0.5
    done
    mariadb -S "$sock" -N -e "SELECT 1" >/dev/null 2>&1 || { log_tail "$VERIFY/verify.err"; fail "the restored copy did not start"; }
    if ! physical; then
        if [ "$METHOD" = mydumper ]; then
            myloader -S "$sock" -d "$OUT/data" -t "$THREADS" -o > "$VERIFY/load.log" 2>&1 \
                || { log_tail "$VERIFY/load.log"; fail "myloader could not load the dump"; }
        elif compgen -G "$OUT/dump.sql.zst*" >/dev/null; then
            open_stream "$(ls "$OUT"/dump.sql.zst*)" | mariadb -S "$sock" > "$VERIFY/load.log" 2>&1 \
                || { log_tail "$VERIFY/load.log"; fail "the dump could not be loaded"; }
        else
            mariadb -S "$sock" < "$OUT/dump.sql" > "$VERIFY/load.log" 2>&1 \
                || { log_tail "$VERIFY/load.log"; fail "the dump could not be loaded"; }
        fi
    fi
    mariadb -S "$sock" -N -B -e "$user_tables_sql" | sort > "$VERIFY/restored.txt"
    sort "$OUT/tables.txt" > "$VERIFY/source.txt"
    missing=$(comm -23 "$VERIFY/source.txt" "$VERIFY/restored.txt" | head -n 20 | paste -sd' ' -)
    [ -z "$missing" ] || fail "tables of the source are missing from the restored copy: $missing"
    sample=${SAMPLE:-20}
    if [ "$sample" -gt 0 ]; then head -n "$sample" "$OUT/tables.txt"; else cat "$OUT/tables.txt"; fi > "$VERIFY/sample.txt"
    checks="{"
    sep=""
    while IFS= read -r t; do
        [ -n "$t" ] || continue
        q="\`${t%%.*}\`.\`${t#*.}\`"
        row=$(mariadb -S "$sock" -N -B -e "CHECKSUM TABLE $q EXTENDED; SELECT COUNT(*) FROM $q" | paste -sd'\t' -) \
            || fail "table $t of the restored copy cannot be read"
        sum=$(cut -f2 <<< "$row")
        count=$(cut -f3 <<< "$row")
        [ "$sum" != NULL ] || fail "CHECKSUM TABLE $t returned NULL on the restored copy"
        checks+="$sep$(json_str "$t"): {\"checksum\": $sum, \"rows\": $count}"
        sep=", "
    done < "$VERIFY/sample.txt"
    checks+="}"
    echo "{\"tables\": $(wc -l < "$VERIFY/restored.txt"), \"checksums\": $checks}"
    ;;
*)
    fail "unknown step '$step'"
    ;;
esac

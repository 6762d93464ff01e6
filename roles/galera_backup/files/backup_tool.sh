# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Node-side steps of the galera_backup role. The role copies this script to a private
# temporary directory and runs one step at a time; each step prints one JSON object on
# its last line of stdout and exits non-zero with the reason on stderr when it fails.
#
#   backup_tool.sh whoami           the node name and datadir the tool's connection reaches
#   backup_tool.sh tables           list the source's tables (largest first) into $OUT/tables.txt
#   backup_tool.sh backup           run the backup tool into $OUT (under a time limit, pid in $TOOL_PID)
#   backup_tool.sh progress         wait a little for it, then print bytes written and the watchdog's view
#   backup_tool.sh checksum         write $OUT/SHA256SUMS and check it (and the zstd streams)
#   backup_tool.sh prepare          extract a copy into $VERIFY and prepare it (physical methods)
#   backup_tool.sh restore          start a throwaway server on the copy and check the tables
#
# Settings come from the environment (never secrets: credentials are in the 0600 option file):
#   METHOD (mariabackup|xtrabackup|mydumper|mysqldump), COMPRESS (zstd|none), LEVEL, THREADS,
#   OUT (the .partial backup directory), CNF (option file), TOOLS (directory of this script),
#   VERIFY (scratch directory for prepare/restore), SAMPLE (tables to checksum, 0 = all),
#   EXTRA_ARGS (newline-separated extra arguments for the tool), MAX_DURATION (seconds), TOOL_PID
#   (pid file of the running tool), WATCHDOG_STATE (the watchdog's state file), PROGRESS_WAIT.
set -euo pipefail
umask 077
step=${1:?usage: backup_tool.sh whoami|tables|backup|progress|checksum|prepare|restore}

fail() { echo "$*" >&2; exit 1; }
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
first_cmd() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 && { echo "$c"; return 0; }; done; return 1; }
physical() { [ "$METHOD" = mariabackup ] || [ "$METHOD" = xtrabackup ]; }
extra_args=()
if [ -n "${EXTRA_ARGS:-}" ]; then mapfile -t extra_args <<< "$EXTRA_ARGS"; fi
log_tail() { [ -f "$1" ] && tail -n 25 "$1" >&2; return 0; }

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
    timeout --kill-after=30 "${MAX_DURATION:-21600}" bash "$0" backup-run &
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
    case "$METHOD" in
    mariabackup|xtrabackup)
        mkdir -p "$OUT/meta"
        if [ "$COMPRESS" = zstd ]; then
            # --defaults-extra-file must come first for mariabackup/xtrabackup.
            "$METHOD" --defaults-extra-file="$CNF" --backup --galera-info --stream=xbstream \
                --target-dir="$OUT/.tmp" --extra-lsndir="$OUT/meta" "${extra_args[@]}" 2> "$log" \
                | python3 "$TOOLS/xbstream_tee.py" "$OUT/meta" \
                | zstd -q -T"$THREADS" -"$LEVEL" -o "$OUT/backup.xbstream.zst"
            rm -rf "$OUT/.tmp"
        else
            "$METHOD" --defaults-extra-file="$CNF" --backup --galera-info --target-dir="$OUT/data" \
                --extra-lsndir="$OUT/meta" "${extra_args[@]}" 2> "$log"
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
                | zstd -q -T"$THREADS" -"$LEVEL" -o "$OUT/dump.sql.zst"
            zstd -dc "$OUT/dump.sql.zst" | tail -n 1 | grep -q "Dump completed" \
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
    to_lsn=""
    [ -f "$OUT/meta/xtrabackup_checkpoints" ] && to_lsn=$(awk -F' = ' '$1 == "to_lsn" {print $2}' "$OUT/meta/xtrabackup_checkpoints")
    echo "{\"galera_info\": $(json_str "$position"), \"to_lsn\": $(json_str "$to_lsn")}" > "$OUT/.result"
    ;;

checksum)
    cd "$OUT"
    find . -type f ! -name SHA256SUMS ! -name manifest.json -print0 | sort -z | xargs -0 -r sha256sum > SHA256SUMS
    sha256sum --quiet -c SHA256SUMS >&2 || fail "a backup file does not match the checksum just recorded"
    while IFS= read -r -d '' z; do
        zstd -tq "$z" || fail "compressed file $z is corrupt"
    done < <(find . -name '*.zst' -print0)
    files=$(wc -l < SHA256SUMS)
    bytes=$(du -sb --exclude=.tmp . | cut -f1)
    echo "{\"files\": $files, \"bytes\": $bytes, \"sha256\": \"$(sha256sum SHA256SUMS | cut -d' ' -f1)\"}"
    ;;

prepare)
    physical || fail "prepare applies to mariabackup and xtrabackup backups, not $METHOD"
    rm -rf "$VERIFY" && mkdir -p "$VERIFY"
    if [ -f "$OUT/backup.xbstream.zst" ]; then
        extractor=$(first_cmd mbstream xbstream) || fail "neither mbstream nor xbstream is installed"
        mkdir -p "$VERIFY/data"
        zstd -dc "$OUT/backup.xbstream.zst" | "$extractor" -x -C "$VERIFY/data"
    else
        cp -a "$OUT/data" "$VERIFY/data"
    fi
    "$METHOD" --prepare --target-dir="$VERIFY/data" > "$VERIFY/prepare.log" 2>&1 \
        || { log_tail "$VERIFY/prepare.log"; fail "$METHOD --prepare failed"; }
    echo "{\"prepared\": true}"
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
        elif [ -f "$OUT/dump.sql.zst" ]; then
            zstd -dc "$OUT/dump.sql.zst" | mariadb -S "$sock" > "$VERIFY/load.log" 2>&1 \
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

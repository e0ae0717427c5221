#!/usr/bin/env bash
# pgward benchmark: pgbench -S through pgward (plaintext and TLS client leg) compared with a
# direct connection and with PgBouncer (session mode), all on loopback, interleaved in one run.
#
#   bench/run.sh                                  # default: 10 s per run, 2 rounds
#   BENCH_SECONDS=3 BENCH_ROUNDS=1 bench/run.sh   # quick smoke run
#
# Environment (all optional):
#   BENCH_SECONDS   duration of each pgbench run (default 10)
#   BENCH_ROUNDS    rounds; every cell is run once per round, round-robin across targets (default 2)
#   BENCH_SCALE     pgbench -i scale factor (default 10)
#   BENCH_CLIENTS   client counts to measure (default "1 16")
#   BENCH_MODES     pgbench -M modes (default "simple extended prepared")
#   BENCH_TARGETS   targets (default "direct pgward pgward_tls pgbouncer")
#   BENCH_JOBS      pgbench -j for multi-client runs (default: min(clients, nproc))
#   BENCH_WARMUP    seconds of unrecorded warm-up per target before measuring (default 3, 0 = none)
#   PGWARD_WORKER_THREADS  [listen] worker_threads for pgward (default 0 = one per CPU)
#   BENCH_OUT       markdown results file (default bench/results/latest.md)
#   BENCH_SKIP_BUILD=1  use the existing target/release/pgward
#   PG_BINDIR       PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
#   BENCH_KEEP=1    keep the temporary directory (logs) after the run
#
# Everything listens on 127.0.0.1 only, on free ports, and everything started here is stopped
# and removed on exit (including Ctrl-C).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_ROUNDS="${BENCH_ROUNDS:-2}"
BENCH_SCALE="${BENCH_SCALE:-10}"
BENCH_CLIENTS="${BENCH_CLIENTS:-1 16}"
BENCH_MODES="${BENCH_MODES:-simple extended prepared}"
BENCH_TARGETS="${BENCH_TARGETS:-direct pgward pgward_tls pgbouncer}"
BENCH_WARMUP="${BENCH_WARMUP:-3}"
PGWARD_WORKER_THREADS="${PGWARD_WORKER_THREADS:-0}"
BENCH_OUT="${BENCH_OUT:-$BENCH_DIR/results/latest.md}"
NPROC="$(nproc)"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in BENCH_SECONDS BENCH_ROUNDS BENCH_SCALE BENCH_WARMUP PGWARD_WORKER_THREADS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((BENCH_SECONDS > 0 && BENCH_ROUNDS > 0 && BENCH_SCALE > 0)) || die "BENCH_SECONDS, BENCH_ROUNDS and BENCH_SCALE must be > 0"

# --------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------
find_pg_bindir() {
    if [[ -n "${PG_BINDIR:-}" ]]; then echo "$PG_BINDIR"; return; fi
    # Newest version first (sort numerically: 9.6 < 15 < 17).
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -1)"
    if [[ -z "$d" ]] && command -v pg_config >/dev/null; then d="$(pg_config --bindir)"; fi
    echo "$d"
}

install_prerequisites() {
    local pkgs=()
    [[ -n "$(find_pg_bindir)" && -x "$(find_pg_bindir)/initdb" ]] || pkgs+=(postgresql)
    command -v pgbench >/dev/null || pkgs+=(postgresql-contrib)
    command -v psql >/dev/null || pkgs+=(postgresql-client)
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || pkgs+=(pgbouncer)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v curl >/dev/null || pkgs+=(curl)
    if ((${#pkgs[@]})); then
        # Debian's postgresql package pulls in the client (psql, pgbench) too.
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
            log "installing missing packages: ${pkgs[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
        else
            die "missing: ${pkgs[*]} (install them, e.g. 'apt-get install ${pkgs[*]}', or run as root on Debian/Ubuntu)"
        fi
    fi
    command -v cargo >/dev/null || die "missing: cargo (install Rust from https://rustup.rs)"
    PG_BINDIR="$(find_pg_bindir)"
    [[ -x "$PG_BINDIR/initdb" && -x "$PG_BINDIR/postgres" && -x "$PG_BINDIR/pg_ctl" ]] \
        || die "no PostgreSQL server binaries found (set PG_BINDIR)"
    PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
    [[ -x "$PGBOUNCER" ]] || die "pgbouncer not found after installation"
    for c in pgbench psql openssl curl ss; do
        command -v "$c" >/dev/null || die "missing: $c"
    done
}

# --------------------------------------------------------------------------------------------
# Process and directory management
# --------------------------------------------------------------------------------------------
WORK=""
PG_STARTED=0
PGWARD_PID=""
PGBOUNCER_PID=""
RUN_USER=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$PGWARD_PID" ]] && kill -0 "$PGWARD_PID" 2>/dev/null; then
        kill -TERM "$PGWARD_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$PGWARD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PGWARD_PID" 2>/dev/null
        wait "$PGWARD_PID" 2>/dev/null
    fi
    if [[ -n "$PGBOUNCER_PID" ]] && kill -0 "$PGBOUNCER_PID" 2>/dev/null; then
        kill -INT "$PGBOUNCER_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$PGBOUNCER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PGBOUNCER_PID" 2>/dev/null
    fi
    if ((PG_STARTED)); then
        as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
    wait 2>/dev/null
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a command as the unprivileged user that owns the PostgreSQL and PgBouncer processes
# (PostgreSQL refuses to run as root; as non-root we simply run as ourselves).
as_pg() {
    if [[ -n "$RUN_USER" ]]; then
        (cd "$WORK" && runuser -u "$RUN_USER" -- "$@")
    else
        (cd "$WORK" && "$@")
    fi
}

# A free TCP port on 127.0.0.1 that is not already in $USED_PORTS.
USED_PORTS=" "
free_port() {
    local p i
    for i in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if [[ -z "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return
        fi
    done
    die "no free port found"
}

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: poll until the command succeeds.
wait_until() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
    log "$what is ready"
}

# --------------------------------------------------------------------------------------------
# Configuration of the servers
# --------------------------------------------------------------------------------------------
BENCH_USER=bench
BENCH_DB=bench

start_postgres() {
    log "initdb ($PG_BINDIR) and start PostgreSQL on 127.0.0.1:$PG_PORT"
    as_pg "$PG_BINDIR/initdb" -D "$WORK/pgdata" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    local shared_buffers=$((BENCH_SCALE * 16 + 128)) # scale 10 is ~160 MB of data
    cat >>"$WORK/pgdata/postgresql.conf" <<EOF

# --- pgward bench ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/sock'
max_connections = 200
shared_buffers = ${shared_buffers}MB
effective_cache_size = 1GB
work_mem = 8MB
maintenance_work_mem = 256MB
password_encryption = scram-sha-256
# Throwaway cluster, read-only benchmark: durability is irrelevant.
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 4GB
checkpoint_timeout = 30min
autovacuum = off
jit = off
logging_collector = off
log_min_messages = warning
log_connections = off
log_disconnections = off
EOF
    cat >"$WORK/pgdata/pg_hba.conf" <<EOF
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
    as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w -t 60 start >/dev/null \
        || { tail -n 30 "$WORK/postgres.log" >&2; die "PostgreSQL did not start"; }
    PG_STARTED=1
    log "PostgreSQL is ready ($("$PG_BINDIR/postgres" --version))"
    as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PG_PORT" -U postgres -d postgres <<EOF
CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD';
CREATE DATABASE $BENCH_DB OWNER $BENCH_USER;
EOF
}

init_pgbench_data() {
    log "pgbench -i -s $BENCH_SCALE $BENCH_DB (direct)"
    PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=$BENCH_USER PGPASSWORD=$BENCH_PASSWORD PGSSLMODE=disable \
        pgbench -i -q -s "$BENCH_SCALE" "$BENCH_DB" >"$WORK/pgbench-init.log" 2>&1 \
        || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
    as_pg psql -X -q -h "$WORK/sock" -p "$PG_PORT" -U postgres -d "$BENCH_DB" \
        -c "CHECKPOINT" -c "VACUUM ANALYZE" >/dev/null
}

make_tls_cert() {
    log "generating a self-signed TLS certificate for pgward (ECDSA P-256)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$WORK/pgward.key" -out "$WORK/pgward.crt" >"$WORK/openssl.log" 2>&1 \
        || { cat "$WORK/openssl.log" >&2; die "openssl failed"; }
}

# The whole pgward configuration lives here. Client sign-in is not implemented yet, so the
# bench lets clients in unauthenticated; when Entra sign-in lands, change this function (and
# pgbench_env's PGPASSWORD for the pgward targets) to configure a local token issuer instead.
write_pgward_config() {
    local file="$1"
    printf '%s' "$BENCH_PASSWORD" >"$WORK/upstream-password"
    chmod 600 "$WORK/upstream-password"
    cat >"$file" <<EOF
[listen]
addr = "127.0.0.1:$PGWARD_PORT"
allow_plaintext = true          # for the plaintext client leg
allow_unauthenticated = true    # until client sign-in lands
tls_cert = "$WORK/pgward.crt"
tls_key = "$WORK/pgward.key"
worker_threads = $PGWARD_WORKER_THREADS

[admin]
addr = "127.0.0.1:$PGWARD_ADMIN_PORT"

[log]
level = "warn"

[[upstreams]]
name = "main"
host = "127.0.0.1"
port = $PG_PORT
tls = "disable"
[upstreams.credential]
type = "password"
user = "$BENCH_USER"
password_file = "$WORK/upstream-password"

[[routes]]
database = "$BENCH_DB"
upstream = "main"
upstream_database = "$BENCH_DB"
EOF
}

start_pgward() {
    write_pgward_config "$WORK/pgward.toml"
    log "starting pgward on 127.0.0.1:$PGWARD_PORT (admin $PGWARD_ADMIN_PORT)"
    NO_COLOR=1 PGWARD_LOG=warn "$PGWARD_BIN" serve --config "$WORK/pgward.toml" >"$WORK/pgward.log" 2>&1 &
    PGWARD_PID=$!
    wait_until 30 "pgward /readyz" curl -fsS "http://127.0.0.1:$PGWARD_ADMIN_PORT/readyz" \
        || { tail -n 30 "$WORK/pgward.log" >&2; die "pgward did not become ready"; }
}

start_pgbouncer() {
    log "starting PgBouncer (session mode) on 127.0.0.1:$PGBOUNCER_PORT"
    # Plain password in the auth file: PgBouncer verifies clients with SCRAM-SHA-256 and logs
    # in to PostgreSQL with SCRAM-SHA-256 too.
    printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$WORK/userlist.txt"
    cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=127.0.0.1 port=$PG_PORT dbname=$BENCH_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
max_db_connections = 0
server_tls_sslmode = disable
client_tls_sslmode = disable
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
stats_period = 3600
EOF
    [[ -n "$RUN_USER" ]] && chown "$RUN_USER" "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
    chmod 600 "$WORK/userlist.txt"
    as_pg "$PGBOUNCER" -d -q "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.stdout" 2>&1 \
        || { cat "$WORK/pgbouncer.stdout" "$WORK/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }
    wait_until 10 "PgBouncer pidfile" test -s "$WORK/pgbouncer.pid" || die "PgBouncer wrote no pidfile"
    PGBOUNCER_PID="$(cat "$WORK/pgbouncer.pid")"
    wait_until 30 "PgBouncer" target_query pgbouncer "SELECT 1" \
        || { tail -n 30 "$WORK/pgbouncer.log" >&2; die "PgBouncer does not answer"; }
}

# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
target_label() {
    case "$1" in
        direct) echo "direct" ;;
        pgward) echo "pgward" ;;
        pgward_tls) echo "pgward TLS" ;;
        pgbouncer) echo "PgBouncer" ;;
    esac
}

# Prints the libpq environment for a target, one VAR=value per line.
pgbench_env() {
    echo "PGUSER=$BENCH_USER"
    echo "PGPASSWORD=$BENCH_PASSWORD" # ignored by pgward while clients sign in unauthenticated
    echo "PGHOST=127.0.0.1"
    echo "PGAPPNAME=pgbench"
    case "$1" in
        direct) echo "PGPORT=$PG_PORT"; echo "PGSSLMODE=disable" ;;
        pgward) echo "PGPORT=$PGWARD_PORT"; echo "PGSSLMODE=disable" ;;
        pgward_tls) echo "PGPORT=$PGWARD_PORT"; echo "PGSSLMODE=require" ;;
        pgbouncer) echo "PGPORT=$PGBOUNCER_PORT"; echo "PGSSLMODE=disable" ;;
        *) die "unknown target $1" ;;
    esac
}

target_query() {
    local t="$1"; shift
    local -a envs
    mapfile -t envs < <(pgbench_env "$t")
    env "${envs[@]}" psql -X -q -t -A -v ON_ERROR_STOP=1 -d "$BENCH_DB" -c "$@"
}

target_pid() {
    case "$1" in
        pgward | pgward_tls) echo "$PGWARD_PID" ;;
        pgbouncer) echo "$PGBOUNCER_PID" ;;
        *) echo "" ;;
    esac
}

# utime+stime of a process (all its threads), in clock ticks.
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() {
    local pid="$1" stat
    local -a f
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || { echo ""; return; }
    stat="$(<"/proc/$pid/stat")"
    stat="${stat##*) }" # fields after "(comm) "; utime/stime are fields 14/15 → 12/13 here
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

# run_pgbench TARGET MODE CLIENTS SECONDS LOGFILE → prints "tps latency_ms txns cpu_us_per_txn"
run_pgbench() {
    local t="$1" mode="$2" clients="$3" secs="$4" out="$5"
    local jobs=1 pid c0 c1 cpu="-"
    if ((clients > 1)); then
        jobs="${BENCH_JOBS:-$((clients < NPROC ? clients : NPROC))}"
    fi
    local -a envs
    mapfile -t envs < <(pgbench_env "$t")
    pid="$(target_pid "$t")"
    c0="$(cpu_ticks "$pid")"
    local rc=0
    # The timeout bounds the run even if a server hangs.
    env "${envs[@]}" timeout -k 5 $((secs + 60)) \
        pgbench -S -n -M "$mode" -c "$clients" -j "$jobs" -T "$secs" "$BENCH_DB" >"$out" 2>&1 || rc=$?
    c1="$(cpu_ticks "$pid")"
    local tps lat txns
    tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out" | head -1)"
    lat="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)"
    txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)"
    if ((rc != 0)) || [[ -z "$tps" || -z "$txns" ]] || grep -q '^number of failed transactions: [1-9]' "$out"; then
        echo "ERR ERR 0 -"
        return
    fi
    if [[ -n "$c0" && -n "$c1" && "$txns" -gt 0 ]]; then
        cpu="$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
    fi
    echo "$tps $lat $txns $cpu"
}

# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
# Medians over rounds from $RAW (columns: round mode clients target tps lat txns cpu).
median_of() { # median_of MODE CLIENTS TARGET COLUMN
    awk -v m="$1" -v c="$2" -v t="$3" -v col="$4" '
        $2 == m && $3 == c && $4 == t && $col != "ERR" && $col != "-" { v[n++] = $col + 0 }
        END {
            if (n == 0) { print "-"; exit }
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
            med = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
            print med
        }' "$RAW"
}
fmt() { # fmt VALUE DECIMALS
    [[ "$1" == "-" ]] && { echo "-"; return; }
    awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'
}
ratio() {
    [[ "$1" == "-" || "$2" == "-" ]] && { echo "-"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
}
has_target() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

write_report() {
    local md="$1" mode c t
    {
        echo "# pgward benchmark results"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- pgward: commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'none')$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes'), release build, worker_threads = $PGWARD_WORKER_THREADS"
        echo "- machine: $NPROC CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
        echo "- $("$PG_BINDIR/postgres" --version), $("$PGBOUNCER" --version 2>/dev/null | head -1), $(pgbench --version)"
        echo "- workload: \`pgbench -S -n -M MODE -c CLIENTS -j JOBS -T $BENCH_SECONDS\`, scale $BENCH_SCALE; JOBS = 1 for 1 client, ${BENCH_JOBS:-min(clients, nproc=$NPROC)} otherwise"
        echo "- $BENCH_ROUNDS round(s), interleaved round-robin across targets; each cell is the median over rounds"
        echo "- load average (1/5/15 min) before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- pgward TLS: client leg TLS (sslmode=require, self-signed ECDSA P-256), upstream leg plaintext; PgBouncer: session mode, plaintext"
        echo
        echo "## Throughput (TPS) and ratios"
        echo
        echo "| mode | clients | direct | pgward | pgward TLS | PgBouncer | pgward/direct | pgward/PgBouncer | TLS/direct | TLS/PgBouncer |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for mode in $BENCH_MODES; do
            for c in $BENCH_CLIENTS; do
                local d w s b
                d="$(median_of "$mode" "$c" direct 5)"
                w="$(median_of "$mode" "$c" pgward 5)"
                s="$(median_of "$mode" "$c" pgward_tls 5)"
                b="$(median_of "$mode" "$c" pgbouncer 5)"
                echo "| $mode | $c | $(fmt "$d" 0) | $(fmt "$w" 0) | $(fmt "$s" 0) | $(fmt "$b" 0) | $(ratio "$w" "$d") | $(ratio "$w" "$b") | $(ratio "$s" "$d") | $(ratio "$s" "$b") |"
            done
        done
        echo
        echo "## Average latency (ms)"
        echo
        echo "| mode | clients | direct | pgward | pgward TLS | PgBouncer |"
        echo "|---|---:|---:|---:|---:|---:|"
        for mode in $BENCH_MODES; do
            for c in $BENCH_CLIENTS; do
                echo -n "| $mode | $c |"
                for t in direct pgward pgward_tls pgbouncer; do
                    echo -n " $(fmt "$(median_of "$mode" "$c" "$t" 6)" 3) |"
                done
                echo
            done
        done
        echo
        echo "## Proxy CPU per transaction (µs, user+system of the proxy process)"
        echo
        echo "| mode | clients | pgward | pgward TLS | PgBouncer |"
        echo "|---|---:|---:|---:|---:|"
        for mode in $BENCH_MODES; do
            for c in $BENCH_CLIENTS; do
                echo -n "| $mode | $c |"
                for t in pgward pgward_tls pgbouncer; do
                    echo -n " $(fmt "$(median_of "$mode" "$c" "$t" 8)" 1) |"
                done
                echo
            done
        done
        echo
        echo "CPU is read from /proc/PID/stat (utime+stime, all threads) before and after each run and"
        echo "divided by the transactions pgbench completed; resolution is 1/$CLK_TCK s per run."
        if grep -q ' ERR ' "$RAW"; then
            echo
            echo "## Failed runs"
            echo
            echo '```'
            awk '$5 == "ERR" { print "round " $1 ": " $2 " -c " $3 " -> " $4 }' "$RAW"
            echo '```'
        fi
        echo
        echo "## All runs"
        echo
        echo "| round | mode | clients | target | TPS | latency ms | transactions | proxy CPU µs/txn |"
        echo "|---:|---|---:|---|---:|---:|---:|---:|"
        awk '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$RAW"
    } >"$md"
}

# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
main() {
    local started=$SECONDS
    install_prerequisites

    log "cargo build --release -p pgward"
    if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
        (cd "$REPO" && cargo build --release -p pgward) || die "cargo build failed"
    fi
    PGWARD_BIN="$REPO/target/release/pgward"
    [[ -x "$PGWARD_BIN" ]] || die "$PGWARD_BIN not found"

    WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgward-bench.XXXXXX")"
    chmod 755 "$WORK"
    if [[ $EUID -eq 0 ]]; then
        RUN_USER="${BENCH_PG_USER:-postgres}"
        id "$RUN_USER" >/dev/null 2>&1 || die "user $RUN_USER does not exist (it comes with the postgresql package)"
        chown "$RUN_USER" "$WORK"
    fi
    as_pg mkdir -m 700 "$WORK/sock"
    BENCH_PASSWORD="bench-$(openssl rand -hex 12)"
    PG_PORT="$(free_port)"
    PGWARD_PORT="$(free_port)"
    PGWARD_ADMIN_PORT="$(free_port)"
    PGBOUNCER_PORT="$(free_port)"

    start_postgres
    init_pgbench_data
    make_tls_cert
    start_pgward
    start_pgbouncer

    local t
    for t in $BENCH_TARGETS; do
        local ssl
        ssl="$(target_query "$t" "SELECT coalesce((SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '?')")" \
            || die "cannot query through target $t"
        log "target $(target_label "$t"): OK (upstream session ssl=$ssl)"
    done

    RAW="$WORK/raw.txt"
    : >"$RAW"
    mkdir -p "$WORK/runs"

    local mode c r i n_targets
    local -a targets
    read -r -a targets <<<"$BENCH_TARGETS"
    n_targets=${#targets[@]}
    local n_modes n_clients
    n_modes=$(wc -w <<<"$BENCH_MODES"); n_clients=$(wc -w <<<"$BENCH_CLIENTS")
    local total=$((BENCH_ROUNDS * n_modes * n_clients * n_targets))
    LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
    if awk -v l="${LOAD_BEFORE%% *}" -v n="$NPROC" 'BEGIN { exit !(l > n) }'; then
        log "warning: load average $LOAD_BEFORE exceeds $NPROC CPUs; results will be noisy"
    fi
    log "plan: $total runs of ${BENCH_SECONDS}s (~$((total * (BENCH_SECONDS + 1) / 60 + 1)) min) + warm-up"

    if ((BENCH_WARMUP > 0)); then
        for t in "${targets[@]}"; do
            log "warm-up $(target_label "$t") (${BENCH_WARMUP}s, prepared, 4 clients)"
            run_pgbench "$t" prepared 4 "$BENCH_WARMUP" "$WORK/runs/warmup-$t.log" >/dev/null
        done
    fi

    local k=0 res
    for ((r = 1; r <= BENCH_ROUNDS; r++)); do
        for mode in $BENCH_MODES; do
            for c in $BENCH_CLIENTS; do
                # Rotate the starting target each round so no target always runs first.
                for ((i = 0; i < n_targets; i++)); do
                    t="${targets[$(((i + r - 1) % n_targets))]}"
                    k=$((k + 1))
                    res="$(run_pgbench "$t" "$mode" "$c" "$BENCH_SECONDS" "$WORK/runs/r$r-$mode-c$c-$t.log")"
                    echo "$r $mode $c $t $res" >>"$RAW"
                    read -r tps lat _ cpu <<<"$res"
                    log "[$k/$total] round $r $mode -c $c $(target_label "$t"): tps=$tps lat=${lat}ms cpu/txn=${cpu}µs"
                    if [[ "$tps" == ERR ]]; then
                        log "  pgbench failed; its output:"
                        sed 's/^/    /' "$WORK/runs/r$r-$mode-c$c-$t.log" | tail -n 15 >&2
                    fi
                    if [[ "$t" == pgward* ]] && ! kill -0 "$PGWARD_PID" 2>/dev/null; then
                        log "pgward has exited! last log lines:"
                        tail -n 30 "$WORK/pgward.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
                        die "pgward died during the benchmark"
                    fi
                done
            done
        done
    done

    mkdir -p "$(dirname "$BENCH_OUT")"
    write_report "$BENCH_OUT"
    echo
    # The three tables (not the per-run listing) on stdout.
    sed '/^## All runs/,$d' "$BENCH_OUT"
    if [[ -s "$WORK/pgward.log" ]]; then
        log "pgward log (warnings and errors, last 10 lines):"
        tail -n 10 "$WORK/pgward.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
    fi
    log "results written to $BENCH_OUT ($(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s)"
}

main "$@"

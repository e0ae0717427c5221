#!/usr/bin/env bash
# pgward benchmark: pgbench -S through pgward (plaintext and TLS client leg) compared with a
# direct connection and with PgBouncer (session mode), all on loopback, interleaved in one run.
# Also measured in the same run, interleaved: pgward with a policy enforced ([policy]), pgward
# with a policy and the audit log ([audit] file sink, default settings), and the cost of a token
# sign-in: pgbench -C (a new connection per transaction) against pgward with [entra] and a
# development token issuer (`pgward issuer`) vs the same TLS pgward letting clients in
# unauthenticated, and direct.
#
# The policy/audit table gives both the ratio of the medians and the median of the per-round
# pairs (audit and no-audit back to back); bench/instructions.sh counts instructions per
# transaction (callgrind) where TPS is too noisy to compare configurations.
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
#   BENCH_TARGETS   targets (default "direct pgward pgward_tls pgbouncer pgward_policy pgward_audit
#                   pgward_full"); pgward_full is everything on: TLS, token sign-in, policy, audit;
#                   also pgward_policy_base: pgward+policy run by PGWARD_BASE_BIN (an earlier
#                   build), to compare a change against what it replaces, interleaved
#   PGWARD_BASE_BIN the binary of pgward_policy_base
#                   also pgbouncer_tls: PgBouncer (session mode) with TLS on the client leg
#                   (client_tls_sslmode = require, the same certificate as pgward): the
#                   like-for-like comparison for pgward_full, whose clients also pay for TLS
#                   also pgward_limits ([limits]: a connection cap and a statement rate that
#                   apply to every session, far above what the run uses) and pgward_cluster (the
#                   same with [cluster] on a PostgreSQL control database on the bench server):
#                   the cost of replicas sharing a store, in throughput and as connect targets
#                   also pgward_signed (TLS, token sign-in, policy) and pgward_walls (the same
#                   with the second wall: a login of its own for the policy role, grants applied,
#                   the caller recorded in pgward.callers); both also work as connect targets
#   BENCH_CONNECT_TARGETS  targets of the connection-setup cell, pgbench -C -M simple -c 1
#                   (default "direct pgward_conn pgward_token"; "" = skip the cell)
#   BENCH_JOBS      pgbench -j for multi-client runs (default: min(clients, nproc))
#   BENCH_WARMUP    seconds of unrecorded warm-up per target before measuring (default 3, 0 = none)
#   PGWARD_WORKER_THREADS  [listen] worker_threads for pgward (default 0 = one per CPU)
#   BENCH_OUT       markdown results file (default bench/results/latest.md)
#   BENCH_SKIP_BUILD=1  use the existing target/release/pgward (built with --features dev-tools)
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
BENCH_TARGETS="${BENCH_TARGETS:-direct pgward pgward_tls pgbouncer pgward_policy pgward_audit pgward_full}"
BENCH_CONNECT_TARGETS="${BENCH_CONNECT_TARGETS-direct pgward_conn pgward_token}"
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
PGWARD_PID=""   # the plain instance (targets pgward, pgward_tls)
PGBOUNCER_PID=""
PGBOUNCER_TLS_PID=""
ISSUER_PID=""
# pgward instances, by name: plain (pgward, pgward_tls), policy (pgward_policy), audit
# (pgward_audit), tlsdev (pgward_conn: TLS, unauthenticated), token (pgward_token: [entra]).
declare -A PW_PID=() PW_PORT=() PW_ADMIN_PORT=()
RUN_USER=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local p
    for p in "${PW_PID[@]}" "$ISSUER_PID"; do
        [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    done
    for p in "${PW_PID[@]}" "$ISSUER_PID"; do
        [[ -n "$p" ]] || continue
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    local bp
    for bp in "$PGBOUNCER_PID" "$PGBOUNCER_TLS_PID"; do
        if [[ -n "$bp" ]] && kill -0 "$bp" 2>/dev/null; then
            kill -INT "$bp" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$bp" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$bp" 2>/dev/null
        fi
    done
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
-- The second wall (pgward_walls): the policy role's own login, and what pgward's login needs
-- to record callers (other backends' start times).
CREATE ROLE bench_wall LOGIN PASSWORD '$BENCH_PASSWORD';
GRANT pg_read_all_stats TO $BENCH_USER;
-- The [cluster] store of pgward_cluster (docs/configuration.md).
CREATE DATABASE pgward_control OWNER $BENCH_USER;
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

# The whole pgward configuration lives here, one file per instance:
#   plain   allow_unauthenticated, plaintext and TLS clients (targets pgward, pgward_tls)
#   policy  plain + [policy] (pgward_policy)
#   audit   plain + [policy] + [audit] file sink, default settings (pgward_audit)
#   tlsdev  TLS only, allow_unauthenticated (pgward_conn)
#   token   TLS only, [entra] trusting the development issuer (pgward_token)
#   limits  plain + [limits] (pgward_limits)
#   cluster plain + [limits] + [cluster] on the control database (pgward_cluster)
write_pgward_config() {
    local inst="$1" file="$2"
    printf '%s' "$BENCH_PASSWORD" >"$WORK/upstream-password"
    chmod 600 "$WORK/upstream-password"
    local plaintext=true unauth=true
    case "$inst" in
        tlsdev) plaintext=false ;;
        token | signed | walls | full) plaintext=false; unauth=false ;;
    esac
    {
        cat <<EOF
[listen]
addr = "127.0.0.1:${PW_PORT[$inst]}"
allow_plaintext = $plaintext
tls_cert = "$WORK/pgward.crt"
tls_key = "$WORK/pgward.key"
worker_threads = $PGWARD_WORKER_THREADS
EOF
        [[ "$unauth" == true ]] && echo 'allow_unauthenticated = true    # development mode: the user name is the identity'
        cat <<EOF

[admin]
addr = "127.0.0.1:${PW_ADMIN_PORT[$inst]}"

[log]
level = "warn"

[[upstreams]]
name = "main"
host = "127.0.0.1"
port = $PG_PORT
tls = "disable"
EOF
        [[ "$inst" == walls ]] && printf 'identity_table = true\nrequire_role_login = true\n'
        cat <<EOF
[upstreams.credential]
type = "password"
user = "$BENCH_USER"
password_file = "$WORK/upstream-password"

[[routes]]
database = "$BENCH_DB"
upstream = "main"
upstream_database = "$BENCH_DB"
EOF
        if [[ "$inst" == walls ]]; then
            printf '[upstreams.role_logins.bench_wall]\ntype = "password"\nuser = "bench_wall"\npassword_file = "%s"\n' "$WORK/upstream-password"
        fi
        if [[ "$inst" == policy || "$inst" == policy_base || "$inst" == audit ]]; then
            printf '\n[policy]\nfile = "%s"\n' "$WORK/policy.toml"
        fi
        if [[ "$inst" == signed || "$inst" == full ]]; then
            printf '\n[policy]\nfile = "%s"\n' "$WORK/policy-signed.toml"
        fi
        if [[ "$inst" == walls ]]; then
            printf '\n[policy]\nfile = "%s"\napply_grants = true\n' "$WORK/policy-walls.toml"
        fi
        if [[ "$inst" == audit || "$inst" == full ]]; then
            # Default rotate_bytes, rotate_secs, fsync = "none", redaction = "types", failure_mode.
            # Each instance its own directory (count_audit_records reads pgward_audit's).
            local audit_dir="$WORK/audit"
            [[ "$inst" == full ]] && audit_dir="$WORK/audit-full"
            mkdir -p "$audit_dir"
            printf '\n[audit]\nfile = "%s"\n' "$audit_dir/pgward.jsonl"
        fi
        if [[ "$inst" == token || "$inst" == signed || "$inst" == walls || "$inst" == full ]]; then
            printf '\n[entra]\ntenant_id = "%s"\nauthority = "%s"\n' "$TOKEN_TENANT" "$ISSUER_URL"
        fi
        if [[ "$inst" == limits || "$inst" == cluster ]]; then
            # Both apply to every session and never bind: the cap takes a slot per connection,
            # the rate takes a token per statement (with [cluster], from leases).
            printf '\n[limits]\nconnections_per_identity = 1000\nstatements_per_second = 10000000\n'
        fi
        if [[ "$inst" == cluster ]]; then
            cat <<EOF

[cluster]
backend = "postgres"

[cluster.postgres]
host = "127.0.0.1"
port = $PG_PORT
database = "pgward_control"
tls = "disable"
[cluster.postgres.credential]
type = "password"
user = "$BENCH_USER"
password_file = "$WORK/upstream-password"
EOF
        fi
    } >"$file"
}

# The policy of the pgward_policy and pgward_audit targets: the bench user (in development mode
# the client's user name is the principal's UPN) may read the two tables pgbench -S touches
# (pgbench_accounts, and pgbench_branches for pgbench's start-up scale check).
write_policy() {
    cat >"$WORK/policy.toml" <<EOF
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "bench_reader"
members = { users = ["$BENCH_USER"] }
allow = [ { name = "pgbench_read", actions = ["select"], objects = ["public.pgbench_accounts", "public.pgbench_branches"] } ]
EOF
    # The signed-in targets: the same rule for the token's user; pgward_walls runs it as the
    # role's own login.
    sed "s/users = \[\"$BENCH_USER\"\]/users = [\"$TOKEN_USER\"]/" "$WORK/policy.toml" >"$WORK/policy-signed.toml"
    sed 's/^allow = /upstream_role = "bench_wall"\nallow = /' "$WORK/policy-signed.toml" >"$WORK/policy-walls.toml"
}

pgward_instances() { # the instances the selected targets need
    local -A need=()
    local t
    for t in $BENCH_TARGETS $BENCH_CONNECT_TARGETS; do
        case "$t" in
            pgward | pgward_tls) need[plain]=1 ;;
            pgward_policy) need[policy]=1 ;;
            pgward_policy_base) need[policy_base]=1 ;;
            pgward_audit) need[audit]=1 ;;
            pgward_conn) need[tlsdev]=1 ;;
            pgward_token) need[token]=1 ;;
            pgward_signed) need[signed]=1 ;;
            pgward_walls) need[walls]=1 ;;
            pgward_full) need[full]=1 ;;
            pgward_limits) need[limits]=1 ;;
            pgward_cluster) need[cluster]=1 ;;
        esac
    done
    local i
    for i in plain policy policy_base audit tlsdev token signed walls full limits cluster; do [[ -n "${need[$i]:-}" ]] && echo "$i"; done
    return 0
}

start_pgward() {
    local inst="$1" bin="$PGWARD_BIN"
    if [[ "$inst" == policy_base ]]; then
        bin="${PGWARD_BASE_BIN:?pgward_policy_base needs PGWARD_BASE_BIN (an earlier build of pgward)}"
        [[ -x "$bin" ]] || die "PGWARD_BASE_BIN $bin is not an executable"
    fi
    write_pgward_config "$inst" "$WORK/pgward-$inst.toml"
    "$bin" check --config "$WORK/pgward-$inst.toml" >"$WORK/pgward-$inst-check.log" 2>&1 \
        || { cat "$WORK/pgward-$inst-check.log" >&2; die "pgward check failed for instance $inst"; }
    log "starting pgward ($inst) on 127.0.0.1:${PW_PORT[$inst]} (admin ${PW_ADMIN_PORT[$inst]})"
    NO_COLOR=1 PGWARD_LOG=warn "$bin" serve --config "$WORK/pgward-$inst.toml" >"$WORK/pgward-$inst.log" 2>&1 &
    PW_PID[$inst]=$!
    [[ "$inst" == plain ]] && PGWARD_PID="${PW_PID[$inst]}"
    wait_until 30 "pgward ($inst) /readyz" curl -fsS "http://127.0.0.1:${PW_ADMIN_PORT[$inst]}/readyz" \
        || { tail -n 30 "$WORK/pgward-$inst.log" >&2; die "pgward ($inst) did not become ready"; }
}

# The development token issuer (`pgward issuer`) and one token for the bench user.
TOKEN_TENANT="00000000-0000-4000-8000-00000000d3e0"
TOKEN_USER="$BENCH_USER@contoso.com"
start_issuer() {
    log "starting the development token issuer (pgward issuer)"
    "$PGWARD_BIN" issuer --listen 127.0.0.1:0 >"$WORK/issuer.out" 2>"$WORK/issuer.log" &
    ISSUER_PID=$!
    wait_until 30 "token issuer" test -s "$WORK/issuer.out" \
        || { cat "$WORK/issuer.log" >&2; die "pgward issuer printed no URL"; }
    sleep 0.2
    ISSUER_URL="$(head -1 "$WORK/issuer.out" | tr -d '[:space:]')"
    [[ "$ISSUER_URL" == http://127.0.0.1:* ]] || { cat "$WORK/issuer.out" "$WORK/issuer.log" >&2; die "unexpected issuer URL '$ISSUER_URL'"; }
    # Valid for the whole run (it is checked at every connection).
    TOKEN="$("$PGWARD_BIN" token --issuer "$ISSUER_URL" --user "$TOKEN_USER" --lifetime 86400 2>"$WORK/token.log")" \
        || { cat "$WORK/token.log" >&2; die "pgward token failed"; }
    TOKEN="$(tr -d '[:space:]' <<<"$TOKEN")"
    [[ "$TOKEN" == *.*.* ]] || die "pgward token printed no JWT (got ${#TOKEN} characters)"
    log "issuer at $ISSUER_URL; token for $TOKEN_USER (${#TOKEN} characters)"
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

# PgBouncer with TLS on the client leg (pgward_full's clients pay for TLS too): the same
# configuration, its own port, the bench certificate (a copy its user can read).
start_pgbouncer_tls() {
    log "starting PgBouncer (session mode, client TLS) on 127.0.0.1:$PGBOUNCER_TLS_PORT"
    printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$WORK/userlist.txt"
    cp "$WORK/pgward.key" "$WORK/pgbouncer-tls.key"
    cp "$WORK/pgward.crt" "$WORK/pgbouncer-tls.crt"
    sed -e "s/^listen_port = .*/listen_port = $PGBOUNCER_TLS_PORT/" \
        -e "s|^client_tls_sslmode = disable|client_tls_sslmode = require\nclient_tls_key_file = $WORK/pgbouncer-tls.key\nclient_tls_cert_file = $WORK/pgbouncer-tls.crt|" \
        -e "s|/pgbouncer\.log$|/pgbouncer-tls.log|" -e "s|/pgbouncer\.pid$|/pgbouncer-tls.pid|" \
        "$WORK/pgbouncer.ini" >"$WORK/pgbouncer-tls.ini"
    [[ -n "$RUN_USER" ]] && chown "$RUN_USER" "$WORK/userlist.txt" "$WORK/pgbouncer-tls.ini" "$WORK/pgbouncer-tls.key" "$WORK/pgbouncer-tls.crt"
    chmod 600 "$WORK/userlist.txt" "$WORK/pgbouncer-tls.key"
    as_pg "$PGBOUNCER" -d -q "$WORK/pgbouncer-tls.ini" >"$WORK/pgbouncer-tls.stdout" 2>&1 \
        || { cat "$WORK/pgbouncer-tls.stdout" "$WORK/pgbouncer-tls.log" >&2 2>/dev/null; die "PgBouncer (TLS) did not start"; }
    wait_until 10 "PgBouncer (TLS) pidfile" test -s "$WORK/pgbouncer-tls.pid" || die "PgBouncer (TLS) wrote no pidfile"
    PGBOUNCER_TLS_PID="$(cat "$WORK/pgbouncer-tls.pid")"
    wait_until 30 "PgBouncer (TLS)" target_query pgbouncer_tls "SELECT 1" \
        || { tail -n 30 "$WORK/pgbouncer-tls.log" >&2; die "PgBouncer (TLS) does not answer"; }
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
        pgbouncer_tls) echo "PgBouncer TLS" ;;
        pgward_policy) echo "pgward+policy" ;;
        pgward_policy_base) echo "pgward+policy (base build)" ;;
        pgward_audit) echo "pgward+policy+audit" ;;
        pgward_conn) echo "pgward TLS unauthenticated" ;;
        pgward_token) echo "pgward TLS token" ;;
        pgward_signed) echo "pgward TLS token+policy" ;;
        pgward_walls) echo "pgward TLS token+policy+walls" ;;
        pgward_full) echo "pgward TLS token+policy+audit" ;;
        pgward_limits) echo "pgward+limits" ;;
        pgward_cluster) echo "pgward+limits+cluster" ;;
    esac
}

# Prints the libpq environment for a target, one VAR=value per line.
pgbench_env() {
    if [[ "$1" == pgward_token || "$1" == pgward_signed || "$1" == pgward_walls || "$1" == pgward_full ]]; then
        echo "PGUSER=$TOKEN_USER"
        echo "PGPASSWORD=$TOKEN"
    else
        echo "PGUSER=$BENCH_USER"
        echo "PGPASSWORD=$BENCH_PASSWORD" # ignored by pgward when clients sign in unauthenticated
    fi
    echo "PGHOST=127.0.0.1"
    echo "PGAPPNAME=pgbench"
    case "$1" in
        direct) echo "PGPORT=$PG_PORT"; echo "PGSSLMODE=disable" ;;
        pgward) echo "PGPORT=$PGWARD_PORT"; echo "PGSSLMODE=disable" ;;
        pgward_tls) echo "PGPORT=$PGWARD_PORT"; echo "PGSSLMODE=require" ;;
        pgbouncer) echo "PGPORT=$PGBOUNCER_PORT"; echo "PGSSLMODE=disable" ;;
        pgbouncer_tls) echo "PGPORT=$PGBOUNCER_TLS_PORT"; echo "PGSSLMODE=require" ;;
        pgward_policy) echo "PGPORT=${PW_PORT[policy]}"; echo "PGSSLMODE=disable" ;;
        pgward_policy_base) echo "PGPORT=${PW_PORT[policy_base]}"; echo "PGSSLMODE=disable" ;;
        pgward_audit) echo "PGPORT=${PW_PORT[audit]}"; echo "PGSSLMODE=disable" ;;
        pgward_conn) echo "PGPORT=${PW_PORT[tlsdev]}"; echo "PGSSLMODE=require" ;;
        pgward_token) echo "PGPORT=${PW_PORT[token]}"; echo "PGSSLMODE=require" ;;
        pgward_signed) echo "PGPORT=${PW_PORT[signed]}"; echo "PGSSLMODE=require" ;;
        pgward_walls) echo "PGPORT=${PW_PORT[walls]}"; echo "PGSSLMODE=require" ;;
        pgward_full) echo "PGPORT=${PW_PORT[full]}"; echo "PGSSLMODE=require" ;;
        pgward_limits) echo "PGPORT=${PW_PORT[limits]}"; echo "PGSSLMODE=disable" ;;
        pgward_cluster) echo "PGPORT=${PW_PORT[cluster]}"; echo "PGSSLMODE=disable" ;;
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
        pgbouncer_tls) echo "$PGBOUNCER_TLS_PID" ;;
        pgward_policy) echo "${PW_PID[policy]}" ;;
        pgward_policy_base) echo "${PW_PID[policy_base]}" ;;
        pgward_audit) echo "${PW_PID[audit]}" ;;
        pgward_conn) echo "${PW_PID[tlsdev]}" ;;
        pgward_token) echo "${PW_PID[token]}" ;;
        pgward_signed) echo "${PW_PID[signed]}" ;;
        pgward_walls) echo "${PW_PID[walls]}" ;;
        pgward_full) echo "${PW_PID[full]}" ;;
        pgward_limits) echo "${PW_PID[limits]}" ;;
        pgward_cluster) echo "${PW_PID[cluster]}" ;;
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

# run_pgbench TARGET MODE CLIENTS SECONDS LOGFILE → prints "tps latency_ms txns cpu_us_per_txn conn_ms"
# MODE "connect" is -M simple -C: a new connection for every transaction (conn_ms is pgbench's
# "average connection time"; latency and TPS then include the connection).
run_pgbench() {
    local t="$1" mode="$2" clients="$3" secs="$4" out="$5"
    local jobs=1 pid c0 c1 cpu="-" conn="-"
    local -a extra=(-M "$mode")
    [[ "$mode" == connect ]] && extra=(-M simple -C)
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
        pgbench -S -n "${extra[@]}" -c "$clients" -j "$jobs" -T "$secs" "$BENCH_DB" >"$out" 2>&1 || rc=$?
    c1="$(cpu_ticks "$pid")"
    local tps lat txns
    # "(without initial connection time)", or with -C "(including reconnection times)".
    tps="$(sed -n 's/^tps = \([0-9.]*\) (\(without initial connection\|including reconnection\).*/\1/p' "$out" | head -1)"
    conn="$(sed -n 's/^average connection time = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)"
    [[ "$mode" == connect && -n "$conn" ]] || conn="-"
    lat="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)"
    txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)"
    if ((rc != 0)) || [[ -z "$tps" || -z "$txns" ]] || grep -q '^number of failed transactions: [1-9]' "$out"; then
        echo "ERR ERR 0 - -"
        return
    fi
    if [[ -n "$c0" && -n "$c1" && "$txns" -gt 0 ]]; then
        cpu="$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
    fi
    echo "$tps $lat $txns $cpu $conn"
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
# pair_median MODE CLIENTS TARGET_A TARGET_B: the median over rounds of A's TPS / B's TPS in
# the same round. The two runs of a round are back to back, so a pair shares the machine's
# state; on a shared machine this is steadier than the ratio of the two medians.
pair_median() {
    awk -v m="$1" -v c="$2" -v a="$3" -v b="$4" '
        $2 == m && $3 == c && $5 != "ERR" && $5 != "-" {
            if ($4 == a) ta[$1] = $5 + 0
            if ($4 == b) tb[$1] = $5 + 0
        }
        END {
            for (r in ta) if ((r in tb) && tb[r] > 0) v[n++] = ta[r] / tb[r]
            if (n == 0) { print "-"; exit }
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
            med = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
            printf "%.2f\n", med
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

# verdict NAME TARGET "ratio mode c" lines: the smallest ratio against the target.
verdict() {
    awk -v name="$1" -v target="$2" '
        $1 != "-" { n++; if (min == "" || $1 + 0 < min + 0) { min = $1; at = $2 " -c " $3 } }
        END {
            if (n == 0) { print "- " name ": no data"; exit }
            printf "- %s: lowest %.2f (%s); target >= %.2f %s\n", name, min, at, target, (min + 0 >= target ? "met in every cell" : "MISSED")
        }'
}

write_policy_audit_report() {
    local mode c w p a pairs rows_p="" rows_a="" rows_pa="" rows_pp=""
    echo
    echo "## Policy and audit overhead (TPS, plaintext client leg)"
    echo
    echo "pgward+policy: \`[policy]\` enforcing a one-role allow-list (select on public.pgbench_accounts and"
    echo "public.pgbench_branches for user $BENCH_USER). pgward+policy+audit: the same plus \`[audit] file\`"
    echo "with default settings (fsync = \"none\", redaction = \"types\", rotation at 100 MiB)."
    echo
    echo "| mode | clients | pgward | pgward+policy | pgward+policy+audit | policy/pgward | audit/policy | audit/policy, median of per-round pairs | audit/pgward |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            w="$(median_of "$mode" "$c" pgward 5)"
            p="$(median_of "$mode" "$c" pgward_policy 5)"
            a="$(median_of "$mode" "$c" pgward_audit 5)"
            pairs="$(pair_median "$mode" "$c" pgward_audit pgward_policy)"
            echo "| $mode | $c | $(fmt "$w" 0) | $(fmt "$p" 0) | $(fmt "$a" 0) | $(ratio "$p" "$w") | $(ratio "$a" "$p") | $pairs | $(ratio "$a" "$w") |"
            rows_p+="$(ratio "$p" "$w") $mode $c"$'\n'
            rows_pa+="$(ratio "$a" "$p") $mode $c"$'\n'
            rows_pp+="$pairs $mode $c"$'\n'
            rows_a+="$(ratio "$a" "$w") $mode $c"$'\n'
        done
    done
    echo
    printf '%s' "$rows_p" | verdict "policy (issue 4): pgward+policy / pgward" 0.9
    printf '%s' "$rows_a" | verdict "audit with policy: pgward+policy+audit / pgward" 0.9
    printf '%s' "$rows_pa" | verdict "audit (issue 6): pgward+policy+audit / pgward+policy, ratio of medians" 0.9
    printf '%s' "$rows_pp" | verdict "audit (issue 6): pgward+policy+audit / pgward+policy, median of per-round pairs" 0.9
    echo
    echo "### Latency (ms) and proxy CPU per transaction (µs)"
    echo
    echo "| mode | clients | latency pgward | +policy | +policy+audit | CPU pgward | +policy | +policy+audit |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            echo "| $mode | $c | $(fmt "$(median_of "$mode" "$c" pgward 6)" 3) | $(fmt "$(median_of "$mode" "$c" pgward_policy 6)" 3) | $(fmt "$(median_of "$mode" "$c" pgward_audit 6)" 3) | $(fmt "$(median_of "$mode" "$c" pgward 8)" 1) | $(fmt "$(median_of "$mode" "$c" pgward_policy 8)" 1) | $(fmt "$(median_of "$mode" "$c" pgward_audit 8)" 1) |"
        done
    done
    if [[ -n "${AUDIT_RECORDS:-}" ]]; then
        echo
        echo "### Audit log written during the run"
        echo
        echo "| files | bytes | records | by event | transactions (pgbench runs) | statement records / transaction | bytes / record |"
        echo "|---:|---:|---:|---|---:|---:|---:|"
        echo "| $AUDIT_FILES | $AUDIT_BYTES | $AUDIT_RECORDS | $AUDIT_BY_EVENT | $AUDIT_TXNS ($AUDIT_RUNS) | $(ratio "$AUDIT_STATEMENTS" "$AUDIT_TXNS") | $(ratio "$AUDIT_BYTES" "$AUDIT_RECORDS") |"
        echo
        echo "Transactions are those pgbench completed through pgward+policy+audit (measured runs and"
        echo "warm-up). Each pgbench run also sends two statements of its own at start-up (a count of"
        echo "pgbench_branches and a pg_catalog query about pgbench_accounts' partitioning), and the"
        echo "start-up check one more: expected statement records = transactions + 2 × runs + 1 ="
        echo "$((AUDIT_TXNS + 2 * AUDIT_RUNS + 1)); found $AUDIT_STATEMENTS."
    fi
}

# pgward+policy of this build against the same configuration run by PGWARD_BASE_BIN.
write_base_report() {
    local mode c p b rows_r="" rows_p=""
    echo
    echo "## This build against the base build (pgward+policy, TPS)"
    echo
    echo "Base: \`$PGWARD_BASE_BIN\` ($PGWARD_BASE_LABEL). The same policy and configuration, interleaved"
    echo "round-robin with every other target."
    echo
    echo "| mode | clients | base | this build | this/base, ratio of medians | median of per-round pairs |"
    echo "|---|---:|---:|---:|---:|---:|"
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            b="$(median_of "$mode" "$c" pgward_policy_base 5)"
            p="$(median_of "$mode" "$c" pgward_policy 5)"
            local pairs
            pairs="$(pair_median "$mode" "$c" pgward_policy pgward_policy_base)"
            echo "| $mode | $c | $(fmt "$b" 0) | $(fmt "$p" 0) | $(ratio "$p" "$b") | $pairs |"
            rows_r+="$(ratio "$p" "$b") $mode $c"$'\n'
            rows_p+="$pairs $mode $c"$'\n'
        done
    done
    echo
    printf '%s' "$rows_r" | verdict "this build / base build, ratio of medians" 0.95
    printf '%s' "$rows_p" | verdict "this build / base build, median of per-round pairs" 0.95
}

write_connect_report() {
    local t d u k
    echo
    echo "## Connection setup: token sign-in cost"
    echo
    echo "\`pgbench -C -S -n -M simple -c 1 -j 1 -T $BENCH_SECONDS\`: a new connection for every transaction."
    echo "pgward TLS token: \`[entra]\` trusting the development issuer (\`pgward issuer\`), user $TOKEN_USER,"
    echo "password = a token minted by \`pgward token\` (validated at every connection, JWKS cached);"
    echo "pgward TLS unauthenticated: the same configuration with \`allow_unauthenticated = true\` instead"
    echo "of \`[entra]\`. Both sslmode=require; pgward's upstream login (SCRAM-SHA-256, plaintext"
    echo "loopback) is part of every transaction in both. direct: plaintext, SCRAM-SHA-256."
    echo
    echo "| target | TPS | latency ms (incl. connection) | average connection time ms | proxy CPU µs per connection |"
    echo "|---|---:|---:|---:|---:|"
    for t in $BENCH_CONNECT_TARGETS; do
        echo "| $(target_label "$t") | $(fmt "$(median_of connect 1 "$t" 5)" 0) | $(fmt "$(median_of connect 1 "$t" 6)" 3) | $(fmt "$(median_of connect 1 "$t" 9)" 3) | $(fmt "$(median_of connect 1 "$t" 8)" 1) |"
    done
    if [[ " $BENCH_CONNECT_TARGETS " == *" pgward_token "* && " $BENCH_CONNECT_TARGETS " == *" pgward_conn "* ]]; then
        d="$(awk -v a="$(median_of connect 1 pgward_token 6)" -v b="$(median_of connect 1 pgward_conn 6)" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b }')"
        u="$(awk -v a="$(median_of connect 1 pgward_token 9)" -v b="$(median_of connect 1 pgward_conn 9)" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b }')"
        k="$(awk -v a="$(median_of connect 1 pgward_token 8)" -v b="$(median_of connect 1 pgward_conn 8)" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.1f", a - b }')"
        echo
        echo "- token handshake cost (token − unauthenticated): latency ${d} ms, connection time ${u} ms, proxy CPU ${k} µs per connection; aim < 1 ms: $(awk -v d="$d" 'BEGIN { if (d == "-") print "no data"; else if (d + 0 < 1) print "met"; else print "MISSED" }')"
        echo "- per round (latency ms, token / unauthenticated):$(awk '$2 == "connect" && $4 == "pgward_token" { t[$1] = $6 } $2 == "connect" && $4 == "pgward_conn" { u[$1] = $6 } END { for (r = 1; r in t || r in u; r++) printf " round %s: %s / %s;", r, t[r], u[r] }' "$RAW")"
    fi
}

# pgward with [cluster] (PostgreSQL control database) against the same configuration without.
write_cluster_report() {
    local mode c l k rows_r="" rows_p=""
    echo
    echo "## Replicas with a shared store ([cluster], PostgreSQL backend)"
    echo
    echo "pgward+limits: \`[limits] connections_per_identity = 1000, statements_per_second = 10000000\`"
    echo "(they apply to every session and never bind). pgward+limits+cluster: the same with \`[cluster]"
    echo "backend = \"postgres\"\` on a control database of the bench server: each connection takes a slot"
    echo "in the store, statements come from leases of the shared bucket. One replica, plaintext."
    echo
    echo "| mode | clients | pgward+limits | +cluster | cluster/limits, ratio of medians | median of per-round pairs |"
    echo "|---|---:|---:|---:|---:|---:|"
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            l="$(median_of "$mode" "$c" pgward_limits 5)"
            k="$(median_of "$mode" "$c" pgward_cluster 5)"
            local pairs
            pairs="$(pair_median "$mode" "$c" pgward_cluster pgward_limits)"
            echo "| $mode | $c | $(fmt "$l" 0) | $(fmt "$k" 0) | $(ratio "$k" "$l") | $pairs |"
            rows_r+="$(ratio "$k" "$l") $mode $c"$'\n'
            rows_p+="$pairs $mode $c"$'\n'
        done
    done
    echo
    printf '%s' "$rows_r" | verdict "issue 20: pgward+limits+cluster / pgward+limits, ratio of medians" 0.95
    printf '%s' "$rows_p" | verdict "issue 20: pgward+limits+cluster / pgward+limits, median of per-round pairs" 0.95
    if [[ " $BENCH_CONNECT_TARGETS " == *" pgward_cluster "* && " $BENCH_CONNECT_TARGETS " == *" pgward_limits "* ]]; then
        local d u
        d="$(awk -v a="$(median_of connect 1 pgward_cluster 6)" -v b="$(median_of connect 1 pgward_limits 6)" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b }')"
        u="$(awk -v a="$(median_of connect 1 pgward_cluster 9)" -v b="$(median_of connect 1 pgward_limits 9)" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b }')"
        echo
        echo "- a new connection's added latency from the store (pgbench -C, cluster − limits): ${d} ms per transaction including the connection, ${u} ms of connection time (median of $(fmt "$(median_of connect 1 pgward_limits 9)" 3) → $(fmt "$(median_of connect 1 pgward_cluster 9)" 3) ms)"
    fi
}

write_report() {
    local md="$1" mode c t
    {
        echo "# pgward benchmark results"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- pgward: $PGWARD_BUILD, release build, worker_threads = $PGWARD_WORKER_THREADS"
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
        if has_target pgward_full; then
            echo
            echo "## Everything on against PgBouncer"
            echo
            echo "pgward with everything on (\`pgward_full\`): TLS client leg, token sign-in, a policy and the"
            echo "audit file (default settings). PgBouncer: session mode, plaintext, no checks. CPU is each"
            echo "proxy process's user+system time per transaction."
            echo
            echo "| mode | clients | PgBouncer TPS | pgward full TPS | full/PgBouncer (ratio of medians) | per-round pairs | PgBouncer CPU µs/txn | pgward full CPU µs/txn |"
            echo "|---|---:|---:|---:|---:|---:|---:|---:|"
            local rows_f=""
            for mode in $BENCH_MODES; do
                for c in $BENCH_CLIENTS; do
                    local f b rf
                    f="$(median_of "$mode" "$c" pgward_full 5)"
                    b="$(median_of "$mode" "$c" pgbouncer 5)"
                    rf="$(ratio "$f" "$b")"
                    echo "| $mode | $c | $(fmt "$b" 0) | $(fmt "$f" 0) | $rf | $(pair_median "$mode" "$c" pgward_full pgbouncer) | $(fmt "$(median_of "$mode" "$c" pgbouncer 8)" 1) | $(fmt "$(median_of "$mode" "$c" pgward_full 8)" 1) |"
                    ((c >= 16)) && rows_f+="$rf $mode $c"$'\n'
                done
            done
            echo
            printf '%s' "$rows_f" | verdict "pgward full / PgBouncer at 16 clients, ratio of medians" 1.0
            if has_target pgbouncer_tls; then
                echo
                echo "The same against PgBouncer with TLS on the client leg (\`pgbouncer_tls\`: the same"
                echo "certificate, session mode, no checks), where both proxies' clients pay for TLS:"
                echo
                echo "| mode | clients | PgBouncer TLS TPS | pgward full TPS | full/PgBouncer TLS (ratio of medians) | per-round pairs | PgBouncer TLS / PgBouncer | PgBouncer TLS CPU µs/txn |"
                echo "|---|---:|---:|---:|---:|---:|---:|---:|"
                local rows_t=""
                for mode in $BENCH_MODES; do
                    for c in $BENCH_CLIENTS; do
                        local f bt b rt
                        f="$(median_of "$mode" "$c" pgward_full 5)"
                        bt="$(median_of "$mode" "$c" pgbouncer_tls 5)"
                        b="$(median_of "$mode" "$c" pgbouncer 5)"
                        rt="$(ratio "$f" "$bt")"
                        echo "| $mode | $c | $(fmt "$bt" 0) | $(fmt "$f" 0) | $rt | $(pair_median "$mode" "$c" pgward_full pgbouncer_tls) | $(ratio "$bt" "$b") | $(fmt "$(median_of "$mode" "$c" pgbouncer_tls 8)" 1) |"
                        ((c >= 16)) && rows_t+="$rt $mode $c"$'\n'
                    done
                done
                echo
                printf '%s' "$rows_t" | verdict "pgward full / PgBouncer TLS at 16 clients, ratio of medians" 1.0
            fi
        fi
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
        echo "| mode | clients | pgward | pgward TLS | PgBouncer | pgward full |"
        echo "|---|---:|---:|---:|---:|---:|"
        for mode in $BENCH_MODES; do
            for c in $BENCH_CLIENTS; do
                echo -n "| $mode | $c |"
                for t in pgward pgward_tls pgbouncer pgward_full; do
                    echo -n " $(fmt "$(median_of "$mode" "$c" "$t" 8)" 1) |"
                done
                echo
            done
        done
        echo
        echo "CPU is read from /proc/PID/stat (utime+stime, all threads) before and after each run and"
        echo "divided by the transactions pgbench completed; resolution is 1/$CLK_TCK s per run."
        if has_target pgward_policy || has_target pgward_audit; then
            write_policy_audit_report
        fi
        if has_target pgward_policy && has_target pgward_policy_base; then
            write_base_report
        fi
        if ((${#BENCH_CONNECT_TARGETS})); then
            write_connect_report
        fi
        if has_target pgward_limits && has_target pgward_cluster; then
            write_cluster_report
        fi
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
        echo "| round | mode | clients | target | TPS | latency ms | transactions | proxy CPU µs/txn | connection ms |"
        echo "|---:|---|---:|---|---:|---:|---:|---:|---:|"
        awk '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, ($9 == "" ? "-" : $9) }' "$RAW"
    } >"$md"
}

# bench_cell K TOTAL ROUND MODE CLIENTS TARGET: one pgbench run, appended to $RAW.
bench_cell() {
    local k="$1" total="$2" r="$3" mode="$4" c="$5" t="$6" res tps lat cpu conn inst
    local out="$WORK/runs/r$r-$mode-c$c-$t.log"
    res="$(run_pgbench "$t" "$mode" "$c" "$BENCH_SECONDS" "$out")"
    echo "$r $mode $c $t $res" >>"$RAW"
    read -r tps lat _ cpu conn <<<"$res"
    log "[$k/$total] round $r $mode -c $c $(target_label "$t"): tps=$tps lat=${lat}ms cpu/txn=${cpu}µs$([[ "$conn" != - ]] && echo " conn=${conn}ms")"
    if [[ "$tps" == ERR ]]; then
        log "  pgbench failed; its output:"
        sed 's/^/    /' "$out" | tail -n 15 >&2
    fi
    for inst in "${!PW_PID[@]}"; do
        if ! kill -0 "${PW_PID[$inst]}" 2>/dev/null; then
            log "pgward ($inst) has exited! last log lines:"
            tail -n 30 "$WORK/pgward-$inst.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
            die "pgward ($inst) died during the benchmark"
        fi
    done
}

# Audit sanity check: records in the audit log(s) of the pgward_audit instance, by event, against
# the transactions pgbench completed through it (measured runs + warm-up). pgbench also runs
# two statements per run outside the measured transactions (its start-up count of
# pgbench_branches and a pg_catalog query about pgbench_accounts' partitioning), and the target
# check above is one more.
count_audit_records() {
    local files=("$WORK"/audit/*.jsonl)
    AUDIT_FILES=${#files[@]}
    AUDIT_BYTES="$(cat "${files[@]}" | wc -c)"
    AUDIT_RECORDS="$(cat "${files[@]}" | wc -l)"
    AUDIT_BY_EVENT="$(cat "${files[@]}" | { grep -o '"event":"[a-z_]*"' || true; } | sort | uniq -c | awk '{ sub(/"event":/, "", $2); gsub(/"/, "", $2); printf "%s%s %s", sep, $2, $1; sep = ", " }')"
    AUDIT_STATEMENTS="$(cat "${files[@]}" | grep -c '"event":"statement"' || true)"
    local warm=0 f
    for f in "$WORK"/runs/warmup-pgward_audit.log; do
        [[ -f "$f" ]] && warm="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$f" | head -1)"
    done
    AUDIT_TXNS="$(awk -v w="${warm:-0}" '$4 == "pgward_audit" { s += $7; n++ } END { print s + w }' "$RAW")"
    AUDIT_RUNS="$(awk -v w="$( [[ -n "$warm" && "$warm" != 0 ]] && echo 1 || echo 0)" '$4 == "pgward_audit" { n++ } END { print n + w }' "$RAW")"
    log "audit log: $AUDIT_RECORDS records in $AUDIT_FILES file(s), $AUDIT_BYTES bytes ($AUDIT_BY_EVENT); pgbench transactions through pgward_audit: $AUDIT_TXNS in $AUDIT_RUNS runs"
}

# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
main() {
    local started=$SECONDS
    install_prerequisites

    # dev-tools: this binary also runs `pgward issuer` and `pgward token`. The feature adds
    # only those subcommands; serving and relaying are the production build's code.
    log "cargo build --release -p pgward --features dev-tools"
    if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
        (cd "$REPO" && cargo build --release -p pgward --features dev-tools) || die "cargo build failed"
    fi
    PGWARD_BIN="${PGWARD_BIN:-$REPO/target/release/pgward}"
    [[ -x "$PGWARD_BIN" ]] || die "$PGWARD_BIN not found"
    PGWARD_BASE_LABEL="${PGWARD_BASE_LABEL:-an earlier build}"
    # What was built (read now: the tree may move on during the run).
    PGWARD_BUILD="commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'none')$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes')"
    if [[ "${BENCH_SKIP_BUILD:-0}" == 1 ]]; then
        PGWARD_BUILD="existing binary built $(date -u -r "$PGWARD_BIN" '+%Y-%m-%d %H:%M UTC') (tree now at $PGWARD_BUILD)"
    fi

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
    PGBOUNCER_TLS_PORT="$(free_port)"
    PW_PORT[plain]="$PGWARD_PORT"
    PW_ADMIN_PORT[plain]="$PGWARD_ADMIN_PORT"
    local inst
    for inst in policy policy_base audit tlsdev token signed walls full limits cluster; do
        PW_PORT[$inst]="$(free_port)"
        PW_ADMIN_PORT[$inst]="$(free_port)"
    done

    start_postgres
    init_pgbench_data
    make_tls_cert
    write_policy
    mkdir -p "$WORK/audit"
    if [[ " $BENCH_TARGETS $BENCH_CONNECT_TARGETS " =~ " pgward_"(token|signed|walls|full)" " ]]; then start_issuer; fi
    local -a instances
    mapfile -t instances < <(pgward_instances)
    for inst in "${instances[@]}"; do start_pgward "$inst"; done
    # The TLS instance copies the plain one's configuration.
    if has_target pgbouncer || has_target pgbouncer_tls; then start_pgbouncer; fi
    if has_target pgbouncer_tls; then start_pgbouncer_tls; fi
    if [[ -n "${PW_PID[walls]:-}" ]]; then
        # pgward applies the grants and creates pgward.callers in the background at start.
        wait_until 60 "pgward_walls grants" target_query pgward_walls "SELECT count(*) FROM public.pgbench_branches" \
            || { tail -n 30 "$WORK/pgward-walls.log" >&2; die "pgward_walls does not answer"; }
    fi

    local t
    for t in $BENCH_TARGETS $BENCH_CONNECT_TARGETS; do
        local ssl q="SELECT coalesce((SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '?')"
        # The policy targets may only read the pgbench tables.
        [[ "$t" == pgward_policy || "$t" == pgward_policy_base || "$t" == pgward_audit || "$t" == pgward_signed || "$t" == pgward_walls || "$t" == pgward_full ]] && q="SELECT 'n/a, policy: ' || count(*) || ' branches' FROM public.pgbench_branches"
        ssl="$(target_query "$t" "$q")" || die "cannot query through target $t"
        log "target $(target_label "$t"): OK (upstream session ssl=$ssl)"
    done
    if [[ " $BENCH_TARGETS " == *" pgward_policy "* ]]; then
        # The policy is enforced: something outside it is refused with 42501.
        if target_query pgward_policy "SELECT count(*) FROM public.pgbench_tellers" >"$WORK/policy-deny.log" 2>&1; then
            die "pgward_policy allowed a statement its policy does not allow (is [policy] in force?)"
        fi
        log "pgward+policy refuses what the policy does not allow: $(grep -m1 -o 'pgward policy denied[^(]*' "$WORK/policy-deny.log" || head -c 200 "$WORK/policy-deny.log")"
    fi

    RAW="$WORK/raw.txt"
    : >"$RAW"
    mkdir -p "$WORK/runs"

    local mode c r i n_targets n_conn
    local -a targets conn_targets
    read -r -a targets <<<"$BENCH_TARGETS"
    read -r -a conn_targets <<<"$BENCH_CONNECT_TARGETS"
    n_targets=${#targets[@]}
    n_conn=${#conn_targets[@]}
    local n_modes n_clients
    n_modes=$(wc -w <<<"$BENCH_MODES"); n_clients=$(wc -w <<<"$BENCH_CLIENTS")
    local total=$((BENCH_ROUNDS * (n_modes * n_clients * n_targets + n_conn)))
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
        for t in "${conn_targets[@]}"; do
            # Also fills pgward's JWKS cache (it is loaded at start anyway).
            log "warm-up $(target_label "$t") (${BENCH_WARMUP}s, -C, 1 client)"
            run_pgbench "$t" connect 1 "$BENCH_WARMUP" "$WORK/runs/warmup-conn-$t.log" >/dev/null
        done
    fi

    local k=0
    for ((r = 1; r <= BENCH_ROUNDS; r++)); do
        for mode in $BENCH_MODES; do
            for c in $BENCH_CLIENTS; do
                # Rotate the starting target each round so no target always runs first.
                for ((i = 0; i < n_targets; i++)); do
                    t="${targets[$(((i + r - 1) % n_targets))]}"
                    k=$((k + 1))
                    bench_cell "$k" "$total" "$r" "$mode" "$c" "$t"
                done
            done
        done
        # Connection setup: pgbench -C, one client, after the throughput cells of the round.
        for ((i = 0; i < n_conn; i++)); do
            t="${conn_targets[$(((i + r - 1) % n_conn))]}"
            k=$((k + 1))
            bench_cell "$k" "$total" "$r" connect 1 "$t"
        done
    done
    if has_target pgward_audit; then count_audit_records; fi

    mkdir -p "$(dirname "$BENCH_OUT")"
    write_report "$BENCH_OUT"
    echo
    # The three tables (not the per-run listing) on stdout.
    sed '/^## All runs/,$d' "$BENCH_OUT"
    for inst in "${instances[@]}"; do
        if [[ -s "$WORK/pgward-$inst.log" ]]; then
            log "pgward ($inst) log (warnings and errors, last 10 lines):"
            tail -n 10 "$WORK/pgward-$inst.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
        fi
    done
    log "results written to $BENCH_OUT ($(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s)"
}

main "$@"

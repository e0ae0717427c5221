#!/usr/bin/env bash
# What column masks cost (docs/performance.md, "Column masks"), in one interleaved run:
#
#   policy     pgward with a policy, no masks
#   masked     the same policy plus masks on columns pgbench -S does not read
#              (pgbench_accounts.filler, pgbench_branches.filler, pgbench_tellers.filler)
#
# 1. pgbench -S (simple, extended, prepared) through both: masked / policy TPS (target
#    >= 0.98: a statement that touches no masked column pays nothing).
# 2. A statement that returns 100 masked values per transaction (SELECT aid, filler FROM
#    pgbench_accounts WHERE aid BETWEEN :a AND :a + 99): the pgward process's CPU time per
#    row with and without the mask, from /proc, so the cost per masked value is the
#    difference (the machine's noise cancels in the pairs).
#
# 3. Instructions (valgrind callgrind, which the machine's load cannot disturb): pgward
#    under callgrind for N1 and N2 transactions of pgbench -c 1, per target and mode, so
#    (Ir(N2) - Ir(N1)) / (N2 - N1) is one transaction; and the same for the 100-row
#    statement, whose difference between the targets is the cost of 100 masked values.
#    Skipped with INSTRUCTIONS=0 (or without valgrind); PROFILE_DIR keeps the profiles.
#
# Environment: PGWARD_BIN (default: release build with cargo), BENCH_SECONDS (5),
# BENCH_ROUNDS (3), BENCH_CLIENTS (16), BENCH_SCALE (10), BENCH_MODES ("simple extended
# prepared"), BENCH_OUT (markdown output, default bench/results/masking-<date>.md).
# Runs as root (PostgreSQL as the `postgres` user) or as an ordinary user.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${BENCH_SECONDS:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
CLIENTS="${BENCH_CLIENTS:-16}"
SCALE="${BENCH_SCALE:-10}"
INSTRUCTIONS="${INSTRUCTIONS:-1}"
N1="${N1:-300}"
N2="${N2:-900}"
MODES="${BENCH_MODES:-simple extended prepared}"
OUT="${BENCH_OUT:-bench/results/masking-$(date -u +%Y%m%d-%H%M%S).md}"

log() { printf '[masking] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PG_BINDIR="${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
[[ -x "$PG_BINDIR/initdb" ]] || die "PostgreSQL server binaries not found (apt-get install postgresql)"
command -v pgbench >/dev/null || PATH="$PG_BINDIR:$PATH"
command -v pgbench >/dev/null || die "pgbench not found (apt-get install postgresql-contrib)"

if [[ -z "${PGWARD_BIN:-}" ]]; then
    log "building pgward (release)"
    cargo build --release -p pgward --quiet
    PGWARD_BIN="${CARGO_TARGET_DIR:-target}/release/pgward"
fi
[[ -x "$PGWARD_BIN" ]] || die "PGWARD_BIN $PGWARD_BIN is not executable"

WORK="$(mktemp -d /tmp/pgward-masking.XXXXXX)"
chmod 755 "$WORK"
RUN_USER=""
if [[ "$(id -u)" == 0 ]]; then
    RUN_USER=postgres
    chown postgres "$WORK"
fi
as_pg() { if [[ -n "$RUN_USER" ]]; then (cd "$WORK" && runuser -u "$RUN_USER" -- "$@"); else (cd "$WORK" && "$@"); fi; }
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -m immediate -w stop >/dev/null 2>&1
    rm -rf -- "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PG_PORT="$(free_port)"
PASSWORD="bench-$RANDOM$RANDOM"
as_pg "$PG_BINDIR/initdb" -D "$WORK/pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log"; die "initdb failed"; }
cat >>"$WORK/pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
autovacuum = off
jit = off
EOF
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w start >/dev/null
as_pg psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE bench OWNER bench"
log "pgbench -i -s $SCALE"
PGPASSWORD="$PASSWORD" pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1
as_pg psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d bench -c "VACUUM ANALYZE" >/dev/null
printf '%s' "$PASSWORD" >"$WORK/password"

policy() {
    cat <<EOF
[[roles]]
name = "bench"
members = { users = ["bench"] }
allow = [ { actions = ["select", "insert", "update", "delete"], objects = ["public.*"] } ]
EOF
    if [[ "$1" == masked ]]; then
        cat <<EOF
mask = [
  { columns = ["public.pgbench_accounts.filler", "public.pgbench_branches.filler", "public.pgbench_tellers.filler"], with = "redact" },
]
EOF
    fi
}

declare -A PORT PID ADMIN
for t in policy masked; do
    PORT[$t]="$(free_port)"
    ADMIN[$t]="$(free_port)"
    policy "$t" >"$WORK/policy-$t.toml"
    cat >"$WORK/pgward-$t.toml" <<EOF
[listen]
addr = "127.0.0.1:${PORT[$t]}"
allow_plaintext = true
allow_unauthenticated = true
max_connections = 200
[admin]
addr = "127.0.0.1:${ADMIN[$t]}"
[log]
level = "warn"
[policy]
file = "$WORK/policy-$t.toml"
[[upstreams]]
name = "pg"
kind = "postgres"
host = "127.0.0.1"
port = $PG_PORT
tls = "disable"
[upstreams.credential]
type = "password"
user = "bench"
password_file = "$WORK/password"
[[routes]]
database = "bench"
upstream = "pg"
upstream_database = "bench"
EOF
    "$PGWARD_BIN" serve --config "$WORK/pgward-$t.toml" >"$WORK/pgward-$t.log" 2>&1 &
    PID[$t]=$!
    PIDS+=("$!")
done
for t in policy masked; do
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:${ADMIN[$t]}/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:${ADMIN[$t]}/readyz" >/dev/null || { cat "$WORK/pgward-$t.log"; die "pgward ($t) not ready"; }
done

cat >"$WORK/rows.sql" <<'EOF'
\set a random(1, 99000 * :scale)
SELECT aid, filler FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 99;
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK="$(getconf CLK_TCK)"

# run TARGET MODE [SCRIPT]: prints "tps cpu_us_per_txn"
run() {
    local t="$1" mode="$2" script="${3:-}" before after out tps txns
    before="$(cpu_ticks "${PID[$t]}")"
    if [[ -n "$script" ]]; then
        out="$(PGSSLMODE=disable pgbench -n -M "$mode" -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
            -f "$script" -D scale="$SCALE" -h 127.0.0.1 -p "${PORT[$t]}" -U bench bench 2>&1)"
    else
        out="$(PGSSLMODE=disable pgbench -n -S -M "$mode" -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
            -h 127.0.0.1 -p "${PORT[$t]}" -U bench bench 2>&1)"
    fi
    after="$(cpu_ticks "${PID[$t]}")"
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)"
    txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
    [[ -n "$tps" && -n "$txns" && "$txns" -gt 0 ]] || { echo "$out" >&2; die "pgbench through $t failed"; }
    echo "$tps $(awk -v d="$((after - before))" -v t="$TICK" -v n="$txns" 'BEGIN{printf "%.2f", d / t * 1e6 / n}')"
}

median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'; }

mkdir -p "$(dirname "$OUT")"
{
    echo "# Column masks: cost"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, pgbench $CLIENTS clients, ${SECONDS_PER_RUN}s runs, $ROUNDS rounds interleaved, scale $SCALE."
    echo
    echo "## pgbench -S, masks on columns it does not read"
    echo
    echo "| mode | policy TPS | masked TPS | masked / policy (median of pairs) |"
    echo "|---|---:|---:|---:|"
} >"$OUT"
for mode in $MODES; do
    ratios=() ; p_all=() ; m_all=()
    for r in $(seq "$ROUNDS"); do
        read -r p _ < <(run policy "$mode")
        read -r m _ < <(run masked "$mode")
        log "pgbench -S $mode round $r: policy $p, masked $m"
        p_all+=("$p"); m_all+=("$m")
        ratios+=("$(awk -v a="$m" -v b="$p" 'BEGIN{printf "%.3f", a/b}')")
    done
    echo "| $mode | $(printf '%s\n' "${p_all[@]}" | median) | $(printf '%s\n' "${m_all[@]}" | median) | $(printf '%s\n' "${ratios[@]}" | median) |" >>"$OUT"
done
{
    echo
    echo "## 100 masked values per transaction (extended protocol)"
    echo
    echo "| target | TPS | pgward CPU µs per transaction | per row |"
    echo "|---|---:|---:|---:|"
} >>"$OUT"
pc=() ; mc=() ; pt=() ; mt=()
for r in $(seq "$ROUNDS"); do
    read -r tp cp < <(run policy extended "$WORK/rows.sql")
    read -r tm cm < <(run masked extended "$WORK/rows.sql")
    log "100 rows round $r: policy $tp TPS ${cp}µs, masked $tm TPS ${cm}µs"
    pt+=("$tp"); mt+=("$tm"); pc+=("$cp"); mc+=("$cm")
done
P="$(printf '%s\n' "${pc[@]}" | median)"; M="$(printf '%s\n' "${mc[@]}" | median)"
echo "| policy (filler clear) | $(printf '%s\n' "${pt[@]}" | median) | $P | $(awk -v c="$P" 'BEGIN{printf "%.3f", c/100}') |" >>"$OUT"
echo "| masked (filler redacted) | $(printf '%s\n' "${mt[@]}" | median) | $M | $(awk -v c="$M" 'BEGIN{printf "%.3f", c/100}') |" >>"$OUT"
echo >>"$OUT"
echo "Cost of masking one value: $(awk -v a="$M" -v b="$P" 'BEGIN{printf "%.3f", (a-b)/100}') µs of pgward CPU (median CPU per transaction, masked minus clear, over 100 rows)." >>"$OUT"

if [[ "$INSTRUCTIONS" == 1 ]] && command -v valgrind >/dev/null; then
    # count TARGET MODE N [SCRIPT]: pgward's instructions (all threads) serving N transactions.
    count() {
        local t="$1" mode="$2" n="$3" script="${4:-}" out port admin cfg pid total
        out="$WORK/cg-$t-$mode-$n${script:+-rows}.out"
        port="$(free_port)"; admin="$(free_port)"
        cfg="$WORK/pgward-$t-cg.toml"
        sed -e "s/^addr = \"127.0.0.1:${PORT[$t]}\"/addr = \"127.0.0.1:$port\"/" \
            -e "s/^addr = \"127.0.0.1:${ADMIN[$t]}\"/addr = \"127.0.0.1:$admin\"/" \
            "$WORK/pgward-$t.toml" >"$cfg"
        # Nothing on a timer: a catalog refresh or file poll during the longer run would be
        # counted as part of the transactions.
        sed -i 's/^\[policy\]$/[policy]\ncatalog_refresh_secs = 3600\nwatch_secs = 0/' "$cfg"
        valgrind --tool=callgrind --callgrind-out-file="$out" "$PGWARD_BIN" serve --config "$cfg" \
            >"$WORK/cg-$t.log" 2>&1 &
        pid=$!
        for _ in $(seq 600); do
            curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
            sleep 0.2
        done
        if [[ -n "$script" ]]; then
            PGSSLMODE=disable pgbench -n -M "$mode" -c 1 -t "$n" -f "$script" -D scale="$SCALE" \
                -h 127.0.0.1 -p "$port" -U bench bench >/dev/null 2>&1 || die "pgbench under callgrind failed"
        else
            PGSSLMODE=disable pgbench -n -S -M "$mode" -c 1 -t "$n" \
                -h 127.0.0.1 -p "$port" -U bench bench >/dev/null 2>&1 || die "pgbench under callgrind failed"
        fi
        kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
        total="$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out")"
        if [[ -n "${PROFILE_DIR:-}" ]]; then mkdir -p "$PROFILE_DIR" && cp "$out" "$PROFILE_DIR/"; fi
        [[ -n "$total" ]] || die "no callgrind summary for $t"
        echo "$total"
    }
    per_txn() { # per_txn TARGET MODE [SCRIPT]
        local a b
        a="$(count "$1" "$2" "$N1" "${3:-}")"
        b="$(count "$1" "$2" "$N2" "${3:-}")"
        awk -v a="$a" -v b="$b" -v n="$((N2 - N1))" 'BEGIN{printf "%.0f", (b - a) / n}'
    }
    {
        echo
        echo "## Instructions per transaction (callgrind, pgbench -c 1, N = $N1 and $N2)"
        echo
        echo "| statement | mode | policy | masked | masked / policy |"
        echo "|---|---|---:|---:|---:|"
    } >>"$OUT"
    for mode in $MODES; do
        p="$(per_txn policy "$mode")"; m="$(per_txn masked "$mode")"
        log "instructions pgbench -S $mode: policy $p, masked $m"
        echo "| pgbench -S | $mode | $p | $m | $(awk -v a="$m" -v b="$p" 'BEGIN{printf "%.3f", a/b}') |" >>"$OUT"
    done
    p="$(per_txn policy extended "$WORK/rows.sql")"; m="$(per_txn masked extended "$WORK/rows.sql")"
    log "instructions 100 rows: policy $p, masked $m"
    echo "| 100 rows, filler | extended | $p | $m | $(awk -v a="$m" -v b="$p" 'BEGIN{printf "%.3f", a/b}') |" >>"$OUT"
    echo >>"$OUT"
    echo "Instructions per masked value: $(awk -v a="$m" -v b="$p" 'BEGIN{printf "%.0f", (a-b)/100}') (the 100-row statement, masked minus clear, over 100 values)." >>"$OUT"
fi
cat "$OUT"

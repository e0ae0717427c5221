#!/usr/bin/env bash
# Instructions pgward executes per pgbench transaction, counted by valgrind (callgrind): a
# deterministic companion to bench/run.sh for comparing configurations on a shared or noisy
# machine, where TPS and CPU time vary by ±20 % between runs but instruction counts do not.
#
#   BENCH_KEEP=1 BENCH_TARGETS="pgward_policy pgward_audit" BENCH_CONNECT_TARGETS="" \
#       BENCH_ROUNDS=1 BENCH_SECONDS=1 BENCH_CLIENTS=1 bench/run.sh   # prints "kept DIR"
#   bench/instructions.sh DIR                       # policy and audit, every -M mode
#   INSTANCES="audit" MODES="prepared" bench/instructions.sh DIR
#
# For each instance (pgward-<instance>.toml in DIR) and mode, pgward runs under callgrind
# twice, for N1 and N2 transactions of `pgbench -S -c 1`; (Ir(N2) - Ir(N1)) / (N2 - N1) is the
# cost of one transaction with start-up, sign-in and shutdown cancelled out. It counts
# user-space instructions only: system calls (the audit log's write(2), socket I/O) are not
# in it, and valgrind's CPU lacks SHA extensions, so SHA-256 counts as its AVX fallback
# (~22,000 instructions per audit record, about 4x what a CPU with SHA-NI spends).
#
# Environment: INSTANCES (default "policy audit"), MODES (default "simple extended
# prepared"), N1 / N2 (default 1000 / 3000), PGWARD_BIN (default target/release/pgward).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
WORK="${1:?usage: bench/instructions.sh DIR (a directory kept by BENCH_KEEP=1 bench/run.sh)}"
INSTANCES="${INSTANCES:-policy audit}"
MODES="${MODES:-simple extended prepared}"
N1="${N1:-1000}"
N2="${N2:-3000}"
PGWARD_BIN="${PGWARD_BIN:-$REPO/target/release/pgward}"

die() { echo "instructions.sh: $*" >&2; exit 1; }
command -v valgrind >/dev/null || die "valgrind is missing (apt-get install -y valgrind)"
command -v pgbench >/dev/null || die "pgbench is missing (apt-get install -y postgresql-contrib)"
[[ -x "$PGWARD_BIN" ]] || die "$PGWARD_BIN not found (cargo build --release -p pgward)"
[[ -d "$WORK/pgdata" ]] || die "$WORK has no pgdata: run bench/run.sh with BENCH_KEEP=1 first"
((N2 > N1)) || die "N2 must be larger than N1"

PG_BINDIR="${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -1)}"
OWNER="$(stat -c %U "$WORK/pgdata")"
as_owner() { if [[ $EUID -eq 0 && "$OWNER" != root ]]; then runuser -u "$OWNER" -- "$@"; else "$@"; fi; }
STARTED_PG=0
if ! as_owner "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" status >/dev/null 2>&1; then
    as_owner "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w -t 60 start >/dev/null
    STARTED_PG=1
fi
OUT="$(mktemp -d)"
cleanup() {
    ((STARTED_PG)) && as_owner "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null 2>&1
    rm -rf "$OUT"
}
trap cleanup EXIT

# Total instructions of one pgward process that served N transactions.
count() { # count INSTANCE MODE N
    local cfg="$WORK/pgward-$1.toml" port pid
    [[ -f "$cfg" ]] || die "$cfg not found"
    port="$(sed -n 's/^addr = "127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$cfg" | head -1)"
    rm -rf "$WORK/audit"
    NO_COLOR=1 PGWARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" \
        "$PGWARD_BIN" serve --config "$cfg" >"$OUT/pgward.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$OUT/pgward.log" >&2; die "pgward ($1) did not start"; }
        sleep 0.2
    done
    PGSSLMODE=disable PGPASSWORD=unused pgbench -S -n -M "$2" -c 1 -j 1 -t "$3" \
        -h 127.0.0.1 -p "$port" -U bench bench >"$OUT/pgbench.log" 2>&1 \
        || { cat "$OUT/pgbench.log" >&2; die "pgbench through pgward ($1, $2) failed"; }
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^summary:/ { print $2; exit }' "$OUT/cg.out"
}

printf '| mode | %s |\n' "$(echo "$INSTANCES" | sed 's/ / | /g')"
printf '|---|%s\n' "$(for _ in $INSTANCES; do printf -- '---:|'; done)"
for mode in $MODES; do
    row="| $mode |"
    for inst in $INSTANCES; do
        a="$(count "$inst" "$mode" "$N1")"
        b="$(count "$inst" "$mode" "$N2")"
        row+=" $(((b - a) / (N2 - N1))) |"
    done
    echo "$row"
done
echo
echo "Instructions per transaction in user space (callgrind), pgbench -S -c 1, N = $N1 and $N2."

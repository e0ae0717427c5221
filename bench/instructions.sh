#!/usr/bin/env bash
# Instructions per pgbench transaction, counted by valgrind (callgrind): PgBouncer and each
# layer of pgward, in every pgbench protocol mode, in one run. Instruction counts do not
# depend on what else the machine is doing, so this is the measurement that can compare a
# few percent on a shared 2-core machine where TPS varies by ±20 % between runs.
#
#   bench/instructions.sh            # prepares everything itself (about 10 minutes)
#   bench/instructions.sh DIR        # reuse a directory kept by BENCH_KEEP=1 bench/run.sh
#   COLUMNS_="relay full" MODES="simple" bench/instructions.sh DIR
#
# Columns (each a process counted on its own, pgbench -S -c 1 against it):
#   pgbouncer  PgBouncer (Debian package), session mode, plaintext, no checks
#   relay      pgward, plaintext, clients let in unauthenticated, no policy, no audit
#   tls        the same pgward with TLS on the client leg (sslmode=require)
#   signed     TLS, token sign-in (the development issuer) and a policy
#   full       signed + the audit file (default settings)
#   limits     relay + [limits] (a connection cap and a statement rate that never bind)
#   cluster    limits + [cluster] on a PostgreSQL control database (issue 20: what sharing
#              limits with other replicas costs a statement); prepare the directory with
#              BENCH_TARGETS including pgward_limits and pgward_cluster
#
# For each column and mode the process runs under callgrind twice, for N1 and N2 transactions;
# (Ir(N2) - Ir(N1)) / (N2 - N1) is one transaction with start-up, sign-in and shutdown
# cancelled out. It counts user-space instructions only (system calls are not in it).
# valgrind's virtual CPU has no SHA extensions, so the audit chain's SHA-256 runs as its AVX
# fallback (~2,000 instructions per 64-byte block where a CPU with SHA-NI spends a few
# hundred cycles); the SHA-256 compression functions' inclusive count (callgrind_annotate,
# self = inclusive for these leaves) is reported per transaction and subtracted in the "full
# without SHA-256" column. aws-lc's jitter entropy source (its whole source, per thread seeding, a
# different amount in every run) is left out of every total.
#
# Environment: COLUMNS_ (default "pgbouncer relay tls signed full"), MODES (default "simple
# extended prepared"), N1 / N2 (default 400 / 1200), PGWARD_BIN (default: the release build),
# BENCH_SKIP_BUILD=1 (when preparing: use the existing release binary), PROFILE_DIR (keep
# each run's callgrind profile there, for callgrind_annotate).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
COLS="${COLUMNS_:-pgbouncer relay tls signed full}"
MODES="${MODES:-simple extended prepared}"
N1="${N1:-400}"
N2="${N2:-1200}"

log() { printf '[instructions %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
((N2 > N1)) || die "N2 must be larger than N1"

if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing valgrind"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null \
            || die "apt-get install valgrind failed"
    else
        die "valgrind is missing (apt-get install -y valgrind)"
    fi
fi

WORK="${1:-}"
if [[ -z "$WORK" ]]; then
    # bench/run.sh installs PostgreSQL, PgBouncer and pgbench, builds pgward, and writes every
    # configuration; one second of one round is enough, the directory is what is wanted.
    log "preparing with bench/run.sh (BENCH_KEEP=1, one short round)"
    WORK="$(BENCH_KEEP=1 BENCH_TARGETS="pgbouncer pgward pgward_full pgward_signed" \
        BENCH_CONNECT_TARGETS="" BENCH_ROUNDS=1 BENCH_SECONDS=1 BENCH_CLIENTS=1 \
        BENCH_MODES=simple BENCH_WARMUP=0 BENCH_OUT="$(mktemp)" "$BENCH_DIR/run.sh" 2>&1 >/dev/null \
        | tee /dev/stderr | sed -n 's/.*kept \(\/.*\)$/\1/p' | tail -1)"
    [[ -d "$WORK" ]] || die "bench/run.sh kept no directory"
fi
[[ -d "$WORK/pgdata" ]] || die "$WORK has no pgdata: run bench/run.sh with BENCH_KEEP=1 first"
if [[ -z "${PGWARD_BIN:-}" ]]; then
    PGWARD_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/pgward"
    [[ -x "$PGWARD_BIN" ]] || PGWARD_BIN="$REPO/target/release/pgward"
fi
[[ -x "$PGWARD_BIN" ]] || die "$PGWARD_BIN not found (cargo build --release -p pgward --features dev-tools)"
command -v pgbench >/dev/null || die "pgbench is missing (apt-get install -y postgresql-contrib)"
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"

PG_BINDIR="${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -1)}"
OWNER="$(stat -c %U "$WORK/pgdata")"
as_owner() { if [[ $EUID -eq 0 && "$OWNER" != root ]]; then runuser -u "$OWNER" -- "$@"; else "$@"; fi; }
STARTED_PG=0
if ! as_owner "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" status >/dev/null 2>&1; then
    as_owner "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w -t 60 start >/dev/null
    STARTED_PG=1
fi
OUT="$(mktemp -d)"
chmod 777 "$OUT" # PgBouncer runs as the data directory's owner and writes its profile here
ISSUER_PID=""
cleanup() {
    [[ -n "$ISSUER_PID" ]] && kill "$ISSUER_PID" 2>/dev/null
    ((STARTED_PG)) && as_owner "$PG_BINDIR/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null 2>&1
    rm -rf "$OUT"
}
trap cleanup EXIT

PASSWORD="$(cat "$WORK/upstream-password")"
USER_PLAIN="$({ cat "$WORK"/pgward-plain.toml "$WORK"/pgward-limits.toml 2>/dev/null || true; } | sed -n 's/^user = "\(.*\)"/\1/p' | head -1)"

# The signed-in columns need the token issuer running: start a new one, mint a token, and
# point copies of the configurations at it.
TOKEN=""
TOKEN_USER=""
prepare_token() {
    [[ -n "$TOKEN" ]] && return
    "$PGWARD_BIN" issuer --listen 127.0.0.1:0 >"$OUT/issuer.out" 2>"$OUT/issuer.log" &
    ISSUER_PID=$!
    for _ in $(seq 100); do [[ -s "$OUT/issuer.out" ]] && break; sleep 0.1; done
    sleep 0.2
    local url
    url="$(head -1 "$OUT/issuer.out" | tr -d '[:space:]')"
    [[ "$url" == http://127.0.0.1:* ]] || { cat "$OUT/issuer.log" >&2; die "pgward issuer printed no URL"; }
    TOKEN_USER="$(sed -n 's/.*users = \["\([^"]*\)"\].*/\1/p' "$WORK/policy-signed.toml" | head -1)"
    TOKEN="$("$PGWARD_BIN" token --issuer "$url" --user "$TOKEN_USER" --lifetime 86400 2>"$OUT/token.log" | tr -d '[:space:]')" \
        || { cat "$OUT/token.log" >&2; die "pgward token failed"; }
    ISSUER_URL="$url"
}

# config_for COLUMN → a configuration for it, with the catalog's timed re-read moved out of
# the way (a refresh landing in one of the two runs would make the difference inexact).
config_for() {
    local inst src dst
    case "$1" in
        relay | tls) inst=plain ;;
        signed) inst=signed ;;
        full) inst=full ;;
        limits) inst=limits ;;
        cluster) inst=cluster ;;
        *) die "no pgward configuration for column $1" ;;
    esac
    src="$WORK/pgward-$inst.toml"
    [[ -f "$src" ]] || die "$src not found (prepare with BENCH_TARGETS including pgward_$inst)"
    dst="$OUT/pgward-$1.toml"
    if [[ "$inst" == signed || "$inst" == full ]]; then
        prepare_token
        sed "s|^authority = .*|authority = \"$ISSUER_URL\"|" "$src" >"$dst"
    else
        cp "$src" "$dst"
    fi
    if [[ "$inst" == cluster ]]; then
        # Under valgrind every call is ~50× slower: no store timeouts, and no heartbeat during
        # a run (it would land in one of the two runs and not the other).
        sed -i 's/^\[cluster\]$/[cluster]\ntimeout_ms = 60000\nlease_secs = 3600/' "$dst"
    fi
    if grep -q '^\[policy\]' "$dst"; then
        sed -i 's/^\[policy\]$/[policy]\ncatalog_refresh_secs = 3600/' "$dst"
    fi
    echo "$dst"
}

wait_port() { # wait_port PORT PID
    for _ in $(seq 600); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# count COLUMN MODE N → "TOTAL_IR SHA_IR" of one process that served N transactions.
count() {
    local col="$1" mode="$2" n="$3" port pid cfg="" ssl=disable user="$USER_PLAIN" pw="$PASSWORD"
    rm -f "$OUT/cg.out"
    if [[ "$col" == pgbouncer ]]; then
        port="$(sed -n 's/^listen_port = \([0-9]*\).*/\1/p' "$WORK/pgbouncer.ini" | head -1)"
        rm -f "$WORK/pgbouncer.pid"
        as_owner valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" \
            "$PGBOUNCER" -q "$WORK/pgbouncer.ini" >"$OUT/proxy.log" 2>&1 &
    else
        cfg="$(config_for "$col")"
        port="$(sed -n 's/^addr = "127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$cfg" | head -1)"
        [[ "$col" != relay && "$col" != limits && "$col" != cluster ]] && ssl=require
        if [[ "$col" == signed || "$col" == full ]]; then user="$TOKEN_USER"; pw="$TOKEN"; fi
        rm -rf "$WORK/audit" "$WORK/audit-full"
        mkdir -p "$WORK/audit" "$WORK/audit-full"
        NO_COLOR=1 PGWARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" \
            "$PGWARD_BIN" serve --config "$cfg" >"$OUT/proxy.log" 2>&1 &
    fi
    pid=$!
    wait_port "$port" "$pid" || { cat "$OUT/proxy.log" >&2; die "$col did not start"; }
    sleep 1 # past the listening socket: pgward reads the catalog and signs in upstream at start
    PGSSLMODE="$ssl" PGPASSWORD="$pw" PGAPPNAME=pgbench pgbench -S -n -M "$mode" -c 1 -j 1 -t "$n" \
        -h 127.0.0.1 -p "$port" -U "$user" bench >"$OUT/pgbench.log" 2>&1 \
        || { cat "$OUT/pgbench.log" "$OUT/proxy.log" >&2; die "pgbench through $col ($mode) failed"; }
    if [[ "$col" == pgbouncer ]]; then
        # runuser's child: valgrind running PgBouncer as the data directory's owner.
        pkill -TERM -f -- "-q $WORK/pgbouncer.ini" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [[ -s "$OUT/cg.out" ]] && grep -q '^summary:' "$OUT/cg.out" && break; sleep 0.1; done
    local total sha jent
    total="$(awk '/^summary:/ { print $2; exit }' "$OUT/cg.out")"
    [[ -n "$total" ]] || die "no callgrind summary for $col ($mode)"
    # The compression functions are leaves, so their own count is their inclusive count; the
    # per-file lines of one function (inlined code) are summed. aws-lc's SHA-256 (the audit
    # chain) and the sha2 crate's (SCRAM at sign-in, which cancels out between N1 and N2).
    # Only the function table (--auto=no): annotated source lines below it would match the
    # patterns too and count twice.
    local own
    own="$(callgrind_annotate --inclusive=no --threshold=100 --auto=no "$OUT/cg.out" 2>/dev/null)"
    sha="$(awk '/sha256_block_data_order|sha2::sha256::.*compress/ { gsub(",", "", $1); s += $1 } END { printf "%d\n", s }' <<<"$own")"
    # aws-lc's jitter entropy source runs when a thread's random generator is first seeded
    # (a TLS handshake needs randomness) and loops for as long as valgrind's timing takes to
    # look random enough: per thread, not per transaction, and a different amount in every
    # run, so it does not cancel out between N1 and N2. Every function of its source files
    # (jent_*, and its helpers rol64 and xoshiro128starstar) is left out of the total.
    jent="$(awk '/jitterentropy|jent_/ { gsub(",", "", $1); s += $1 } END { printf "%d\n", s }' <<<"$own")"
    total=$((total - jent))
    echo "jent $jent" >>"$OUT/jent.log"
    if [[ -n "${PROFILE_DIR:-}" ]]; then
        mkdir -p "$PROFILE_DIR"
        cp "$OUT/cg.out" "$PROFILE_DIR/callgrind.$col.$mode.$n"
    fi
    echo "$total $sha"
}

# In this shell, not in count's subshells: the token and issuer are shared by every run.
if [[ " $COLS " == *" signed "* || " $COLS " == *" full "* ]]; then prepare_token; fi

declare -A PER SHA
for mode in $MODES; do
    for col in $COLS; do
        log "$col, $mode: $N1 and $N2 transactions under callgrind"
        res="$(count "$col" "$mode" "$N1")" || exit 1
        read -r a sa <<<"$res"
        res="$(count "$col" "$mode" "$N2")" || exit 1
        read -r b sb <<<"$res"
        PER[$col,$mode]=$(((b - a) / (N2 - N1)))
        SHA[$col,$mode]=$(((sb - sa) / (N2 - N1)))
        log "  $col $mode: ${PER[$col,$mode]} instructions per transaction (SHA-256 ${SHA[$col,$mode]})"
    done
done

label() {
    case "$1" in
        pgbouncer) echo "PgBouncer" ;;
        relay) echo "pgward relay" ;;
        tls) echo "+ TLS" ;;
        signed) echo "+ sign-in + policy" ;;
        full) echo "+ audit (full)" ;;
        limits) echo "relay + limits" ;;
        cluster) echo "relay + limits + cluster" ;;
    esac
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
has_col() { [[ " $COLS " == *" $1 "* ]]; }

echo
echo "Instructions per transaction in user space (callgrind), \`pgbench -S -c 1\`, N = $N1 and $N2;"
echo "pgward $("$PGWARD_BIN" --version 2>/dev/null | head -1), $("$PGBOUNCER" --version 2>/dev/null | head -1)."
echo
header="| mode |"
sep="|---|"
for col in $COLS; do header+=" $(label "$col") |"; sep+="---:|"; done
if has_col full; then header+=" full without SHA-256 | SHA-256 |"; sep+="---:|---:|"; fi
if has_col pgbouncer; then
    has_col relay && { header+=" relay / PgBouncer |"; sep+="---:|"; }
    has_col full && { header+=" full / PgBouncer | full without SHA-256 / PgBouncer |"; sep+="---:|---:|"; }
fi
echo "$header"
echo "$sep"
worst_relay=0
worst_full=0
for mode in $MODES; do
    row="| $mode |"
    for col in $COLS; do row+=" ${PER[$col,$mode]} |"; done
    if has_col full; then
        nosha=$((PER[full,$mode] - SHA[full,$mode]))
        row+=" $nosha | ${SHA[full,$mode]} |"
    fi
    if has_col pgbouncer; then
        b="${PER[pgbouncer,$mode]}"
        if has_col relay; then
            row+=" $(ratio "${PER[relay,$mode]}" "$b") |"
            worst_relay="$(awk -v w="$worst_relay" -v r="$(awk -v a="${PER[relay,$mode]}" -v b="$b" 'BEGIN { print a / b }')" 'BEGIN { print (r > w ? r : w) }')"
        fi
        if has_col full; then
            row+=" $(ratio "${PER[full,$mode]}" "$b") | $(ratio "$nosha" "$b") |"
            worst_full="$(awk -v w="$worst_full" -v r="$(awk -v a="$nosha" -v b="$b" 'BEGIN { print a / b }')" 'BEGIN { print (r > w ? r : w) }')"
        fi
    fi
    echo "$row"
done
echo
if has_col pgbouncer; then
    has_col relay && awk -v w="$worst_relay" 'BEGIN { printf "- relay / PgBouncer, highest: %.2f×; target ≤ 1.5×: %s\n", w, (w <= 1.5 ? "met in every mode" : "MISSED") }'
    has_col full && awk -v w="$worst_full" 'BEGIN { printf "- full without SHA-256 / PgBouncer, highest: %.2f×; target ≤ 4×: %s\n", w, (w <= 4 ? "met in every mode" : "MISSED") }'
fi

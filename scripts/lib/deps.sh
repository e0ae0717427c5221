# Shared by scripts/test, scripts/demo and bench/: install what pgward's commands need
# on Debian, or say exactly what is missing.

step() { printf '\n==> %s\n' "$*"; }

die() { printf 'pgward: %s\n' "$*" >&2; exit 1; }

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust 1.88 or newer (https://rustup.rs) and run again"
}

have_pg_server() {
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && return 0
    done
    command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

have_libclang() {
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1
}

# ensure_apt_packages test|demo|bench
ensure_apt_packages() {
    local purpose=$1 missing=()
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    # pg_query builds libpg_query through bindgen: clang and libclang.
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    have_libclang || missing+=(libclang-dev)
    have_pg_server || missing+=(postgresql)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    id postgres >/dev/null 2>&1 || missing+=(postgresql)
    if [ "$purpose" != demo ]; then
        command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-contrib)
        command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv python3-pip)
        python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    fi
    if [ "$purpose" = test ]; then
        # The JDBC client test (proto-tests/tests/jdbc_client.rs): a JDK and pgjdbc.
        command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
        [ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
    fi
    if [ "$purpose" = bench ]; then
        command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
        command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    # De-duplicate.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})"
    fi
    step "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed; install these packages by hand: ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install failed for: ${missing[*]}"
}

# Python clients for the proto-tests, in target/pyenv (pinned majors).
ensure_python_clients() {
    local py=target/pyenv/bin/python
    if [ -x "$py" ] && "$py" -c 'import psycopg, asyncpg' >/dev/null 2>&1; then
        return 0
    fi
    step "creating target/pyenv with psycopg 3 and asyncpg (pip)"
    mkdir -p target
    python3 -m venv target/pyenv || die "python3 -m venv failed (apt-get install -y python3-venv)"
    target/pyenv/bin/pip install -q --disable-pip-version-check 'psycopg[binary]>=3.1,<4' 'asyncpg>=0.29,<1' \
        || die "pip could not install psycopg and asyncpg"
}

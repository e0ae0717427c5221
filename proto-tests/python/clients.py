"""psycopg 3 and asyncpg through pgward: prepared statements, COPY, server-side
cursors, cancel. Driven by tests/python_clients.rs with PGWARD_DSN (libpq form) and
PGWARD_HOST / PGWARD_PORT / PGWARD_CA for asyncpg. Prints one line per check."""

import asyncio
import os
import ssl
import threading
import time

import asyncpg
import psycopg
from psycopg import errors

DSN = os.environ["PGWARD_DSN"]


def check(name, cond):
    if not cond:
        raise AssertionError(name)
    print("ok", name)


def psycopg_checks():
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS py_items")
        conn.execute("CREATE TABLE py_items (id int PRIMARY KEY, name text, price numeric)")
        # Server-side prepared statements (psycopg prepares after repeated use; force it).
        with conn.cursor() as cur:
            for i in range(20):
                cur.execute("INSERT INTO py_items VALUES (%s, %s, %s)", (i, f"n{i}", i * 1.5), prepare=True)
            cur.execute("SELECT count(*), sum(price) FROM py_items", prepare=True)
            check("psycopg prepared", cur.fetchone() == (20, 285))
        # COPY in and out.
        with conn.cursor() as cur:
            with cur.copy("COPY py_items (id, name, price) FROM STDIN") as copy:
                for i in range(100, 5100):
                    copy.write_row((i, f"bulk{i}", i))
            rows = []
            with cur.copy("COPY (SELECT id FROM py_items WHERE id >= 100 ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(row)
            check("psycopg copy", len(rows) == 5000 and rows[0] == ("100",))
    # Server-side (named) cursor inside a transaction.
    with psycopg.connect(DSN) as conn:
        with conn.cursor(name="big_cursor") as cur:
            cur.itersize = 500
            cur.execute("SELECT g FROM generate_series(1, 20000) g")
            total = sum(r[0] for r in cur)
        check("psycopg named cursor", total == 20000 * 20001 // 2)
    # Cancel from another thread.
    with psycopg.connect(DSN, autocommit=True) as conn:
        threading.Timer(0.5, conn.cancel).start()
        started = time.time()
        try:
            conn.execute("SELECT pg_sleep(20)")
            check("psycopg cancel", False)
        except errors.QueryCanceled:
            check("psycopg cancel", time.time() - started < 10)
        check("psycopg usable after cancel", conn.execute("SELECT 1").fetchone() == (1,))
    # Errors keep the connection usable; transactions roll back.
    with psycopg.connect(DSN) as conn:
        try:
            conn.execute("INSERT INTO py_items VALUES (1, 'dup', 1)")
        except errors.UniqueViolation:
            conn.rollback()
        check("psycopg after error", conn.execute("SELECT count(*) FROM py_items").fetchone() == (5020,))


async def asyncpg_checks():
    ctx = ssl.create_default_context(cafile=os.environ["PGWARD_CA"])
    conn = await asyncpg.connect(
        host=os.environ["PGWARD_HOST"],
        port=int(os.environ["PGWARD_PORT"]),
        user="alice",
        database="app",
        ssl=ctx,
    )
    try:
        stmt = await conn.prepare("SELECT id, name FROM py_items WHERE id < $1 ORDER BY id")
        rows = await stmt.fetch(5)
        check("asyncpg prepared", [r["id"] for r in rows] == [0, 1, 2, 3, 4])
        await conn.execute("CREATE TEMP TABLE t_copy (a int, b text)")
        await conn.copy_records_to_table("t_copy", records=[(i, f"r{i}") for i in range(3000)])
        check("asyncpg copy", await conn.fetchval("SELECT count(*) FROM t_copy") == 3000)
        async with conn.transaction():
            total = 0
            async for rec in conn.cursor("SELECT g FROM generate_series(1, 10000) g", prefetch=700):
                total += rec[0]
        check("asyncpg cursor", total == 10000 * 10001 // 2)
        # A timeout makes asyncpg send a CancelRequest; the session stays usable.
        try:
            await conn.execute("SELECT pg_sleep(20)", timeout=0.5)
            check("asyncpg cancel", False)
        except asyncio.TimeoutError:
            check("asyncpg cancel", True)
        check("asyncpg usable after cancel", await conn.fetchval("SELECT 41 + 1") == 42)
        # Pipelined executemany.
        await conn.executemany("INSERT INTO t_copy VALUES ($1, $2)", [(i, "m") for i in range(500)])
        check("asyncpg executemany", await conn.fetchval("SELECT count(*) FROM t_copy") == 3500)
    finally:
        await conn.close()


psycopg_checks()
asyncio.run(asyncpg_checks())
print("all python checks passed")

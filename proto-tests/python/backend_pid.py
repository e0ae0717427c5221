"""The backend pid clients see through pgward is the upstream backend's own: psycopg 3,
psycopg2 and asyncpg report what pg_backend_pid() says, a session's own notifications carry
that pid, pg_stat_activity finds it, and cancelling through the drivers still works. Driven
by tests/backend_pid.rs with PGWARD_DSN (libpq form) and PGWARD_HOST/PORT/USER.
Prints one line per check and exits non-zero when any fails."""

import asyncio
import os
import sys
import threading
import time

import asyncpg
import psycopg
import psycopg2
import psycopg2.extensions
from psycopg import errors

DSN = os.environ["PGWARD_DSN"]
FAILURES = []


def check(name, cond, detail=""):
    if cond:
        print("ok", name)
    else:
        print("FAIL", name, detail)
        FAILURES.append(name)


def cancel_after(delay, cancel):
    def run():
        time.sleep(delay)
        cancel()

    t = threading.Thread(target=run)
    t.start()
    return t


def psycopg3():
    with psycopg.connect(DSN, autocommit=True) as conn:
        pid = conn.info.backend_pid
        server = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        check("psycopg backend_pid", pid == server, f"driver {pid}, server {server}")
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND application_name LIKE %s",
            (pid, "%psycopg-pid%"),
        ).fetchone()
        check("pg_stat_activity finds the session", row[0] == 1, str(row))
        conn.execute("LISTEN pid_check")
        conn.execute("NOTIFY pid_check, 'own'")
        got = list(conn.notifies(timeout=5, stop_after=1))
        check(
            "own notification carries the backend pid",
            len(got) == 1 and got[0].pid == pid and got[0].payload == "own",
            str([(n.pid, n.payload) for n in got]),
        )
        with psycopg.connect(DSN, autocommit=True) as other:
            other.execute("NOTIFY pid_check, 'other'")
            other_pid = other.info.backend_pid
        got = list(conn.notifies(timeout=5, stop_after=1))
        check(
            "another session's notification carries its pid",
            len(got) == 1 and got[0].pid == other_pid != pid,
            str([(n.pid, n.payload) for n in got]),
        )
        for name, how in (("cancel", conn.cancel), ("cancel_safe", conn.cancel_safe)):
            t = cancel_after(1.0, how)
            started = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(30)")
                check(f"psycopg {name}", False, "not cancelled")
            except errors.QueryCanceled:
                took = time.monotonic() - started
                check(f"psycopg {name}", took < 10, f"took {took:.1f}s")
            t.join()
        check("usable after cancel", conn.execute("SELECT 1").fetchone()[0] == 1)


def psycopg_2():
    conn = psycopg2.connect(DSN)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    server = cur.fetchone()[0]
    check("psycopg2 get_backend_pid", conn.get_backend_pid() == server,
          f"driver {conn.get_backend_pid()}, server {server}")
    cur.execute("LISTEN pid_check2")
    cur.execute("NOTIFY pid_check2, 'own'")
    conn.poll()
    pids = [n.pid for n in conn.notifies]
    check("psycopg2 own notification pid", pids == [server], str(pids))
    t = cancel_after(1.0, conn.cancel)
    try:
        cur.execute("SELECT pg_sleep(30)")
        check("psycopg2 cancel", False, "not cancelled")
    except psycopg2.errors.QueryCanceled:
        check("psycopg2 cancel", True)
    t.join()
    conn.close()


async def with_asyncpg():
    conn = await asyncpg.connect(
        host=os.environ["PGWARD_HOST"],
        port=int(os.environ["PGWARD_PORT"]),
        user=os.environ["PGWARD_USER"],
        database="app",
        ssl=False,
    )
    server = await conn.fetchval("SELECT pg_backend_pid()")
    check("asyncpg get_server_pid", conn.get_server_pid() == server,
          f"driver {conn.get_server_pid()}, server {server}")
    got = asyncio.get_running_loop().create_future()
    await conn.add_listener("pid_check3", lambda c, pid, ch, payload: got.set_result(pid))
    await conn.execute("NOTIFY pid_check3, 'own'")
    pid = await asyncio.wait_for(got, 5)
    check("asyncpg own notification pid", pid == server, f"{pid} vs {server}")
    # asyncpg cancels a query whose timeout runs out with a CancelRequest.
    started = time.monotonic()
    try:
        await conn.execute("SELECT pg_sleep(30)", timeout=1.0)
        check("asyncpg timeout cancel", False, "not cancelled")
    except asyncio.TimeoutError:
        pass
    alive = await conn.fetchval("SELECT 1")
    check("asyncpg timeout cancel", alive == 1 and time.monotonic() - started < 10)
    await conn.close()


for f in (psycopg3, psycopg_2, lambda: asyncio.run(with_asyncpg())):
    try:
        f()
    except Exception as e:  # noqa: BLE001 - reported as a failure of that group
        check(getattr(f, "__name__", "group"), False, f"{type(e).__name__}: {e}")

sys.exit(1 if FAILURES else 0)

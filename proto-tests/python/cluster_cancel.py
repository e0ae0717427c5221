"""psycopg cancels through a balancer in front of several pgward replicas
(proto-tests/tests/cluster.rs): the cancel connection lands on another replica than the
session, which must still be cancelled within 2 s. CONN: a PostgreSQL route; SQL_CONN: an
Azure SQL route (simple protocol only)."""
import os, threading, time, psycopg


def cancelled_within(conn, cur, sql):
    threading.Timer(0.5, conn.cancel).start()
    t = time.time()
    try:
        cur.execute(sql)
        return "not cancelled"
    except psycopg.Error as e:
        return f"{e.sqlstate} {round(time.time() - t - 0.5, 2) < 2}"


conn = psycopg.connect(os.environ["CONN"], autocommit=True)
print("postgres", cancelled_within(conn, conn.cursor(), "SELECT pg_sleep(20)"))
conn.execute("SELECT 1")
print("postgres usable", conn.execute("SELECT 41 + 1").fetchone()[0])

sql = psycopg.connect(os.environ["SQL_CONN"], autocommit=True, cursor_factory=psycopg.ClientCursor)
cur = sql.cursor()
print("azure-sql", cancelled_within(sql, cur, "SELECT * FROM dbo.slow"))
cur.execute("SELECT * FROM dbo.orders WHERE id = 1")
print("azure-sql usable", cur.fetchall())

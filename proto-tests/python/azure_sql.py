"""psycopg through pgward to an azure-sql upstream (proto-tests/tests/azure_sql.rs).

Simple protocol only (ClientCursor): the extended protocol is refused with 0A000.
"""
import os, threading, time, psycopg
conn = psycopg.connect(os.environ["CONN"], autocommit=True, cursor_factory=psycopg.ClientCursor)
cur = conn.cursor()
cur.execute("SELECT * FROM dbo.orders WHERE id = 3")
print("row", cur.fetchall())
cur.execute("SELECT * FROM dbo.types")
print("types", [d.type_code for d in cur.description])
print("values", cur.fetchone())
try:
    cur.execute("DELETE FROM dbo.customers")
except psycopg.Error as e:
    print("denied", e.sqlstate)
# The default cursor uses the extended protocol: refused with a clear 0A000.
try:
    psycopg.Cursor(conn).execute("SELECT * FROM dbo.orders WHERE id = %s", (1,))
except psycopg.Error as e:
    print("extended", e.sqlstate)
threading.Timer(0.5, conn.cancel).start()
t = time.time()
try:
    cur.execute("SELECT * FROM dbo.slow")
except psycopg.Error as e:
    print("cancel", e.sqlstate, round(time.time() - t, 1) < 5)
cur.execute("SELECT * FROM dbo.orders WHERE id = 1")
print("after", cur.fetchall())

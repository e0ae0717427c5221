"""Masked columns through pgward with binary results (proto-tests/tests/masking.rs).

psycopg with binary=True and asyncpg (binary by default, extended protocol, prepared
statements): every masked value arrives masked, in the column's own type.
"""
import asyncio, datetime, decimal, os, psycopg

SECRETS = ["123-45-6789", "alice.secret", "98765", "1971-02-03"]

def clean(rows):
    text = repr(rows)
    for s in SECRETS:
        assert s not in text, f"secret {s!r} leaked: {text}"

conn = psycopg.connect(os.environ["CONN"], autocommit=True)
cur = conn.cursor(binary=True)
cur.execute("SELECT id, name, email, ssn, salary, birth FROM customers WHERE id = %s", (1,))
row = cur.fetchone()
clean(row)
assert row[0] == 1, row
assert row[1] == "A****", row
assert row[2] == "****@contoso.com", row
assert len(row[3]) == 32, row
assert row[4] == decimal.Decimal(0), row
assert row[5] is None, row
print("psycopg binary ok", row)
cur.execute("SELECT * FROM customer_emails ORDER BY id")
rows = cur.fetchall()
clean(rows)
assert all(r[1].startswith("****@") for r in rows), rows
print("psycopg view ok")
# Text results through the same extended protocol.
tcur = conn.cursor()
tcur.execute("SELECT salary, birth, email FROM customers ORDER BY id")
rows = tcur.fetchall()
clean(rows)
assert rows[0] == (decimal.Decimal(0), None, "****@contoso.com"), rows
print("psycopg text ok")
try:
    cur.execute("SELECT id FROM customers WHERE salary > %s", (1000,))
    raise SystemExit("a filter on a masked column ran")
except psycopg.Error as e:
    assert e.sqlstate == "42501", e.sqlstate
    print("psycopg filter denied", e.sqlstate)
# Equality lookups where the mask allows them.
cur.execute("SELECT pid FROM hr.people WHERE email = %s", ("alice.secret@contoso.com",))
assert cur.fetchall() == [(1,)]
print("psycopg equality ok")

async def with_asyncpg():
    import asyncpg
    c = await asyncpg.connect(os.environ["URL"])
    rows = await c.fetch("SELECT id, email, ssn, salary, birth FROM customers ORDER BY id")
    clean([tuple(r) for r in rows])
    assert rows[0]["email"] == "****@contoso.com", rows
    assert rows[0]["salary"] == decimal.Decimal(0), rows
    assert rows[0]["birth"] is None, rows
    # The same value hashes the same in both tables: a join in the client works.
    people = await c.fetch("SELECT pid, ssn FROM hr.people ORDER BY pid")
    assert {r["ssn"] for r in rows} >= {p["ssn"] for p in people}, (rows, people)
    # A prepared statement used many times (asyncpg caches it).
    stmt = await c.prepare("SELECT email FROM customers WHERE id = $1")
    for i in range(1, 4):
        v = await stmt.fetchval(i)
        assert v.startswith("****@"), v
    # A cursor in a transaction.
    async with c.transaction():
        got = [r async for r in c.cursor("SELECT ssn, name FROM customers ORDER BY id")]
        clean([tuple(r) for r in got])
        assert len(got) == 3
    try:
        await c.fetch("SELECT id FROM customers ORDER BY email")
        raise SystemExit("ORDER BY a masked column ran")
    except asyncpg.PostgresError as e:
        assert e.sqlstate == "42501", e.sqlstate
    await c.close()
    print("asyncpg ok")

asyncio.run(with_asyncpg())
print("all masking checks passed")

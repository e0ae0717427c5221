"""Runs a Python recipe from docs/clients.md (extracted by client_recipes.rs) against a
local pgward and checks what a user would: rows come back, a denied statement gets
42501 and leaves the connection usable, and every new connection fetched a token.
Usage: run_recipe.py psycopg|sqlalchemy|fastapi RECIPE_FILE... ; prints `ok ...` lines."""

import os
import sys

DENIED = "INSERT INTO orders (item, qty) VALUES ('recipe-denied', 1)"


def mints():
    with open(os.environ["PGWARD_RECIPE_MINT_LOG"]) as f:
        return sum(1 for _ in f)


def load(paths):
    ns = {"__name__": "recipe"}
    for p in paths:
        with open(p) as f:
            exec(compile(f.read(), p, "exec"), ns)
    return ns


def check(cond, msg):
    if not cond:
        print(f"FAIL {msg}")
        sys.exit(1)


def psycopg_recipe(ns):
    import psycopg

    with ns["connect"]() as c1:
        n = c1.execute("SELECT count(*) FROM orders").fetchone()[0]
        check(n == 100, f"count {n}")
    check(mints() == 1, f"{mints()} mints after one connect")
    with ns["connect"](autocommit=True) as c2:
        try:
            c2.execute(DENIED)
            check(False, "denied statement succeeded")
        except psycopg.errors.InsufficientPrivilege as e:
            check(e.sqlstate == "42501", e.sqlstate)
        check(c2.execute("SELECT 1").fetchone()[0] == 1, "connection unusable after denial")
    check(mints() == 2, f"{mints()} mints after two connects")
    print("ok psycopg connect(): rows, 42501 on a denied INSERT, usable after it, one token per connection")
    pool = ns["make_pool"]()
    try:
        pool.wait()  # min_size connections are open
        check(mints() == 3, f"{mints()} mints once the pool holds its first connection (want 3)")
        with pool.connection() as c:
            check(c.execute("SELECT count(*) FROM orders").fetchone()[0] == 100, "pool count")
        with pool.connection() as c:
            check(c.execute("SELECT max(id) FROM orders").fetchone()[0] == 100, "pool max")
        check(mints() == 3, f"{mints()} mints after two borrows of one pooled connection (want 3)")
        # A connection the pool opens later (after the first is closed) fetches its own token.
        with pool.connection() as c:
            c.close()
        with pool.connection() as c:
            check(c.execute("SELECT 1").fetchone()[0] == 1, "pool after replacing a connection")
        # The pool opens the replacement (and may grow) in the background: at least one more.
        check(mints() >= 4, f"{mints()} mints after the pool replaced a connection (want >= 4)")
    finally:
        pool.close()
    print("ok psycopg_pool with EntraConnection: each pooled connection fetched its own token")


def sqlalchemy_recipe(ns):
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    check(ns["count_orders"]() == 100, "count_orders")
    check(ns["count_orders"]() == 100, "count_orders again")
    check(mints() == 1, f"{mints()} mints: the pooled connection was reused, so one token")
    ns["engine"].dispose()  # a new pool: the next connect is a new connection
    try:
        with ns["engine"].connect() as conn:
            conn.execute(text(DENIED))
        check(False, "denied statement succeeded")
    except ProgrammingError as e:
        check(e.orig.sqlstate == "42501", e.orig.sqlstate)
    check(ns["count_orders"]() == 100, "count after denial")
    check(mints() == 2, f"{mints()} mints after dispose() (want 2)")
    print("ok sqlalchemy do_connect: rows, 42501 on a denied INSERT, a new token for each new connection")


def fastapi_recipe(ns):
    from fastapi.testclient import TestClient

    before = mints()
    client = TestClient(ns["app"])
    for _ in range(3):
        r = client.get("/orders/count")
        check(r.status_code == 200 and r.json() == {"orders": 100}, f"{r.status_code} {r.text}")
    ns["engine"].dispose()
    r = client.get("/orders/count")
    check(r.json() == {"orders": 100}, r.text)
    check(mints() == before + 2, f"{mints() - before} mints for 4 requests over 2 pool generations (want 2)")
    print("ok fastapi: GET /orders/count through the engine, tokens fetched per new connection")


def main():
    kind, paths = sys.argv[1], sys.argv[2:]
    ns = load(paths)
    {"psycopg": psycopg_recipe, "sqlalchemy": sqlalchemy_recipe, "fastapi": fastapi_recipe}[kind](ns)


if __name__ == "__main__":
    main()

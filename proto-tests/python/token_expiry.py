"""Sessions end when their token does (driven by tests/entra_signin.rs)."""

import os
import time

import psycopg

DSN = os.environ["PGWARD_DSN"]


def check(name, cond):
    if not cond:
        raise AssertionError(name)
    print("ok", name)


# Idle past expiry: pgward closes the session at expiry with FATAL 28000.
idle = psycopg.connect(DSN, password=os.environ["PGWARD_TOKEN_IDLE"], autocommit=True)
busy = psycopg.connect(DSN, password=os.environ["PGWARD_TOKEN_BUSY"], autocommit=True)
long = psycopg.connect(DSN, password=os.environ["PGWARD_TOKEN_LONG"], autocommit=True)
check("works before expiry", idle.execute("SELECT 1").fetchone() == (1,))

# Busy across expiry: the statement in flight completes, then the session ends.
started = time.time()
row = busy.execute("SELECT 42 FROM pg_sleep(4.5)").fetchone()
check("statement in flight finished", row == (42,))
try:
    busy.execute("SELECT 1")
    check("busy session ended after its token", False)
except psycopg.OperationalError as e:
    check("busy session ended after its token", "token expired" in str(e) or "closed" in str(e) or "terminat" in str(e))

time.sleep(max(0.0, 5.0 - (time.time() - started)))
try:
    idle.execute("SELECT 1")
    check("idle session closed at expiry", False)
except psycopg.OperationalError as e:
    check("idle session closed at expiry", True)

# A session whose token is still valid is unaffected.
check("long-lived token unaffected", long.execute("SELECT 2").fetchone() == (2,))
print("all expiry checks passed")

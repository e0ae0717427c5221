"""psycopg2's large-object API (lobject: libpq's lo_* functions, which send the FunctionCall
protocol message) through pgward. Driven by tests/function_call.rs with PGWARD_DSN_ALLOWED (a
role allowed lo_* by name) and PGWARD_DSN_DENIED (a role that is not). Prints one line per
check and exits non-zero when any fails."""

import os
import sys

import psycopg2

FAILURES = []
PAYLOAD = b"pgward large object \x00\x01\x02" * 1000


def check(name, cond, detail=""):
    if cond:
        print("ok", name)
    else:
        print("FAIL", name, detail)
        FAILURES.append(name)


def allowed():
    conn = psycopg2.connect(os.environ["PGWARD_DSN_ALLOWED"])
    # Create, write, seek, read back, truncate, unlink: every call goes by FunctionCall.
    lo = conn.lobject(0, "wb")
    oid = lo.oid
    written = lo.write(PAYLOAD)
    lo.close()
    conn.commit()
    check("lobject write", written == len(PAYLOAD), f"wrote {written}")
    lo = conn.lobject(oid, "rb")
    lo.seek(5)
    check("lobject tell", lo.tell() == 5, str(lo.tell()))
    lo.seek(0)
    data = lo.read()
    lo.close()
    check("lobject read back", data == PAYLOAD, f"{len(data)} bytes")
    lo = conn.lobject(oid, "wb")
    lo.truncate(10)
    lo.close()
    lo = conn.lobject(oid, "rb")
    check("lobject truncate", lo.read() == PAYLOAD[:10])
    lo.close()
    conn.commit()
    # The same object seen in SQL (the connection is still usable and consistent).
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata WHERE oid = %s", (oid,))
    check("object exists", cur.fetchone()[0] == 1)
    lo = conn.lobject(oid, "rb")
    lo.unlink()
    conn.commit()
    cur.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata WHERE oid = %s", (oid,))
    check("object unlinked", cur.fetchone()[0] == 0)
    conn.close()
    print("oid", oid)


def denied():
    conn = psycopg2.connect(os.environ["PGWARD_DSN_DENIED"])
    try:
        conn.lobject(0, "wb")
        check("lobject refused", False, "lobject succeeded")
    except psycopg2.Error as e:
        # libpq's lo_* report the server's message, not always its SQLSTATE: psycopg2 raises
        # InsufficientPrivilege or OperationalError depending on the call.
        check(
            "lobject refused",
            "builtin.dangerous_function" in str(e) and e.pgcode in (None, "42501"),
            f"{type(e).__name__} {e.pgcode} {e}",
        )
    # A denial aborts the transaction like any error; after a rollback the session works.
    conn.rollback()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    check("session usable after refusal", cur.fetchone()[0] == 1)
    conn.close()


for f in (allowed, denied):
    try:
        f()
    except Exception as e:  # noqa: BLE001 - a failure of that group, reported below
        check(f.__name__, False, f"{type(e).__name__}: {e}")

sys.exit(1 if FAILURES else 0)

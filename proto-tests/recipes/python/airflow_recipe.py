"""Runs the Airflow recipe from docs/clients.md: the environment already holds the
AIRFLOW_CONN_* variables exactly as the recipe exports them (client_recipes.rs runs the
recipe's shell block, then this). PostgresHook must fetch a token for every connection.

The Microsoft Azure provider is not installed here, so the Azure connection's hook (whose
get_token the Postgres provider calls) is a stand-in minting from pgward's development
issuer; everything on the Postgres side is Airflow's own code."""

import os
import sys

from airflow.providers.common.compat.sdk import Connection

sys.path.insert(0, os.environ["PGWARD_RECIPE_FAKE_AZURE"])
from azure.identity import DefaultAzureCredential  # noqa: E402  (the stand-in)


class DevAzureHook:
    """What AzureBaseHook.get_token does: ask the connection's credential for a token."""

    def __init__(self, conn):
        self.conn = conn
        self.credential = DefaultAzureCredential()

    def get_token(self, *scopes, **kwargs):
        return self.credential.get_token(*scopes, **kwargs)


_get_hook = Connection.get_hook


def get_hook(self, *args, **kwargs):
    if self.conn_type == "azure":
        return DevAzureHook(self)
    return _get_hook(self, *args, **kwargs)


Connection.get_hook = get_hook

from airflow.providers.postgres.hooks.postgres import PostgresHook  # noqa: E402


def mints():
    with open(os.environ["PGWARD_RECIPE_MINT_LOG"]) as f:
        return sum(1 for _ in f)


def check(cond, msg):
    if not cond:
        print(f"FAIL {msg}")
        sys.exit(1)


hook = PostgresHook(postgres_conn_id="pgward_app")
check(hook.get_records("SELECT count(*) FROM orders") == [(100,)], "count")
check(hook.get_first("SELECT max(id) FROM orders") == (100,), "max")
check(mints() == 2, f"{mints()} mints for two hook calls (want 2: one per connection)")
try:
    hook.run("INSERT INTO orders (item, qty) VALUES ('recipe-denied', 1)")
    check(False, "denied statement succeeded")
except Exception as e:  # psycopg2 or psycopg, whichever the provider picked
    code = getattr(e, "pgcode", None) or getattr(e, "sqlstate", None)
    check(code == "42501", f"{type(e).__name__} {code}: {e}")
print(f"ok airflow PostgresHook (iam + azure_conn_id): rows, 42501 on a denied INSERT, {mints()} connections, {mints()} tokens")

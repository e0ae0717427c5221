// Runs the Node recipe from docs/clients.md (extracted by client_recipes.rs) against a
// local pgward: rows, 42501 on a denied statement, one token per new connection.
'use strict';
const assert = require('node:assert');
const fs = require('node:fs');

const mints = () => fs.readFileSync(process.env.PGWARD_RECIPE_MINT_LOG, 'utf8').split('\n').filter(Boolean).length;

(async () => {
  const { pool } = require(process.argv[2]);
  for (let i = 1; i <= 2; i++) {
    const c = await pool.connect();
    const r = await c.query('SELECT count(*)::int AS n FROM orders');
    assert.strictEqual(r.rows[0].n, 100);
    c.release(true); // destroy it: the next connect opens a new connection
    assert.strictEqual(mints(), i, `mints after connection ${i}`);
  }
  const c = await pool.connect();
  await assert.rejects(c.query("INSERT INTO orders (item, qty) VALUES ('recipe-denied', 1)"), (e) => e.code === '42501');
  assert.strictEqual((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  c.release();
  // A pooled (kept) connection is reused without a new token.
  const again = await pool.connect();
  await again.query('SELECT 1');
  again.release();
  assert.strictEqual(mints(), 3);
  await pool.end();
  console.log('ok node pg: rows, 42501 on a denied INSERT, usable after it, one token per new connection');
})().catch((e) => {
  console.error('FAIL', e);
  process.exit(1);
});

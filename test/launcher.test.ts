import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { startLocalPostgres } from '../src/db/launcher.js';

const log = pino({ level: 'warn' });

async function query(url: string, sql: string): Promise<Record<string, unknown>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql)).rows[0];
  } finally {
    await client.end();
  }
}

test('two local servers run side by side, answer queries and clean up on stop', async () => {
  const [a, b] = await Promise.all([
    startLocalPostgres({ log, fsync: false }),
    startLocalPostgres({ log }),
  ]);
  try {
    assert.notEqual(a.port, b.port);
    assert.equal(a.url, `postgres://postgres@127.0.0.1:${a.port}/postgres`);
    assert.ok(existsSync(a.dataDir));
    assert.ok(existsSync(a.binDir));

    for (const server of [a, b]) {
      assert.deepEqual(await query(server.url, 'select 1 as one'), { one: 1 });
      const { server_version } = await query(server.url, 'show server_version');
      assert.match(String(server_version), /^\d+\.\d+/);
    }
    assert.equal((await query(a.url, 'show fsync')).fsync, 'off');
    assert.equal((await query(b.url, 'show fsync')).fsync, 'on');
    assert.equal((await query(a.url, 'show max_connections')).max_connections, '300');
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }

  assert.equal(existsSync(a.dataDir), false);
  assert.equal(existsSync(b.dataDir), false);
  await a.stop(); // idempotent
  await assert.rejects(query(a.url, 'select 1'));
});

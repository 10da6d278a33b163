import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { createPool, isTransientDbError } from '../src/db/pool.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

/**
 * Regression (S10, seen in the chaos of killed connections): pg-pool listens for a client's
 * errors only while the client is idle, so a connection killed while its client was checked
 * out between two queries emitted 'error' with no listener, and the agent process died.
 */
describe('a pool client whose connection is killed while checked out', () => {
  let db: TestDatabase;
  before(async () => {
    db = await createTestDatabase();
  });
  after(async () => {
    await db?.drop();
  });

  test('does not crash the process; its next query fails as transient, the pool goes on', async () => {
    const pool = createPool({
      url: db.url,
      applicationName: 'pool-kill-test',
      log: pino({ level: 'silent' }),
    });
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      const client = await pool.connect();
      const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]
        .pid;
      await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);
      // The FATAL message arrives while no query runs on the client.
      await new Promise((r) => setTimeout(r, 300));
      const err = await client.query('SELECT 1').then(
        () => null,
        (e: unknown) => e,
      );
      assert.ok(err instanceof Error, 'the next query on the dead client fails');
      assert.ok(isTransientDbError(err), `transient: ${(err as Error).message}`);
      client.release(err);
      assert.equal((await pool.query<{ one: number }>('SELECT 1 AS one')).rows[0].one, 1);
      assert.deepEqual(uncaught, []);
    } finally {
      process.off('uncaughtException', onUncaught);
      await pool.end();
    }
  });
});

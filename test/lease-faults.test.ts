import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { pino } from 'pino';
import { migrate } from '../src/db/migrations.js';
import { createPool } from '../src/db/pool.js';
import {
  fenceParams,
  fenceSql,
  Lease,
  leasesTable,
  readLease,
  type LeaseOptions,
  type LeaseToken,
} from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { waitFor as poll } from './helpers/fixture.js';
import { StallingProxy } from './helpers/db-proxy.js';

const SCHEMA = 'pampa';
const silent = pino({ level: 'silent' });

/** Polls every 10 ms (lease timings are tight); fails naming `what` after `timeoutMs`. */
async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  await poll(what, check, timeoutMs, 10);
}

function fencedWrite(pool: pg.Pool, token: LeaseToken, id: number): Promise<pg.QueryResult> {
  return pool.query(
    `UPDATE fenced_tasks SET rsv_by = $1 WHERE id = $2
       AND EXISTS (${fenceSql(leasesTable(SCHEMA), 3)})`,
    [token.holder, id, ...fenceParams(token)],
  );
}

describe('Lease under faults', () => {
  let db: TestDatabase;
  const cleanups: (() => Promise<unknown>)[] = [];

  function makeLease(options: Partial<LeaseOptions> & { holder: string; cluster: string }): Lease {
    const lease = new Lease({
      pool: db.pool,
      schema: SCHEMA,
      ttlMs: 1500,
      renewIntervalMs: 200,
      renewDeadlineMs: 800,
      log: silent,
      ...options,
    });
    cleanups.push(() => lease.stop());

    return lease;
  }

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
    await db.pool.query('CREATE TABLE fenced_tasks (id int PRIMARY KEY, rsv_by text)');
    await db.pool.query('INSERT INTO fenced_tasks SELECT g, NULL FROM generate_series(1, 10) g');
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await db.drop();
  });

  test('a holder whose database calls hang steps down at the deadline; its token is fenced', async () => {
    const cluster = 'hang';
    const url = new URL(db.url);
    const proxy = new StallingProxy({ host: url.hostname, port: Number(url.port) });
    url.port = String(await proxy.listen());
    const stalledPool = createPool({
      url: url.toString(),
      applicationName: 'lease-stalled',
      log: silent,
    });
    cleanups.push(async () => {
      await proxy.close();
      await stalledPool.end();
    });
    const a = makeLease({ holder: 'a', cluster, pool: stalledPool });
    const b = makeLease({ holder: 'b', cluster });
    // Under load a's acquire may have committed after its reply timed out, so epochs can skip.
    const order: { event: string; epoch: number }[] = [];
    a.on('stepped-down', (epoch, reason) => order.push({ event: `a ${reason}`, epoch }));
    b.on('elected', (epoch) => order.push({ event: 'b elected', epoch }));

    await a.start();
    await waitFor('a elected', () => a.isHeld());
    await b.start();
    const stale = a.token();
    assert.ok(stale);
    assert.equal((await fencedWrite(db.pool, stale, 1)).rowCount, 1);

    proxy.stall();
    await waitFor('a to step down', () => !a.isHeld(), 5_000);
    assert.equal(a.token(), null);
    await waitFor('b elected', () => b.isHeld());
    const [down, up] = order.slice(-2);
    assert.deepEqual([down?.event, up?.event], ['a deadline', 'b elected']);
    assert.equal(down.epoch, stale.epoch);
    assert.ok(up.epoch > stale.epoch);

    assert.equal((await fencedWrite(db.pool, stale, 2)).rowCount, 0, 'stale token is fenced');
    const current = b.token();
    assert.ok(current);
    assert.equal((await fencedWrite(db.pool, current, 2)).rowCount, 1);

    // stop() must not hang on the stalled pool, and its resign cannot hurt b.
    await a.stop();
    assert.equal(b.isHeld(), true);
    assert.equal((await readLease(db.pool, SCHEMA, cluster))?.holder, 'b');
    assert.ok(a.status().errors > 0);
  });

  test('a paused process is not the holder the moment it resumes, and re-elects with a new epoch', async () => {
    const cluster = 'pause';
    const a = makeLease({ holder: 'a', cluster });
    const events: { event: string; epoch: number }[] = [];
    a.on('elected', (epoch) => events.push({ event: 'elected', epoch }));
    a.on('stepped-down', (epoch, reason) => events.push({ event: reason, epoch }));
    await a.start();
    await waitFor('a elected', () => a.isHeld());
    const prepared = a.token();
    assert.ok(prepared);

    // Block the event loop past the deadline (but not the TTL): no timer can run meanwhile.
    const until = performance.now() + 800 + 100;
    while (performance.now() < until) {
      // busy wait, like a SIGSTOP or a long GC pause
    }
    assert.equal(a.isHeld(), false);
    assert.equal(a.token(), null);

    await waitFor('a re-elected', () => a.isHeld());
    const [down, up] = events.slice(-2);
    assert.deepEqual(
      [down?.event, down?.epoch, up?.event],
      ['deadline', prepared.epoch, 'elected'],
    );
    assert.ok(up.epoch > prepared.epoch, 'a new term, not the old one renewed back');
    assert.equal((await fencedWrite(db.pool, prepared, 3)).rowCount, 0, 'prepared write fenced');
  });

  test('backends killed again and again: nothing throws, and someone holds the lease after', async () => {
    const cluster = 'terminate';
    const problems: unknown[] = [];
    const onProblem = (err: unknown): void => {
      problems.push(err);
    };
    process.on('unhandledRejection', onProblem);
    process.on('uncaughtException', onProblem);
    cleanups.push(async () => {
      process.off('unhandledRejection', onProblem);
      process.off('uncaughtException', onProblem);
    });

    const leases = ['x', 'y', 'z'].map((holder) => {
      const pool = createPool({
        url: db.url,
        applicationName: `agent-lease-${holder}`,
        log: silent,
      });
      cleanups.push(() => pool.end());

      return makeLease({ holder, cluster, pool, ttlMs: 1000, renewDeadlineMs: 600 });
    });
    await Promise.all(leases.map((l) => l.start()));

    let terminated = 0;
    let maxHolders = 0;
    const until = Date.now() + 3_000;
    while (Date.now() < until) {
      const result = await db.pool.query<{ ok: boolean }>(
        `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
          WHERE application_name LIKE 'agent-lease-%'`,
      );
      terminated += result.rows.filter((r) => r.ok).length;
      maxHolders = Math.max(maxHolders, leases.filter((l) => l.isHeld()).length);
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 150));
    }

    assert.ok(terminated > 0, 'some backends were terminated');
    assert.ok(maxHolders <= 1, `at most one holder at a time, saw ${maxHolders}`);
    // One instance holds it, and the row agrees (checked together, as a holder may change).
    await waitFor('one holder that the row names', async () => {
      const tokens = leases.map((l) => l.token()).filter((t) => t !== null);
      if (tokens.length !== 1) return false;

      const row = await readLease(db.pool, SCHEMA, cluster);
      return row?.holder === tokens[0].holder && row.epoch === tokens[0].epoch;
    });
    assert.deepEqual(problems, []);
  });
});

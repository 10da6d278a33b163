import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { pino } from 'pino';
import type { JobInput } from '../src/config/schema.js';
import { migrate } from '../src/db/migrations.js';
import { inspectJobTable, type JobTable } from '../src/db/table.js';
import { migrateJobTable } from '../src/db/user-table.js';
import { readAssignments } from '../src/dispatch/assignments.js';
import { Dispatcher } from '../src/dispatch/dispatcher.js';
import { acquire, leasesTable, type LeaseToken } from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { QA_TASK_SQL, qaJob } from './helpers/fixture.js';

/**
 * The dispatcher re-checks its lease locally right before each write: when the term ends (by
 * the local renewal deadline) during a hook, the write that follows is not sent at all, even
 * though the database would still accept it (the lease row below stays valid for an hour).
 * Each case has its control: the same round with the term kept does write.
 */
const SCHEMA = 'pampa';
const CLUSTER = 'recheck';
const silent = pino({ level: 'silent' });

describe('dispatcher writes after a hook that outlived the lease term', () => {
  let db: TestDatabase;
  let held: LeaseToken;
  /** The token the dispatcher sees; the hooks set it to null to end the term mid-round. */
  let token: LeaseToken | null;
  /** When true, a hook call ends the term. */
  let endTermInHook: boolean;
  const dispatchers: Dispatcher[] = [];

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
    await db.pool.query(QA_TASK_SQL);
    const row = await acquire(db.pool, SCHEMA, {
      cluster: CLUSTER,
      holder: 'me',
      ttlMs: 3_600_000,
    });
    assert.ok(row?.acquired);
    held = { cluster: CLUSTER, holder: 'me', epoch: row.epoch };
  });
  after(async () => {
    await Promise.all(dispatchers.map((d) => d.stop()));
    await db.drop();
  });
  beforeEach(async () => {
    await db.pool.query('DELETE FROM qa_task; DELETE FROM pampa.assignments');
    token = held;
    endTermInHook = true;
  });

  const endTerm = (): void => {
    if (endTermInHook) token = null;
  };

  async function table(hooks: Partial<JobInput>): Promise<JobTable> {
    const job = qaJob({ maxTryTimes: 3, retryBackoffSeconds: 0, ...hooks });
    await migrateJobTable(db.pool, job, SCHEMA, silent);

    return inspectJobTable(db.pool, job);
  }

  /** Runs one round of a fresh dispatcher over `t` with one live worker w1. */
  async function round(t: JobTable): Promise<Dispatcher> {
    const d = new Dispatcher({
      db: db.pool,
      schema: SCHEMA,
      cluster: CLUSTER,
      tables: new Map([['qa', t]]),
      token: () => token,
      workers: () => [{ id: 'w1', job: 'qa', freeSlots: 5 }],
      deadNodes: async () => [],
      onReserved: () => undefined,
      intervalMs: 60_000,
      relaunchScanMs: 60_000,
      log: silent,
    });
    dispatchers.push(d);
    const started = d.status().rounds;
    d.start();
    while (d.status().rounds === started) await new Promise((r) => setTimeout(r, 10));
    await d.stop();
    assert.equal(
      (await db.pool.query(`SELECT 1 FROM ${leasesTable(SCHEMA)} WHERE expires_at > now()`))
        .rowCount,
      1,
      'the database would accept the write',
    );

    return d;
  }

  const count = async (where: string): Promise<number> =>
    Number((await db.pool.query(`SELECT count(*) AS n FROM qa_task WHERE ${where}`)).rows[0].n);

  test('reservation after a slow occupied hook', async () => {
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'p' FROM generate_series(1, 5) g`,
    );
    const t = await table({ occupied: () => (endTerm(), 0) });
    await round(t);
    assert.equal(token, null, 'the hook ran and ended the term');
    assert.equal(await count('rsv_by IS NOT NULL'), 0, 'no reservation sent');
    assert.equal((await readAssignments(db.pool, SCHEMA, CLUSTER)).get('w1')?.job, 'qa');

    token = held;
    endTermInHook = false;
    await round(t);
    assert.equal(await count(`rsv_by = 'w1'`), 5, 'control: the same round reserves');
  });

  test('worker assignment after a slow selecting hook', async () => {
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'p' FROM generate_series(1, 5) g`,
    );
    const t = await table({ selecting: () => (endTerm(), {}) });
    await round(t);
    assert.equal(token, null);
    assert.equal((await readAssignments(db.pool, SCHEMA, CLUSTER)).size, 0, 'no assignment sent');

    token = held;
    endTermInHook = false;
    await round(t);
    assert.equal((await readAssignments(db.pool, SCHEMA, CLUSTER)).get('w1')?.job, 'qa');
  });

  test('relaunch after a slow relaunching hook', async () => {
    await db.pool.query(
      `INSERT INTO qa_task (id, payload, rsv_by, rsv_tries, started_at, ended_at, ok)
       SELECT g, 'p', 'w9', 1, now(), now(), true FROM generate_series(1, 3) g`,
    );
    const t = await table({ relaunching: () => (endTerm(), { where: 'id > $1', params: [0] }) });
    await round(t);
    assert.equal(token, null);
    assert.equal(await count('ended_at IS NOT NULL'), 3, 'no reopen sent');

    token = held;
    endTermInHook = false;
    await round(t);
    assert.equal(await count('ended_at IS NULL'), 3, 'control: the same round reopens');
  });

  test('a reservation that fails stays in the dispatcher status after its round', async () => {
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'p' FROM generate_series(1, 5) g`,
    );
    // The column goes between the table's inspection and the reservation statement.
    const t = await table({
      allowing: async (_w, ctx) => {
        await ctx.db.query('ALTER TABLE qa_task RENAME COLUMN rsv_by TO rsv_by_gone');
        return true;
      },
    });
    endTermInHook = false;
    try {
      const d = await round(t);
      assert.match(d.status().lastError ?? '', /rsv_by/);
    } finally {
      await db.pool.query('ALTER TABLE qa_task RENAME COLUMN rsv_by_gone TO rsv_by');
    }
  });
});

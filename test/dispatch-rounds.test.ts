import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { pino } from 'pino';
import { migrate } from '../src/db/migrations.js';
import { inspectJobTable, type JobTable } from '../src/db/table.js';
import { migrateJobTable } from '../src/db/user-table.js';
import { readAssignments } from '../src/dispatch/assignments.js';
import { Dispatcher, type EligibleWorker } from '../src/dispatch/dispatcher.js';
import { acquire, type LeaseToken } from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { QA_TASK_SQL, qaJob, waitFor } from './helpers/fixture.js';

/**
 * Dispatcher rounds against a real database, one round at a time: the lease is held for an
 * hour, and rounds, relaunch scans and assignment periods are an hour apart, so each round runs
 * only when the test starts or wakes the dispatcher.
 */
const SCHEMA = 'pampa';
const CLUSTER = 'rounds';
const HOUR = 3_600_000;
const silent = pino({ level: 'silent' });

describe('dispatcher rounds', () => {
  let db: TestDatabase;
  let token: LeaseToken;
  let table: JobTable;
  let workers: EligibleWorker[];
  let d: Dispatcher;

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
    await db.pool.query(QA_TASK_SQL);
    const lease = await acquire(db.pool, SCHEMA, { cluster: CLUSTER, holder: 'me', ttlMs: HOUR });
    assert.ok(lease?.acquired);
    token = { cluster: CLUSTER, holder: 'me', epoch: lease.epoch };
    const job = qaJob();
    await migrateJobTable(db.pool, job, SCHEMA, silent);
    table = await inspectJobTable(db.pool, job);
  });
  after(async () => {
    await d?.stop();
    await db.drop();
  });
  beforeEach(async () => {
    await d?.stop();
    await db.pool.query(`DELETE FROM qa_task; DELETE FROM ${SCHEMA}.assignments`);
    d = new Dispatcher({
      db: db.pool,
      schema: SCHEMA,
      cluster: CLUSTER,
      tables: new Map([['qa', table]]),
      token: () => token,
      workers: () => workers,
      deadNodes: async () => [],
      onReserved: () => undefined,
      intervalMs: HOUR,
      relaunchScanMs: HOUR,
      assignEveryMs: HOUR,
      log: silent,
    });
  });

  /** Starts the dispatcher (its start runs a round), lets `wake` ask for it, and waits it out. */
  async function oneRound(wake: () => void = () => undefined): Promise<void> {
    const seen = d.status().rounds;
    d.start();
    wake();
    await waitFor('a round', () => d.status().rounds > seen, 10_000, 10);
    await d.stop();
  }

  const insert = (ids: number[]) =>
    db.pool.query(`INSERT INTO qa_task (id, payload) SELECT unnest($1::bigint[]), 'p'`, [ids]);
  const assignedJob = async (w: string) =>
    (await readAssignments(db.pool, SCHEMA, CLUSTER)).get(w)?.job ?? null;
  const reservedTo = async () =>
    (
      await db.pool.query<{ id: string; rsv_by: string | null }>(
        'SELECT id, rsv_by FROM qa_task ORDER BY id',
      )
    ).rows.map((r) => `${r.id} ${r.rsv_by ?? '-'}`);

  // An idle job has no worker. New rows announced by NOTIFY (rowsArrived) get it workers in the
  // very next round; any other wake-up (kick) leaves assignment to its period.
  test('new rows give an idle job workers in the next round, not at the next assignment period', async () => {
    workers = [{ id: 'w1', job: null, freeSlots: 5 }];
    await oneRound();
    assert.equal(await assignedJob('w1'), null, 'no rows: the job has no worker');

    await insert([1, 2, 3]);
    await oneRound(() => d.kick());
    assert.equal(await assignedJob('w1'), null, 'control: a plain wake-up waits for the period');
    assert.deepEqual(await reservedTo(), ['1 -', '2 -', '3 -']);

    await oneRound(() => d.rowsArrived());
    assert.equal(await assignedJob('w1'), 'qa', 'an arrival assigns at once');
    assert.deepEqual(await reservedTo(), ['1 w1', '2 w1', '3 w1'], 'and the same round reserves');
  });

  // Found by re-running S19: a new row was queued behind the task a worker was running while the
  // other worker of the job sat idle.
  test('a row goes to an idle worker, not behind a running task; more rows fill the lines evenly', async () => {
    workers = [
      { id: 'w1', job: 'qa', freeSlots: 5, busy: true },
      { id: 'w2', job: 'qa', freeSlots: 5, busy: false },
    ];
    await insert([1, 2]);
    await oneRound(); // assigns both workers (the epoch is new to this dispatcher) and reserves
    assert.deepEqual(await reservedTo(), ['1 w2', '2 w1'], 'w2 idle: first in line');

    await db.pool.query('DELETE FROM qa_task');
    await insert([3]);
    await oneRound(() => d.kick());
    assert.deepEqual(await reservedTo(), ['3 w2'], 'one row: the idle worker');

    await db.pool.query('DELETE FROM qa_task');
    await insert([4, 5, 6, 7, 8]);
    await oneRound(() => d.kick());
    // Places in line: w2 0, 1, 2, …; w1 (behind its running task) 1, 2, ….
    assert.deepEqual(await reservedTo(), ['4 w2', '5 w1', '6 w2', '7 w1', '8 w2']);
  });
});

import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { defineJob } from '../src/config/define.js';
import { migrate } from '../src/db/migrations.js';
import { inspectJobTable } from '../src/db/table.js';
import { migrateJobTable } from '../src/db/user-table.js';
import { readAssignments } from '../src/dispatch/assignments.js';
import { Dispatcher } from '../src/dispatch/dispatcher.js';
import { acquire } from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { QA_COLUMNS, QA_TASK_SQL, waitFor } from './helpers/fixture.js';

/**
 * An idle job has no worker. New rows announced by NOTIFY (rowsArrived) get it workers in the
 * very next round; any other wake-up (kick) leaves assignment to its period, here an hour, so
 * only the arrival can explain the assignment.
 */
const SCHEMA = 'pampa';
const CLUSTER = 'arrivals';
const silent = pino({ level: 'silent' });

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
  await migrate(db.pool, SCHEMA);
  await db.pool.query(QA_TASK_SQL);
});
after(() => db.drop());

test('new rows give an idle job workers in the next round, not at the next assignment period', async () => {
  const lease = await acquire(db.pool, SCHEMA, {
    cluster: CLUSTER,
    holder: 'me',
    ttlMs: 3_600_000,
  });
  assert.ok(lease?.acquired);
  const token = { cluster: CLUSTER, holder: 'me', epoch: lease.epoch };
  const job = defineJob({
    name: 'qa',
    table: 'qa_task',
    primaryKey: 'id',
    columns: QA_COLUMNS,
    run: () => undefined,
  });
  await migrateJobTable(db.pool, job, SCHEMA, silent);
  const d = new Dispatcher({
    db: db.pool,
    schema: SCHEMA,
    cluster: CLUSTER,
    tables: new Map([['qa', await inspectJobTable(db.pool, job)]]),
    token: () => token,
    workers: () => [{ id: 'w1', job: null, freeSlots: 5 }],
    deadNodes: async () => [],
    onReserved: () => undefined,
    intervalMs: 3_600_000,
    relaunchScanMs: 3_600_000,
    assignEveryMs: 3_600_000,
    log: silent,
  });
  /** Starts the dispatcher (its start runs a round), lets `wake` ask for it, and waits it out. */
  const oneRound = async (wake: () => void = () => undefined): Promise<void> => {
    const seen = d.status().rounds;
    d.start();
    wake();
    await waitFor('a round', () => d.status().rounds > seen, 10_000, 10);
    await d.stop();
  };
  const assignedJob = async () =>
    (await readAssignments(db.pool, SCHEMA, CLUSTER)).get('w1')?.job ?? null;
  const reserved = async () =>
    Number((await db.pool.query(`SELECT count(*) FROM qa_task WHERE rsv_by = 'w1'`)).rows[0].count);

  try {
    await oneRound();
    assert.equal(await assignedJob(), null, 'no rows: the job has no worker');

    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'p' FROM generate_series(1, 3) g`,
    );
    await oneRound(() => d.kick());
    assert.equal(await assignedJob(), null, 'control: a plain wake-up waits for the period');
    assert.equal(await reserved(), 0);

    await oneRound(() => d.rowsArrived());
    assert.equal(await assignedJob(), 'qa', 'an arrival assigns at once');
    assert.equal(await reserved(), 3, 'and the same round reserves');
  } finally {
    await d.stop();
  }
});

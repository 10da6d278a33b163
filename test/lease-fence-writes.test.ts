import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { pino } from 'pino';
import { migrate } from '../src/db/migrations.js';
import { inspectJobTable, type JobTable } from '../src/db/table.js';
import { migrateJobTable } from '../src/db/user-table.js';
import { readAssignments, writeAssignments } from '../src/dispatch/assignments.js';
import { releaseTasks } from '../src/dispatch/release.js';
import { reopenTasks, reserveTasks } from '../src/dispatch/statements.js';
import {
  acquire,
  fenceParams,
  fenceSql,
  leasesTable,
  resign,
  type LeaseToken,
} from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { QA_TASK_SQL, qaJob } from './helpers/fixture.js';

/**
 * Every dispatcher write, run for real against a lease row moved by the real acquire and
 * resign statements: with the ex-holder's token (stale epoch), another holder's name, or the
 * current token once the row expired, it changes nothing; with the current token it does (so
 * each refusal is the fence's doing, not an empty statement).
 */
const SCHEMA = 'pampa';
const CLUSTER = 'fence-writes';
const silent = pino({ level: 'silent' });

type Fence = { sql: (first: number) => string; params: unknown[] };

function fenceOf(token: LeaseToken): Fence {
  return { sql: (first) => fenceSql(leasesTable(SCHEMA), first), params: fenceParams(token) };
}

describe('dispatcher writes under a stale, foreign or expired lease', () => {
  let db: TestDatabase;
  let t: JobTable;
  let stale: LeaseToken;
  let current: LeaseToken;
  const foreign = (): LeaseToken => ({ ...current, holder: 'intruder' });
  const refused = (): [string, Fence][] => [
    ['stale epoch', fenceOf(stale)],
    ['another holder', fenceOf(foreign())],
  ];

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
    await db.pool.query(QA_TASK_SQL);
    const job = qaJob({ maxTryTimes: 3, retryBackoffSeconds: 0 });
    await migrateJobTable(db.pool, job, SCHEMA, silent);
    t = await inspectJobTable(db.pool, job);
  });
  after(() => db.drop());

  /** a held epoch n, resigned; b holds epoch n+1 for an hour. */
  beforeEach(async () => {
    await db.pool.query(`DELETE FROM ${leasesTable(SCHEMA)}; DELETE FROM pampa.assignments`);
    const ttlMs = 3_600_000;
    const a = await acquire(db.pool, SCHEMA, { cluster: CLUSTER, holder: 'a', ttlMs });
    assert.ok(a?.acquired);
    stale = { cluster: CLUSTER, holder: 'a', epoch: a.epoch };
    assert.ok(await resign(db.pool, SCHEMA, stale));
    const b = await acquire(db.pool, SCHEMA, { cluster: CLUSTER, holder: 'b', ttlMs });
    assert.ok(b?.acquired && b.epoch > a.epoch);
    current = { cluster: CLUSTER, holder: 'b', epoch: b.epoch };
  });

  async function expireLease(): Promise<void> {
    await db.pool.query(
      `UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() - interval '1 ms' WHERE cluster = $1`,
      [CLUSTER],
    );
  }

  /** Rows 1..n: free, or all closed (ended, ok) when `closed`, or reserved to `by`. */
  async function rows(n: number, o: { closed?: boolean; by?: string } = {}): Promise<void> {
    await db.pool.query('DELETE FROM qa_task');
    await db.pool.query(
      `INSERT INTO qa_task (id, payload, rsv_by, rsv_at, rsv_tries, started_at, ended_at, ok)
       SELECT g, 'p', $2::text, CASE WHEN $2::text IS NULL THEN NULL ELSE now() - interval '1 hour' END,
              CASE WHEN $3 THEN 1 ELSE 0 END,
              CASE WHEN $3 THEN now() - interval '2 hours' END,
              CASE WHEN $3 THEN now() - interval '1 hour' END, CASE WHEN $3 THEN true END
         FROM generate_series(1, $1) g`,
      [n, o.by ?? null, o.closed === true],
    );
  }

  const snapshot = async (): Promise<string> =>
    JSON.stringify((await db.pool.query('SELECT * FROM qa_task ORDER BY id')).rows);

  test('reserveTasks', async () => {
    await rows(4);
    const before = await snapshot();
    for (const [what, fence] of refused()) {
      assert.equal((await reserveTasks(db.pool, t, ['w1', 'w2'], fence)).size, 0, what);
    }
    assert.equal(await snapshot(), before);
    const given = await reserveTasks(db.pool, t, ['w1', 'w2'], fenceOf(current));
    assert.deepEqual([...given.values()], [1, 1], 'the current holder reserves');
    await rows(4);
    await expireLease();
    assert.equal((await reserveTasks(db.pool, t, ['w1'], fenceOf(current))).size, 0, 'expired');
    assert.equal(await snapshot(), before);
  });

  test('reopenTasks (relaunching hook and recurrence)', async () => {
    await rows(3, { closed: true, by: 'w1' });
    const before = await snapshot();
    const byHook = (fence: Fence) =>
      reopenTasks(db.pool, t, { where: { sql: 'id > $1', params: [0] }, limit: 10, fence });
    const byAge = (fence: Fence) =>
      reopenTasks(db.pool, t, { endedMoreThanSecondsAgo: 1, limit: 10, fence });
    // One after the other: run at once, the first to lock the rows would leave none to the other.
    const reopen = async (fence: Fence) => [await byHook(fence), await byAge(fence)];
    for (const [what, fence] of refused()) {
      assert.deepEqual(
        (await reopen(fence)).map((r) => r.length),
        [0, 0],
        what,
      );
    }
    assert.equal(await snapshot(), before);
    await expireLease();
    assert.deepEqual(
      (await reopen(fenceOf(current))).map((r) => r.length),
      [0, 0],
      'expired',
    );
    assert.equal(await snapshot(), before);
    await db.pool.query(`UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() + interval '1 hour'`);
    assert.equal((await byHook(fenceOf(current))).length, 3, 'the current holder reopens');
    await rows(3, { closed: true, by: 'w1' });
    assert.equal((await byAge(fenceOf(current))).length, 3, 'the current holder recurs');
  });

  test('releaseTasks (overrun and dead node)', async () => {
    await rows(3, { by: 'n1.1' });
    await db.pool.query("UPDATE qa_task SET started_at = now() - interval '1 hour'");
    const before = await snapshot();
    const release = async (fence: Fence) => {
      const overrun = await releaseTasks(db.pool, t, {
        reason: 'overrun',
        startedOlderThanSeconds: 60,
        fence,
      });
      const dead = await releaseTasks(db.pool, t, { reason: 'dead', nodes: ['n1'], fence });
      return overrun.requeued + overrun.closed + dead.requeued + dead.closed;
    };
    for (const [what, fence] of refused()) assert.equal(await release(fence), 0, what);
    await expireLease();
    assert.equal(await release(fenceOf(current)), 0, 'expired');
    assert.equal(await snapshot(), before);
    await db.pool.query(`UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() + interval '1 hour'`);
    assert.equal(await release(fenceOf(current)), 3, 'the current holder releases');
  });

  test('writeAssignments', async () => {
    const changes = new Map<string, string | null>([
      ['w1', 'qa'],
      ['w2', null],
    ]);
    const write = (token: LeaseToken) =>
      writeAssignments(db.pool, SCHEMA, CLUSTER, changes, token.epoch, fenceOf(token));
    assert.equal(await write(stale), 0, 'stale epoch');
    assert.equal(await write(foreign()), 0, 'another holder');
    await expireLease();
    assert.equal(await write(current), 0, 'expired');
    assert.equal((await readAssignments(db.pool, SCHEMA, CLUSTER)).size, 0);
    await db.pool.query(`UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() + interval '1 hour'`);
    assert.equal(await write(current), 2, 'the current holder assigns');
    const read = await readAssignments(db.pool, SCHEMA, CLUSTER);
    assert.deepEqual(read.get('w1'), { job: 'qa', epoch: current.epoch });
  });
});

import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { defineCluster, defineJob } from '../src/config/define.js';
import { ConfigError } from '../src/config/errors.js';
import { reservationColumns, type JobInput } from '../src/config/schema.js';
import { migrate } from '../src/db/migrations.js';
import { inspectJobTable, TableError, type JobTable } from '../src/db/table.js';
import { migrateJobTable } from '../src/db/user-table.js';
import { releaseTasks } from '../src/dispatch/release.js';
import {
  countTasks,
  queuedPerWorker,
  reopenTasks,
  reserveTasks,
} from '../src/dispatch/statements.js';
import { hookContext } from '../src/hooks/run.js';
import { fenceParams, fenceSql } from '../src/lease/fence.js';
import { leasesTable } from '../src/lease/statements.js';
import { finishTasks, startTasks, unstartTasks } from '../src/worker/statements.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { cleanUp, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/**
 * Jobs that keep no startedAt and/or no endedAt column. Without startedAt, reservedAt carries
 * the start (NULL while queued); without endedAt, success marks a closed task
 * (src/db/task-state.ts). Every guarantee of the full set of columns is checked again here.
 */

const SCHEMA = 'pampa';
const CLUSTER = 'core-columns';
const HOLDER = 'agent-a';
const EPOCH = 3;
const silent = pino({ level: 'silent' });
const run = () => undefined;

function fence(epoch = EPOCH) {
  return {
    sql: (first: number) => fenceSql(leasesTable(SCHEMA), first),
    params: fenceParams({ cluster: CLUSTER, holder: HOLDER, epoch }),
  };
}

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);

    return err.message;
  }
  assert.fail('no error thrown');
}

/**
 * - noStart: no startedAt; the other columns added by migrateJobTable (timestamptz);
 * - noEnd: no endedAt, the user's own `timestamp` columns, no error column;
 * - neither: no startedAt and no endedAt, the rest added by migrateJobTable.
 */
const JOBS: Record<'noStart' | 'noEnd' | 'neither', JobInput> = {
  noStart: {
    name: 'ns',
    table: 'nostart',
    primaryKey: 'id',
    columns: { startedAt: null },
    maxTryTimes: 3,
    retryBackoffSeconds: 30,
    run,
  },
  noEnd: {
    name: 'ne',
    table: 'noend',
    primaryKey: 'id',
    columns: {
      reservedBy: 'by',
      reservedAt: 'at',
      tries: 'tries',
      startedAt: 'started',
      endedAt: null,
      success: 'ok',
      error: null,
    },
    maxTryTimes: 2,
    retryBackoffSeconds: 30,
    run,
  },
  neither: {
    name: 'nn',
    table: 'neither',
    primaryKey: 'id',
    columns: { startedAt: null, endedAt: null },
    maxTryTimes: 3,
    retryBackoffSeconds: 30,
    run,
  },
};
const KEYS = Object.keys(JOBS) as (keyof typeof JOBS)[];

describe('config: optional startedAt and endedAt columns', () => {
  test('null keeps no column; the state moves to reservedAt and success', () => {
    assert.deepEqual(reservationColumns(defineJob(JOBS.neither)), {
      reservedBy: 'nn_reserved_by',
      reservedAt: 'nn_reserved_at',
      tries: 'nn_tries',
      startedAt: null,
      endedAt: null,
      success: 'nn_success',
      error: 'nn_error',
    });
    // Without startedAt a job may still recur: its end time is kept.
    const j = defineJob({ ...JOBS.noStart, recurEverySeconds: 60 });
    assert.equal(reservationColumns(j).endedAt, 'ns_ended_at');
  });

  test('a job without endedAt needs success, and cannot recur; the message names the field', () => {
    let m = configError(() =>
      defineJob({ ...JOBS.neither, columns: { endedAt: null, success: null } }),
    );
    assert.match(m, /job "nn"/);
    assert.match(
      m,
      /columns\.success: a job without an endedAt column needs its success column: a task is closed when success is set .*\(got null\)/,
    );

    m = configError(() => defineJob({ ...JOBS.noEnd, recurEverySeconds: 60 }));
    assert.match(
      m,
      /recurEverySeconds: a recurrent job needs an endedAt column \(a closed row is due again after its end time\), but columns\.endedAt is null \(got 60\)/,
    );

    m = configError(() => defineJob({ ...JOBS.neither, cron: '*/5 * * * *' }));
    assert.match(m, /cron: a recurrent job needs an endedAt column/);

    // The same rules hold when the cluster is validated as a whole (a config module).
    m = configError(() =>
      defineCluster({
        name: 'prod',
        jobs: [{ ...JOBS.noEnd, cron: '0 * * * *' } as unknown as ReturnType<typeof defineJob>],
      }),
    );
    assert.match(m, /jobs\[0\]\.cron: a recurrent job needs an endedAt column/);
  });
});

describe('statements for jobs without startedAt / endedAt, on real PostgreSQL', () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  const t = {} as Record<keyof typeof JOBS, JobTable>;

  before(async () => {
    db = await createTestDatabase();
    pool = db.pool;
    await migrate(pool, SCHEMA);
    await pool.query(`
      CREATE TABLE nostart (id bigint PRIMARY KEY, note text DEFAULT 'keep-me');
      CREATE TABLE noend (id bigint PRIMARY KEY, note text DEFAULT 'keep-me', by varchar(500),
        at timestamp, tries integer DEFAULT 0, started timestamp, ok boolean);
      CREATE TABLE neither (id bigint PRIMARY KEY, note text DEFAULT 'keep-me');
    `);
    for (const key of KEYS) {
      const job = defineJob(JOBS[key]);
      await migrateJobTable(pool, job, SCHEMA, silent);
      t[key] = await inspectJobTable(pool, job);
    }
    await pool.query(
      `INSERT INTO ${leasesTable(SCHEMA)} (cluster, holder, epoch, expires_at, acquired_at, renewed_at)
       VALUES ($1, $2, $3, now() + interval '1 hour', now(), now())`,
      [CLUSTER, HOLDER, EPOCH],
    );
  });
  after(async () => {
    await db?.drop();
  });
  beforeEach(async () => {
    await pool.query(
      `UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() + interval '1 hour' WHERE cluster = $1`,
      [CLUSTER],
    );
  });

  async function reset(tb: JobTable, n: number): Promise<void> {
    await pool.query(`DELETE FROM ${tb.table}`);
    await pool.query(`INSERT INTO ${tb.table} (id) SELECT generate_series(1, $1)`, [n]);
  }

  /** The reservation columns of a row (NULL for a column the job does not keep). */
  async function row(tb: JobTable, id: number): Promise<Record<string, unknown>> {
    const { col } = tb;
    const r = await pool.query(
      `SELECT ${col.reservedBy} AS by, ${col.reservedAt} AS at, ${col.tries} AS tries,
              ${col.startedAt ?? 'NULL'} AS started, ${col.endedAt ?? 'NULL'} AS ended,
              ${col.success ?? 'NULL::boolean'} AS success, ${col.error ?? 'NULL::text'} AS error,
              note
         FROM ${tb.table} WHERE id = $1`,
      [id],
    );
    assert.equal(r.rowCount, 1);

    return r.rows[0];
  }

  /** Seconds from the DB's "now" (in the column's convention) to the row's reservedAt. */
  async function atFromNow(tb: JobTable, id: number): Promise<number> {
    const r = await pool.query<{ s: number }>(
      `SELECT extract(epoch FROM ${tb.col.reservedAt} - ${tb.now.reservedAt})::float8 AS s
         FROM ${tb.table} WHERE id = $1`,
      [id],
    );

    return Number(r.rows[0].s);
  }

  async function counters(tb: JobTable) {
    const { total, completed, pending, failed, running } = await countTasks(pool, tb);

    return { total, completed, pending, failed, running };
  }

  /** The rows in each state by the hooks' ctx.state conditions. */
  async function byState(tb: JobTable) {
    const { state } = hookContext(tb, pool, silent);
    const r = await pool.query<{ queued: number; running: number; closed: number }>(
      `SELECT count(*) FILTER (WHERE ${state.queued})::int AS queued,
              count(*) FILTER (WHERE ${state.running})::int AS running,
              count(*) FILTER (WHERE ${state.closed})::int AS closed
         FROM ${tb.table}`,
    );

    return r.rows[0];
  }

  test('migrate adds only the configured columns; the indexes name none that is left out', async () => {
    const columns = async (table: string) =>
      (
        await pool.query<{ name: string }>(
          `SELECT attname AS name FROM pg_attribute
            WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
          [table],
        )
      ).rows.map((r) => r.name);
    assert.deepEqual(await columns('nostart'), [
      'id',
      'note',
      'ns_reserved_by',
      'ns_reserved_at',
      'ns_tries',
      'ns_ended_at',
      'ns_success',
      'ns_error',
    ]);
    assert.deepEqual(await columns('noend'), ['id', 'note', 'by', 'at', 'tries', 'started', 'ok']);
    assert.deepEqual(await columns('neither'), [
      'id',
      'note',
      'nn_reserved_by',
      'nn_reserved_at',
      'nn_tries',
      'nn_success',
      'nn_error',
    ]);

    const indexes = async (table: string) =>
      (
        await pool.query<{ name: string; def: string }>(
          `SELECT indexname AS name, indexdef AS def FROM pg_indexes
            WHERE tablename = $1 AND indexname <> $1 || '_pkey' ORDER BY 1`,
          [table],
        )
      ).rows;
    const ns = await indexes('nostart');
    assert.deepEqual(
      ns.map((i) => i.name),
      ['nostart_ns_free', 'nostart_ns_held'],
    );
    for (const i of ns) assert.match(i.def, /ns_ended_at IS NULL/);
    for (const [table, job, open] of [
      ['noend', 'ne', 'ok IS NULL'],
      ['neither', 'nn', 'nn_success IS NULL'],
    ]) {
      const got = await indexes(table);
      assert.deepEqual(
        got.map((i) => i.name),
        [`${table}_${job}_free_by_success`, `${table}_${job}_held_by_success`],
      );
      for (const i of got) {
        assert.ok(i.def.includes(open), i.def);
        assert.doesNotMatch(i.def, /ended|started/, i.def);
      }
    }

    // Migrating again adds nothing.
    for (const key of KEYS) {
      const again = await migrateJobTable(pool, defineJob(JOBS[key]), SCHEMA, silent);
      assert.equal(again.filter((s) => s.startsWith('ALTER TABLE')).length, 0, again.join('\n'));
    }

    // What carries each time.
    assert.equal(t.noStart.startTime.col, '"ns_reserved_at"');
    assert.equal(t.noStart.reservedTime, null);
    assert.equal(t.noStart.endTime?.col, '"ns_ended_at"');
    assert.equal(t.noEnd.startTime.col, '"started"');
    assert.match(t.noEnd.startTime.now, /AT TIME ZONE 'UTC'/);
    assert.equal(t.noEnd.reservedTime?.col, '"at"');
    assert.equal(t.noEnd.endTime, null);
    assert.deepEqual([t.neither.now.startedAt, t.neither.now.endedAt], [null, null]);
  });

  test('a configured column that does not exist is named, with the columns that do', async () => {
    await assert.rejects(
      inspectJobTable(
        pool,
        defineJob({
          ...JOBS.neither,
          columns: { startedAt: null, endedAt: null, success: 'done' },
        }),
      ),
      (err: Error) => {
        assert.ok(err instanceof TableError);
        assert.match(err.message, /table neither has no column done \(option columns\.success\)/);
        assert.match(err.message, /its columns are: id, note, nn_reserved_by, .*nn_error/);
        assert.doesNotMatch(err.message, /started_at|ended_at/, 'no omitted column is asked for');

        return true;
      },
    );
  });

  for (const key of KEYS) {
    test(`[${key}] reserve, start, finish; done is final; a finish after a relaunch changes nothing`, async () => {
      const tb = t[key];
      await reset(tb, 3);
      const given = await reserveTasks(pool, tb, ['w1', 'w1'], fence());
      assert.deepEqual(Object.fromEntries(given), { w1: 2 });
      let r = await row(tb, 1);
      assert.equal(r.by, 'w1');
      if (tb.reservedTime) assert.ok(r.at, 'the reservation time is kept');
      else assert.equal(r.at, null, 'a queued task has reservedAt NULL');
      assert.deepEqual(Object.fromEntries(await queuedPerWorker(pool, tb, ['w1', 'w2'])), {
        w1: 2,
      });
      assert.deepEqual(await byState(tb), { queued: 2, running: 0, closed: 0 });
      assert.deepEqual(await counters(tb), {
        total: 3,
        completed: 0,
        pending: 3,
        failed: 0,
        running: 0,
      });

      const started = await startTasks(pool, tb, 'w1', 10);
      assert.deepEqual(
        started.map((s) => [s.pk, s.attempt]),
        [
          ['1', 1],
          ['2', 1],
        ],
      );
      assert.equal((await startTasks(pool, tb, 'w1', 10)).length, 0, 'not started twice');
      assert.equal((await startTasks(pool, tb, 'w2', 10)).length, 0, 'not by another worker');
      r = await row(tb, 1);
      assert.equal(Number(r.tries), 1);
      const startedAt = tb.col.startedAt ? r.started : r.at;
      assert.ok(startedAt, 'the start time is set');
      const off = await pool.query<{ s: number }>(
        `SELECT extract(epoch FROM ${tb.startTime.col} - ${tb.startTime.now})::float8 AS s
           FROM ${tb.table} WHERE id = 1`,
      );
      assert.ok(Math.abs(Number(off.rows[0].s)) < 5, `start time off by ${off.rows[0].s} s`);
      assert.deepEqual(await queuedPerWorker(pool, tb, ['w1']), new Map());
      assert.deepEqual(await byState(tb), { queued: 0, running: 2, closed: 0 });
      assert.deepEqual(await counters(tb), {
        total: 3,
        completed: 0,
        pending: 1,
        failed: 0,
        running: 2,
      });

      // Success closes 1; then finishing, releasing or reserving it changes nothing.
      const written = await finishTasks(pool, tb, 'w1', [
        { pk: '1', attempt: 1, ok: true, error: null },
      ]);
      assert.deepEqual([...written], ['1']);
      r = await row(tb, 1);
      assert.equal(r.success, true);
      if (tb.col.endedAt) assert.ok(r.ended);
      assert.equal(r.by, 'w1');
      assert.ok(tb.col.startedAt ? r.started : r.at, 'the start time stays');
      assert.equal(
        (await finishTasks(pool, tb, 'w1', [{ pk: '1', attempt: 1, ok: false, error: 'late' }]))
          .size,
        0,
      );
      assert.deepEqual(
        await releaseTasks(pool, tb, { reason: 'x', workers: ['w1'], onlyUnstarted: true }),
        { requeued: 0, closed: 0 },
      );
      assert.deepEqual(await row(tb, 1), r);

      // w1 is lost: 2 goes back with a try spent, 3 was never reserved.
      assert.deepEqual(await releaseTasks(pool, tb, { reason: 'worker lost', workers: ['w1'] }), {
        requeued: 1,
        closed: 0,
      });
      const back = await row(tb, 2);
      assert.deepEqual(
        [back.by, back.at, back.started, back.ended, Number(back.tries), back.success],
        [null, null, null, null, 1, null],
      );
      if (tb.col.error) assert.equal(back.error, 'worker lost');
      assert.deepEqual(await byState(tb), { queued: 0, running: 0, closed: 1 });

      // w2 takes 2 and 3; 2 runs again as attempt 2.
      assert.deepEqual(
        Object.fromEntries(await reserveTasks(pool, tb, ['w2', 'w2', 'w2'], fence())),
        { w2: 2 },
      );
      const again = await startTasks(pool, tb, 'w2', 1);
      assert.deepEqual(
        again.map((s) => [s.pk, s.attempt]),
        [['2', 2]],
      );
      const snap = await row(tb, 2);
      for (const [worker, attempt, ok] of [
        ['w1', 1, true],
        ['w1', 1, false],
        ['w2', 1, true],
      ] as const) {
        const stale = await finishTasks(pool, tb, worker, [
          { pk: '2', attempt, ok, error: ok ? null : 'stale' },
        ]);
        assert.equal(stale.size, 0, `${worker} attempt ${attempt} ok=${ok} was written`);
      }
      assert.equal(
        await unstartTasks(pool, tb, 'w1', [{ pk: '2', attempt: 1 }]),
        0,
        'a stale unstart changes nothing',
      );
      assert.deepEqual(await row(tb, 2), snap);
      assert.equal(
        (await finishTasks(pool, tb, 'w2', [{ pk: '2', attempt: 2, ok: true, error: null }])).size,
        1,
      );
      assert.deepEqual(await byState(tb), { queued: 1, running: 0, closed: 2 });
      assert.deepEqual(await counters(tb), {
        total: 3,
        completed: 2,
        pending: 1,
        failed: 0,
        running: 0,
      });
      assert.equal((await row(tb, 2)).note, 'keep-me');
    });
  }

  for (const key of KEYS) {
    test(`[${key}] a throwing task is retried after its backoff, then closed as failed`, async () => {
      const tb = t[key];
      const max = tb.job.maxTryTimes;
      await reset(tb, 1);
      for (let attempt = 1; attempt <= max; attempt++) {
        await reserveTasks(pool, tb, ['w1'], fence());
        const started = await startTasks(pool, tb, 'w1', 1);
        assert.deepEqual(
          started.map((s) => [s.pk, s.attempt]),
          [['1', attempt]],
        );
        const written = await finishTasks(pool, tb, 'w1', [
          { pk: '1', attempt, ok: false, error: `boom ${attempt}` },
        ]);
        assert.equal(written.size, 1);
        const r = await row(tb, 1);
        assert.equal(Number(r.tries), attempt);
        if (tb.col.error) assert.equal(r.error, `boom ${attempt}`);
        if (attempt < max) {
          // Open, waiting: success stays NULL (it marks closure), reservedAt holds the backoff.
          assert.deepEqual([r.by, r.started, r.ended, r.success], [null, null, null, null]);
          const want = 30 * 2 ** (attempt - 1);
          const at = await atFromNow(tb, 1);
          assert.ok(Math.abs(at - want) < 5, `backoff ${at} s, want ~${want}`);
          assert.equal((await reserveTasks(pool, tb, ['x'], fence())).size, 0, 'backing off');
          assert.deepEqual(await counters(tb), {
            total: 1,
            completed: 0,
            pending: 1,
            failed: 0,
            running: 0,
          });
          await pool.query(
            `UPDATE ${tb.table} SET ${tb.col.reservedAt} = ${tb.now.reservedAt} - interval '1 s'`,
          );
        } else {
          assert.equal(r.success, false);
          assert.equal(Number(r.tries), max);
          if (tb.col.endedAt) assert.ok(r.ended);
          await pool.query(
            `UPDATE ${tb.table} SET ${tb.col.reservedAt} = ${tb.now.reservedAt} - interval '1 s'`,
          );
          assert.equal((await reserveTasks(pool, tb, ['x'], fence())).size, 0, 'closed for good');
          assert.equal((await startTasks(pool, tb, 'w1', 1)).length, 0);
          assert.deepEqual(await counters(tb), {
            total: 1,
            completed: 0,
            pending: 0,
            failed: 1,
            running: 0,
          });
        }
      }
    });
  }

  for (const key of KEYS) {
    test(`[${key}] an overrun task is relaunched from its start; the last try closes it`, async () => {
      const tb = t[key];
      const { col } = tb;
      const max = tb.job.maxTryTimes;
      await reset(tb, 4);
      // 1: on its first try; 2: on its last; 3, 4: queued.
      await pool.query(`UPDATE ${tb.table} SET ${col.tries} = $1 WHERE id = 2`, [max - 1]);
      await reserveTasks(pool, tb, ['w1', 'w1', 'w1', 'w1'], fence());
      assert.equal((await startTasks(pool, tb, 'w1', 2)).length, 2);
      const overrun = (o: { reservedOlderThanSeconds?: number; epoch?: number } = {}) =>
        releaseTasks(pool, tb, {
          reason: 'no result within maxJobDurationMinutes',
          startedOlderThanSeconds: 60,
          reservedOlderThanSeconds: o.reservedOlderThanSeconds ?? 60,
          fence: fence(o.epoch),
        });
      assert.deepEqual(await overrun(), { requeued: 0, closed: 0 }, 'nothing is old yet');
      await pool.query(
        `UPDATE ${tb.table} SET ${tb.startTime.col} = ${tb.startTime.now} - interval '1 hour'
          WHERE id IN (1, 2)`,
      );
      assert.deepEqual(await overrun({ epoch: EPOCH - 1 }), { requeued: 0, closed: 0 }, 'fenced');
      assert.deepEqual(await overrun(), { requeued: 1, closed: 1 });
      const r1 = await row(tb, 1);
      assert.deepEqual([r1.by, r1.at, r1.started, Number(r1.tries)], [null, null, null, 1]);
      const r2 = await row(tb, 2);
      assert.equal(r2.success, false);
      assert.equal(Number(r2.tries), max);
      if (col.endedAt) assert.ok(r2.ended);
      if (col.error) {
        assert.equal(r2.error, `no result within maxJobDurationMinutes; tries used up (${max})`);
      }
      assert.deepEqual(await counters(tb), {
        total: 4,
        completed: 0,
        pending: 3,
        failed: 1,
        running: 0,
      });

      // An unstarted reservation goes back after maxReservedSeconds only when the job keeps its
      // reservation time (startedAt kept); otherwise it waits for its worker.
      const queued = await releaseTasks(pool, tb, {
        reason: 'not started in time',
        reservedOlderThanSeconds: 0,
        fence: fence(),
      });
      if (tb.reservedTime) {
        assert.deepEqual(queued, { requeued: 2, closed: 0 });
        const r3 = await row(tb, 3);
        assert.deepEqual([r3.by, r3.at, Number(r3.tries ?? 0)], [null, null, 0]);
      } else {
        assert.deepEqual(queued, { requeued: 0, closed: 0 });
        assert.equal((await row(tb, 3)).by, 'w1');
      }
    });
  }

  for (const key of KEYS) {
    test(`[${key}] drain gives back unstarted reservations; a dead node's tasks go back`, async () => {
      const tb = t[key];
      await reset(tb, 4);
      await reserveTasks(pool, tb, ['n1.1', 'n1.1', 'n1.1', 'n1.1'], fence());
      const started = await startTasks(pool, tb, 'n1.1', 2);
      assert.equal(started.length, 2);
      assert.deepEqual(
        await releaseTasks(pool, tb, { reason: 'drain', workers: ['n1.1'], onlyUnstarted: true }),
        { requeued: 2, closed: 0 },
      );
      for (const id of [3, 4]) {
        const r = await row(tb, id);
        assert.deepEqual([r.by, r.at, Number(r.tries ?? 0), r.error], [null, null, 0, null]);
      }
      assert.deepEqual(await byState(tb), { queued: 0, running: 2, closed: 0 });

      // A batch started but never run is given back as it was before the start.
      assert.equal(await unstartTasks(pool, tb, 'n1.1', [{ pk: '1', attempt: 1 }]), 1);
      const r1 = await row(tb, 1);
      assert.deepEqual([r1.by, r1.at, r1.started, Number(r1.tries)], [null, null, null, 0]);

      // The node dies: its running task goes back, a try spent.
      assert.deepEqual(
        await releaseTasks(pool, tb, { reason: 'worker lost: its node died', nodes: ['n1'] }),
        { requeued: 1, closed: 0 },
      );
      const r2 = await row(tb, 2);
      assert.deepEqual([r2.by, r2.at, Number(r2.tries)], [null, null, 1]);
      assert.deepEqual(await counters(tb), {
        total: 4,
        completed: 0,
        pending: 4,
        failed: 0,
        running: 0,
      });
      assert.equal((await reserveTasks(pool, tb, Array(9).fill('n2.1'), fence())).size, 1);
      assert.equal((await startTasks(pool, tb, 'n2.1', 9)).length, 4);
    });
  }

  test('two connections starting the same worker queue start each task once', async () => {
    const tb = t.neither;
    await reset(tb, 60);
    await reserveTasks(pool, tb, Array(60).fill('w1'), fence());
    const a = await pool.connect();
    const b = await pool.connect();
    try {
      const [x, y] = await Promise.all([startTasks(a, tb, 'w1', 40), startTasks(b, tb, 'w1', 40)]);
      const pks = [...x, ...y].map((s) => s.pk);
      assert.equal(pks.length, 60);
      assert.equal(new Set(pks).size, 60, 'a task was started twice');
      assert.equal(await scalar(pool, `SELECT count(*)::int FROM neither WHERE nn_tries <> 1`), 0);
    } finally {
      a.release();
      b.release();
    }
  });

  for (const key of ['noEnd', 'neither'] as const) {
    test(`[${key}] a relaunching hook's condition reopens closed rows only`, async () => {
      const tb = t[key];
      await reset(tb, 3);
      await reserveTasks(pool, tb, ['w1', 'w1', 'w1'], fence());
      await startTasks(pool, tb, 'w1', 3);
      await pool.query(
        `UPDATE ${tb.table} SET ${tb.col.tries} = ${tb.job.maxTryTimes} WHERE id = 2`,
      );
      await finishTasks(pool, tb, 'w1', [
        { pk: '1', attempt: 1, ok: true, error: null },
        { pk: '2', attempt: tb.job.maxTryTimes, ok: false, error: 'last' },
      ]);
      const reopened = await reopenTasks(pool, tb, {
        where: { sql: 'id = ANY($1::bigint[])', params: [[1, 2, 3]] },
        limit: 10,
        fence: fence(),
      });
      assert.deepEqual(reopened.map((r) => String(r.id)).sort(), ['1', '2'], '3 is running');
      for (const id of [1, 2]) {
        const r = await row(tb, id);
        assert.deepEqual(
          [r.by, r.at, r.started, Number(r.tries), r.success],
          [null, null, null, 0, null],
        );
      }
      assert.deepEqual(await byState(tb), { queued: 0, running: 1, closed: 0 });
      await assert.rejects(
        reopenTasks(pool, tb, { endedMoreThanSecondsAgo: 1, limit: 10, fence: fence() }),
        /keeps no endedAt column/,
      );
    });
  }
});

describe('agents over a table without startedAt and endedAt', { concurrency: false }, () => {
  after(cleanUp);

  test(
    'two agents, one drained midway: every row done exactly once, retries included',
    { timeout: 120_000 },
    async () => {
      const columns = { startedAt: null, endedAt: null };
      const s = await setupJobs({
        sql: `CREATE TABLE bare (id bigint PRIMARY KEY, payload text NOT NULL, closed_by_hook boolean);
          INSERT INTO bare SELECT g, 'p' || g FROM generate_series(1, 400) g`,
        migrate: [{ name: 'bare', table: 'bare', primaryKey: 'id', columns }],
        body: `jobs: [defineJob({ name: 'bare', table: 'bare', primaryKey: 'id',
          columns: ${JSON.stringify(columns)}, retryBackoffSeconds: 0.2, queueSize: 4,
          run: async (task, ctx) => {
            await record(ctx, task);
            await sleep(25);
            if (Number(task.id) % 10 === 0 && ctx.attempt === 1) throw new Error('first try fails');
          },
          occupied: async (worker, ctx) => Number((await ctx.db.query(
            'SELECT count(*) FROM ' + ctx.table + ' WHERE ' + ctx.columns.reservedBy + ' = $1 AND '
              + ctx.state.queued, [worker])).rows[0].count),
          finisher: (row, result, ctx) => result.closed &&
            ctx.db.query('UPDATE bare SET closed_by_hook = $2 WHERE id = $1', [row.id, result.ok]),
        })],`,
      });
      const a = s.start('n1', 2);
      const b = s.start('n2', 2);
      await waitFor(
        'both agents running tasks',
        async () =>
          (await scalar<boolean>(
            s.pool,
            `(SELECT count(*) FROM exec_log WHERE worker LIKE 'n1.%') >= 10
              AND (SELECT count(*) FROM exec_log WHERE worker LIKE 'n2.%') >= 10`,
          )) === true,
        60_000,
        50,
        s.logs,
      );
      assert.deepEqual(await b.term(), { code: 0, signal: null }, s.logs());
      await waitFor(
        'every row closed',
        async () =>
          (await scalar(
            s.pool,
            'SELECT count(*)::int FROM bare WHERE bare_success IS NOT NULL',
          )) === 400,
        60_000,
        100,
        s.logs,
      );

      const cols = await s.pool.query<{ name: string }>(
        `SELECT attname AS name FROM pg_attribute
          WHERE attrelid = 'bare'::regclass AND attnum > 0 AND NOT attisdropped`,
      );
      assert.ok(!cols.rows.some((c) => /started|ended/.test(c.name)), 'no start or end column');
      const rows = await s.pool.query<{ id: string; ok: boolean; tries: number; hook: boolean }>(
        `SELECT id, bare_success AS ok, bare_tries AS tries, closed_by_hook AS hook, bare_error AS err,
                bare_reserved_by AS by, bare_reserved_at AS at
           FROM bare ORDER BY id`,
      );
      const execs = await s.pool.query<{ id: string; attempts: number[] }>(
        `SELECT task_id AS id, array_agg(attempt ORDER BY attempt) AS attempts
           FROM exec_log GROUP BY task_id`,
      );
      const attempts = new Map(execs.rows.map((e) => [e.id, e.attempts]));
      for (const r of rows.rows) {
        const want = Number(r.id) % 10 === 0 ? [1, 2] : [1];
        assert.deepEqual(
          attempts.get(r.id),
          want,
          `executions of row ${r.id}: ${JSON.stringify(r)}`,
        );
        assert.deepEqual([r.ok, r.tries, r.hook], [true, want.length, true], `row ${r.id}`);
      }
      const tb = await inspectJobTable(
        s.pool,
        defineJob({ ...JOBS.neither, name: 'bare', table: 'bare' }),
      );
      assert.deepEqual(await countTasks(s.pool, tb), {
        total: 400,
        completed: 400,
        pending: 0,
        failed: 0,
        running: 0,
      });
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

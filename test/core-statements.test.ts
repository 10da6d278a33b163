import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { defineJob } from '../src/config/define.js';
import type { JobInput } from '../src/config/schema.js';
import { migrate } from '../src/db/migrations.js';
import { inspectJobTable, type JobTable } from '../src/db/table.js';
import { migrateJobTable } from '../src/db/user-table.js';
import { releaseTasks } from '../src/dispatch/release.js';
import { countTasks, queuedPerWorker, reserveTasks } from '../src/dispatch/statements.js';
import { fenceParams, fenceSql } from '../src/lease/fence.js';
import { leasesTable } from '../src/lease/statements.js';
import {
  finishTasks,
  MAX_ERROR_TEXT,
  safeErrorText,
  startTasks,
} from '../src/worker/statements.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { QA_COLUMNS } from './helpers/fixture.js';

const SCHEMA = 'pampa';
const CLUSTER = 'core-stmt';
const HOLDER = 'agent-a';
const EPOCH = 7;
const silent = pino({ level: 'silent' });
const run = () => undefined;

type Fence = { sql: (first: number) => string; params: unknown[] };

function fence(epoch = EPOCH, holder = HOLDER): Fence {
  return {
    sql: (first) => fenceSql(leasesTable(SCHEMA), first),
    params: fenceParams({ cluster: CLUSTER, holder, epoch }),
  };
}

/**
 * Three job tables, each exercising one kind of naming or time type:
 * - mixed: `"My Schema"."order"`, text pk `"Key"`, reservation columns added by migrateJobTable
 *   (timestamptz), job name with capitals so the derived column names need quoting;
 * - naive: `"user"` (reserved word) with plain `timestamp` columns named like Fixture F;
 * - tz: `"Select"` with timestamptz columns named by the user, no success/error columns kept.
 */
const JOBS: Record<'mixed' | 'naive' | 'tz', JobInput> = {
  mixed: {
    name: 'OrderJob',
    table: 'My Schema.order',
    primaryKey: 'Key',
    maxTryTimes: 3,
    retryBackoffSeconds: 30,
    run,
  },
  naive: {
    name: 'naive',
    table: 'user',
    primaryKey: 'id',
    columns: QA_COLUMNS,
    maxTryTimes: 3,
    retryBackoffSeconds: 30,
    run,
  },
  tz: {
    name: 'tz',
    table: 'public.Select',
    primaryKey: 'group',
    columns: {
      reservedBy: 'By',
      reservedAt: 'At',
      tries: 'Tries',
      startedAt: 'Started',
      endedAt: 'Ended',
      success: null,
      error: null,
    },
    maxTryTimes: 2,
    retryBackoffSeconds: 30,
    run,
  },
};

describe('core statements on real PostgreSQL', () => {
  let db: TestDatabase;
  /** Session TimeZone far from UTC, to catch zone mix-ups in `timestamp` columns. */
  let ba: pg.Pool;
  const t = {} as Record<keyof typeof JOBS, JobTable>;

  before(async () => {
    db = await createTestDatabase();
    ba = new pg.Pool({
      connectionString: db.url,
      max: 6,
      options: '-c TimeZone=America/Argentina/Buenos_Aires',
    });
    ba.on('error', () => undefined);
    await migrate(ba, SCHEMA);
    await ba.query(`
      CREATE SCHEMA "My Schema";
      CREATE TABLE "My Schema"."order" ("Key" text PRIMARY KEY, "select" text,
        note text DEFAULT 'keep-me');
      CREATE TABLE "user" (id bigint PRIMARY KEY, payload text, note text DEFAULT 'keep-me',
        rsv_by varchar(500), rsv_at timestamp, rsv_tries integer DEFAULT 0,
        started_at timestamp, ended_at timestamp, ok boolean, err text);
      CREATE TABLE "Select" ("group" integer PRIMARY KEY, note text DEFAULT 'keep-me',
        "By" text, "At" timestamptz, "Tries" integer, "Started" timestamptz, "Ended" timestamptz);
    `);
    for (const key of Object.keys(JOBS) as (keyof typeof JOBS)[]) {
      const job = defineJob(JOBS[key]);
      await migrateJobTable(ba, job, SCHEMA, silent);
      t[key] = await inspectJobTable(ba, job);
    }
    await ba.query(
      `INSERT INTO ${leasesTable(SCHEMA)} (cluster, holder, epoch, expires_at, acquired_at, renewed_at)
       VALUES ($1, $2, $3, now() + interval '1 hour', now(), now())`,
      [CLUSTER, HOLDER, EPOCH],
    );
  });
  after(async () => {
    await ba?.end();
    await db?.drop();
  });

  /** Empties a job table and inserts keys 1..n (as the pk's type). */
  async function reset(tb: JobTable, n: number): Promise<void> {
    await ba.query(`DELETE FROM ${tb.table}`);
    await ba.query(
      `INSERT INTO ${tb.table} (${tb.pk}) SELECT g::text::${tb.pkType} FROM generate_series(1, $1) g`,
      [n],
    );
  }

  async function row(tb: JobTable, pk: string): Promise<Record<string, unknown>> {
    const { col } = tb;
    const r = await ba.query(
      `SELECT ${col.reservedBy} AS by, ${col.reservedAt} AS at, ${col.tries} AS tries,
              ${col.startedAt} AS started, ${col.endedAt} AS ended,
              ${col.success ?? 'NULL::boolean'} AS success, ${col.error ?? 'NULL::text'} AS error,
              note
         FROM ${tb.table} WHERE ${tb.pk}::text = $1`,
      [pk],
    );
    assert.equal(r.rowCount, 1, `row ${pk} of ${tb.table}`);

    return r.rows[0];
  }

  /** Seconds from the DB's "now" (in the column's convention) to the row's reservedAt. */
  async function atFromNow(tb: JobTable, pk: string): Promise<number> {
    const r = await ba.query<{ s: number }>(
      `SELECT extract(epoch FROM ${tb.col.reservedAt} - ${tb.now.reservedAt})::float8 AS s
         FROM ${tb.table} WHERE ${tb.pk}::text = $1`,
      [pk],
    );

    return Number(r.rows[0].s);
  }

  /** Reserves, then starts, one round for `worker`; returns the started tasks. */
  async function reserveAndStart(tb: JobTable, worker: string, slots = 1) {
    await reserveTasks(ba, tb, Array(slots).fill(worker), fence());
    return startTasks(ba, tb, worker, slots);
  }

  /** Makes a row given back with a backoff reservable now (the test does not wait 30 s). */
  async function expireBackoff(tb: JobTable): Promise<void> {
    await ba.query(
      `UPDATE ${tb.table} SET ${tb.col.reservedAt} = ${tb.now.reservedAt} - interval '1 second'
        WHERE ${tb.col.reservedBy} IS NULL AND ${tb.col.reservedAt} IS NOT NULL`,
    );
  }

  beforeEach(async () => {
    await ba.query(
      `UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() + interval '1 hour', epoch = $2
      WHERE cluster = $1`,
      [CLUSTER, EPOCH],
    );
  });

  test('migrateJobTable adds quoted columns once; inspectJobTable maps names and time types', async () => {
    const cols = await ba.query<{ name: string; type: string }>(
      `SELECT attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute
        WHERE attrelid = '"My Schema"."order"'::regclass AND attnum > 0 AND NOT attisdropped
        ORDER BY attnum`,
    );
    assert.deepEqual(
      cols.rows.map((c) => c.name),
      [
        'Key',
        'select',
        'note',
        'OrderJob_reserved_by',
        'OrderJob_reserved_at',
        'OrderJob_tries',
        'OrderJob_started_at',
        'OrderJob_ended_at',
        'OrderJob_success',
        'OrderJob_error',
      ],
    );
    assert.equal(t.mixed.table, '"My Schema"."order"');
    assert.equal(t.mixed.pk, '"Key"');
    assert.equal(t.mixed.pkType, 'text');
    assert.equal(t.mixed.now.reservedAt, 'now()');
    assert.equal(t.naive.table, '"user"');
    assert.match(t.naive.now.reservedAt, /AT TIME ZONE 'UTC'/);
    assert.equal(t.tz.col.success, null);
    assert.equal(t.tz.now.startedAt, 'now()');

    // A second migration adds no column, and the user's existing columns are not altered.
    const again = await migrateJobTable(ba, defineJob(JOBS.mixed), SCHEMA, silent);
    assert.equal(again.filter((s) => s.startsWith('ALTER TABLE')).length, 0, again.join('\n'));
    const naiveAgain = await migrateJobTable(ba, defineJob(JOBS.naive), SCHEMA, silent);
    assert.equal(naiveAgain.filter((s) => s.startsWith('ALTER TABLE')).length, 0);
    const types = await ba.query<{ type: string }>(
      `SELECT format_type(atttypid, atttypmod) AS type FROM pg_attribute
        WHERE attrelid = '"user"'::regclass AND attname = 'rsv_at'`,
    );
    assert.equal(types.rows[0].type, 'timestamp without time zone');
    const tz = await ba.query<{ tz: string }>(`SELECT current_setting('TimeZone') AS tz`);
    assert.equal(tz.rows[0].tz, 'America/Argentina/Buenos_Aires');
  });

  for (const key of ['mixed', 'naive', 'tz'] as const) {
    test(`[${key}] reserveTasks reserves only under a valid lease, spread over the slots`, async () => {
      const tb = t[key];
      await reset(tb, 10);
      // Wrong epoch, wrong holder: nothing.
      assert.equal((await reserveTasks(ba, tb, ['w1', 'w2'], fence(EPOCH - 1))).size, 0);
      assert.equal((await reserveTasks(ba, tb, ['w1', 'w2'], fence(EPOCH, 'intruder'))).size, 0);
      // Expired lease (by the DB clock): nothing.
      await ba.query(
        `UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() - interval '1 ms' WHERE cluster = $1`,
        [CLUSTER],
      );
      assert.equal((await reserveTasks(ba, tb, ['w1', 'w2'], fence())).size, 0);
      const none = await ba.query(
        `SELECT count(*)::int AS n FROM ${tb.table} WHERE ${tb.col.reservedBy} IS NOT NULL`,
      );
      assert.equal(none.rows[0].n, 0);

      await ba.query(
        `UPDATE ${leasesTable(SCHEMA)} SET expires_at = now() + interval '1 hour' WHERE cluster = $1`,
        [CLUSTER],
      );
      const given = await reserveTasks(ba, tb, ['w1', 'w2', 'w1', 'w2', 'w1'], fence());
      assert.deepEqual(Object.fromEntries(given), { w1: 3, w2: 2 });
      const q = await queuedPerWorker(ba, tb, ['w1', 'w2', 'w3']);
      assert.deepEqual(Object.fromEntries(q), { w1: 3, w2: 2 });
      // Reserved rows are not reserved again; the rest are.
      const more = await reserveTasks(ba, tb, Array(20).fill('w3'), fence());
      assert.deepEqual(Object.fromEntries(more), { w3: 5 });
      assert.equal((await reserveTasks(ba, tb, ['w4'], fence())).size, 0);

      // The reservation time is "now" in the column's convention (UTC wall time for
      // `timestamp`), whatever the session TimeZone.
      const r = await row(tb, '1');
      const off = await atFromNow(tb, '1');
      assert.ok(Math.abs(off) < 5, `reservedAt off by ${off} s`);
      assert.equal(Number(r.tries ?? 0), 0, 'reserving does not spend a try');
      assert.equal(r.note, 'keep-me');
    });
  }

  test('two dispatchers racing on different connections never reserve one row twice', async () => {
    const tb = t.mixed;
    await reset(tb, 0);
    await ba.query(`
      CREATE TABLE IF NOT EXISTS race_audit (pk text, by text, at timestamptz DEFAULT clock_timestamp());
      CREATE OR REPLACE FUNCTION race_audit() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO race_audit (pk, by) VALUES (NEW."Key", NEW."OrderJob_reserved_by"); RETURN NULL; END $$;
      DROP TRIGGER IF EXISTS race_audit ON "My Schema"."order";
      CREATE TRIGGER race_audit AFTER UPDATE OF "OrderJob_reserved_by" ON "My Schema"."order"
        FOR EACH ROW WHEN (NEW."OrderJob_reserved_by" IS NOT NULL) EXECUTE FUNCTION race_audit();
    `);
    const a = new pg.Client({ connectionString: db.url });
    const b = new pg.Client({ connectionString: db.url });
    await a.connect();
    await b.connect();
    try {
      let inserted = 0;
      let reservedTotal = 0;
      for (let round = 0; round < 40; round++) {
        const n = 15 + (round % 10);
        await ba.query(
          `INSERT INTO "My Schema"."order" ("Key") SELECT 'r' || $1 || '-' || g FROM generate_series(1, $2) g`,
          [round, n],
        );
        inserted += n;
        const [ga, gb] = await Promise.all([
          reserveTasks(
            a as unknown as pg.PoolClient,
            tb,
            ['a1', 'a2', 'a1', 'a2', 'a1', 'a2', 'a1', 'a2', 'a1', 'a2', 'a1', 'a2'],
            fence(),
          ),
          reserveTasks(
            b as unknown as pg.PoolClient,
            tb,
            ['b1', 'b2', 'b1', 'b2', 'b1', 'b2', 'b1', 'b2', 'b1', 'b2', 'b1', 'b2'],
            fence(),
          ),
        ]);
        const got = [...ga.values(), ...gb.values()].reduce((x, y) => x + y, 0);
        reservedTotal += got;
        const held = await ba.query(
          `SELECT count(*)::int AS n FROM "My Schema"."order" WHERE "OrderJob_reserved_by" IS NOT NULL`,
        );
        assert.equal(
          held.rows[0].n,
          reservedTotal,
          `round ${round}: returned counts match the rows written`,
        );
      }
      const dup = await ba.query(
        `SELECT pk, array_agg(by) AS by FROM race_audit GROUP BY pk HAVING count(*) > 1`,
      );
      assert.deepEqual(dup.rows, [], 'a row was reserved twice');
      const audit = await ba.query(`SELECT count(*)::int AS n FROM race_audit`);
      assert.equal(audit.rows[0].n, reservedTotal);
      assert.ok(reservedTotal > 0 && reservedTotal <= inserted);
    } finally {
      await a.end();
      await b.end();
      await ba.query(`DROP TRIGGER IF EXISTS race_audit ON "My Schema"."order"`);
    }
  });

  for (const key of ['mixed', 'naive', 'tz'] as const) {
    test(`[${key}] start increments tries; success closes; a stale attempt's finish changes nothing`, async () => {
      const tb = t[key];
      await reset(tb, 3);
      await reserveTasks(ba, tb, ['w1', 'w1'], fence());
      const started = await startTasks(ba, tb, 'w1', 10);
      assert.deepEqual(
        started.map((s) => [s.pk, s.attempt]),
        [
          ['1', 1],
          ['2', 1],
        ],
      );
      assert.equal(String(started[0].row[tb.job.primaryKey]), '1');
      assert.equal(
        (await startTasks(ba, tb, 'w1', 10)).length,
        0,
        'started rows are not started again',
      );
      assert.equal((await startTasks(ba, tb, 'w2', 10)).length, 0, 'another worker starts nothing');
      let r = await row(tb, '1');
      assert.equal(Number(r.tries), 1);
      assert.ok(r.started);

      // Success closes pk 1.
      const written = await finishTasks(ba, tb, 'w1', [
        { pk: '1', attempt: 1, ok: true, error: null },
      ]);
      assert.deepEqual([...written], ['1']);
      r = await row(tb, '1');
      assert.ok(r.ended, 'ended set');
      assert.equal(r.by, 'w1');
      if (tb.col.success) assert.equal(r.success, true);
      if (tb.col.error) assert.equal(r.error, null);
      // Done is final: finishing it again, releasing it, reserving it change nothing.
      assert.equal(
        (await finishTasks(ba, tb, 'w1', [{ pk: '1', attempt: 1, ok: false, error: 'late' }])).size,
        0,
      );
      assert.deepEqual(
        await releaseTasks(ba, tb, { reason: 'x', workers: ['w1'], onlyUnstarted: true }),
        { requeued: 0, closed: 0 },
      );
      assert.deepEqual(await row(tb, '1'), r);

      // pk 2: w1 is lost, the row is given back and started again by w2 (attempt 2).
      await releaseTasks(ba, tb, { reason: 'worker lost', workers: ['w1'] });
      const before2 = await row(tb, '2');
      assert.equal(before2.by, null);
      assert.equal(Number(before2.tries), 1);
      const given = await reserveTasks(ba, tb, ['w2', 'w2', 'w2'], fence());
      assert.equal(given.get('w2'), 2);
      const again = await startTasks(ba, tb, 'w2', 1);
      assert.deepEqual(
        again.map((s) => [s.pk, s.attempt]),
        [['2', 2]],
      );
      const snap = await row(tb, '2');
      // The old attempt's finish (success or failure) is a no-op and says so.
      assert.equal(
        (await finishTasks(ba, tb, 'w1', [{ pk: '2', attempt: 1, ok: true, error: null }])).size,
        0,
      );
      assert.equal(
        (await finishTasks(ba, tb, 'w1', [{ pk: '2', attempt: 1, ok: false, error: 'stale' }]))
          .size,
        0,
      );
      // Right worker, wrong attempt: also a no-op.
      assert.equal(
        (await finishTasks(ba, tb, 'w2', [{ pk: '2', attempt: 1, ok: true, error: null }])).size,
        0,
      );
      assert.deepEqual(await row(tb, '2'), snap);
      // The live attempt still finishes.
      assert.equal(
        (await finishTasks(ba, tb, 'w2', [{ pk: '2', attempt: 2, ok: true, error: null }])).size,
        1,
      );
      assert.equal((await row(tb, '2')).note, 'keep-me');
    });
  }

  for (const key of ['mixed', 'naive', 'tz'] as const) {
    test(`[${key}] a failure with tries left backs off; the last failure closes the task`, async () => {
      const tb = t[key];
      const max = tb.job.maxTryTimes;
      await reset(tb, 1);
      for (let attempt = 1; attempt <= max; attempt++) {
        const started = await reserveAndStart(tb, `w${attempt}`);
        assert.deepEqual(
          started.map((s) => [s.pk, s.attempt]),
          [['1', attempt]],
        );
        const written = await finishTasks(ba, tb, `w${attempt}`, [
          { pk: '1', attempt, ok: false, error: `boom ${attempt}` },
        ]);
        assert.equal(written.size, 1);
        const r = await row(tb, '1');
        assert.equal(Number(r.tries), attempt);
        if (attempt < max) {
          assert.equal(r.by, null);
          assert.equal(r.started, null);
          assert.equal(r.ended, null);
          if (tb.col.error) assert.equal(r.error, `boom ${attempt}`);
          // Backoff: base 30 s × 2^(attempt−1), from the DB clock, in the column's convention.
          const want = 30 * 2 ** (attempt - 1);
          const off = await atFromNow(tb, '1');
          assert.ok(Math.abs(off - want) < 5, `backoff ${off} s, want ~${want}`);
          assert.equal(
            (await reserveTasks(ba, tb, ['x', 'x'], fence())).size,
            0,
            'not reservable during the backoff',
          );
          assert.deepEqual(await countTasks(ba, tb), {
            total: 1,
            completed: 0,
            pending: 1,
            failed: 0,
            running: 0,
          });
          await expireBackoff(tb);
        } else {
          // I7: closed, failed, with the error, tries = max.
          assert.ok(r.ended);
          if (tb.col.success) assert.equal(r.success, false);
          if (tb.col.error) assert.equal(r.error, `boom ${attempt}`);
          assert.equal(Number(r.tries), max);
          await expireBackoff(tb);
          assert.equal(
            (await reserveTasks(ba, tb, ['x', 'x'], fence())).size,
            0,
            'a closed task is never reserved again',
          );
          assert.equal((await startTasks(ba, tb, `w${attempt}`, 5)).length, 0);
          const c = await countTasks(ba, tb);
          assert.deepEqual(
            c,
            tb.col.success
              ? { total: 1, completed: 0, pending: 0, failed: 1, running: 0 }
              : { total: 1, completed: 1, pending: 0, failed: 0, running: 0 },
          );
        }
      }
    });
  }

  test('error text with NUL bytes, a lone surrogate and 1 MB is stored', async () => {
    for (const tb of [t.mixed, t.naive]) {
      await reset(tb, 2);
      const big = 'x'.repeat(1024 * 1024);
      const text = `nul:\u0000:end lone:\uD800: ${big}`;
      const started = await reserveAndStart(tb, 'w1', 2);
      assert.equal(started.length, 2);
      const written = await finishTasks(ba, tb, 'w1', [
        { pk: '1', attempt: 1, ok: false, error: text },
        { pk: '2', attempt: 1, ok: false, error: '\u0000' },
      ]);
      assert.equal(written.size, 2);
      const r = await row(tb, '1');
      const err = String(r.error);
      assert.ok(err.startsWith('nul:\\0:end lone:\uFFFD: xxx'), err.slice(0, 40));
      assert.ok(err.length <= MAX_ERROR_TEXT + 100, `stored ${err.length} chars`);
      assert.match(err, /more characters cut\]$/);
      assert.equal(String((await row(tb, '2')).error), '\\0');
      // releaseTasks takes the same path for its reason.
      await expireBackoff(tb);
      await reserveAndStart(tb, 'w2', 2);
      await releaseTasks(ba, tb, { reason: `lost\u0000\uDC00${big}`, workers: ['w2'] });
      const r2 = await row(tb, '1');
      assert.ok(String(r2.error).startsWith('lost\\0\uFFFD'));
    }
    assert.equal(safeErrorText('plain'), 'plain');
  });

  for (const key of ['mixed', 'naive'] as const) {
    test(`[${key}] releaseTasks: unstarted rows keep their tries; started ones spend one; the last closes`, async () => {
      const tb = t[key];
      const { col } = tb;
      await reset(tb, 4);
      // pk 1: started on its last try; pk 2: started on its first; pk 3, 4: reserved only.
      await ba.query(`UPDATE ${tb.table} SET ${col.tries} = 2 WHERE ${tb.pk}::text = '1'`);
      await reserveTasks(ba, tb, ['w1', 'w1', 'w1', 'w1'], fence());
      const started = await startTasks(ba, tb, 'w1', 2);
      assert.deepEqual(
        started.map((s) => [s.pk, s.attempt]),
        [
          ['1', 3],
          ['2', 1],
        ],
      );
      assert.deepEqual(await countTasks(ba, tb), {
        total: 4,
        completed: 0,
        pending: 2,
        failed: 0,
        running: 2,
      });
      // Another worker's release touches none of w1's rows.
      assert.deepEqual(await releaseTasks(ba, tb, { reason: 'other', workers: ['w9'] }), {
        requeued: 0,
        closed: 0,
      });
      // Not old enough: nothing (also proves the `timestamp` comparison is not off by hours).
      assert.deepEqual(
        await releaseTasks(ba, tb, {
          reason: 'old',
          startedOlderThanSeconds: 60,
          reservedOlderThanSeconds: 60,
          fence: fence(),
        }),
        { requeued: 0, closed: 0 },
      );
      // Fenced with a stale epoch: nothing.
      assert.deepEqual(
        await releaseTasks(ba, tb, { reason: 'fenced', workers: ['w1'], fence: fence(EPOCH - 1) }),
        { requeued: 0, closed: 0 },
      );
      const res = await releaseTasks(ba, tb, {
        reason: 'worker lost',
        workers: ['w1'],
        fence: fence(),
      });
      assert.deepEqual(res, { requeued: 3, closed: 1 });
      const r1 = await row(tb, '1');
      assert.ok(r1.ended);
      assert.equal(Number(r1.tries), 3);
      assert.equal(r1.success, false);
      assert.equal(r1.error, 'worker lost; tries used up (3)');
      const r2 = await row(tb, '2');
      assert.deepEqual(
        [r2.by, r2.started, r2.ended, Number(r2.tries), r2.error],
        [null, null, null, 1, 'worker lost'],
      );
      for (const pk of ['3', '4']) {
        const r = await row(tb, pk);
        assert.deepEqual(
          [r.by, r.at, r.started, r.ended, Number(r.tries ?? 0), r.error],
          [null, null, null, null, 0, null],
        );
      }
      assert.deepEqual(await countTasks(ba, tb), {
        total: 4,
        completed: 0,
        pending: 3,
        failed: 1,
        running: 0,
      });
      // The closed row is never picked again; the others are reservable at once.
      const given = await reserveTasks(ba, tb, Array(10).fill('w2'), fence());
      assert.equal(given.get('w2'), 3);
    });
  }

  test('releaseTasks works for a job that keeps no success/error columns', async () => {
    const tb = t.tz;
    await reset(tb, 2);
    await reserveTasks(ba, tb, ['w1', 'w1'], fence());
    assert.equal((await startTasks(ba, tb, 'w1', 1)).length, 1);
    // Used to fail with "could not determine data type of parameter $1": the reason is bound
    // but referenced only by the error column's SET.
    assert.deepEqual(await releaseTasks(ba, tb, { reason: 'worker lost', workers: ['w1'] }), {
      requeued: 2,
      closed: 0,
    });
    const r = await ba.query(`SELECT "group", "By", "Tries" FROM "Select" ORDER BY 1`);
    assert.deepEqual(r.rows, [
      { group: 1, By: null, Tries: 1 },
      { group: 2, By: null, Tries: null },
    ]);
  });

  test('countTasks counts completed, failed, running and pending', async () => {
    const tb = t.naive;
    await reset(tb, 7);
    await reserveTasks(ba, tb, Array(5).fill('w1'), fence());
    const s = await startTasks(ba, tb, 'w1', 4);
    assert.equal(s.length, 4);
    await ba.query(`UPDATE "user" SET rsv_tries = 3 WHERE id = 2`);
    await finishTasks(ba, tb, 'w1', [
      { pk: '1', attempt: 1, ok: true, error: null },
      { pk: '2', attempt: 3, ok: false, error: 'last' },
      { pk: '3', attempt: 1, ok: true, error: null },
    ]);
    assert.deepEqual(await countTasks(ba, tb), {
      total: 7,
      completed: 2,
      pending: 3,
      failed: 1,
      running: 1,
    });
  });

  test('timestamp columns hold UTC wall time from the DB clock; timestamptz hold now()', async () => {
    const naive = t.naive;
    await reset(naive, 1);
    await reserveAndStart(naive, 'w1');
    await finishTasks(ba, naive, 'w1', [{ pk: '1', attempt: 1, ok: true, error: null }]);
    const r = await ba.query<{ at: number; st: number; en: number; local: number }>(
      `SELECT extract(epoch FROM rsv_at - (now() AT TIME ZONE 'UTC'))::float8 AS at,
              extract(epoch FROM started_at - (now() AT TIME ZONE 'UTC'))::float8 AS st,
              extract(epoch FROM ended_at - (now() AT TIME ZONE 'UTC'))::float8 AS en,
              extract(epoch FROM ended_at - localtimestamp)::float8 AS local
         FROM "user" WHERE id = 1`,
    );
    const x = r.rows[0];
    for (const k of ['at', 'st', 'en'] as const)
      assert.ok(Math.abs(x[k]) < 5, `${k} off by ${x[k]} s`);
    // Buenos Aires is UTC−3: the session's local wall time is 3 h behind what was stored.
    assert.ok(Math.abs(x.local - 3 * 3600) < 5, `vs local time: ${x.local}`);

    const tz = t.tz;
    await reset(tz, 1);
    await reserveAndStart(tz, 'w1');
    await finishTasks(ba, tz, 'w1', [{ pk: '1', attempt: 1, ok: true, error: null }]);
    const z = await ba.query<{ d: number }>(
      `SELECT greatest(abs(extract(epoch FROM "At" - now())), abs(extract(epoch FROM "Started" - now())),
              abs(extract(epoch FROM "Ended" - now())))::float8 AS d FROM "Select" WHERE "group" = 1`,
    );
    assert.ok(z.rows[0].d < 5, `timestamptz off by ${z.rows[0].d} s`);
  });
});

import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUp, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/** Scheduled tasks (a not-before column) and recurrent ones (an interval, a cron expression). */

after(cleanUp);

describe('scheduled and recurrent tasks', { concurrency: false }, () => {
  test(
    'a row waits for its not-before time; recurrent rows run again, tries never stop them',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE sched (id bigint PRIMARY KEY, due_at timestamptz, local_due timestamp);
          INSERT INTO sched VALUES (1, NULL, NULL), (2, now() + interval '3 seconds', NULL),
            (3, now() + interval '1 hour', NULL),
            (4, NULL, (now() AT TIME ZONE 'UTC') + interval '2 seconds');
          CREATE TABLE rec (id bigint PRIMARY KEY); INSERT INTO rec VALUES (1), (2);
          CREATE TABLE tick (id bigint PRIMARY KEY); INSERT INTO tick VALUES (1);
          CREATE TABLE flaky (id bigint PRIMARY KEY); INSERT INTO flaky VALUES (1), (2)`,
        migrate: [
          { name: 'sched', table: 'sched', primaryKey: 'id' },
          { name: 'later', table: 'sched', primaryKey: 'id' },
          { name: 'rec', table: 'rec', primaryKey: 'id' },
          { name: 'tick', table: 'tick', primaryKey: 'id' },
          { name: 'flaky', table: 'flaky', primaryKey: 'id' },
        ],
        body: `jobs: [
          defineJob({ name: 'sched', table: 'sched', primaryKey: 'id', notBeforeColumn: 'due_at',
            run: (task, ctx) => record(ctx, task) }),
          defineJob({ name: 'later', table: 'sched', primaryKey: 'id', notBeforeColumn: 'local_due',
            selecting: () => ({ where: 'id = 4' }),
            run: (task, ctx) => record(ctx, task) }),
          defineJob({ name: 'rec', table: 'rec', primaryKey: 'id', maxTryTimes: 1,
            recurEverySeconds: 1.5,
            run: (task, ctx) => record(ctx, task) }),
          defineJob({ name: 'tick', table: 'tick', primaryKey: 'id', maxTryTimes: 1,
            cron: '* * * * * *',
            run: (task, ctx) => record(ctx, task) }),
          // Every run fails, on its only try: the row closes as failed, and recurs all the same.
          defineJob({ name: 'flaky', table: 'flaky', primaryKey: 'id', maxTryTimes: 1,
            recurEverySeconds: 1.5,
            run: async (task, ctx) => { await record(ctx, task); throw new Error('always fails'); } }),
        ],`,
      });
      const a = s.start('n1', 2);
      await waitFor(
        'row 2 run after its time, rec run three times',
        async () =>
          (await scalar<boolean>(
            s.pool,
            `(SELECT count(*) FROM exec_log WHERE job = 'sched' AND task_id = 2) = 1
              AND (SELECT min(n) FROM (SELECT count(*) AS n FROM exec_log WHERE job = 'rec'
                GROUP BY task_id) c) >= 3
              AND (SELECT count(*) FROM exec_log WHERE job = 'tick') >= 4
              AND (SELECT min(n) FROM (SELECT count(*) AS n FROM exec_log WHERE job = 'flaky'
                GROUP BY task_id) c) >= 3`,
          )) === true,
        45_000,
        100,
        s.logs,
      );
      const sched = await s.pool.query<{ task_id: string; early: boolean }>(
        `SELECT e.task_id, e.at < s.due_at AS early FROM exec_log e JOIN sched s ON s.id = e.task_id
          WHERE e.job = 'sched' ORDER BY e.task_id`,
      );
      assert.deepEqual(
        sched.rows.map((r) => [r.task_id, r.early]),
        [
          ['1', null],
          ['2', false],
          ['4', null],
        ],
        'row 3 (due in an hour) did not run; row 2 not before its time',
      );
      const later = await s.pool.query<{ early: boolean }>(
        `SELECT e.at < (s.local_due AT TIME ZONE 'UTC') AS early
           FROM exec_log e JOIN sched s ON s.id = e.task_id WHERE e.job = 'later'`,
      );
      assert.deepEqual(later.rows, [{ early: false }], 'a timestamp column holds UTC wall time');
      // Every run of a recurrent row is a first attempt: the tries counter is reset each time.
      assert.equal(
        await scalar(
          s.pool,
          `SELECT count(*)::int FROM exec_log WHERE job IN ('rec', 'tick', 'flaky') AND attempt <> 1`,
        ),
        0,
      );
      assert.equal(
        await scalar(s.pool, 'SELECT max(flaky_tries)::int FROM flaky'),
        1,
        'a failed recurrent row is reopened with its tries reset',
      );
      const gaps = await s.pool.query<{ job: string; gap: number }>(
        `SELECT job, extract(epoch FROM at - lag(at) OVER (PARTITION BY job, task_id ORDER BY at))::float8 AS gap
           FROM exec_log WHERE job IN ('rec', 'flaky')`,
      );
      for (const g of gaps.rows.filter((x) => x.gap !== null)) {
        assert.ok(g.gap >= 1.4, `${g.job} ran again only after its interval: ${g.gap}`);
      }
      const failed = await s.pool.query<{ err: string }>('SELECT flaky_error AS err FROM flaky');
      for (const f of failed.rows) assert.match(f.err, /always fails/);
      // One run per cron tick: a row is due again only at the first tick after it ended, so two
      // runs never start within the same second, and the runs are about a second apart.
      const ticks = await s.pool.query<{ at: Date; sec: string }>(
        `SELECT at, date_trunc('second', at)::text AS sec FROM exec_log WHERE job = 'tick' ORDER BY at`,
      );
      const secs = ticks.rows.map((t) => t.sec);
      assert.equal(new Set(secs).size, secs.length, `one run per tick: ${secs.join(', ')}`);
      const span = (ticks.rows.at(-1)!.at.getTime() - ticks.rows[0].at.getTime()) / 1000;
      assert.ok(
        span / (ticks.rows.length - 1) >= 0.75,
        `${ticks.rows.length} runs in ${span} s: more than one per second`,
      );
      assert.equal(await scalar(s.pool, 'SELECT tick_tries FROM tick'), 1, 'tries reset');
      assert.equal(
        await scalar(
          s.pool,
          `SELECT count(*)::int FROM exec_log WHERE job = 'sched' AND task_id = 3`,
        ),
        0,
      );
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

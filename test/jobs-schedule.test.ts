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
          CREATE TABLE tick (id bigint PRIMARY KEY); INSERT INTO tick VALUES (1)`,
        migrate: [
          { name: 'sched', table: 'sched', primaryKey: 'id' },
          { name: 'later', table: 'sched', primaryKey: 'id' },
          { name: 'rec', table: 'rec', primaryKey: 'id' },
          { name: 'tick', table: 'tick', primaryKey: 'id' },
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
              AND (SELECT count(*) FROM exec_log WHERE job = 'tick') >= 3`,
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
          `SELECT count(*)::int FROM exec_log WHERE job IN ('rec', 'tick') AND attempt <> 1`,
        ),
        0,
      );
      const gaps = await s.pool.query<{ gap: number }>(
        `SELECT extract(epoch FROM at - lag(at) OVER (PARTITION BY task_id ORDER BY at))::float8 AS gap
           FROM exec_log WHERE job = 'rec'`,
      );
      for (const g of gaps.rows.filter((x) => x.gap !== null)) {
        assert.ok(g.gap >= 1.4, `rec ran again only after its interval: ${g.gap}`);
      }
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

import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUp, logLines, scalar, setupJobs, statusUrl, waitFor } from './helpers/jobs.js';

/**
 * The hooks of a job, each where the original meant it, with real agents and worker
 * processes on a real PostgreSQL; and broken hooks, which cost their own step only.
 */

after(cleanUp);

const ITEM = `CREATE TABLE item (id bigint PRIMARY KEY, value int NOT NULL, runs int NOT NULL DEFAULT 0,
  started_note text, finished_note text, relaunched int NOT NULL DEFAULT 0)`;

const rows = (n: number) =>
  `INSERT INTO item (id, value) SELECT g, (g * 37) % 50 FROM generate_series(1, ${n}) g`;

describe('job hooks with real agents', { concurrency: false }, () => {
  test(
    'selecting (a condition and an order), starter, finisher and a counter',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `${ITEM}; ${rows(30)}`,
        migrate: [{ name: 'ranked', table: 'item', primaryKey: 'id' }],
        body: `jobs: [defineJob({
          name: 'ranked', table: 'item', primaryKey: 'id', queueSize: 1, retryBackoffSeconds: 0,
          maxTryTimes: 2,
          run: async (task, ctx) => {
            await record(ctx, task);
            if (Number(task.id) === 2 && ctx.attempt === 1) throw new Error('unlucky');
          },
          selecting: (n, ctx) => ({ where: 'value >= $1', orderBy: 'value DESC', params: [10] }),
          starter: (row, ctx) =>
            ctx.db.query('UPDATE item SET started_note = $2 WHERE id = $1', [row.id, 'tries ' + row.ranked_tries]),
          finisher: (row, result, ctx) =>
            ctx.db.query('UPDATE item SET finished_note = coalesce(finished_note || \\' \\', \\'\\') || $2 WHERE id = $1',
              [row.id, (result.ok ? 'ok' : 'failed') + '/' + result.attempt + (result.closed ? '/closed' : '')]),
          counters: {
            total: (ctx) => 42,
            completed: async (ctx) => (await ctx.db.query('SELECT 101 AS n')).rows[0].n,
            pending: () => 102,
            failed: () => 103,
          },
        })],`,
      });
      const want = await scalar(s.pool, 'SELECT count(*)::int FROM item WHERE value >= 10');
      const a = s.start('n1', 1);
      await waitFor(
        'every selected row closed',
        async () =>
          (await scalar(
            s.pool,
            'SELECT count(*)::int FROM item WHERE ranked_ended_at IS NOT NULL',
          )) === want,
        45_000,
        100,
        s.logs,
      );
      assert.equal(
        await scalar(
          s.pool,
          'SELECT count(*)::int FROM item WHERE value < 10 AND ranked_tries > 0',
        ),
        0,
        'rows outside the condition never ran',
      );
      // One worker with a queue of one: rows ran by value, highest first (row 2's retry aside).
      const order = await s.pool.query<{ value: number }>(
        `SELECT i.value FROM exec_log e JOIN item i ON i.id = e.task_id WHERE e.attempt = 1 ORDER BY e.id`,
      );
      const values = order.rows.map((r) => r.value);
      assert.deepEqual(
        values,
        [...values].sort((x, y) => y - x),
      );
      const notes = await s.pool.query<{
        id: string;
        started_note: string;
        finished_note: string;
      }>('SELECT id, started_note, finished_note FROM item WHERE value >= 10 ORDER BY id');
      for (const n of notes.rows) {
        if (n.id === '2') {
          assert.equal(n.started_note, 'tries 2');
          assert.equal(n.finished_note, 'failed/1 ok/2/closed');
        } else {
          assert.deepEqual([n.started_note, n.finished_note], ['tries 1', 'ok/1/closed']);
        }
      }
      const url = await statusUrl(a);
      const status = (await (await fetch(`${url}/status`)).json()) as {
        jobs: {
          name: string;
          total: number;
          completed: number;
          pending: number;
          failed: number;
          running: number;
        }[];
      };
      // Each counter hook replaces its own figure (Pampa counts 30 rows, ${want} completed,
      // ${30 - want} pending, none failed); running has no hook and stays Pampa's.
      assert.ok(want !== 101 && 30 - want !== 102);
      assert.deepEqual(
        status.jobs.map((j) => [j.name, j.total, j.completed, j.pending, j.failed, j.running]),
        [['ranked', 42, 101, 102, 103, 0]],
      );
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'relaunching and relauncher run closed rows again; occupied and allowing choose workers',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `${ITEM}; ${rows(6)}; CREATE TABLE allowed (worker text PRIMARY KEY);
          INSERT INTO allowed VALUES ('n1.2'), ('n1.3')`,
        migrate: [{ name: 'recheck', table: 'item', primaryKey: 'id' }],
        body: `jobs: [defineJob({
          name: 'recheck', table: 'item', primaryKey: 'id', maxTryTimes: 1, queueSize: 2,
          run: async (task, ctx) => {
            await record(ctx, task);
            await ctx.db.query('UPDATE item SET runs = runs + 1 WHERE id = $1', [task.id]);
          },
          relaunching: (ctx) => ({
            where: ctx.columns.endedAt + " < now() - make_interval(secs => $1) AND runs < $2",
            params: [0.3, 3],
          }),
          relauncher: (row, ctx) =>
            ctx.db.query('UPDATE item SET relaunched = relaunched + 1 WHERE id = $1', [row.id]),
          // n1.3 says it is full: it never receives a task.
          occupied: async (worker, ctx) => worker === 'n1.3' ? 2 : Number((await ctx.db.query(
            'SELECT count(*) FROM item WHERE ' + ctx.columns.reservedBy + ' = $1 AND ' +
            ctx.columns.startedAt + ' IS NULL AND ' + ctx.columns.endedAt + ' IS NULL', [worker])).rows[0].count),
          // n1.1 has no credit.
          allowing: async (worker, ctx) =>
            (await ctx.db.query('SELECT 1 FROM allowed WHERE worker = $1', [worker])).rowCount === 1,
        })],`,
      });
      const a = s.start('n1', 3);
      await waitFor(
        'every row run three times',
        async () => (await scalar(s.pool, 'SELECT min(runs)::int FROM item')) === 3,
        45_000,
        100,
        s.logs,
      );
      await new Promise((r) => setTimeout(r, 1500));
      const r = await s.pool.query<{
        runs: number;
        relaunched: number;
        tries: number;
        ended: boolean;
      }>(
        `SELECT runs, relaunched, recheck_tries AS tries, recheck_ended_at IS NOT NULL AS ended
           FROM item ORDER BY id`,
      );
      for (const x of r.rows) {
        assert.deepEqual(x, { runs: 3, relaunched: 2, tries: 1, ended: true }, 'stops at runs = 3');
      }
      const workers = await s.pool.query<{ worker: string }>(
        'SELECT DISTINCT worker FROM exec_log ORDER BY 1',
      );
      assert.deepEqual(
        workers.rows.map((w) => w.worker),
        ['n1.2'],
      );
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'a hook that throws or answers the wrong shape is reported by job and hook; the rest runs',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `${ITEM}; ${rows(5)}; CREATE TABLE other (id bigint PRIMARY KEY);
          INSERT INTO other SELECT generate_series(1, 10)`,
        migrate: [
          { name: 'broken', table: 'item', primaryKey: 'id' },
          { name: 'badsql', table: 'item', primaryKey: 'id' },
          { name: 'badparams', table: 'item', primaryKey: 'id' },
          { name: 'fine', table: 'other', primaryKey: 'id' },
        ],
        body: `jobs: [
          defineJob({
            name: 'broken', table: 'item', primaryKey: 'id', run: (task, ctx) => record(ctx, task),
            selecting: () => { throw new Error('selecting broke'); },
            relaunching: () => 'not an object',
            counters: { total: () => 'many', failed: () => { throw new Error('failed broke'); } },
          }),
          defineJob({
            name: 'badsql', table: 'item', primaryKey: 'id', run: (task, ctx) => record(ctx, task),
            selecting: () => ({ where: 'no_such_column > 1' }),
            relaunching: () => ({ where: 'no_such_column IS NULL' }),
          }),
          defineJob({
            name: 'badparams', table: 'item', primaryKey: 'id',
            run: (task, ctx) => record(ctx, task),
            selecting: () => ({ where: 'value > $2', params: [1] }),
          }),
          defineJob({
            name: 'fine', table: 'other', primaryKey: 'id', run: (task, ctx) => record(ctx, task),
            starter: () => { throw new Error('starter broke'); },
            allowing: () => true,
            occupied: () => -1 + 1,
          }),
        ],`,
      });
      const a = s.start('n1', 2);
      await waitFor(
        'the fine job done',
        async () =>
          (await scalar(s.pool, 'SELECT count(*)::int FROM other WHERE fine_success')) === 10,
        45_000,
        100,
        s.logs,
      );
      const url = await statusUrl(a);
      const status = (await (await fetch(`${url}/status`)).json()) as {
        jobs: { name: string; total: number; failed: number }[];
      };
      assert.deepEqual(
        status.jobs.map((j) => [j.name, j.total, j.failed]),
        [
          ['broken', 5, 0],
          ['badsql', 5, 0],
          ['badparams', 5, 0],
          ['fine', 10, 0],
        ],
        'broken counters fall back to Pampa’s own figures',
      );
      await waitFor('every failure logged', () => {
        const seen = new Set(
          logLines(a)
            .filter((l) => l.msg === 'hook failed; its default is used')
            .map((l) => `${l.job}/${l.hook}`),
        );
        const want = [
          'broken/selecting',
          'broken/relaunching',
          'broken/counters.total',
          'broken/counters.failed',
          'badsql/selecting',
          'badsql/relaunching',
          'badparams/selecting',
          'fine/starter',
        ];

        return want.every((w) => seen.has(w)) ? seen : null;
      });
      assert.equal(
        await scalar(s.pool, "SELECT count(*)::int FROM exec_log WHERE job <> 'fine'"),
        0,
        'a job whose selecting hook fails reserves nothing',
      );
      assert.equal(a.child.exitCode, null, 'the agent is still running');
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

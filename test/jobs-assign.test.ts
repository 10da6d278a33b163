import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { assignments, cleanUp, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/**
 * Elastic assignment with real agents: workers grow and shrink with a job's backlog, the
 * worker filter holds, jobs share the farm, and the assignments outlive their dispatcher.
 */

after(cleanUp);

const tasks = (table: string, n: number) =>
  `CREATE TABLE ${table} (id bigint PRIMARY KEY);
   INSERT INTO ${table} SELECT generate_series(1, ${n})`;

/** Samples worker counts per job every 50 ms until stopped. */
function sampler(pool: import('pg').Pool) {
  const samples: Record<string, number>[] = [];
  let on = true;
  const sample = async () => {
    const a = await assignments(pool);
    const per: Record<string, number> = {};
    for (const j of Object.values(a)) if (j) per[j] = (per[j] ?? 0) + 1;
    samples.push(per);
  };
  const done = (async () => {
    while (on) {
      await sample();
      await new Promise((r) => setTimeout(r, 50));
    }
  })();

  return {
    samples,
    /** Stops, with a last sample taken after the loop's (a query in flight may predate it). */
    async stop() {
      on = false;
      await done;
      await sample();
    },
  };
}

describe('elastic assignment with real agents', { concurrency: false }, () => {
  test(
    'a job grows to maxAssignedWorkers, shrinks as its queue runs low, and drops to none',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: tasks('big', 60),
        migrate: [{ name: 'big', table: 'big', primaryKey: 'id' }],
        body: `jobs: [defineJob({
          name: 'big', table: 'big', primaryKey: 'id', queueSize: 2,
          maxPendingTasks: 10, maxAssignedWorkers: 3,
          run: async (task, ctx) => { await record(ctx, task); await sleep(250); },
        })],`,
      });
      const watch = sampler(s.pool);
      s.start('n1', 4);
      await waitFor(
        '60 rows done',
        async () =>
          (await scalar(s.pool, 'SELECT count(*)::int FROM big WHERE big_success')) === 60,
        60_000,
        100,
        s.logs,
      );
      await waitFor('no worker assigned', async () => {
        const a = await assignments(s.pool);

        return Object.values(a).every((j) => j === null) ? a : null;
      });
      await watch.stop();
      const counts = watch.samples.map((x) => x.big ?? 0);
      const peak = counts.indexOf(3);
      assert.ok(peak >= 0, `reached 3 workers: ${counts.join(',')}`);
      assert.ok(Math.max(...counts) <= 3, 'never above maxAssignedWorkers');
      const shrunk = counts.slice(peak).findIndex((n) => n === 1 || n === 2);
      assert.ok(shrunk > 0, `shrank before dropping to none: ${counts.join(',')}`);
      assert.equal(counts.at(-1), 0);
      const used = await scalar(s.pool, 'SELECT count(DISTINCT worker)::int FROM exec_log');
      assert.ok(used >= 2 && used <= 4, `workers used: ${used}`);
    },
  );

  test(
    'the worker filter holds; a job later in the config is not starved',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `${tasks('early', 120)}; ${tasks('late', 12)}; ${tasks('picky', 12)}`,
        migrate: [
          { name: 'early', table: 'early', primaryKey: 'id' },
          { name: 'late', table: 'late', primaryKey: 'id' },
          { name: 'picky', table: 'picky', primaryKey: 'id' },
        ],
        body: `jobs: [
          defineJob({ name: 'early', table: 'early', primaryKey: 'id', queueSize: 2,
            run: async (task, ctx) => { await record(ctx, task); await sleep(100); } }),
          defineJob({ name: 'late', table: 'late', primaryKey: 'id', queueSize: 2,
            run: async (task, ctx) => { await record(ctx, task); await sleep(100); } }),
          defineJob({ name: 'picky', table: 'picky', primaryKey: 'id', queueSize: 2,
            workerFilter: /^n1\\.[12]$/,
            run: async (task, ctx) => { await record(ctx, task); await sleep(100); } }),
        ],`,
      });
      s.start('n1', 4);
      await waitFor(
        'late and picky done',
        async () =>
          (await scalar(
            s.pool,
            `((SELECT count(*) FROM late WHERE late_success) + (SELECT count(*) FROM picky WHERE picky_success))::int`,
          )) === 24,
        60_000,
        100,
        s.logs,
      );
      const earlyDone = await scalar(s.pool, 'SELECT count(*)::int FROM early WHERE early_success');
      assert.ok(
        earlyDone < 120,
        `late and picky finished while early still had work (${earlyDone})`,
      );
      const picky = await s.pool.query<{ worker: string }>(
        `SELECT DISTINCT worker FROM exec_log WHERE job = 'picky' ORDER BY 1`,
      );
      for (const w of picky.rows) assert.match(w.worker, /^n1\.[12]$/);
      await waitFor(
        'early done',
        async () =>
          (await scalar(s.pool, 'SELECT count(*)::int FROM early WHERE early_success')) === 120,
        60_000,
        100,
        s.logs,
      );
    },
  );

  test(
    'assignments live in the database and survive a change of dispatcher',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: tasks('slow', 400),
        migrate: [{ name: 'slow', table: 'slow', primaryKey: 'id' }],
        body: `jobs: [defineJob({ name: 'slow', table: 'slow', primaryKey: 'id', queueSize: 1,
          run: async (task, ctx) => { await record(ctx, task); await sleep(200); } })],`,
      });
      const first = s.start('na', 2);
      await waitFor(
        'na dispatching',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM pampa.leases WHERE holder LIKE 'na-%'`,
          )) === 1,
      );
      const second = s.start('nb', 2);
      await waitFor(
        'four workers assigned',
        async () => {
          const a = await assignments(s.pool);

          return ['na.1', 'na.2', 'nb.1', 'nb.2'].every((w) => a[w] === 'slow');
        },
        30_000,
        100,
        s.logs,
      );
      const before = await s.pool.query<{ worker: string; epoch: string }>(
        `SELECT worker, epoch::text FROM pampa.assignments WHERE worker LIKE 'nb.%' ORDER BY 1`,
      );
      const epoch = await scalar<string>(s.pool, 'SELECT epoch::text FROM pampa.leases');
      assert.deepEqual(await first.term(), { code: 0, signal: null }, s.logs());
      await waitFor(
        'nb dispatching',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM pampa.leases WHERE holder LIKE 'nb-%'`,
          )) === 1,
        20_000,
        100,
        s.logs,
      );
      const newEpoch = await scalar<string>(s.pool, 'SELECT epoch::text FROM pampa.leases');
      assert.ok(Number(newEpoch) > Number(epoch));
      const progress = await scalar(s.pool, 'SELECT count(*)::int FROM exec_log');
      await waitFor(
        'nb runs tasks',
        async () => (await scalar(s.pool, 'SELECT count(*)::int FROM exec_log')) > progress + 10,
      );
      const afterChange = await s.pool.query<{ worker: string; epoch: string }>(
        `SELECT worker, epoch::text FROM pampa.assignments WHERE worker LIKE 'nb.%' ORDER BY 1`,
      );
      assert.deepEqual(
        afterChange.rows,
        before.rows,
        'the new dispatcher kept the assignments it found: not rewritten under its epoch',
      );
      assert.deepEqual(await second.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'after the holder is SIGKILLed, the new holder starts from the stored assignments',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: tasks('slow', 400),
        migrate: [{ name: 'slow', table: 'slow', primaryKey: 'id' }],
        body: `jobs: [defineJob({ name: 'slow', table: 'slow', primaryKey: 'id', queueSize: 1,
          run: async (task, ctx) => { await record(ctx, task); await sleep(200); } })],`,
      });
      const first = s.start('na', 2);
      await waitFor(
        'na dispatching',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM pampa.leases WHERE holder LIKE 'na-%'`,
          )) === 1,
      );
      const second = s.start('nb', 2);
      await waitFor(
        'four workers assigned',
        async () => {
          const a = await assignments(s.pool);

          return ['na.1', 'na.2', 'nb.1', 'nb.2'].every((w) => a[w] === 'slow');
        },
        30_000,
        100,
        s.logs,
      );
      const read = () =>
        s.pool.query<{ worker: string; job: string; epoch: string; at: string }>(
          `SELECT worker, job, epoch::text, assigned_at::text AS at FROM pampa.assignments
            ORDER BY worker`,
        );
      const before = await read();
      const epoch = await scalar<string>(s.pool, 'SELECT epoch::text FROM pampa.leases');
      first.killGroup();
      await first.exited;
      await waitFor(
        'nb dispatching',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM pampa.leases WHERE holder LIKE 'nb-%'`,
          )) === 1,
        30_000,
        100,
        s.logs,
      );
      assert.ok(
        Number(await scalar<string>(s.pool, 'SELECT epoch::text FROM pampa.leases')) >
          Number(epoch),
      );
      const progress = await scalar(
        s.pool,
        `SELECT count(*)::int FROM exec_log WHERE worker LIKE 'nb.%'`,
      );
      await waitFor(
        'nb runs tasks under the new holder',
        async () =>
          (await scalar(s.pool, `SELECT count(*)::int FROM exec_log WHERE worker LIKE 'nb.%'`)) >
          progress + 10,
        30_000,
        100,
        s.logs,
      );
      const after = await read();
      const nb = (r: typeof before) => r.rows.filter((x) => x.worker.startsWith('nb.'));
      assert.deepEqual(
        nb(after),
        nb(before),
        'nb’s workers kept the rows the killed holder wrote: same job, epoch and time',
      );
      // The killed node's workers are not live: the new holder leaves their rows as it found
      // them rather than reassigning them.
      assert.deepEqual(
        after.rows.filter((x) => x.worker.startsWith('na.')).map((x) => [x.worker, x.job]),
        [
          ['na.1', 'slow'],
          ['na.2', 'slow'],
        ],
      );
      assert.deepEqual(await second.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'workerFilter.tags: only workers of nodes with the tags serve the job',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `${tasks('render', 20)}; ${tasks('plain', 20)}`,
        migrate: [
          { name: 'render', table: 'render', primaryKey: 'id' },
          { name: 'plain', table: 'plain', primaryKey: 'id' },
        ],
        body: `nodes: [{ name: 'tg', maxWorkers: 2, tags: ['gpu'] }, { name: 'tp', maxWorkers: 2 }],
        jobs: [
          defineJob({ name: 'render', table: 'render', primaryKey: 'id', queueSize: 2,
            workerFilter: { tags: ['gpu'] },
            run: async (task, ctx) => { await record(ctx, task); await sleep(100); } }),
          defineJob({ name: 'plain', table: 'plain', primaryKey: 'id', queueSize: 2,
            run: async (task, ctx) => { await record(ctx, task); await sleep(100); } }),
        ],`,
      });
      const a = s.start('tp');
      const b = s.start('tg');
      await waitFor(
        'both jobs done',
        async () =>
          (await scalar(
            s.pool,
            `((SELECT count(*) FROM render WHERE render_success) + (SELECT count(*) FROM plain WHERE plain_success))::int`,
          )) === 40,
        60_000,
        100,
        s.logs,
      );
      const render = await s.pool.query<{ worker: string }>(
        `SELECT DISTINCT worker FROM exec_log WHERE job = 'render' ORDER BY 1`,
      );
      assert.ok(render.rows.length > 0);
      for (const w of render.rows) assert.match(w.worker, /^tg\.[12]$/, 'only the gpu node');
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
      assert.deepEqual(await b.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

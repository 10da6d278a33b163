import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, describe, test } from 'node:test';
import { cleanUp, logLines, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/** Per-worker memory and CPU limits from the node descriptor, on real worker processes. */

after(cleanUp);

describe('resource limits', { concurrency: false }, () => {
  test(
    'a worker over maxMemoryMb is killed and restarted; its task fails with the reason',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE mem (id bigint PRIMARY KEY, kind text NOT NULL);
          INSERT INTO mem VALUES (1, 'buffers'), (2, 'heap');
          INSERT INTO mem SELECT g, 'ok' FROM generate_series(3, 14) g;
          CREATE TABLE pids (id bigint, worker text, pid int, at timestamptz DEFAULT clock_timestamp())`,
        migrate: [{ name: 'mem', table: 'mem', primaryKey: 'id' }],
        body: `
        nodes: [{ name: 'n1', maxWorkers: 2, maxMemoryMb: 160 }],
        jobs: [defineJob({ name: 'mem', table: 'mem', primaryKey: 'id', maxTryTimes: 1, queueSize: 1,
          run: async (task, ctx) => {
            await record(ctx, task);
            await ctx.db.query('INSERT INTO pids (id, worker, pid) VALUES ($1, $2, $3)',
              [task.id, ctx.worker, process.pid]);
            if (task.kind === 'ok') await sleep(200);
            const hog = [];
            if (task.kind === 'buffers') {
              // Outside V8's heap: only the resident-set watchdog sees it.
              for (;;) { hog.push(Buffer.alloc(16 * 1024 * 1024, 1)); await sleep(20); }
            }
            if (task.kind === 'heap') {
              for (;;) { hog.push(new Array(1e6).fill(Math.random())); await sleep(1); }
            }
          } })],`,
      });
      const a = s.start('n1', 2);
      await waitFor(
        'all closed',
        async () =>
          (await scalar(s.pool, 'SELECT count(*)::int FROM mem WHERE mem_ended_at IS NOT NULL')) ===
          14,
        60_000,
        100,
        s.logs,
      );
      const r = await s.pool.query<{ id: string; ok: boolean; err: string | null }>(
        'SELECT id, mem_success AS ok, mem_error AS err FROM mem ORDER BY id',
      );
      const [buffers, heap, ...rest] = r.rows;
      assert.equal(buffers.ok, false);
      assert.match(
        buffers.err ?? '',
        /worker process n1\.\d used \d+ MB, more than maxMemoryMb \(160 MB\)/,
      );
      assert.equal(heap.ok, false);
      assert.match(heap.err ?? '', /maxMemoryMb \(160 MB\)/);
      for (const x of rest) assert.equal(x.ok, true, `row ${x.id}`);
      // The worker that ran the buffers row was killed by the watchdog, logged as died, and
      // started again: a later task of that worker ran in another process.
      const ran = await s.pool.query<{ id: string; worker: string; pid: number }>(
        'SELECT id, worker, pid FROM pids ORDER BY at',
      );
      const hog = ran.rows.find((x) => x.id === '1')!;
      const lines = logLines(a).filter((l) => l.worker === hog.worker);
      const killed = lines.findIndex((l) => l.msg === 'worker over its memory limit; killing it');
      assert.ok(killed >= 0, `the watchdog killed ${hog.worker}`);
      assert.equal(lines[killed].maxMemoryMb, 160);
      assert.ok((lines[killed].rssMb as number) > 160);
      assert.ok(
        lines.slice(killed).some((l) => l.msg === 'worker process died' && l.signal === 'SIGKILL'),
        'its death logged',
      );
      const later = ran.rows
        .slice(ran.rows.indexOf(hog) + 1)
        .filter((x) => x.worker === hog.worker);
      assert.ok(later.length > 0, `${hog.worker} ran tasks again after the kill`);
      assert.ok(
        later.every((x) => x.pid !== hog.pid),
        'in a new process',
      );
      assert.equal(a.child.exitCode, null, 'the agent stays up');
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'a worker is held to maxCpuPercent of a core by pauses; a node without the limit is not',
    { timeout: 90_000 },
    async () => {
      const burn = (name: string, filter: string) => `defineJob({ name: '${name}', table: '${name}',
          primaryKey: 'id', queueSize: 1, workerFilter: '${filter}',
          run: async (task, ctx) => {
            await ctx.db.query('INSERT INTO cpu (worker, pid) VALUES ($1, $2)', [ctx.worker, process.pid]);
            const t0 = Date.now();
            const c0 = process.cpuUsage();
            while (Date.now() - t0 < 3000) Math.sqrt(Math.random());
            const c = process.cpuUsage(c0);
            await ctx.db.query('UPDATE cpu SET ratio = $2 WHERE worker = $1 AND ratio IS NULL',
              [ctx.worker, (c.user + c.system) / 1000 / (Date.now() - t0)]);
          } })`;
      const s = await setupJobs({
        sql: `CREATE TABLE cpu (worker text, pid int, ratio float8);
          CREATE TABLE burn1 (id bigint PRIMARY KEY); INSERT INTO burn1 VALUES (1);
          CREATE TABLE burn2 (id bigint PRIMARY KEY); INSERT INTO burn2 VALUES (1)`,
        migrate: [
          { name: 'burn1', table: 'burn1', primaryKey: 'id' },
          { name: 'burn2', table: 'burn2', primaryKey: 'id' },
        ],
        body: `
        nodes: [{ name: 'n1', maxWorkers: 1, maxCpuPercent: 25 }, { name: 'n2', maxWorkers: 1 }],
        jobs: [${burn('burn1', '^n1\\.')}, ${burn('burn2', '^n2\\.')}],`,
      });
      const a = s.start('n1', 1);
      const b = s.start('n2', 1);
      // While each task burns, sample its process state: T is stopped (paused by the throttle).
      const stopped = new Map<string, number>();
      await waitFor(
        'both tasks sampled',
        async () => {
          const runs = await s.pool.query<{ worker: string; pid: number; ratio: number | null }>(
            'SELECT worker, pid, ratio FROM cpu',
          );
          for (const r of runs.rows) {
            if (r.ratio !== null) continue;
            const state = await readFile(`/proc/${r.pid}/stat`, 'utf8').then(
              (st) => st.slice(st.lastIndexOf(')') + 2).split(' ')[0],
              () => '?',
            );
            stopped.set(r.worker, (stopped.get(r.worker) ?? 0) + (state === 'T' ? 1 : 0));
          }

          return runs.rows.length === 2 && runs.rows.every((r) => r.ratio !== null);
        },
        60_000,
        20,
        s.logs,
      );
      const r = await s.pool.query<{ worker: string; ratio: number }>(
        'SELECT worker, ratio FROM cpu ORDER BY 1',
      );
      assert.equal(r.rows[0].worker, 'n1.1');
      assert.ok(r.rows[0].ratio <= 0.35, `limited worker used ${r.rows[0].ratio} of a core`);
      assert.ok((stopped.get('n1.1') ?? 0) > 0, 'the limited worker was seen paused');
      assert.equal(stopped.get('n2.1') ?? 0, 0, 'the other one never');
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
      assert.deepEqual(await b.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUp, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/** Per-worker memory limit from the node descriptor, enforced on real worker processes. */

after(cleanUp);

describe('resource limits', { concurrency: false }, () => {
  test(
    'a worker over maxMemoryMb is killed and restarted; its task fails with the reason',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE mem (id bigint PRIMARY KEY, kind text NOT NULL);
          INSERT INTO mem VALUES (1, 'buffers'), (2, 'heap'), (3, 'ok'), (4, 'ok'), (5, 'ok')`,
        migrate: [{ name: 'mem', table: 'mem', primaryKey: 'id' }],
        body: `
        nodes: [{ name: 'n1', maxWorkers: 2, maxMemoryMb: 160 }],
        jobs: [defineJob({ name: 'mem', table: 'mem', primaryKey: 'id', maxTryTimes: 1, queueSize: 1,
          run: async (task, ctx) => {
            await record(ctx, task);
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
          5,
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
      assert.equal(a.child.exitCode, null, 'the agent stays up');
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

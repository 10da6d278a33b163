import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { stopGraceMs } from '../src/worker/standalone.js';
import type { AgentProcess } from './helpers/fixture.js';
import { cleanUp, scalar, setupJobs, waitFor, type JobsSetup } from './helpers/jobs.js';

/**
 * Standalone processes: run periodically, one at a time, on the lease holder (moving with the
 * lease) or on a named node; a failing run is logged and the next one comes; runOnce. One at a
 * time holds when the holder is paused past its lease, when two agents share a node name, and
 * runOnce means once in the cluster.
 */

after(cleanUp);

/**
 * A standalone process whose run records itself in `runs`: its start, `seen_at` every 100 ms
 * while it goes (so a run killed before writing its end still shows how long it lasted at
 * least), and at its end whether ctx.signal had aborted it.
 */
const RUNS_SQL = `CREATE TABLE runs (id bigserial PRIMARY KEY, name text, node text, pid int,
    t_start timestamptz DEFAULT clock_timestamp(), seen_at timestamptz DEFAULT clock_timestamp(),
    t_end timestamptz, aborted boolean);
  CREATE TABLE noop (id bigint PRIMARY KEY)`;

function recordedRun(name: string, everySeconds: number, runMs: number, node?: string): string {
  return `{ name: '${name}', everySeconds: ${everySeconds}, ${node ? `node: '${node}',` : ''}
    run: async (ctx) => {
      const r = await ctx.db.query(
        'INSERT INTO runs (name, node, pid) VALUES ($1, $2, $3) RETURNING id',
        [ctx.name, ctx.node, process.pid]);
      const id = r.rows[0].id;
      try {
        const until = Date.now() + ${runMs};
        while (Date.now() < until && !ctx.signal.aborted) {
          await ctx.db.query('UPDATE runs SET seen_at = clock_timestamp() WHERE id = $1', [id]);
          await sleep(100);
        }
      } finally {
        await ctx.db.query(
          'UPDATE runs SET t_end = clock_timestamp(), aborted = $2 WHERE id = $1',
          [id, ctx.signal.aborted]);
      }
    } }`;
}

function clusterWith(standalone: string[]): Parameters<typeof setupJobs>[0] {
  return {
    sql: RUNS_SQL,
    migrate: [{ name: 'noop', table: 'noop', primaryKey: 'id' }],
    // A lease of 3 s renewed within 1 s: runs stop after 1 s of agent silence, and an aborted
    // run has (3 − 1) / 2 = 1 s to write its end (stopGraceMs).
    body: `
      lease: { ttlMs: 3000, renewIntervalMs: 300, renewDeadlineMs: 1000 },
      standalone: [${standalone.join(',\n')}],
      jobs: [defineJob({ name: 'noop', table: 'noop', primaryKey: 'id', run: () => undefined })],`,
  };
}

/**
 * Pairs of runs of `name` where the later one started before the earlier one ended (its end,
 * or, when it was killed before writing it, the last time it was seen going).
 */
async function overlaps(s: JobsSetup, name: string): Promise<number> {
  return scalar(
    s.pool,
    `SELECT count(*)::int FROM runs a JOIN runs b ON a.name = b.name AND a.id <> b.id
      WHERE a.name = $1 AND b.t_start >= a.t_start AND b.t_start < coalesce(a.t_end, a.seen_at)`,
    [name],
  );
}

function holds(s: JobsSetup, node: string): Promise<boolean> {
  return scalar<boolean>(
    s.pool,
    `EXISTS (SELECT 1 FROM pampa.leases WHERE holder LIKE $1 || '-%' AND expires_at > now())`,
    [node],
  );
}

function logged(a: AgentProcess, msg: string): number {
  return a.lines().filter((l) => l.msg === msg).length;
}

describe('standalone processes', { concurrency: false }, () => {
  test(
    'one instance at a time on the lease holder or the named node, start to start',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE runs (id bigserial PRIMARY KEY, name text, node text, pid int,
            t_start timestamptz DEFAULT clock_timestamp(), t_end timestamptz);
          CREATE TABLE noop (id bigint PRIMARY KEY)`,
        migrate: [{ name: 'noop', table: 'noop', primaryKey: 'id' }],
        body: `
        standalone: [
          { name: 'tick', everySeconds: 1, run: async (ctx) => {
              const r = await ctx.db.query(
                'INSERT INTO runs (name, node, pid) VALUES ($1, $2, $3) RETURNING id',
                [ctx.name, ctx.node, process.pid]);
              await sleep(600);
              await ctx.db.query('UPDATE runs SET t_end = clock_timestamp() WHERE id = $1', [r.rows[0].id]);
            } },
          { name: 'flaky', everySeconds: 0.5, run: async (ctx) => {
              await ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]);
              throw new Error('flaky run');
            } },
          { name: 'once', everySeconds: 0.2, runOnce: true, run: (ctx) =>
              ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]) },
          { name: 'pinned', everySeconds: 0.5, node: 'nb', run: (ctx) =>
              ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]) },
        ],
        jobs: [defineJob({ name: 'noop', table: 'noop', primaryKey: 'id', run: () => undefined })],`,
      });
      const na = s.start('na', 1);
      await waitFor(
        'na holds the lease',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM pampa.leases WHERE holder LIKE 'na-%'`,
          )) === 1,
      );
      const nb = s.start('nb', 1);
      await waitFor(
        'four ticks, three flaky runs, a pinned run',
        async () =>
          (await scalar<boolean>(
            s.pool,
            `(SELECT count(*) FROM runs WHERE name = 'tick' AND t_end IS NOT NULL) >= 4
              AND (SELECT count(*) FROM runs WHERE name = 'flaky') >= 3
              AND (SELECT count(*) FROM runs WHERE name = 'pinned') >= 1`,
          )) === true,
        45_000,
        100,
        s.logs,
      );
      const byNode = await s.pool.query<{ name: string; node: string; n: number }>(
        `SELECT name, node, count(*)::int AS n FROM runs GROUP BY 1, 2 ORDER BY 1, 2`,
      );
      const where = Object.fromEntries(byNode.rows.map((r) => [`${r.name}@${r.node}`, r.n]));
      assert.equal(where['once@na'], 1, 'runOnce: once');
      assert.equal(where['tick@nb'], undefined, 'tick runs only on the lease holder');
      assert.equal(where['pinned@na'], undefined, 'pinned runs only on its node');
      // One instance at a time, and start to start: each tick starts >= 1 s after the last.
      // A run stopped by a lease blip (under load) has no t_end; after a complete run, the next
      // one starts only once it ended, and a period after it started.
      const ticks = await s.pool.query<{ gap: number; overlap: boolean }>(
        `SELECT gap, overlap FROM (
           SELECT extract(epoch FROM t_start - lag(t_start) OVER w)::float8 AS gap,
                  t_start < lag(t_end) OVER w AS overlap, lag(t_end) OVER w AS prev_end
             FROM runs WHERE name = 'tick' WINDOW w AS (ORDER BY t_start)) x
          WHERE prev_end IS NOT NULL`,
      );
      assert.ok(ticks.rows.length >= 3);
      for (const t of ticks.rows) {
        assert.equal(t.overlap, false);
        // t_start is written by the run's own process once it has booted: under load that
        // takes a varying few tens of ms, so two starts 1 s apart can read a little closer.
        assert.ok(t.gap >= 0.8, `start to start: ${t.gap}`);
      }

      // The holder goes: the tick moves to the other node, still one at a time.
      assert.deepEqual(await na.term(), { code: 0, signal: null }, s.logs());
      await waitFor(
        'ticks on nb',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM runs WHERE name = 'tick' AND node = 'nb' AND t_end IS NOT NULL`,
          )) >= 2,
        30_000,
        100,
        s.logs,
      );
      const overlaps = await scalar(
        s.pool,
        `SELECT count(*)::int FROM runs a JOIN runs b ON a.id < b.id AND a.name = 'tick' AND b.name = 'tick'
          WHERE b.t_start < a.t_end AND a.t_end IS NOT NULL`,
      );
      assert.equal(overlaps, 0, 'never two ticks at once');
      assert.deepEqual(await nb.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test('the stop bounds come before the lease can move', () => {
    assert.equal(stopGraceMs({ ttlMs: 3000, renewDeadlineMs: 2000 }), 500);
    assert.equal(stopGraceMs({ ttlMs: 1000, renewDeadlineMs: 1000 }), 0);
  });

  test(
    'a holder paused past its lease: the new holder’s run never overlaps the old one',
    { timeout: 120_000 },
    async () => {
      const s = await setupJobs(clusterWith([recordedRun('long', 0.5, 6000)]));
      const na = s.start('na', 1);
      await waitFor('na holds the lease', () => holds(s, 'na'), 20_000, 100, s.logs);
      const nb = s.start('nb', 1);
      await waitFor(
        'a long run on na',
        async () => (await scalar(s.pool, `SELECT count(*)::int FROM runs WHERE node = 'na'`)) > 0,
        30_000,
        100,
        s.logs,
      );
      process.kill(na.pid, 'SIGSTOP');
      try {
        await waitFor('nb holds the lease', () => holds(s, 'nb'), 30_000, 100, s.logs);
        await waitFor(
          'a long run on nb',
          async () =>
            (await scalar(s.pool, `SELECT count(*)::int FROM runs WHERE node = 'nb'`)) > 0,
          30_000,
          100,
          s.logs,
        );
      } finally {
        process.kill(na.pid, 'SIGCONT');
      }
      const firstOnNb = await scalar(s.pool, `SELECT min(id) FROM runs WHERE node = 'nb'`);
      await waitFor(
        'a run on nb ends after na came back',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM runs WHERE node = 'nb' AND t_end IS NOT NULL AND id >= $1`,
            [firstOnNb],
          )) > 0,
        30_000,
        100,
        s.logs,
      );
      assert.equal(await overlaps(s, 'long'), 0, 'never two long runs at once');
      // The paused agent's run stopped by itself (agent silent), before the lease moved.
      assert.equal(
        await scalar(s.pool, `SELECT count(*)::int FROM runs WHERE node = 'na' AND t_end IS NULL`),
        0,
        s.logs(),
      );
      assert.deepEqual(await nb.term(), { code: 0, signal: null }, s.logs());
      assert.deepEqual(await na.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test('two agents with the same node name never run its process at once', async () => {
    const s = await setupJobs(clusterWith([recordedRun('pin', 0.3, 800, 'nx')]));
    const a = s.start('nx', 1);
    const b = s.start('nx', 1);
    await waitFor(
      'six pinned runs, both agents tried',
      async () =>
        (await scalar(
          s.pool,
          `SELECT count(*)::int FROM runs WHERE name = 'pin' AND t_end IS NOT NULL`,
        )) >= 6 &&
        logged(a, 'standalone run started') > 0 &&
        logged(b, 'standalone run started') > 0,
      60_000,
      100,
      s.logs,
    );
    assert.equal(await overlaps(s, 'pin'), 0, 'never two pinned runs at once');
    assert.ok(logged(a, 'standalone run skipped') + logged(b, 'standalone run skipped') > 0);
    assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    assert.deepEqual(await b.term(), { code: 0, signal: null }, s.logs());
  });

  test('runOnce runs once in the cluster, across a change of holder', async () => {
    const s = await setupJobs(
      clusterWith([
        `{ name: 'once', everySeconds: 0.3, runOnce: true, run: (ctx) =>
            ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]) }`,
      ]),
    );
    const na = s.start('na', 1);
    await waitFor('na holds the lease', () => holds(s, 'na'), 20_000, 100, s.logs);
    const nb = s.start('nb', 1);
    await waitFor(
      'the run recorded as completed',
      async () =>
        (await scalar(
          s.pool,
          `SELECT count(*)::int FROM pampa.standalone_completions
            WHERE cluster = 'jobs' AND name = 'once' AND node = 'na'`,
        )) === 1,
      30_000,
      100,
      s.logs,
    );
    na.killGroup();
    await na.exited;
    await waitFor('nb holds the lease', () => holds(s, 'nb'), 30_000, 100, s.logs);
    await waitFor('nb saw it done', () => logged(nb, 'standalone runOnce done') > 0, 20_000);
    assert.equal(await scalar(s.pool, `SELECT count(*)::int FROM runs WHERE name = 'once'`), 1);

    // Deleting its row runs it again, once.
    await s.pool.query(
      `DELETE FROM pampa.standalone_completions WHERE cluster = 'jobs' AND name = 'once'`,
    );
    await waitFor(
      'a second run, on nb',
      async () =>
        (await scalar(
          s.pool,
          `SELECT count(*)::int FROM runs WHERE name = 'once' AND node = 'nb'`,
        )) === 1,
      30_000,
      100,
      s.logs,
    );
    await waitFor(
      'recorded again',
      async () =>
        (await scalar(s.pool, `SELECT count(*)::int FROM pampa.standalone_completions`)) === 1,
    );
    assert.equal(await scalar(s.pool, `SELECT count(*)::int FROM runs WHERE name = 'once'`), 2);
    assert.deepEqual(await nb.term(), { code: 0, signal: null }, s.logs());
  });

  test('a run whose lock connection is killed is aborted; the next one runs', async () => {
    const s = await setupJobs(clusterWith([recordedRun('long', 0.5, 3000)]));
    const na = s.start('na', 1);
    await waitFor(
      'a long run going',
      async () => (await scalar(s.pool, `SELECT count(*)::int FROM runs`)) > 0,
      30_000,
      100,
      s.logs,
    );
    const killed = await scalar(
      s.pool,
      `SELECT count(*)::int FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE application_name LIKE '%/standalone-lock/long') x`,
    );
    assert.equal(killed, 1);
    await waitFor(
      'the run aborted, the next one completed',
      async () =>
        (await scalar<boolean>(
          s.pool,
          `(SELECT aborted FROM runs ORDER BY id LIMIT 1)
            AND EXISTS (SELECT 1 FROM runs WHERE id > (SELECT min(id) FROM runs)
                          AND aborted = false)`,
        )) === true,
      30_000,
      100,
      s.logs,
    );
    assert.equal(await overlaps(s, 'long'), 0);
    assert.deepEqual(await na.term(), { code: 0, signal: null }, s.logs());
  });
});

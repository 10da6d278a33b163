import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUp, logLines, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/**
 * Broken and slow hooks with real agents and worker processes on a real PostgreSQL: each
 * failure is logged with the job's and the hook's name, and dispatching goes on.
 */

after(cleanUp);

const FAILED = 'hook failed; its default is used';

/** Source of an occupied hook that answers `bad` for its first `n` calls, then the truth. */
const brokenFirst = (n: number, bad: string) => `(() => {
  let calls = 0;
  return async (worker, ctx) => {
    if (++calls <= ${n}) ${bad};
    const r = await ctx.db.query('SELECT count(*)::int AS n FROM ' + ctx.table + ' WHERE ' +
      ctx.columns.reservedBy + ' = $1 AND ' + ctx.state.queued, [worker]);
    return r.rows[0].n;
  };
})()`;

/** Source of an allowing hook that answers `bad` for its first `n` calls, then true. */
const allowFirst = (n: number, bad: string) =>
  `(() => { let calls = 0; return () => { if (++calls <= ${n}) ${bad}; return true; }; })()`;

const job = (name: string, extra: string) => `defineJob({
  name: '${name}', table: 'item', primaryKey: 'id', queueSize: 2, retryBackoffSeconds: 0,
  run: async (task, ctx) => {
    await record(ctx, task);
    await ctx.db.query('UPDATE item SET runs = runs + 1 WHERE id = $1', [task.id]);
  },
  ${extra}
})`;

/** One line per failure: `job/hook` → its logged error message. */
function failures(lines: Record<string, unknown>[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of lines) {
    if (l.msg !== FAILED) continue;
    const err = l.err as { message?: string } | undefined;
    out.set(`${String(l.job)}/${String(l.hook)}`, err?.message ?? '');
  }

  return out;
}

describe('broken and slow hooks', { concurrency: false }, () => {
  test(
    'occupied, allowing, relaunching, finisher and relauncher that throw or answer the wrong shape',
    { timeout: 150_000 },
    async () => {
      const names = [
        'occthrow',
        'occstring',
        'occnan',
        'occneg',
        'allowthrow',
        'allowshape',
        'closing',
        'again',
      ];
      const s = await setupJobs({
        sql: `CREATE TABLE item (id bigint PRIMARY KEY, runs int NOT NULL DEFAULT 0);
          INSERT INTO item SELECT generate_series(1, 3)`,
        migrate: names.map((name) => ({ name, table: 'item', primaryKey: 'id' })),
        body: `jobs: [
          ${job('occthrow', `occupied: ${brokenFirst(3, "throw new Error('occupied broke')")},`)},
          ${job('occstring', `occupied: ${brokenFirst(3, "return 'many'")},`)},
          ${job('occnan', `occupied: ${brokenFirst(3, 'return NaN')},`)},
          ${job('occneg', `occupied: ${brokenFirst(3, 'return -1')},`)},
          ${job('allowthrow', `allowing: ${allowFirst(3, "throw new Error('allowing broke')")},`)},
          ${job('allowshape', `allowing: ${allowFirst(3, "return 'yes'")},`)},
          ${job(
            'closing',
            `relaunching: () => { throw new Error('relaunching broke'); },
             finisher: () => { throw new Error('finisher broke'); },`,
          )},
          ${job(
            'again',
            `// Each row runs twice: reopened once, after its first run.
             relaunching: (ctx) => ({
               where: '(SELECT count(*) FROM exec_log e WHERE e.job = $1 AND e.task_id = ' +
                 ctx.table + '.id) < 2',
               params: ['again'],
             }),
             relauncher: () => { throw new Error('relauncher broke'); },`,
          )},
        ],`,
      });
      const a = s.start('n1', 3);
      // Every job's three rows ran (closed, success), and 'again' ran each row twice.
      await waitFor(
        'every job done',
        async () => {
          const done = await s.pool.query<{ job: string; n: number }>(
            'SELECT job, count(DISTINCT task_id)::int AS n FROM exec_log GROUP BY job',
          );
          const twice = await scalar(
            s.pool,
            "SELECT count(*)::int FROM (SELECT task_id FROM exec_log WHERE job = 'again' GROUP BY task_id HAVING count(*) >= 2) x",
          );
          const closed = await scalar(
            s.pool,
            `SELECT count(*)::int FROM item WHERE ${names.map((n) => `${n}_success`).join(' AND ')}`,
          );

          return done.rows.length === names.length &&
            done.rows.every((r) => r.n === 3) &&
            twice === 3 &&
            closed === 3
            ? true
            : null;
        },
        120_000,
        200,
        s.logs,
      );
      const seen = await waitFor('every failure logged', () => {
        const f = failures(logLines(a));
        const want = [
          'occthrow/occupied',
          'occstring/occupied',
          'occnan/occupied',
          'occneg/occupied',
          'allowthrow/allowing',
          'allowshape/allowing',
          'closing/relaunching',
          'closing/finisher',
          'again/relauncher',
        ];

        return want.every((w) => f.has(w)) ? f : null;
      });
      assert.match(seen.get('occthrow/occupied')!, /occupied broke/);
      assert.match(seen.get('occstring/occupied')!, /wrong result "many"/);
      assert.match(seen.get('occnan/occupied')!, /wrong result null/);
      assert.match(seen.get('occneg/occupied')!, /wrong result -1/);
      assert.match(seen.get('allowthrow/allowing')!, /allowing broke/);
      assert.match(seen.get('allowshape/allowing')!, /wrong result "yes"/);
      assert.match(seen.get('closing/relaunching')!, /relaunching broke/);
      assert.match(seen.get('closing/finisher')!, /finisher broke/);
      assert.match(seen.get('again/relauncher')!, /relauncher broke/);
      // A finisher that throws is rolled back alone: the finish stands.
      assert.equal(await scalar(s.pool, 'SELECT count(*)::int FROM item WHERE closing_success'), 3);
      assert.equal(a.child.exitCode, null, 'the agent is still running');
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'an occupied hook that never answers holds back neither its round nor another job',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE slow (id bigint PRIMARY KEY); INSERT INTO slow SELECT generate_series(1, 5);
          CREATE TABLE quick (id bigint PRIMARY KEY); INSERT INTO quick SELECT generate_series(1, 60)`,
        migrate: [
          { name: 'slow', table: 'slow', primaryKey: 'id' },
          { name: 'quick', table: 'quick', primaryKey: 'id' },
        ],
        body: `jobs: [
          defineJob({ name: 'slow', table: 'slow', primaryKey: 'id', maxAssignedWorkers: 2,
            run: (task, ctx) => record(ctx, task), occupied: () => new Promise(() => {}) }),
          defineJob({ name: 'quick', table: 'quick', primaryKey: 'id', queueSize: 2,
            run: (task, ctx) => record(ctx, task) }),
        ],`,
      });
      const a = s.start('n1', 3);
      await waitFor(
        'the slow job holds workers',
        async () =>
          (await scalar(
            s.pool,
            "SELECT count(*)::int FROM pampa.assignments WHERE job = 'slow'",
          )) >= 1,
        30_000,
        100,
        s.logs,
      );
      // Hook timeout 10 s; one worker of 'quick' with a queue of 2 needs 30 reservations: with
      // rounds held by the hanging hook that would take minutes.
      await waitFor(
        'every quick row done within 30 s',
        async () =>
          (await scalar(s.pool, 'SELECT count(*)::int FROM quick WHERE quick_success')) === 60,
        30_000,
        100,
        s.logs,
      );
      assert.equal(
        await scalar(s.pool, "SELECT count(*)::int FROM exec_log WHERE job = 'slow'"),
        0,
      );
      await waitFor('the hanging hook reported', () =>
        failures(logLines(a)).get('slow/occupied')?.includes('no answer within 10000 ms')
          ? true
          : null,
      );
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    'relauncher runs on a task given back after it overran maxJobDurationMinutes',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE long (id bigint PRIMARY KEY);
          INSERT INTO long VALUES (1);
          CREATE TABLE relaunched (id bigint, tries int, error text, at timestamptz DEFAULT now())`,
        migrate: [{ name: 'long', table: 'long', primaryKey: 'id' }],
        // 0.05 min: a 3 s limit.
        body: `jobs: [defineJob({ name: 'long', table: 'long', primaryKey: 'id', queueSize: 1,
          maxJobDurationMinutes: 0.05, retryBackoffSeconds: 0,
          run: async (task, ctx) => {
            await record(ctx, task);
            if (ctx.attempt === 1) await sleep(60_000);
          },
          relauncher: (row, ctx) => ctx.db.query(
            'INSERT INTO relaunched (id, tries, error) VALUES ($1, $2, $3)',
            [row.id, row.long_tries, row.long_error]),
        })],`,
      });
      const a = s.start('n1', 1);
      await waitFor(
        'the task succeeded on its second attempt',
        async () =>
          (await scalar<boolean>(s.pool, 'SELECT long_success FROM long WHERE id = 1')) === true,
        60_000,
        100,
        s.logs,
      );
      const r = await s.pool.query<{ id: string; tries: number; error: string }>(
        'SELECT id, tries, error FROM relaunched',
      );
      assert.equal(r.rows.length, 1, 'relauncher called once, for the overrun attempt');
      assert.equal(r.rows[0].id, '1');
      assert.equal(r.rows[0].tries, 1);
      assert.match(r.rows[0].error, /maxJobDurationMinutes \(0\.05 min\)/);
      assert.equal(await scalar(s.pool, 'SELECT long_tries FROM long WHERE id = 1'), 2);
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );
});

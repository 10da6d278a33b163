import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { defineCluster, defineJob } from '../src/config/define.js';
import {
  compileFilter,
  stretch,
  targetWorkers,
  type StretchJob,
} from '../src/dispatch/assignments.js';
import { HookResults, HookRunner, shiftPlaceholders } from '../src/hooks/run.js';

/** Elastic assignment, the hook runner and the option checks, as pure functions. */

const W = ['n1.1', 'n1.2', 'n1.3', 'n1.4', 'n2.1', 'n2.2'];
const job = (name: string, backlog: number, o: Partial<StretchJob> = {}): StretchJob => ({
  name,
  backlog,
  filter: null,
  ...o,
});
const perJob = (m: Map<string, string | null>) => {
  const out: Record<string, number> = {};
  for (const j of m.values()) if (j) out[j] = (out[j] ?? 0) + 1;

  return out;
};

describe('elastic assignment (stretch)', () => {
  test('targets: none when idle, one per maxPendingTasks, capped', () => {
    assert.equal(targetWorkers(job('a', 0, { maxPendingTasks: 10 }), 6), 0);
    assert.equal(targetWorkers(job('a', 1, { maxPendingTasks: 10 }), 6), 1);
    assert.equal(targetWorkers(job('a', 10, { maxPendingTasks: 10 }), 6), 1);
    assert.equal(targetWorkers(job('a', 11, { maxPendingTasks: 10 }), 6), 2);
    assert.equal(
      targetWorkers(job('a', 500, { maxPendingTasks: 10, maxAssignedWorkers: 3 }), 6),
      3,
    );
    assert.equal(targetWorkers(job('a', 1), 6), 6, 'without options: every live worker');
    assert.equal(targetWorkers(job('a', 1, { maxAssignedWorkers: 2 }), 6), 2);
  });

  test('grows with the backlog, shrinks as it runs low, drops to none when idle', () => {
    const o = { maxPendingTasks: 10, maxAssignedWorkers: 4 };
    let a = stretch(W, [job('a', 35, o)], new Map());
    assert.deepEqual(perJob(a), { a: 4 });
    a = stretch(W, [job('a', 15, o)], a);
    assert.deepEqual(perJob(a), { a: 2 });
    const kept = [...a].filter(([, j]) => j === 'a').map(([w]) => w);
    assert.deepEqual(kept, ['n1.1', 'n1.2'], 'the lowest ids stay');
    a = stretch(W, [job('a', 0, o)], a);
    assert.deepEqual(perJob(a), {});
  });

  test('an unchanged situation gives an unchanged assignment (no flapping)', () => {
    const jobs = [job('a', 5, { maxPendingTasks: 10 }), job('b', 100), job('c', 3)];
    const first = stretch(W, jobs, new Map(), 0);
    let cur = first;
    for (let r = 1; r < 10; r++) {
      cur = stretch(W, jobs, cur, r);
      assert.deepEqual(cur, first, `round ${r}`);
    }
  });

  test('several jobs with work share the farm evenly, whatever their order', () => {
    const a = stretch(W, [job('a', 100), job('b', 100), job('c', 100)], new Map());
    assert.deepEqual(perJob(a), { a: 2, b: 2, c: 2 });
    // The first job took everything while alone; a later job still gets its share.
    let cur = stretch(W, [job('a', 100), job('b', 0)], new Map());
    assert.deepEqual(perJob(cur), { a: 6 });
    cur = stretch(W, [job('a', 100), job('b', 100)], cur);
    assert.deepEqual(perJob(cur), { a: 3, b: 3 });
    cur = stretch(W, [job('b', 100), job('a', 100)], cur);
    assert.deepEqual(perJob(cur), { a: 3, b: 3 }, 'config order changes nothing');
  });

  test('a capped job leaves the rest to others; ties rotate, not by config order', () => {
    const a = stretch(W, [job('a', 100, { maxAssignedWorkers: 1 }), job('b', 100)], new Map());
    assert.deepEqual(perJob(a), { a: 1, b: 5 });
    const one = ['x.1'];
    const winners = new Set<string | null>();
    for (let r = 0; r < 4; r++)
      winners.add(stretch(one, [job('a', 1), job('b', 1)], new Map(), r).get('x.1')!);
    assert.deepEqual([...winners].sort(), ['a', 'b']);
  });

  test('the worker filter limits who may serve a job', () => {
    const jobs = [
      job('a', 100, { filter: compileFilter(/^n2\./g) }),
      job('b', 100, { filter: compileFilter('\\.1$') }),
    ];
    const a = stretch(W, jobs, new Map());
    for (const [w, j] of a) {
      if (j === 'a') assert.match(w, /^n2\./);
      if (j === 'b') assert.match(w, /\.1$/);
    }
    assert.equal(a.get('n1.2'), null, 'matches no filter: unassigned');
    assert.equal(a.get('n2.2'), 'a');
    assert.equal(a.get('n1.1'), 'b');
    // A job whose filter stops matching a worker loses it.
    const moved = stretch(W, [job('a', 100, { filter: compileFilter('^n1\\.') })], a);
    assert.equal(moved.get('n2.2'), null);
  });

  test('a held job (its selecting hook failed) keeps exactly its workers', () => {
    const cur = new Map<string, string | null>([
      ['n1.1', 'a'],
      ['n1.2', 'a'],
    ]);
    const next = stretch(W, [job('a', 0, { hold: true }), job('b', 100)], cur);
    assert.deepEqual(perJob(next), { a: 2, b: 4 });
  });
});

describe('hook runner', () => {
  test('a throw, a wrong shape or a timeout is reported with the job and hook name', async () => {
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'error' }, { write: (s: string) => lines.push(JSON.parse(s)) });
    const r = new HookRunner(log, 100);
    assert.deepEqual(await r.call('j', 'occupied', () => 3, HookResults.count), {
      ok: true,
      value: 3,
    });
    assert.deepEqual(await r.call('j', 'occupied', async () => 4, HookResults.count), {
      ok: true,
      value: 4,
    });
    assert.deepEqual(await r.call('j', 'allowing', () => 'yes', HookResults.allowed), {
      ok: false,
    });
    assert.deepEqual(
      await r.call(
        'j',
        'selecting',
        () => {
          throw new Error('boom');
        },
        HookResults.selection,
      ),
      { ok: false },
    );
    assert.deepEqual(
      await r.call('j', 'relaunching', () => new Promise(() => undefined), HookResults.relaunching),
      { ok: false },
    );
    assert.deepEqual(
      await r.call('j', 'selecting', () => ({ where: 'x > 1', limit: 3 }), HookResults.selection),
      { ok: false },
      'unknown keys are refused',
    );
    assert.deepEqual(
      lines.map((l) => [l.job, l.hook]),
      [
        ['j', 'allowing'],
        ['j', 'selecting'],
        ['j', 'relaunching'],
      ],
      'the second selecting failure within 10 s is counted, not logged',
    );
    assert.match(String((lines[0].err as { message: string }).message), /wrong result "yes"/);
    assert.match(String((lines[2].err as { message: string }).message), /no answer within 100 ms/);
  });

  test('placeholders of a fragment follow the statement’s own; literals are left alone', () => {
    assert.equal(shiftPlaceholders('v > $1 AND w = $2', 6, 2), 'v > $7 AND w = $8');
    assert.equal(shiftPlaceholders(`s = '$1' AND "a$1" = $1`, 3, 1), `s = '$1' AND "a$1" = $4`);
    assert.equal(shiftPlaceholders(`s = 'it''s $1' OR x = $1`, 1, 1), `s = 'it''s $1' OR x = $2`);
    assert.throws(() => shiftPlaceholders('v > $2', 6, 1), /placeholder \$2 has no param/);
  });
});

describe('job and cluster options', () => {
  const base = { name: 'j', table: 't', primaryKey: 'id', run: () => undefined };

  test('hooks must be functions; filters, cron and intervals are checked', () => {
    assert.throws(() => defineJob({ ...base, occupied: 3 as never }), /occupied.*function/s);
    assert.throws(
      () => defineJob({ ...base, counters: { total: 'x' as never } }),
      /counters\.total.*function/s,
    );
    assert.throws(() => defineJob({ ...base, workerFilter: '(' }), /regular expression/);
    assert.throws(() => defineJob({ ...base, cron: 'every day' }), /cron expression/);
    assert.throws(
      () => defineJob({ ...base, cron: '* * * * *', recurEverySeconds: 5 }),
      /not both/,
    );
    const ok = defineJob({
      ...base,
      workerFilter: /^n1\./,
      maxPendingTasks: 10,
      maxAssignedWorkers: 3,
      cron: '*/5 * * * *',
      notBeforeColumn: 'due_at',
      selecting: () => ({ orderBy: 'value DESC' }),
      counters: { total: () => 1 },
    });
    assert.equal(ok.maxAssignedWorkers, 3);
  });

  test('node tags are checked, and workerFilter.tags takes only workers of nodes with them', () => {
    const c = defineCluster({
      name: 'c',
      nodes: [
        { name: 'n1', tags: 'gpu' },
        { name: 'n2', tags: ['gpu', 'big', 'gpu'] },
        { name: 'n3' },
      ],
      jobs: [{ ...base, workerFilter: { tags: ['gpu', 'big'] } }],
    });
    assert.deepEqual(
      c.nodes.map((n) => n.tags),
      [['gpu'], ['gpu', 'big'], []],
    );
    const tags = new Map(c.nodes.map((n) => [n.name, n.tags]));
    const both = compileFilter(c.jobs[0].workerFilter, tags)!;
    assert.deepEqual(
      ['n1.1', 'n2.1', 'n2.12', 'n3.1', 'n9.1'].map((w) => both.test(w)),
      [false, true, true, false, false],
    );
    const gpuOnFirst = compileFilter({ id: '\\.1$', tags: ['gpu'] }, tags)!;
    assert.deepEqual(
      ['n1.1', 'n1.2', 'n2.1', 'n3.1'].map((w) => gpuOnFirst.test(w)),
      [true, false, true, false],
    );
    const a = stretch(
      W,
      [job('a', 100, { filter: compileFilter({ tags: ['big'] }, tags) })],
      new Map(),
    );
    assert.deepEqual(
      [...a].filter(([, j]) => j === 'a').map(([w]) => w),
      ['n2.1', 'n2.2'],
    );
    assert.throws(
      () => defineCluster({ name: 'c', nodes: [{ name: 'n1', tags: ['a b'] }], jobs: [base] }),
      /tag holds letters/,
    );
    assert.throws(
      () =>
        defineCluster({
          name: 'c',
          nodes: [{ name: 'n1', tags: ['gpu'] }],
          jobs: [{ ...base, workerFilter: { tags: ['ssd'] } }],
        }),
      /job "j": no node has the tag "ssd"; add tags: \['ssd'\] to a node/,
    );
    assert.throws(() => defineJob({ ...base, workerFilter: {} }), /give id .* tags .* or both/);
  });

  test('standalone processes are validated', () => {
    const cluster = { name: 'c', jobs: [base] };
    const c = defineCluster({
      ...cluster,
      standalone: [{ name: 'tick', everySeconds: 5, run: () => undefined }],
    });
    assert.equal(c.standalone[0].runOnce, false);
    assert.throws(
      () =>
        defineCluster({
          ...cluster,
          standalone: [
            { name: 'a', everySeconds: 1, run: () => undefined },
            { name: 'a', everySeconds: 1, run: () => undefined },
          ],
        }),
      /duplicate standalone name "a"/,
    );
    assert.throws(
      () =>
        defineCluster({ ...cluster, standalone: [{ name: 'b', everySeconds: 0, run: () => 1 }] }),
      /everySeconds/,
    );
  });
});

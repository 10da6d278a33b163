import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import type { ClusterStatus } from '../src/status/types.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import {
  QA_SCHEMA,
  startAgentProc,
  stopAll,
  waitUntil,
  writeQaConfig,
  type AgentProc,
} from './helpers/agents.js';
import { CHROMIUM, CHROMIUM_ARGS, skipWithoutChromium } from './helpers/chromium.js';

/**
 * The status port of real agent processes (issue 5): two peers agree on the cluster, /metrics
 * counts the tasks, the dashboard renders every node and job in headless Chromium, `pampa
 * status` / `pampa workers` work against an agent, and `pampa demo --hold` prints the status
 * URLs and stops on SIGINT.
 */

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const ROWS = 120;
const CLUSTER = 'status-agents';

async function getStatus(url: string): Promise<ClusterStatus> {
  const res = await fetch(`${url}/status`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200, `GET ${url}/status answered ${res.status}`);

  return (await res.json()) as ClusterStatus;
}

/** What two peers must agree on: no timestamps, no per-agent figures (role, peers, busy). */
function projection(s: ClusterStatus) {
  return {
    cluster: s.cluster,
    nodes: s.nodes.map((n) => `${n.name} ${n.agentId} ${n.peerId} ${n.version} ${n.state}`).sort(),
    addresses: Object.fromEntries(s.nodes.map((n) => [n.name, [...n.addresses].sort()])),
    workers: s.workers.map((w) => `${w.id} ${w.node} ${w.job}`).sort(),
    dispatcher: {
      holder: s.dispatcher.holder,
      holderNode: s.dispatcher.holderNode,
      epoch: s.dispatcher.epoch,
    },
    jobs: s.jobs
      .map((j) => ({
        name: j.name,
        table: j.table,
        total: j.total,
        completed: j.completed,
        pending: j.pending,
        failed: j.failed,
        running: j.running,
      }))
      .sort((a, b) => a.name.localeCompare(b.name)),
  };
}
type Projection = ReturnType<typeof projection>;

/**
 * Polls /status of every url at the same moment until the projections are equal and `ok`
 * accepts them; returns the agreed projection and how long it took.
 */
async function agreement(
  urls: string[],
  ok: (p: Projection) => boolean | Promise<boolean>,
  timeoutMs = 30_000,
): Promise<{ view: Projection; ms: number }> {
  const t0 = Date.now();
  let last: Projection[] = [];
  let mesh = '';
  try {
    const view = await waitUntil(
      'the peers to agree on the cluster',
      async () => {
        const raw = await Promise.all(urls.map(getStatus));
        mesh = raw.map((s) => `${s.self.node}: ${s.peers} peers, mesh ${s.meshSize}`).join('; ');
        last = raw.map(projection);
        const same = last.every((p) => JSON.stringify(p) === JSON.stringify(last[0]));
        return same && (await ok(last[0])) ? last[0] : null;
      },
      timeoutMs,
    );
    return { view, ms: Date.now() - t0 };
  } catch (err) {
    // Show what the peers said last, so a failure tells which part differed.
    for (const p of last.slice(1)) assert.deepEqual(p, last[0], `${String(err)} (${mesh})`);
    throw err;
  }
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * A strict reader of the Prometheus text format 0.0.4: every line is a comment (# HELP / # TYPE
 * with a valid name and type), or a sample `name{label="value",...} number` of a declared family.
 */
function parsePrometheus(text: string): Sample[] {
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  const help = new RegExp(`^# HELP (${NAME}) (.*)$`);
  const type = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);
  const sample = new RegExp(
    `^(${NAME})(?:\\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\.)*",?)*)\\})? (\\S+)(?: (-?\\d+))?$`,
  );
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"/g;
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.slice(0, -1).split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const t = type.exec(line);
      if (t) {
        assert.ok(!types.has(t[1]), `TYPE of ${t[1]} given twice`);
        types.set(t[1], t[2]);
      } else assert.match(line, help, `a comment line that is neither HELP nor TYPE: ${line}`);
      continue;
    }
    const m = sample.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${JSON.stringify(line)}`);
    const value = m[3];
    assert.match(value, /^(?:[+-]?(?:\d+\.?\d*(?:e[+-]?\d+)?|\.\d+)|[+-]Inf|NaN)$/i, line);
    const family = m[1].replace(/_(?:bucket|sum|count|total|created)$/, '');
    assert.ok(
      types.has(m[1]) || types.has(family) || types.has(`${family}_total`),
      `sample ${m[1]} has no TYPE line`,
    );
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(label)) labels[l[1]] = l[2];
    samples.push({
      name: m[1],
      labels,
      value: Number(value.replace(/^([+-]?)Inf$/i, '$1Infinity')),
    });
  }

  return samples;
}

function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { env: { ...process.env, ...env }, timeout: 180_000 },
      (err, stdout, stderr) =>
        resolve({
          code: err ? (typeof err.code === 'number' ? err.code : 1) : 0,
          stdout,
          stderr,
        }),
    );
  });
}

function statusUrlOf(a: AgentProc): string | undefined {
  const line = a.logs.find((l) => l.msg === 'agent started');

  return typeof line?.statusUrl === 'string' ? line.statusUrl : undefined;
}

describe('the status port of real agents', () => {
  let db: TestDatabase;
  const agents: AgentProc[] = [];
  const urls = new Map<string, string>();
  let browser: Browser | undefined;
  const running = (name: string) => agents.find((a) => a.name === name)!.child.exitCode === null;
  /** The workers of the agents still running. */
  const liveWorkers = () =>
    ['sa1.1', 'sa1.2', 'sa2.1', 'sa3.1'].filter((id) => running(id.split('.')[0]));
  /** Waits until the running agents agree that they are all alive, with all their workers. */
  const steady = () =>
    agreement(
      [...urls.values()],
      (p) =>
        p.nodes.every((n) => n.endsWith(running(n.split(' ')[0]) ? ' alive' : ' stopped')) &&
        JSON.stringify(p.workers.map((w) => w.split(' ')[0])) === JSON.stringify(liveWorkers()),
    );
  const closedRows = async () =>
    Number((await db.pool.query(`SELECT count(*) AS n FROM qa_task WHERE ok`)).rows[0].n);
  /** The lease row: the truth the peers' dispatcher section must agree with. */
  const leaseRow = async () => {
    const r = await db.pool.query<{ holder: string; epoch: string }>(
      `SELECT holder, epoch FROM pampa.leases WHERE cluster = $1 AND expires_at > now()`,
      [CLUSTER],
    );
    return r.rows[0] ? { holder: r.rows[0].holder, epoch: Number(r.rows[0].epoch) } : null;
  };
  /** The peers name the holder and epoch of the lease row, and the holder's node. */
  const sameLease = async (p: Projection) => {
    const l = await leaseRow();
    return (
      l !== null &&
      p.dispatcher.holder === l.holder &&
      p.dispatcher.epoch === l.epoch &&
      p.dispatcher.holderNode === l.holder.split('-')[0]
    );
  };

  before(async () => {
    const t0 = Date.now();
    db = await createTestDatabase();
    await db.pool.query(QA_SCHEMA);
    const config = writeQaConfig(CLUSTER);
    agents.push(startAgentProc(config, 'sa1', db.url, ['--workers', '2']));
    agents.push(startAgentProc(config, 'sa2', db.url, ['--workers', '1']));
    agents.push(startAgentProc(config, 'sa3', db.url, ['--workers', '1']));
    for (const a of agents) {
      const url = await waitUntil(`the status URL of ${a.name}`, async () => {
        if (a.child.exitCode !== null) throw new Error(`agent ${a.name} exited`);
        return statusUrlOf(a);
      });
      urls.set(a.name, url);
    }
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'sleep:10' FROM generate_series(1, ${ROWS}) g`,
    );
    await waitUntil(
      'every row closed',
      async () =>
        Number(
          (await db.pool.query(`SELECT count(*) AS n FROM qa_task WHERE ended_at IS NULL`)).rows[0]
            .n,
        ) === 0,
      120_000,
    );
    if (existsSync(CHROMIUM))
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    process.stderr.write(`# status-agents: cluster up and rows done in ${Date.now() - t0} ms\n`);
  });

  after(async () => {
    await browser?.close();
    await stopAll(agents);
    await db?.drop();
  });

  it('GET /status from different peers agrees on nodes, workers, lease and jobs', async (t) => {
    const all = [...urls.values()];
    const { view, ms } = await agreement(
      all,
      (p) =>
        p.nodes.length === 3 &&
        p.nodes.every((n) => n.endsWith(' alive')) &&
        p.workers.length === 4 &&
        p.dispatcher.holder !== null &&
        p.jobs.length === 1 &&
        p.jobs[0].completed === ROWS &&
        sameLease(p),
    );
    t.diagnostic(`3 peers agreed after ${ms} ms`);
    // Once the job is idle its workers are unassigned (job null); peers agree either way.
    assert.deepEqual(view.workers.map(idAndNode), [
      'sa1.1 sa1',
      'sa1.2 sa1',
      'sa2.1 sa2',
      'sa3.1 sa3',
    ]);
    assert.deepEqual(view.jobs, [
      {
        name: 'qa',
        table: 'qa_task',
        total: ROWS,
        completed: ROWS,
        pending: 0,
        failed: 0,
        running: 0,
      },
    ]);

    // Each agent answers as itself.
    for (const [name, url] of urls) assert.equal((await getStatus(url)).self.node, name);

    // A change reaches every peer: new rows, then one agent leaves (SIGTERM).
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'sleep:10' FROM generate_series(${ROWS + 1}, ${ROWS + 20}) g`,
    );
    const rows = await agreement(
      all,
      (p) => p.jobs[0].total === ROWS + 20 && p.jobs[0].completed === ROWS + 20,
      60_000,
    );
    t.diagnostic(`3 peers agreed on ${ROWS + 20} closed rows ${rows.ms} ms after the insert`);

    const leaving = agents.find((a) => a.name === 'sa3')!;
    leaving.child.kill('SIGTERM');
    assert.equal((await leaving.exit).code, 0);
    const left = await agreement(
      [urls.get('sa1')!, urls.get('sa2')!],
      (p) =>
        p.nodes.some((n) => n.startsWith('sa3 ') && n.endsWith(' stopped')) &&
        p.workers.every((w) => !w.startsWith('sa3.')) &&
        p.dispatcher.holderNode !== 'sa3' &&
        sameLease(p),
      30_000,
    );
    t.diagnostic(`2 peers agreed that sa3 stopped ${left.ms} ms after it exited`);
    assert.deepEqual(left.view.workers.map(idAndNode), ['sa1.1 sa1', 'sa1.2 sa1', 'sa2.1 sa2']);
    urls.delete('sa3');
  });

  it('GET /metrics parses as Prometheus text and counts the tasks started and succeeded', async () => {
    const total = await closedRows();
    const byWorkerNode = await db.pool.query<{ node: string; n: string }>(
      `SELECT split_part(rsv_by, '.', 1) AS node, count(*) AS n FROM qa_task WHERE ok GROUP BY 1`,
    );
    assert.equal(
      byWorkerNode.rows.reduce((s, r) => s + Number(r.n), 0),
      total,
    );
    const sum = (samples: Sample[], name: string) =>
      samples
        .filter((s) => s.name === name && s.labels.job === 'qa')
        .reduce((n, s) => n + s.value, 0);

    for (const [name, url] of urls) {
      const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      const samples = parsePrometheus(await res.text());
      const names = new Set(samples.map((s) => s.name));
      for (const m of [
        'pampa_tasks_started_total',
        'pampa_tasks_succeeded_total',
        'pampa_lease_changes_total',
        'pampa_peers',
        'process_cpu_user_seconds_total',
      ])
        assert.ok(names.has(m), `${name}: /metrics lacks ${m}`);

      // This agent's workers closed these rows, each in one successful attempt.
      const closed = Number(byWorkerNode.rows.find((r) => r.node === name)?.n ?? 0);
      const attempts = Number(
        (
          await db.pool.query(`SELECT count(*) AS n FROM qa_exec_log WHERE worker LIKE $1`, [
            `${name}.%`,
          ])
        ).rows[0].n,
      );
      assert.ok(closed > 0, `${name} ran no task`);
      assert.equal(sum(samples, 'pampa_tasks_succeeded_total'), closed, `${name}: succeeded`);
      assert.equal(sum(samples, 'pampa_tasks_started_total'), attempts, `${name}: started`);
      // Present at 0, not merely absent.
      const failed = samples.filter(
        (s) => s.name === 'pampa_tasks_failed_total' && s.labels.job === 'qa',
      );
      assert.equal(failed.length, 1, `${name}: /metrics lacks pampa_tasks_failed_total{job="qa"}`);
      assert.equal(failed[0].value, 0, `${name}: failed`);
    }
  });

  it('the dashboard of a real agent shows every node and every job', async (t) => {
    if (!browser) return skipWithoutChromium(t);
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    try {
      await steady();
      const url = urls.get('sa2')!;
      await page.goto(`${url}/`);
      await page.waitForSelector('body[data-state="live"]', { timeout: 30_000 });
      const nodes = ['sa1', 'sa2', 'sa3'];
      const states: Record<string, RegExp> = {
        sa1: /alive/,
        sa2: /alive/,
        sa3: running('sa3') ? /alive/ : /stopped/,
      };
      for (const n of nodes) {
        const row = await page.waitForSelector(`[data-node="${n}"]`, { timeout: 30_000 });
        assert.match((await row.textContent()) ?? '', states[n]);
      }
      assert.match((await page.textContent('[data-node="sa2"]')) ?? '', /this agent/);
      assert.equal(await page.$$eval('[data-node]', (rows) => rows.length), nodes.length);
      for (const id of liveWorkers())
        await page.waitForSelector(`[data-worker="${id}"]`, { timeout: 30_000 });

      const job = await page.waitForSelector('[data-job="qa"]', { timeout: 30_000 });
      const total = await closedRows();
      assert.match(
        (await job.textContent()) ?? '',
        new RegExp(`${total} / ${total} \\(100\\.0%\\)`),
      );
      assert.equal(
        await (await job.$('[role="progressbar"]'))?.getAttribute('aria-valuenow'),
        String(total),
      );
      assert.equal(await page.$$eval('[data-job]', (rows) => rows.length), 1);
      // The page follows the lease row (it may have moved when sa3 left).
      await waitUntil(
        'the dashboard to show the lease holder',
        async () => {
          const l = await leaseRow();
          const shown = await page.textContent('#lease-holder');
          return l !== null && shown === `${l.holder} on ${l.holder.split('-')[0]}`;
        },
        30_000,
      );
      await page.screenshot({ path: join(tmpdir(), 'pampa-dashboard-agents.png'), fullPage: true });
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });

  it('`pampa status --json` and `pampa workers` against a real agent show every worker', async () => {
    await steady();
    const url = urls.get('sa1')!;
    const workers = liveWorkers();

    const json = await run(['status', '--url', url, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const s = JSON.parse(json.stdout) as ClusterStatus;
    assert.equal(s.self.node, 'sa1');
    assert.deepEqual(s.workers.map((w) => w.id).sort(), workers);
    assert.deepEqual(
      s.nodes.map((n) => n.name),
      ['sa1', 'sa2', 'sa3'],
    );

    const text = await run(['status', '--url', url]);
    assert.equal(text.code, 0, text.stderr);
    for (const id of [...workers, 'sa1', 'sa2', 'sa3', 'qa'])
      assert.match(text.stdout, new RegExp(id.replace('.', '\\.')));

    const list = await run(['workers', '--url', url]);
    assert.equal(list.code, 0, list.stderr);
    const lines = list.stdout.trim().split('\n');
    assert.match(lines[0], /worker\s+job\s+queued\s+last active/);
    assert.deepEqual(
      lines
        .slice(1)
        .map((l) => l.trim().split(/\s+/)[0])
        .sort(),
      workers,
    );
    // The job column shows `qa`, or `-` once the idle job's workers were unassigned.
    for (const l of lines.slice(1)) assert.match(l, /\s(qa|-)\s.*(\d+s ago|never)$/);

    // PAMPA_STATUS_URL works as --url does.
    const env = await run(['workers'], { PAMPA_STATUS_URL: url });
    assert.equal(env.code, 0, env.stderr);
    assert.equal(env.stdout.trim().split('\n').length, workers.length + 1);
  });
});

/** `<worker id> <node>` of a `<worker id> <node> <job>` projection line. */
function idAndNode(line: string): string {
  return line.split(' ').slice(0, 2).join(' ');
}

describe('pampa demo --hold', () => {
  let db: TestDatabase;
  let demo: ChildProcess | undefined;
  let cwd: string;

  before(async () => {
    db = await createTestDatabase();
    cwd = mkdtempSync(join(tmpdir(), 'pampa-demo-'));
  });
  after(async () => {
    if (demo && demo.exitCode === null && demo.signalCode === null) {
      try {
        process.kill(-demo.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await db?.drop();
    rmSync(cwd, { recursive: true, force: true });
  });

  it('prints each agent status URL, they answer /status, and SIGINT stops everything with 0', async (t) => {
    const t0 = Date.now();
    const child = spawn(
      process.execPath,
      [CLI, 'demo', '--tasks', '300', '--agents', '2', '--workers', '1', '--hold'],
      {
        cwd,
        env: { ...process.env, DATABASE_URL: db.url, PAMPA_LOG_FORMAT: 'json' },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    demo = child;
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );

    const held = await waitUntil(
      'the demo to print the status URLs',
      async () => {
        if (child.exitCode !== null) throw new Error(`demo exited ${child.exitCode}`);
        const lines = [...stdout.matchAll(/^ {2}(demo\d+) {2}(http:\/\/\S+)$/gm)];
        return /press Ctrl-C/.test(stdout) && lines.length === 2
          ? new Map(lines.map((m) => [m[1], m[2]]))
          : null;
      },
      180_000,
    ).catch((err: unknown) => {
      // Say where the demo stood, and what its agents logged above info.
      const dir = join(cwd, '.pampa', 'demo-logs');
      const logs = existsSync(dir)
        ? readdirSync(dir).map((f) => {
            const lines = readFileSync(join(dir, f), 'utf8').split('\n');
            const loud = lines.filter((l) => /"level":(4|5|6)0/.test(l)).slice(-10);
            return `${f}: ${lines.length} lines; last warnings:\n${loud.join('\n')}`;
          })
        : [];
      throw new Error(
        `${String(err)}\n--- stdout\n${stdout.slice(-2000)}\n--- stderr\n${stderr.slice(-2000)}\n` +
          logs.join('\n'),
      );
    });
    t.diagnostic(`demo held after ${Date.now() - t0} ms`);
    assert.match(stdout, /check\s+passed/);
    assert.match(stdout, /tasks done\s+300/);
    assert.deepEqual([...held.keys()].sort(), ['demo1', 'demo2']);

    for (const [name, url] of held) {
      const s = await getStatus(url);
      assert.equal(s.self.node, name);
      assert.equal(s.cluster, 'demo');
      assert.deepEqual(
        s.jobs.map((j) => [j.name, j.total, j.completed]),
        [['search_odd_numbers', 300, 300]],
      );
    }
    // Both agents see each other.
    await agreement(
      [...held.values()],
      (p) =>
        p.nodes.length === 2 &&
        p.nodes.every((n) => n.endsWith(' alive')) &&
        p.workers.length === 2,
    );

    const t1 = Date.now();
    child.kill('SIGINT');
    const code = await exit;
    t.diagnostic(`demo exited ${Date.now() - t1} ms after SIGINT`);
    assert.deepEqual(code, { code: 0, signal: null }, stderr);
    // The agents are gone with it: their status ports no longer answer, the registry says stopped.
    for (const url of held.values()) {
      await assert.rejects(fetch(`${url}/healthz`, { signal: AbortSignal.timeout(5000) }));
    }
    const r = await db.pool.query(
      `SELECT count(*) AS n FROM pampa.nodes WHERE cluster = 'demo' AND stopped_at IS NULL`,
    );
    assert.equal(Number(r.rows[0].n), 0);
  });
});

import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { multiaddr } from '@multiformats/multiaddr';
import { advertTopic, MAX_MESSAGE_BYTES } from '../src/mesh/messages.js';
import { createMeshNode } from '../src/mesh/node.js';
import type { ClusterStatus } from '../src/status/types.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import {
  CLI,
  QA_COLUMNS,
  QA_TASK_SQL,
  ROOT,
  killProcessGroup,
  spawnAgent,
  statusUrl,
  tempDir,
  waitFor,
  writeConfigModule,
  type AgentProcess,
} from './helpers/fixture.js';

/**
 * The status port of real agents whose tasks block (issue 5, audit): each worker's queue as
 * the database has it, every field of /status, drops by reason and the lease and reservation
 * metrics, and `pampa status --watch` on a terminal and on a pipe.
 */

const CLUSTER = 'status-live';
const ROWS = 20;
const ESC = '\x1b';
const QUEUE = 3;
const VERSION = (JSON.parse(readFileSync(`${ROOT}/package.json`, 'utf8')) as { version: string })
  .version;

/** Each task waits until qa_gate is opened. */
const GATE_RUN = `
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function run(task, ctx) {
  for (;;) {
    const r = await ctx.db.query('SELECT open FROM qa_gate');
    if (r.rows[0]?.open) return;
    await sleep(100);
  }
}`;

const GATE_JOB = `jobs: [defineJob({ ...${JSON.stringify({
  name: 'qa',
  table: 'qa_task',
  primaryKey: 'id',
  columns: QA_COLUMNS,
  queueSize: QUEUE,
  maxReservedSeconds: 600,
  maxJobDurationMinutes: 5,
  retryBackoffSeconds: 0,
})}, run })],`;

async function getStatus(url: string): Promise<ClusterStatus> {
  const res = await fetch(`${url}/status`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);

  return (await res.json()) as ClusterStatus;
}

/** The value of one sample of /metrics (0 when absent), read with a plain line match. */
async function metric(url: string, name: string, labels = ''): Promise<number | null> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));

  return line === undefined ? null : Number(line.split(' ').pop());
}

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

describe('the status port of agents whose tasks are blocked', () => {
  let db: TestDatabase;
  const agents: AgentProcess[] = [];
  const urls = new Map<string, string>();
  const logs = () => agents.map((a) => `--- ${a.name}\n${a.logTail(20)}`).join('\n');
  /** Reserved-but-unstarted rows per worker, as the database has them. */
  const queuedInDb = async () => {
    const r = await db.pool.query<{ w: string; n: string }>(
      `SELECT rsv_by AS w, count(*) AS n FROM qa_task
        WHERE rsv_by IS NOT NULL AND started_at IS NULL AND ended_at IS NULL GROUP BY 1`,
    );
    return new Map(r.rows.map((x) => [x.w, Number(x.n)]));
  };

  before(async () => {
    db = await createTestDatabase();
    await db.pool.query(`${QA_TASK_SQL} CREATE TABLE qa_gate (open boolean NOT NULL);
      INSERT INTO qa_gate VALUES (false);`);
    const dir = tempDir('pampa-live-');
    const config = writeConfigModule({ dir, cluster: CLUSTER, prelude: GATE_RUN, body: GATE_JOB });
    agents.push(spawnAgent({ dir, config, url: db.url, name: 'lv1', workers: 2 }));
    agents.push(spawnAgent({ dir, config, url: db.url, name: 'lv2', workers: 1 }));
    for (const a of agents) urls.set(a.name, await statusUrl(a));
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'gate' FROM generate_series(1, ${ROWS}) g`,
    );
  });

  after(async () => {
    for (const a of agents) a.killGroup();
    await Promise.all(agents.map((a) => a.exited));
    await db?.drop();
  });

  it('/status and `pampa workers` show each worker queue as the database counts it', async () => {
    let last = '';
    await waitFor(
      'every worker to hold queued tasks, shown by both peers as the database counts them',
      async () => {
        const want = await queuedInDb();
        const views = await Promise.all([...urls.values()].map(getStatus));
        last = JSON.stringify({ db: [...want], peers: views.map((v) => v.workers) });
        return (
          want.size === 3 &&
          [...want.values()].every((n) => n === QUEUE) &&
          views.every(
            (v) => v.workers.length === 3 && v.workers.every((w) => w.queued === want.get(w.id)),
          )
        );
      },
      30_000,
      200,
      () => `${last}\n${logs()}`,
    );

    const want = await queuedInDb();
    const out = await cli(['workers', '--url', urls.get('lv2')!]);
    assert.equal(out.code, 0, out.stderr);
    const rows = out.stdout.trim().split('\n').slice(1);
    assert.equal(rows.length, 3);
    for (const row of rows) {
      const [id, jobName, queued] = row.trim().split(/\s+/);
      assert.equal(jobName, 'qa', row);
      assert.equal(Number(queued), want.get(id), row);
    }
  });

  it('every field of /status is present and sensible on each peer, and peers agree', async () => {
    const views = await Promise.all([...urls.values()].map(getStatus));
    for (const s of views) {
      assert.deepEqual(
        s.nodes.map((n) => n.name),
        ['lv1', 'lv2'],
      );
      for (const n of s.nodes) {
        assert.equal(n.state, 'alive', n.name);
        assert.ok(n.addresses.length > 0, `${n.name} has no address`);
        for (const a of n.addresses) assert.match(a, /^\/ip[46]\/.+\/tcp\/\d+/);
        assert.equal(n.version, VERSION);
        assert.ok(n.peerId && n.peerId.length > 10, `${n.name} peer id`);
        const age = Date.now() - Date.parse(n.lastHeartbeat ?? '');
        assert.ok(age >= -2000 && age < 15_000, `${n.name} last heartbeat ${n.lastHeartbeat}`);
      }
      for (const w of s.workers) {
        assert.equal(w.job, 'qa');
        assert.equal(w.busy, true, w.id);
        assert.ok(w.lastActivity && Date.now() - Date.parse(w.lastActivity) < 60_000, w.id);
      }
      assert.ok(s.dispatcher.holder !== null && s.dispatcher.epoch >= 1);
      assert.ok(s.dispatcher.secondsToExpiry !== null && s.dispatcher.secondsToExpiry >= 0);
      const [j] = s.jobs;
      assert.deepEqual(
        [j.name, j.total, j.running, j.completed, j.failed, j.pending],
        ['qa', ROWS, 3, 0, 0, ROWS - 3],
      );
      assert.equal(typeof j.tasksPerSecond, 'number');
      assert.ok(j.tasksPerSecond >= 0);
      assert.ok('stale' in s.dropped && 'malformed' in s.dropped, JSON.stringify(s.dropped));
    }
    const nodes = (s: ClusterStatus) => s.nodes.map((n) => [n.name, n.version, n.addresses]);
    assert.deepEqual(nodes(views[0]), nodes(views[1]));
  });

  it('`pampa status --watch` on a terminal draws the nodes and a bar per job; SIGINT exits 0', async () => {
    const cmd = `${process.execPath} ${CLI} status --watch --url ${urls.get('lv1')}`;
    const child = spawn('script', ['-qefc', cmd, '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await waitFor(
        'two refreshes of the watch screen',
        () => (out.match(/updated \S+/g) ?? []).length >= 2,
        30_000,
        100,
        () => out.slice(-2000),
      );
      // The job's bar: its name, then cli-progress's shades, then the counts.
      assert.match(out, new RegExp(`qa +[█░]{30} 0/${ROWS} \\(0\\.0%\\)`));
      for (const n of ['lv1', 'lv2', 'lv1.1', 'lv1.2', 'lv2.1']) assert.match(out, new RegExp(n));
      assert.ok(out.includes(`${ESC}[2J`), 'the screen is cleared before the first frame');
      process.kill(-child.pid!, 'SIGINT');
      assert.equal(await exit, 0, out.slice(-2000));
    } finally {
      killProcessGroup(child.pid!);
    }
  });

  it('`pampa status --watch` on a pipe prints a frame a second; SIGINT exits 0', async () => {
    const child = spawn(process.execPath, [CLI, 'status', '--watch', '--url', urls.get('lv2')!], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await waitFor('three frames', () => (out.match(/^cluster status-live/gm) ?? []).length >= 3);
    assert.ok(!out.includes(ESC), 'no terminal escapes on a pipe');
    assert.match(out, /lv2\.1/);
    child.kill('SIGINT');
    assert.equal(await exit, 0);
  });

  it('gossip dropped by the mesh shows in /metrics and /status by reason', async () => {
    const url = urls.get('lv1')!;
    const s = await getStatus(url);
    const self = s.nodes.find((n) => n.name === 'lv1')!;
    const before = s.dropped;
    const raw = await createMeshNode({ listen: ['/ip4/127.0.0.1/tcp/0'] });
    try {
      await raw.start();
      const pubsub = raw.services.pubsub;
      const topic = advertTopic(CLUSTER);
      pubsub.subscribe(topic);
      await raw.dial(self.addresses.map((a) => multiaddr(a)));
      await waitFor('lv1 subscribed, as the raw node sees it', () =>
        pubsub.getSubscribers(topic).some((p) => p.toString() === self.peerId),
      );
      await pubsub.publish(topic, new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
      await pubsub.publish(topic, new Uint8Array(MAX_MESSAGE_BYTES + 10).fill(0x20));
      await waitFor('both drops counted in /metrics', async () => {
        const m = await metric(url, 'pampa_gossip_dropped_total', '{reason="malformed"}');
        const o = await metric(url, 'pampa_gossip_dropped_total', '{reason="oversized"}');
        return m === before.malformed + 1 && o === before.oversized + 1;
      });
      const after = (await getStatus(url)).dropped;
      assert.equal(after.malformed, before.malformed + 1);
      assert.equal(after.oversized, before.oversized + 1);
      assert.notEqual(await metric(url, 'pampa_gossip_dropped_total', '{reason="stale"}'), null);
    } finally {
      await raw.stop();
    }
  });

  it('reservations, the lease changes every peer sees, and tasks per second reach /metrics', async () => {
    const s = await getStatus(urls.get('lv1')!);
    const holder = s.dispatcher.holderNode!;
    const other = holder === 'lv1' ? 'lv2' : 'lv1';
    const count = 'pampa_reservation_statement_seconds_count{job="qa"}';
    const reserved = await metric(
      urls.get(holder)!,
      count.split('{')[0],
      `{${count.split('{')[1]}`,
    );
    assert.ok(reserved !== null && reserved >= 1, `${holder}: ${count} is ${reserved}`);
    assert.ok(((await metric(urls.get(holder)!, 'pampa_lease_changes_total')) ?? 0) >= 1);
    const seen = await metric(urls.get(other)!, 'pampa_lease_changes_total');
    assert.notEqual(seen, null);

    await db.pool.query('UPDATE qa_gate SET open = true');
    await waitFor('every row closed', async () => {
      const r = await db.pool.query(`SELECT count(*) AS n FROM qa_task WHERE ok`);
      return Number(r.rows[0].n) === ROWS;
    });
    // Each agent samples its own rate: both show the burst, whoever reads them.
    await waitFor('both peers to show tasks per second above 0', async () => {
      const views = await Promise.all([...urls.values()].map(getStatus));
      return views.every((v) => v.jobs[0].tasksPerSecond > 0);
    });

    // The holder leaves: the other agent sees the lease change (a new holder and epoch).
    const leaving = agents.find((a) => a.name === holder)!;
    assert.equal((await leaving.term()).code, 0);
    await waitFor(
      `${other} to count the lease change`,
      async () => ((await metric(urls.get(other)!, 'pampa_lease_changes_total')) ?? 0) > seen!,
      30_000,
    );
  });
});

describe('an agent with a non-loopback status host', () => {
  it('and no token refuses to start, naming status.token', async () => {
    const db = await createTestDatabase();
    try {
      await db.pool.query(QA_TASK_SQL);
      const dir = tempDir('pampa-live-');
      const config = writeConfigModule({
        dir,
        cluster: 'status-open',
        prelude: GATE_RUN,
        body: GATE_JOB,
      });
      const a = spawnAgent({
        dir,
        config,
        url: db.url,
        name: 'open1',
        workers: 1,
        args: ['--http-host', '0.0.0.0'],
      });
      const exit = await a.exited;
      const out = readFileSync(a.logFile, 'utf8');
      assert.notEqual(exit.code, 0, out);
      assert.match(out, /status\.host is "0\.0\.0\.0".*set status\.token/);
    } finally {
      await db.drop();
    }
  });
});

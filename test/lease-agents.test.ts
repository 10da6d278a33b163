import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import {
  QA_SCHEMA,
  killGroup,
  startAgentProc,
  stopAll,
  waitUntil,
  writeQaConfig,
  type AgentProc,
} from './helpers/agents.js';
import { QA_COLUMNS, tempDir, writeConfigModule } from './helpers/fixture.js';

/** The dispatcher lease with real agent processes (issue 4): failover, resign, outages. */
describe('the lease with real agents', () => {
  let db: TestDatabase;
  const agents: AgentProc[] = [];

  before(async () => {
    db = await createTestDatabase();
    await db.pool.query(QA_SCHEMA);
  });
  after(async () => {
    await stopAll(agents);
    await db.drop();
  });

  const count = async (sql: string, params: unknown[] = []) =>
    Number((await db.pool.query(sql, params)).rows[0].n);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const dbNow = async () => (await db.pool.query('SELECT now() AS t')).rows[0].t as Date;

  async function fresh(rows: number, payload: string): Promise<void> {
    await db.pool.query('DELETE FROM qa_task; DELETE FROM qa_exec_log; DELETE FROM qa_write_log');
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, $2 FROM generate_series(1, $1) g`,
      [rows, payload],
    );
  }

  function start(config: string, names: string[]): AgentProc[] {
    const group = names.map((n) => startAgentProc(config, n, db.url, ['--workers', '1']));
    agents.push(...group);
    return group;
  }

  async function holder(cluster: string): Promise<{ holder: string; epoch: number }> {
    return waitUntil('a lease holder', async () => {
      // Before the first agent migrated, the table does not exist yet.
      const r = await db.pool
        .query(`SELECT holder, epoch FROM pampa.leases WHERE cluster = $1 AND expires_at > now()`, [
          cluster,
        ])
        .catch(() => ({ rows: [] }));
      const row = r.rows[0] as { holder: string; epoch: string } | undefined;
      return row && { holder: row.holder, epoch: Number(row.epoch) };
    });
  }

  const lines = (a: AgentProc, msg: string) => a.logs.filter((l) => l.msg === msg);

  it('a dispatcher hook busy for longer than the TTL does not cost the lease: the thread renews', async () => {
    const dir = tempDir('pampa-busy-');
    const go = join(dir, 'go');
    const marks = join(dir, 'busy.json');
    const job = {
      name: 'qa',
      table: 'qa_task',
      primaryKey: 'id',
      columns: QA_COLUMNS,
      queueSize: 2,
      maxTryTimes: 3,
      retryBackoffSeconds: 0,
    };
    const config = writeConfigModule({
      dir,
      cluster: 'busy',
      // The defaults: 2.5 s of blocked event loop is past the deadline and ttl − interval.
      settings: {
        lease: { ttlMs: 3000, renewIntervalMs: 700, renewDeadlineMs: 2000 },
        mesh: { nodeDeadAfterMs: 10_000 },
      },
      prelude: `
import { existsSync, writeFileSync } from 'node:fs';
async function run() { await new Promise((r) => setTimeout(r, 50)); }
function occupied() {
  if (existsSync(${JSON.stringify(go)}) && !existsSync(${JSON.stringify(marks)})) {
    const start = Date.now();
    while (Date.now() < start + 2500) {}
    writeFileSync(${JSON.stringify(marks)}, JSON.stringify({ start, end: Date.now() }));
  }
  return 0;
}`,
      body: `jobs: [defineJob({ ...${JSON.stringify(job)}, run, occupied })],`,
    });
    await fresh(400, 'p');
    const [a] = start(config, ['b1']);
    const lease = await holder('busy');
    await waitUntil(
      'work to start',
      async () => (await count('SELECT count(*) AS n FROM qa_task WHERE ended_at IS NOT NULL')) > 0,
    );

    // Sample the row from this process while the agent's event loop is blocked.
    writeFileSync(go, '');
    const samples: { at: number; holder: string; epoch: number; expires: number }[] = [];
    await waitUntil(
      'the busy hook to finish',
      async () => {
        const r = await db.pool.query(
          `SELECT holder, epoch, expires_at FROM pampa.leases WHERE cluster = 'busy'`,
        );
        const row = r.rows[0];
        samples.push({
          at: Date.now(),
          holder: row.holder,
          epoch: Number(row.epoch),
          expires: (row.expires_at as Date).getTime(),
        });
        await sleep(100);
        return existsSync(marks);
      },
      30_000,
    );
    const busy = JSON.parse(readFileSync(marks, 'utf8')) as { start: number; end: number };
    const during = samples.filter((s) => s.at > busy.start && s.at < busy.end);
    assert.ok(during.length >= 5, `${during.length} samples during the busy hook`);
    assert.ok(
      during.every((s) => s.holder === lease.holder && s.epoch === lease.epoch),
      'same holder and epoch throughout',
    );
    const expiries = new Set(during.map((s) => s.expires));
    assert.ok(expiries.size >= 2, `the expiry advanced during the busy hook: ${[...expiries]}`);

    await waitUntil(
      'every row closed',
      async () => (await count('SELECT count(*) AS n FROM qa_task WHERE ended_at IS NULL')) === 0,
      60_000,
    );
    const after = await holder('busy');
    assert.deepEqual(after, lease, 'still the holder, same epoch');
    assert.deepEqual(lines(a, 'lease stepped down'), []);
    assert.deepEqual(lines(a, 'lease deadline passed before the lease thread reported it'), []);
    assert.equal(lines(a, 'lease elected')[0]?.epoch, lease.epoch);
    killGroup(a);
    await a.exit;
  });

  it('SIGKILL of the holder: the first reservation after it is by a new holder, in a higher epoch', async () => {
    const config = writeQaConfig('lk1');
    await fresh(600, 'sleep:300');
    const group = start(config, ['k1', 'k2', 'k3']);
    const lease = await holder('lk1');
    await waitUntil(
      'all three agents to run tasks',
      async () =>
        (await count(`SELECT count(DISTINCT split_part(worker, '.', 1)) AS n FROM qa_exec_log`)) ===
        3,
    );
    const victim = group.find((a) => a.name === lease.holder.split('-')[0])!;
    const killedAt = await dbNow();
    killGroup(victim);
    await victim.exit;

    const first = await waitUntil(
      'a reservation after the kill',
      async () => {
        const r = await db.pool.query(
          `SELECT app, new_by FROM qa_write_log
            WHERE at > $1 AND old_by IS NULL AND new_by IS NOT NULL ORDER BY at LIMIT 1`,
          [killedAt],
        );
        return r.rows[0] as { app: string; new_by: string } | undefined;
      },
      15_000,
    );
    assert.notEqual(first.app, lease.holder, 'not written by the killed holder');
    assert.ok(
      !first.new_by.startsWith(`${victim.name}.`),
      `to a live node's worker: ${first.new_by}`,
    );
    const now = await holder('lk1');
    assert.equal(now.holder, first.app, 'written by the holder of the lease');
    assert.ok(now.epoch > lease.epoch, `in a higher epoch: ${now.epoch} > ${lease.epoch}`);
    await stopAll(group);
  });

  it('S10: connections killed again and again through an outage: the holder steps down, no agent crashes, work resumes', async () => {
    const config = writeQaConfig('lk2');
    await fresh(300, 'sleep:100');
    const group = start(config, ['e1', 'e2', 'e3']);
    const lease = await holder('lk2');
    await waitUntil(
      'work to start',
      async () => (await count('SELECT count(*) AS n FROM qa_exec_log')) > 10,
    );
    const dbUrl = new URL(db.url);
    const name = dbUrl.pathname.slice(1);
    dbUrl.pathname = '/postgres';
    // A database's own sessions cannot close it to new connections: an admin session can.
    const admin = new pg.Client({ connectionString: dbUrl.toString() });
    await admin.connect();
    const victim = group.find((a) => a.name === lease.holder.split('-')[0])!;
    try {
      await admin.query(`ALTER DATABASE "${name}" ALLOW_CONNECTIONS false`);
      const until = Date.now() + 3_000;
      while (Date.now() < until) {
        await db.pool.query(
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name LIKE 'e_-%' AND pid <> pg_backend_pid()`,
        );
        await sleep(100);
      }
    } finally {
      await admin.query(`ALTER DATABASE "${name}" ALLOW_CONNECTIONS true`);
      await admin.end();
    }
    const down = [
      ...lines(victim, 'lease stepped down'),
      ...lines(victim, 'lease deadline passed before the lease thread reported it'),
    ];
    assert.ok(
      down.some((l) => l.epoch === lease.epoch),
      `the holder stepped down from epoch ${lease.epoch}`,
    );
    for (const a of group) assert.equal(a.child.exitCode, null, `${a.name} is still running`);
    const resumedAt = await dbNow();
    await waitUntil(
      'a reservation after the outage',
      async () =>
        (await count(
          `SELECT count(*) AS n FROM qa_write_log WHERE at > $1 AND old_by IS NULL AND new_by IS NOT NULL`,
          [resumedAt],
        )) > 0,
      30_000,
    );
    assert.ok((await holder('lk2')).epoch > lease.epoch, 'a new term after the outage');
    await waitUntil(
      'every row closed',
      async () => (await count('SELECT count(*) AS n FROM qa_task WHERE ended_at IS NULL')) === 0,
      120_000,
    );
    for (const a of group) assert.equal(a.child.exitCode, null, `${a.name} is still running`);
    await stopAll(group);
  });

  it('SIGTERM of the holder resigns: another agent holds a higher epoch long before the TTL', async () => {
    const ttlMs = 20_000;
    // A long TTL, so only the resign explains a quick take-over.
    const config = writeQaConfig(
      'lk3',
      `lease: { ttlMs: ${ttlMs}, renewIntervalMs: 1000, renewDeadlineMs: 8000 },`,
    );
    await fresh(100, 'sleep:100');
    const group = start(config, ['t1', 't2']);
    const lease = await holder('lk3');
    await waitUntil(
      'work to start',
      async () => (await count('SELECT count(*) AS n FROM qa_exec_log')) > 0,
    );
    const victim = group.find((a) => a.name === lease.holder.split('-')[0])!;
    const termAt = Date.now();
    victim.child.kill('SIGTERM');
    await waitUntil(
      'another holder in a higher epoch',
      async () => {
        const r = await db.pool.query(
          `SELECT holder, epoch FROM pampa.leases WHERE cluster = 'lk3' AND expires_at > now()`,
        );
        const row = r.rows[0];
        return row && row.holder !== lease.holder && Number(row.epoch) > lease.epoch;
      },
      ttlMs,
    );
    const tookMs = Date.now() - termAt;
    assert.ok(tookMs < ttlMs / 2, `taken over ${tookMs} ms after SIGTERM, TTL ${ttlMs} ms`);
    assert.equal((await victim.exit).code, 0);
    const resigned = lines(victim, 'lease resigned');
    assert.deepEqual(
      resigned.map((l) => [l.epoch, l.resigned]),
      [[lease.epoch, true]],
    );
    await stopAll(group);
  });
});

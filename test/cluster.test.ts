/**
 * End to end on the multi-host test bed (scripts/testbed): `pampa install` puts agents on three
 * network namespaces over SSH; they form a mesh and process the demo job; a host whose link is
 * cut mid-run has its tasks finished elsewhere; a second install changes nothing, a changed
 * config upgrades, a broken one rolls back; unknown and changed host keys are refused before
 * any credential is sent; uninstall removes everything. Run with `npm run test:cluster` (root).
 * Skipped, with a message, where network namespaces cannot be created.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { loadConfig } from '../src/config/load.js';
import { buildBundle, disposeBundle, type Bundle } from '../src/install/bundle.js';
import { KnownHosts } from '../src/install/hostkeys.js';
import { formatTable, install, planNodes, uninstall } from '../src/install/install.js';
import type { NodeOutcome, NodePlan } from '../src/install/remote.js';
import { connectNode, fetchStatus } from '../src/install/remote.js';

const ROOT = process.cwd();
const TESTBED = join(ROOT, 'scripts', 'testbed');
const TASKS = 3000;
const STATUS_PORT = 8790;

interface Testbed {
  hosts: {
    name: string;
    host: string;
    passwordUser: string;
    keyUser: string;
    hostKeyPub: string;
    sshdLog: string;
  }[];
  password: string;
  keyFile: string;
  encryptedKeyFile: string;
  passphrase: string;
  databaseUrl: string;
}

const log = pino({ level: process.env.PAMPA_LOG_LEVEL ?? 'warn' });
let skip: string | false = false;
if (process.env.PAMPA_CLUSTER_TEST !== '1') {
  skip = 'the cluster test runs with `npm run test:cluster` (PAMPA_CLUSTER_TEST=1, root)';
} else if (process.getuid?.() !== 0) {
  skip = 'the cluster test needs root to create network namespaces';
}

let tb: Testbed;
let upAttempted = false;
let bundle: Bundle | undefined;
let db: pg.Pool;
// Inside the package, so the config module can `import … from 'pampa'` (self-reference).
const work = join(ROOT, '.pampa', `cluster-test-${process.pid}`);
const configFile = join(work, 'pampa.config.mjs');
const knownHostsFile = join(work, 'known_hosts');

function configText(extra: { table?: string; comment?: string } = {}): string {
  const nodes = tb.hosts.map((h, i) => ({
    name: h.name,
    host: h.host,
    port: 22,
    statusPort: STATUS_PORT,
    listen: [`/ip4/${h.host}/tcp/4001`],
    maxWorkers: 2,
    // tb1: plain key; tb2: password (its sudo wants a tty); tb3: key with passphrase.
    ...(i === 0 ? { user: h.keyUser, privateKeyFile: tb.keyFile } : {}),
    // Secrets come from the environment, so they are not in the shipped config module.
    ...(i === 1 ? { user: h.passwordUser, password: '@env:TB_PASSWORD' } : {}),
    ...(i === 2
      ? { user: h.keyUser, privateKeyFile: tb.encryptedKeyFile, passphrase: '@env:TB_PASSPHRASE' }
      : {}),
  }));

  return `// ${extra.comment ?? 'cluster test'}
import { defineCluster, defineJob } from 'pampa';

export default defineCluster({
  name: 'tb',
  databaseUrl: ${JSON.stringify(tb.databaseUrl)},
  nodes: ${JSON.stringify(nodes, null, 2).replace(/"@env:(\w+)"/g, 'process.env.$1')},
  jobs: [
    defineJob({
      name: 'search_odd_numbers',
      table: ${JSON.stringify(extra.table ?? 'numbers')},
      primaryKey: 'value',
      queueSize: 20,
      run: async (task, ctx) => {
        const value = Number(task.value);
        await new Promise((r) => setTimeout(r, 15));
        await ctx.db.query('UPDATE numbers SET odd = $2 WHERE value = $1', [value, value % 2 === 1]);
      },
    }),
  ],
});
`;
}

async function run(options: Partial<Parameters<typeof install>[0]> = {}) {
  const t0 = Date.now();
  const outcomes = await install({
    configFile,
    knownHostsFile,
    agentWaitMs: 60_000,
    log,
    ...options,
  });
  process.stdout.write(`# install in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  process.stdout.write(formatTable(outcomes).replace(/^/gm, '# '));

  return outcomes;
}

const byNode = (outcomes: NodeOutcome[]) => new Map(outcomes.map((o) => [o.node, o]));

async function plans(): Promise<NodePlan[]> {
  return planNodes(await loadConfig(configFile));
}

async function statusOf(plan: NodePlan) {
  const store = await KnownHosts.load(knownHostsFile);
  const session = await connectNode(plan, { knownHosts: store, policy: 'strict' });
  try {
    return await fetchStatus(session, plan.statusPort);
  } finally {
    session.close();
  }
}

async function progress(): Promise<{ done: number; wrong: number }> {
  const r = await db.query<{ done: string; wrong: string }>(
    `SELECT count(*) FILTER (WHERE odd IS NOT NULL)::text AS done,
            count(*) FILTER (WHERE odd IS DISTINCT FROM (value % 2 = 1) AND odd IS NOT NULL)::text AS wrong
       FROM numbers`,
  );

  return { done: Number(r.rows[0].done), wrong: Number(r.rows[0].wrong) };
}

async function until<T>(what: string, ms: number, fn: () => Promise<T | null | undefined | false>) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${ms / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Every process whose command line contains `text` (from /proc/<pid>/cmdline). */
function processesWith(text: string): string[] {
  const hits: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`).includes(text)) hits.push(pid);
    } catch {
      // gone meanwhile
    }
  }

  return hits;
}

function authRequests(h: Testbed['hosts'][number]): number {
  return (readFileSync(h.sshdLog, 'utf8').match(/userauth-request/g) ?? []).length;
}

before(async () => {
  if (skip) return;
  upAttempted = true;
  const up = spawnSync(TESTBED, ['up'], { encoding: 'utf8' });
  if (up.status === 3) {
    skip = 'network namespaces cannot be created here: ' + up.stderr.trim();
    upAttempted = false;
    return;
  }
  assert.equal(up.status, 0, `scripts/testbed up failed:\n${up.stdout}\n${up.stderr}`);
  tb = JSON.parse(readFileSync('/run/pampa-testbed/testbed.json', 'utf8')) as Testbed;
  process.env.TB_PASSWORD = tb.password;
  process.env.TB_PASSPHRASE = tb.passphrase;
  assert.ok(tb.databaseUrl, 'the test bed has no PostgreSQL');

  mkdirSync(work, { recursive: true });
  writeFileSync(configFile, configText());
  db = new pg.Pool({ connectionString: tb.databaseUrl, max: 2 });
  await db.query('DROP TABLE IF EXISTS numbers');
  await db.query('CREATE TABLE numbers (value bigint PRIMARY KEY, odd boolean)');
  await db.query('INSERT INTO numbers (value) SELECT generate_series(1, $1::bigint)', [TASKS]);
  execFileSync(process.execPath, ['dist/src/cli/main.js', 'migrate', '--config', configFile], {
    env: { ...process.env, PAMPA_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
});

after(async () => {
  await db?.end();
  if (bundle) await disposeBundle(bundle);
  // Also after an `up` that failed partway, which leaves namespaces, users and sshds behind.
  if (upAttempted) spawnSync(TESTBED, ['down'], { stdio: 'ignore' });
  rmSync(work, { recursive: true, force: true });
});

test('install on 3 hosts, mesh, demo job, link cut, idempotence, upgrade, rollback, host keys, uninstall', async (t) => {
  if (skip) return t.skip(skip);
  const nodes = await plans();

  // A password written in the config module (shipped to every node): refused before any
  // connection.
  const inline = join(work, 'inline.config.mjs');
  writeFileSync(
    inline,
    configText().replace('process.env.TB_PASSWORD', JSON.stringify(tb.password)),
  );
  const logsBefore = tb.hosts.map((h) => readFileSync(h.sshdLog, 'utf8').length);
  await assert.rejects(
    install({ configFile: inline, knownHostsFile, acceptNew: true, log }),
    /node "tb2": its password is written in .*inline\.config\.mjs.*process\.env\.TB2_PASSWORD/,
  );
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(
    tb.hosts.map((h) => readFileSync(h.sshdLog, 'utf8').length),
    logsBefore,
    'no connection was made',
  );

  // Unknown keys under the default (strict) policy: refused, nothing sent.
  const authBefore = tb.hosts.map(authRequests);
  const strict = byNode(await run());
  for (const h of tb.hosts) {
    assert.equal(strict.get(h.name)?.result, 'failed');
    assert.match(strict.get(h.name)?.reason ?? '', /unknown: SHA256:.*--accept-new/);
  }
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(tb.hosts.map(authRequests), authBefore, 'no authentication was attempted');

  // First install, pinning the keys. The bundle is kept for the idempotence check, as other
  // builds of dist/ may run on this machine meanwhile and would change the content hash.
  bundle = await buildBundle({ configFile });
  const firstOutcomes = await run({ acceptNew: true, bundle });
  const first = byNode(firstOutcomes);
  for (const h of tb.hosts) {
    const o = first.get(h.name);
    assert.equal(o?.result, 'installed', `${h.name}: ${o?.reason}`);
    assert.match(o?.peerId ?? '', /^12D3KooW/);
    assert.equal(o?.mesh, '3/3', `${h.name} sees the three nodes`);
  }
  assert.match(formatTable(firstOutcomes), /^tb1 +installed +\w{12} +12D3KooW\S+ +3\/3 /m);

  // The SSH password and key passphrase are nowhere on the nodes: no file under the install
  // directories, no process's command line, no agent log.
  for (const secret of [tb.password, tb.passphrase]) {
    for (const [i, h] of tb.hosts.entries()) {
      const dir = `/home/${i === 1 ? h.passwordUser : h.keyUser}/.pampa`;
      const grep = spawnSync('grep', ['-rlF', secret, dir], { encoding: 'utf8' });
      assert.equal(grep.status, 1, `${h.name}: secret found in ${grep.stdout}`);
      assert.ok(readFileSync(`${dir}/log/agent.log`, 'utf8').length > 0);
    }
    assert.deepEqual(processesWith(secret), [], 'a process command line holds a secret');
  }
  const version = first.get('tb1')?.version;
  assert.equal(new Set([...first.values()].map((o) => o.peerId)).size, 3);

  // The agents form a mesh: every node sees the three alive.
  for (const plan of nodes) {
    await until(`${plan.name} to see the mesh`, 30_000, async () => {
      const s = await statusOf(plan);
      const alive = (s?.nodes ?? []).filter((n) => n.state === 'alive').map((n) => n.name);

      return ['tb1', 'tb2', 'tb3'].every((n) => alive.includes(n));
    });
  }

  // The demo job runs; tb3's link is cut mid-run; the others finish its tasks.
  await until('a quarter of the tasks', 90_000, async () => (await progress()).done >= TASKS / 4);
  execFileSync(TESTBED, ['cut', '3']);
  const cutAt = (await progress()).done;
  // What tb3 held (reserved or running) when its link went down.
  const held = (
    await db.query<{ value: string }>(
      `SELECT value::text FROM numbers
        WHERE split_part(search_odd_numbers_reserved_by, '.', 1) = 'tb3' AND odd IS NULL`,
    )
  ).rows.map((r) => r.value);
  assert.ok(held.length > 0, 'tb3 held tasks at the cut');
  const t0 = Date.now();
  try {
    await until('every task', 180_000, async () => (await progress()).done === TASKS);
  } finally {
    execFileSync(TESTBED, ['restore', '3']);
  }
  process.stdout.write(
    `# cut tb3 at ${cutAt}/${TASKS}; all done ${((Date.now() - t0) / 1000).toFixed(1)} s later\n`,
  );
  assert.equal((await progress()).wrong, 0);
  const finishers = await db.query<{ node: string }>(
    `SELECT DISTINCT split_part(search_odd_numbers_reserved_by, '.', 1) AS node FROM numbers`,
  );
  assert.ok(finishers.rows.length >= 2, 'more than one node did tasks');
  const takenOver = await db.query<{ node: string; odd: boolean | null }>(
    `SELECT split_part(search_odd_numbers_reserved_by, '.', 1) AS node, odd
       FROM numbers WHERE value = ANY($1::bigint[])`,
    [held],
  );
  assert.equal(takenOver.rows.length, held.length);
  for (const row of takenOver.rows) {
    assert.notEqual(row.odd, null);
    assert.ok(['tb1', 'tb2'].includes(row.node), `a task of tb3 finished by ${row.node}`);
  }
  // A dispatcher was elected: the lease holder shows in /status.
  const seen = (await statusOf(nodes[0])) as { dispatcher?: { holderNode: string | null } } | null;
  assert.ok(seen?.dispatcher?.holderNode, 'a dispatcher holds the lease');

  // Second run with the same bundle: nothing restarted.
  const again = byNode(await run({ bundle }));
  for (const h of tb.hosts) {
    assert.equal(again.get(h.name)?.result, 'unchanged', `${h.name}: ${again.get(h.name)?.reason}`);
    assert.equal(again.get(h.name)?.peerId, first.get(h.name)?.peerId);
  }

  // A config whose agent cannot start: every node fails and keeps the running version.
  writeFileSync(configFile, configText({ table: 'no_such_table' }));
  const broken = byNode(await run({ agentWaitMs: 45_000 }));
  for (const h of tb.hosts) {
    assert.equal(broken.get(h.name)?.result, 'failed');
    assert.match(broken.get(h.name)?.reason ?? '', /agent did not (start|answer)/);
  }
  for (const plan of nodes) {
    const s = await until(`${plan.name} back on the old version`, 30_000, () => statusOf(plan));
    assert.equal(s.self?.node, plan.name);
  }
  const keyHome = `/home/${tb.hosts[0].keyUser}/.pampa`;
  assert.match(
    execFileSync('readlink', [`${keyHome}/current`], { encoding: 'utf8' }),
    new RegExp(`${version}$`, 'm'),
  );

  // A real change: upgraded in place and restarted.
  writeFileSync(configFile, configText({ comment: 'cluster test, second version' }));
  const upgradedBundle = await buildBundle({ configFile });
  t.after(() => disposeBundle(upgradedBundle));
  const upgraded = byNode(await run({ bundle: upgradedBundle }));
  for (const h of tb.hosts) {
    assert.equal(
      upgraded.get(h.name)?.result,
      'upgraded',
      `${h.name}: ${upgraded.get(h.name)?.reason}`,
    );
    assert.notEqual(upgraded.get(h.name)?.version, version);
  }

  // A changed host key (tb1 rebuilt): refused with both fingerprints, no credential sent.
  const pinned = readFileSync(knownHostsFile, 'utf8');
  const bogus = 'SHA256:' + Buffer.alloc(32, 1).toString('base64').replace(/=+$/, '');
  writeFileSync(knownHostsFile, pinned.replace(/^(10\.231\.0\.1:22) \S+$/m, `$1 ${bogus}`));
  const auth1 = authRequests(tb.hosts[0]);
  const changed = byNode(await run({ acceptNew: true, bundle: upgradedBundle }));
  assert.equal(changed.get('tb1')?.result, 'failed');
  assert.match(
    changed.get('tb1')?.reason ?? '',
    new RegExp(`CHANGED: pinned ${bogus.replace(/[+/]/g, '\\$&')}, presented SHA256:`),
  );
  assert.equal(changed.get('tb2')?.result, 'unchanged');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(authRequests(tb.hosts[0]), auth1, 'no authentication was attempted on tb1');
  writeFileSync(knownHostsFile, pinned);

  // Uninstall removes the agents, the supervisor and the files.
  const removed = byNode(await uninstall({ configFile, knownHostsFile, log }));
  for (const h of tb.hosts)
    assert.equal(removed.get(h.name)?.result, 'removed', removed.get(h.name)?.reason);
  for (const [i, h] of tb.hosts.entries()) {
    const user = i === 1 ? h.passwordUser : h.keyUser;
    assert.ok(!existsSync(`/home/${user}/.pampa`), `${h.name}: install directory left`);
    const procs = spawnSync('pgrep', ['-u', user, '-f', 'main.js agent|supervise.sh'], {
      encoding: 'utf8',
    });
    assert.equal(procs.stdout.trim(), '', `${h.name}: agent processes left`);
  }
  const none = byNode(await uninstall({ configFile, knownHostsFile, log }));
  assert.equal(none.get('tb1')?.result, 'absent');
});

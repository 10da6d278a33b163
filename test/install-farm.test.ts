/**
 * `pampa install` end to end against a local sshd (test/helpers/sshd.ts), one throw-away user
 * per "node" (each has its own home, so its own install directory): an inline password is
 * refused before anything is sent; in one run with --ship-node two nodes install, run under
 * the shipped Node and see each other, while a node with a wrong password and a node whose
 * agent cannot start fail with one line each, the latter leaving nothing behind; the SSH
 * password is nowhere on the node. Needs root and openssh-server; skipped otherwise.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { buildBundle, disposeBundle, type Bundle } from '../src/install/bundle.js';
import { formatTable, install, uninstall } from '../src/install/install.js';
import { InlineSecretError } from '../src/install/secrets.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { canRunSshd, freePort, startTestSshd, type TestSshd } from './helpers/sshd.js';

const skip = canRunSshd ? false : 'needs root, /usr/sbin/sshd and sudo';
const ROOT = process.cwd();
const PASSWORD =
  'Farm-' + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
const U = { a: 'pampa-fm-a', b: 'pampa-fm-b', c: 'pampa-fm-c', d: 'pampa-fm-d' };
const log = pino({ level: process.env.PAMPA_LOG_LEVEL ?? 'warn' });

let sshd: TestSshd | undefined;
let db: TestDatabase | undefined;
let bundle: Bundle | undefined;
let busy: Server | undefined;
// Inside the package, so the config module can `import … from 'pampa'` (self-reference).
const work = join(ROOT, '.pampa', `farm-test-${process.pid}`);
const configFile = join(work, 'pampa.config.mjs');
const knownHostsFile = join(work, 'known_hosts');

function configText(nodes: object[]): string {
  return `import { defineCluster, defineJob } from 'pampa';

export default defineCluster({
  name: 'farm',
  databaseUrl: ${JSON.stringify(db?.url)},
  nodes: ${JSON.stringify(nodes, null, 2).replace(/"@env:(\w+)"/g, 'process.env.$1')},
  jobs: [defineJob({ name: 'farm_job', table: 'farm_rows', primaryKey: 'id', run: async () => {} })],
});
`;
}

before(async () => {
  if (skip) return;
  sshd = await startTestSshd([
    { name: U.a },
    { name: U.b, password: PASSWORD },
    { name: U.c, password: PASSWORD },
    { name: U.d },
  ]);
  mkdirSync(work, { recursive: true });
  writeFileSync(knownHostsFile, `127.0.0.1:${sshd.port} ${sshd.hostKeyFp}\n`);
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE farm_rows (id bigint PRIMARY KEY, done boolean)');
});

after(async () => {
  if (bundle) await disposeBundle(bundle);
  busy?.close();
  sshd?.stop();
  await db?.drop();
  rmSync(work, { recursive: true, force: true });
});

const home = (user: string) => `/home/${user}/.pampa`;

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

test('an inline password is refused before anything is built or sent', { skip }, async () => {
  assert.ok(sshd);
  const inline = join(work, 'inline.config.mjs');
  writeFileSync(
    inline,
    configText([{ name: 'b', host: '127.0.0.1', port: sshd.port, user: U.b, password: PASSWORD }]),
  );
  const before = sshd.log().length;
  await assert.rejects(install({ configFile: inline, knownHostsFile, log }), (e: unknown) => {
    assert.ok(e instanceof InlineSecretError);
    assert.match(e.message, /node "b": its password is written in .*inline\.config\.mjs/);
    assert.match(e.message, /process\.env\.B_PASSWORD/);
    assert.ok(!e.message.includes(PASSWORD));

    return true;
  });
  await assert.rejects(buildBundle({ configFile: inline }), InlineSecretError);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(sshd.log().slice(before), '', 'no connection reached sshd');
});

test(
  'one run: two nodes install under the shipped Node and mesh, two fail alone',
  { skip },
  async () => {
    assert.ok(sshd && db);
    const [statusA, statusB, statusD, p2pA, p2pB, p2pD] = await Promise.all(
      Array.from({ length: 6 }, () => freePort()),
    );
    // d's status port is taken, so its agent cannot start: its first install must roll back.
    busy = createServer().listen(statusD, '127.0.0.1');
    const node = (name: string, user: string, status: number, p2p: number, auth: object) => ({
      name,
      host: '127.0.0.1',
      port: sshd?.port,
      user,
      statusPort: status,
      listen: [`/ip4/127.0.0.1/tcp/${p2p}`],
      maxWorkers: 1,
      ...auth,
    });
    writeFileSync(
      configFile,
      configText([
        node('a', U.a, statusA, p2pA, { privateKeyFile: sshd.keyFile }),
        node('b', U.b, statusB, p2pB, { password: '@env:FARM_B_PASSWORD' }),
        node('c', U.c, await freePort(), await freePort(), { password: '@env:FARM_C_PASSWORD' }),
        node('d', U.d, statusD, p2pD, { privateKeyFile: sshd.keyFile }),
      ]),
    );
    process.env.FARM_B_PASSWORD = PASSWORD;
    process.env.FARM_C_PASSWORD = 'not-the-password';
    execFileSync(process.execPath, ['dist/src/cli/main.js', 'migrate', '--config', configFile], {
      env: { ...process.env, PAMPA_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });

    bundle = await buildBundle({ configFile });
    const outcomes = await install({
      configFile,
      knownHostsFile,
      bundle,
      shipNode: true,
      agentWaitMs: 30_000,
      log,
    });
    const table = formatTable(outcomes);
    process.stdout.write(table.replace(/^/gm, '# '));
    const by = new Map(outcomes.map((o) => [o.node, o]));

    for (const n of ['a', 'b']) {
      assert.equal(by.get(n)?.result, 'installed', `${n}: ${by.get(n)?.reason}`);
      assert.equal(by.get(n)?.mesh, '2/2', `${n} sees the other installed node`);
    }
    assert.match(table, /^a +installed +\w{12} +12D3KooW\S+ +2\/2 /m);
    assert.equal(by.get('c')?.result, 'failed');
    assert.match(by.get('c')?.reason ?? '', /authentication failed/);
    assert.equal(by.get('d')?.result, 'failed');
    assert.match(by.get('d')?.reason ?? '', /agent did not (start|answer)/);
    for (const n of ['c', 'd']) {
      assert.equal(by.get(n)?.mesh, undefined);
      assert.equal(by.get(n)?.reason?.includes('\n'), false);
    }

    // --ship-node: the agents run the uploaded binary, not the system one.
    for (const user of [U.a, U.b]) {
      const pid = readFileSync(`${home(user)}/run/agent.pid`, 'utf8').trim();
      const exe = execFileSync('readlink', [`/proc/${pid}/exe`], { encoding: 'utf8' }).trim();
      assert.ok(exe.startsWith(`${home(user)}/runtime/node-${process.version}-`), exe);
    }

    // d's failed first install left nothing: no directory, no pid file, no process.
    assert.ok(!existsSync(home(U.d)), 'install directory of d left behind');
    const left = spawnSync('pgrep', ['-u', U.d, '-f', 'main.js agent|supervise.sh'], {
      encoding: 'utf8',
    });
    assert.equal(left.stdout.trim(), '', 'processes of d left behind');

    // The SSH password reached no file, process list or agent log on the node.
    assert.deepEqual(processesWith(PASSWORD), []);
    const grep = spawnSync('grep', ['-rlF', PASSWORD, home(U.b)], { encoding: 'utf8' });
    assert.equal(grep.stdout, '', 'password found in the install directory');
    assert.ok(readFileSync(`${home(U.b)}/log/agent.log`, 'utf8').length > 0);

    const removed = new Map(
      (await uninstall({ configFile, knownHostsFile, log })).map((o) => [o.node, o]),
    );
    assert.equal(removed.get('a')?.result, 'removed', removed.get('a')?.reason);
    assert.equal(removed.get('b')?.result, 'removed', removed.get('b')?.reason);
    assert.equal(removed.get('d')?.result, 'absent');
    assert.ok(!existsSync(home(U.a)) && !existsSync(home(U.b)));
  },
);

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { Command } from 'commander';
import { StatusClientError, fetchStatus, statusEndpoint } from '../src/status/client.js';
import {
  registerStatusCommands,
  runStatusCommand,
  runWorkersCommand,
} from '../src/status/commands.js';
import { formatStatus, formatWorkerList } from '../src/status/format.js';
import { AgentMetrics } from '../src/status/metrics.js';
import { StatusServer } from '../src/status/server.js';
import { TOKEN, clusterStatus, silentLog } from './status-fixture.js';

const NOW = Date.parse('2025-01-01T12:00:00Z');
let open: StatusServer;
let secured: StatusServer;
let openUrl: string;
let securedUrl: string;

function server(token?: string): StatusServer {
  return new StatusServer({
    host: '127.0.0.1',
    port: 0,
    token,
    log: silentLog,
    status: async () => clusterStatus(NOW),
    metrics: new AgentMetrics(),
    healthy: () => ({ ok: true }),
  });
}

/** A local URL nothing listens on: a port the kernel gave out and took back. */
async function deadUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise((resolve) => s.close(resolve));

  return `http://127.0.0.1:${port}`;
}

/** A stream that keeps what is written to it; `tty` makes it look like a terminal. */
function capture(): Writable & { text: () => string } {
  const chunks: string[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk.toString());
      done();
    },
  });

  return Object.assign(w, { text: () => chunks.join('') });
}

before(async () => {
  open = server();
  secured = server(TOKEN);
  openUrl = (await open.start()).url;
  securedUrl = (await secured.start()).url;
});

after(async () => {
  await open.stop();
  await secured.stop();
});

describe('fetchStatus', () => {
  test('reads the status from a base URL or a /status URL', async () => {
    const expected = JSON.parse(JSON.stringify(clusterStatus(NOW)));
    assert.deepEqual(await fetchStatus(openUrl), expected);
    assert.deepEqual(await fetchStatus(`${openUrl}/status`), expected);
    assert.deepEqual(await fetchStatus(securedUrl, TOKEN), expected);
  });

  test('statusEndpoint keeps a path prefix', () => {
    assert.equal(statusEndpoint('http://h:1').href, 'http://h:1/status');
    assert.equal(statusEndpoint('http://h:1/pampa').href, 'http://h:1/pampa/status');
    assert.equal(statusEndpoint('http://h:1/pampa/status').href, 'http://h:1/pampa/status');
    assert.throws(() => statusEndpoint('nope'), /not a URL.*PAMPA_STATUS_URL/);
  });

  test('a missing or wrong token says which option to set', async () => {
    await assert.rejects(fetchStatus(securedUrl), (err: Error) => {
      assert.ok(err instanceof StatusClientError);
      assert.match(err.message, /needs a token.*--token.*PAMPA_STATUS_TOKEN/);
      return true;
    });
    await assert.rejects(fetchStatus(securedUrl, 'x'.repeat(20)), /rejected the token/);
  });

  test('an unreachable agent is named with its URL and the fix', async () => {
    const url = await deadUrl();
    await assert.rejects(fetchStatus(url), (err: Error) => {
      assert.ok(err instanceof StatusClientError);
      assert.ok(err.message.includes(url), err.message);
      assert.match(err.message, /ECONNREFUSED.*--url.*PAMPA_STATUS_URL/);
      return true;
    });
  });
});

describe('status and workers commands', () => {
  test('status prints nodes, workers, lease and jobs', async () => {
    const out = capture();
    await runStatusCommand({ url: openUrl, out });
    const text = out.text();
    assert.equal(text, formatStatus(clusterStatus(NOW)));
    assert.match(text, /cluster demo {2}agent node-a \(dispatcher, v0\.1\.0\) {2}db ok/);
    assert.match(text, /holder agent-a1 on node-a {2}epoch 7 {2}expires in 3\.2 s/);
    assert.match(text, /node-a \* +alive +12D3Ko…111111 +0\.1\.0 +0s ago/);
    assert.match(text, /node-b +suspect/);
    assert.match(text, /node-a\.2 +thumbnails +free +0 +17 +0 +42s ago/);
    assert.match(text, /resize +632\/1000 \(63\.2%\) {2}done 620 {2}failed 12/);
    assert.match(text, /thumbnails +17\/250/);
  });

  test('status --json prints the status object', async () => {
    const out = capture();
    await runStatusCommand({ url: securedUrl, token: TOKEN, json: true, out });
    assert.deepEqual(JSON.parse(out.text()), JSON.parse(JSON.stringify(clusterStatus(NOW))));
  });

  test('status --watch --json prints one line per second until stopped', async () => {
    const controller = new AbortController();
    const lines: string[] = [];
    const out = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        if (lines.length >= 2) controller.abort();
        done();
      },
    });
    await runStatusCommand({
      url: openUrl,
      watch: true,
      json: true,
      out,
      signal: controller.signal,
    });
    assert.equal(lines.length, 2);
    for (const line of lines) assert.equal(JSON.parse(line).cluster, 'demo');
  });

  test('workers prints job, queued tasks and last activity per worker', async () => {
    const out = capture();
    await runWorkersCommand({ url: openUrl, out });
    assert.equal(out.text(), formatWorkerList(clusterStatus(NOW)));
    const lines = out.text().trimEnd().split('\n');
    assert.equal(lines.length, 4);
    assert.match(lines[0], /worker +job +queued +last active/);
    assert.match(lines[1], /node-a\.1 +resize +4 +1s ago/);
    assert.match(lines[2], /node-a\.2 +thumbnails +0 +42s ago/);
    assert.match(lines[3], /node-b\.1 +resize +2 +never/);
  });

  test('commands are registered with env defaults in their help', () => {
    const program = new Command('pampa');
    registerStatusCommands(program);
    const status = program.commands.find((c) => c.name() === 'status');
    const workers = program.commands.find((c) => c.name() === 'workers');
    assert.ok(status && workers);
    const help = status.helpInformation().replace(/\s+/g, ' ');
    assert.match(help, /--url <url>.*env: PAMPA_STATUS_URL/);
    assert.match(help, /--token <token>.*env: PAMPA_STATUS_TOKEN/);
    assert.match(help, /--watch/);
    assert.match(help, /--json/);
    assert.match(workers.helpInformation(), /--url <url>/);
  });
});

/** Runs `pampa <args>` through commander in a child process, as the CLI will. */
function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const commands = new URL('../src/status/commands.js', import.meta.url).href;
  const script =
    `import { Command } from 'commander'; import { registerStatusCommands } from '${commands}';` +
    `const p = new Command('pampa'); registerStatusCommands(p); await p.parseAsync();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, '--', ...args], {
    env: { PATH: process.env.PATH, ...env },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c) => (stdout += c));
  child.stderr.on('data', (c) => (stderr += c));

  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

describe('CLI exit codes', () => {
  test('an unreachable agent: one line naming the URL, exit code 2', async () => {
    const url = await deadUrl();
    const r = await cli(['status', '--url', url]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^pampa: cannot reach the status port at ${url}`));
  });

  test('URL and token come from the environment', async () => {
    const env = { PAMPA_STATUS_URL: securedUrl, PAMPA_STATUS_TOKEN: TOKEN };
    const r = await cli(['workers'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /node-b\.1 +resize +2 +never/);

    const denied = await cli(['workers'], { PAMPA_STATUS_URL: securedUrl });
    assert.equal(denied.code, 2);
    assert.match(denied.stderr, /needs a token/);
  });
});

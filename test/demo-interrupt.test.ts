import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CLI, isRunning, waitFor } from './helpers/fixture.js';

/**
 * Ctrl-C in a terminal signals the whole foreground process group. The demo without
 * DATABASE_URL starts its own PostgreSQL: it must stop its agents first and its database last,
 * leaving no process and no data directory behind, whether it is holding or still running the
 * job.
 */

const children: ChildProcess[] = [];
/** The demos' agents, each the leader of its own process group. */
const agents: number[] = [];
const dirs: string[] = [];
after(() => {
  const groups = [...children.map((c) => c.pid!), ...agents];
  for (const pid of groups) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Demo {
  child: ChildProcess;
  output: () => string;
  exit: Promise<{ code: number | null; signal: string | null }>;
}

function startDemo(args: string[]): Demo {
  const cwd = mkdtempSync(join(tmpdir(), 'pampa-demo-int-'));
  dirs.push(cwd);
  const env: NodeJS.ProcessEnv = { ...process.env, PAMPA_LOG_FORMAT: 'json' };
  delete env.DATABASE_URL;
  // Its own process group, standing for the terminal's foreground group.
  const child = spawn(process.execPath, [CLI, 'demo', ...args], {
    cwd,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );

  return { child, output: () => out, exit };
}

/** A field of the first JSON log line with message `msg` in `out`. */
function logged<T>(out: string, msg: string, field: string): T | undefined {
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      if (j.msg === msg) return j[field] as T;
    } catch {
      // a progress bar line
    }
  }

  return undefined;
}

/** The demo's agent processes: its children running `pampa agent`. */
function agentsOf(demoPid: number): number[] {
  const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(demoPid)], {
    encoding: 'utf8',
  })
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((pid) => pid > 0);

  return children.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('agent');
    } catch {
      return false;
    }
  });
}

async function interruptAndCheck(demo: Demo, expectedCode: number): Promise<void> {
  const dataDir = await waitFor('the local PostgreSQL', () =>
    logged<string>(demo.output(), 'local postgres started', 'data_dir'),
  );
  const agentPids = agentsOf(demo.child.pid!);
  agents.push(...agentPids);
  assert.ok(agentPids.length > 0, 'agents running');

  process.kill(-demo.child.pid!, 'SIGINT');
  const code = await waitFor(
    'the demo to exit after Ctrl-C',
    () => Promise.race([demo.exit, new Promise<null>((r) => setTimeout(() => r(null), 100))]),
    60_000,
    0,
    () => demo.output().slice(-3000),
  );
  assert.deepEqual(code, { code: expectedCode, signal: null }, demo.output().slice(-3000));
  for (const pid of agentPids) assert.equal(isRunning(pid), false, `agent ${pid} stopped`);
  assert.equal(existsSync(dataDir), false, `${dataDir} removed`);
}

test('Ctrl-C while the demo holds stops its agents, then its own PostgreSQL', async () => {
  const demo = startDemo(['--tasks', '200', '--agents', '2', '--workers', '1', '--hold']);
  await waitFor(
    'the demo to hold',
    () => /press Ctrl-C/.test(demo.output()),
    180_000,
    100,
    () => demo.output().slice(-3000),
  );
  assert.match(demo.output(), /database: postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres/);
  await interruptAndCheck(demo, 0);
});

test('Ctrl-C while the demo runs its job stops everything too, with code 130', async () => {
  const demo = startDemo(['--tasks', '200000', '--agents', '1', '--workers', '1']);
  await waitFor(
    'the agent to start tasks',
    () =>
      logged(demo.output(), 'local postgres started', 'data_dir') &&
      /agents' logs/.test(demo.output()),
    180_000,
    100,
    () => demo.output().slice(-3000),
  );
  await interruptAndCheck(demo, 130);
});

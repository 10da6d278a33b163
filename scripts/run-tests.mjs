// Test runner, run after `tsc` has built to dist/ (`npm test` does both).
//
//   node scripts/run-tests.mjs            all of dist/test/*.test.js
//   node scripts/run-tests.mjs lease dsp  only files whose name contains "lease" or "dsp"
//
// Starts one throw-away PostgreSQL for the whole run (fsync off) and hands its admin URL to the
// tests as PAMPA_TEST_DATABASE_URL; each test file makes its own databases on it
// (test/helpers/database.ts). With DATABASE_URL or PAMPA_TEST_DATABASE_URL set, that server is
// used instead and nothing is started. The exit code is the test run's.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';

const TEST_DIR = join('dist', 'test');
const NODE_ARGS = [
  '--import',
  './dist/src/polyfills.js',
  '--test',
  '--test-concurrency=2',
  '--test-timeout=300000',
];

const log = pino({ level: process.env.PAMPA_LOG_LEVEL ?? 'info' }, pino.destination(2)).child({
  component: 'run-tests',
});

function testFiles(filters) {
  const all = readdirSync(TEST_DIR)
    .filter((f) => f.endsWith('.test.js'))
    .sort();
  const chosen = filters.length === 0 ? all : all.filter((f) => filters.some((p) => f.includes(p)));

  return chosen.map((f) => join(TEST_DIR, f));
}

async function main() {
  const files = testFiles(process.argv.slice(2));
  if (files.length === 0) {
    log.error({ filters: process.argv.slice(2), dir: TEST_DIR }, 'no test files match');
    return 1;
  }

  let server;
  let child;
  let stopping = false;
  const onSignal = (signal) => {
    if (stopping) return;
    stopping = true;
    log.warn({ signal }, 'interrupted, stopping tests');
    child?.kill(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const env = { ...process.env };
    const existing = env.PAMPA_TEST_DATABASE_URL ?? env.DATABASE_URL;
    if (existing) {
      env.PAMPA_TEST_DATABASE_URL = existing;
    } else {
      const { startLocalPostgres } = await import('../dist/src/db/launcher.js');
      server = await startLocalPostgres({ log, fsync: false });
      env.PAMPA_TEST_DATABASE_URL = server.url;
    }
    if (stopping) return 130;

    child = spawn(process.execPath, [...NODE_ARGS, ...files], { stdio: 'inherit', env });
    const code = await new Promise((resolve) => {
      child.on('error', (err) => {
        log.error({ err }, 'could not start the test runner');
        resolve(1);
      });
      child.on('close', (exitCode, signal) => resolve(exitCode ?? (signal ? 128 + 2 : 1)));
    });

    return code;
  } finally {
    await server?.stop();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    log.error({ err }, 'test run failed to start');
    process.exitCode = 1;
  },
);

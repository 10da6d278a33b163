import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const INDEX = pathToFileURL(fileURLToPath(new URL('../../src/index.js', import.meta.url))).href;

/** A real `pampa agent` process, in its own process group so a SIGKILL takes its workers too. */
export interface AgentProc {
  name: string;
  child: ChildProcess;
  exit: Promise<{ code: number | null; signal: string | null }>;
  /** JSON log lines seen so far. */
  logs: Record<string, unknown>[];
}

/**
 * Writes a config module for a `qa_task` table driven by its payload (`sleep:<ms>`,
 * `fail:<text>`), logging every execution to `qa_exec_log`, with short timings for tests.
 */
export function writeQaConfig(cluster: string, extra = ''): string {
  const dir = mkdtempSync(join(tmpdir(), 'pampa-cfg-'));
  const file = join(dir, 'config.mjs');
  writeFileSync(
    file,
    `import { defineCluster, defineJob } from ${JSON.stringify(INDEX)};
export default defineCluster({
  name: ${JSON.stringify(cluster)},
  lease: { ttlMs: 1500, renewIntervalMs: 300, renewDeadlineMs: 1000 },
  mesh: { advertIntervalMs: 300, advertTtlMs: 1500, nodeDeadAfterMs: 1500, heartbeatIntervalMs: 300 },
  dispatchIntervalMs: 200, relaunchScanMs: 500, workerPollMs: 200, shutdownGraceMs: 1000,
  ${extra}
  jobs: [defineJob({
    name: 'qa', table: 'qa_task', primaryKey: 'id', queueSize: 5, maxTryTimes: 3,
    retryBackoffSeconds: 0,
    columns: { reservedBy: 'rsv_by', reservedAt: 'rsv_at', tries: 'rsv_tries', startedAt: 'started_at',
      endedAt: 'ended_at', success: 'ok', error: 'err' },
    run: async (task, ctx) => {
      const r = await ctx.db.query('INSERT INTO qa_exec_log (task_id, worker, attempt) VALUES ($1, $2, $3) RETURNING ctid::text AS c',
        [task.id, ctx.worker, ctx.attempt]);
      const [kind, arg] = String(task.payload).split(':');
      try {
        if (kind === 'sleep') await new Promise((res) => setTimeout(res, Number(arg)));
        if (kind === 'fail') throw new Error(arg);
      } finally {
        await ctx.db.query('UPDATE qa_exec_log SET t_end = clock_timestamp() WHERE ctid = $1::tid', [r.rows[0].c]);
      }
    },
  })],
});
`,
  );

  return file;
}

export const QA_SCHEMA = `
  CREATE TABLE qa_task (id bigint PRIMARY KEY, payload text NOT NULL, note text DEFAULT 'keep-me',
    rsv_by varchar(500), rsv_at timestamp, rsv_tries integer DEFAULT 0, started_at timestamp,
    ended_at timestamp, ok boolean, err text);
  CREATE TABLE qa_exec_log (task_id bigint, worker text, attempt int,
    t_start timestamptz DEFAULT clock_timestamp(), t_end timestamptz);
  CREATE TABLE qa_write_log (at timestamptz DEFAULT clock_timestamp(), task_id bigint, app text,
    old_by text, new_by text, old_tries int, new_tries int);
  CREATE FUNCTION qa_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO qa_write_log (task_id, app, old_by, new_by, old_tries, new_tries)
    VALUES (NEW.id, current_setting('application_name'), OLD.rsv_by, NEW.rsv_by, OLD.rsv_tries, NEW.rsv_tries);
    RETURN NULL; END $$;
  CREATE TRIGGER qa_audit AFTER UPDATE ON qa_task FOR EACH ROW EXECUTE FUNCTION qa_audit();`;

export function startAgentProc(
  config: string,
  name: string,
  url: string,
  args: string[] = [],
  env: Record<string, string> = {},
): AgentProc {
  const child = spawn(
    process.execPath,
    [CLI, 'agent', '--config', config, '--name', name, '--http-port', '0', ...args],
    {
      env: {
        ...process.env,
        DATABASE_URL: url,
        PAMPA_LOG_FORMAT: 'json',
        PAMPA_LOG_LEVEL: 'info',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    },
  );
  const logs: Record<string, unknown>[] = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    }
  });
  child.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
  const exit = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );

  return { name, child, exit, logs };
}

/** Kills the agent and every process it started. */
export function killGroup(a: AgentProc, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(-a.child.pid!, signal);
  } catch {
    // already gone
  }
}

export async function stopAll(agents: AgentProc[]): Promise<void> {
  for (const a of agents) killGroup(a, 'SIGKILL');
  await Promise.all(agents.map((a) => a.exit));
}

export async function waitUntil<T>(
  what: string,
  fn: () => Promise<T | false | null | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

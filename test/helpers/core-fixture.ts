/**
 * Shared pieces of the core-* tests: polling, the qa_task fixture of cases.md (Fixture F), a
 * config-module writer and a process harness for real agents.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type pg from 'pg';

/** Repository root: dist/test/helpers/ → ../../.. */
export const ROOT = resolve(new URL('../../..', import.meta.url).pathname);
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
export const INDEX_URL = pathToFileURL(join(ROOT, 'dist', 'src', 'index.js')).href;

export function tempDir(prefix = 'pampa-core-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Polls `check` until it returns a truthy value; fails naming `what` after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 20_000,
  everyMs = 50,
  onTimeout?: () => Promise<string> | string,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) {
      const extra = onTimeout ? `\n${await onTimeout()}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${extra}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Fixture F's user table, its exec log and its audit log (cases.md §2). */
export async function createQaTables(db: pg.Pool): Promise<void> {
  await db.query(`
    CREATE TABLE qa_task (
      id          bigint PRIMARY KEY,
      payload     text NOT NULL,
      result      text,
      note        text DEFAULT 'keep-me',
      rsv_by      varchar(500),
      rsv_at      timestamp,
      rsv_tries   integer DEFAULT 0,
      started_at  timestamp,
      ended_at    timestamp,
      ok          boolean,
      err         text
    );
    CREATE TABLE qa_exec_log (id bigserial PRIMARY KEY, task_id bigint, worker text, attempt int,
      pid int, t_start timestamptz DEFAULT clock_timestamp(), t_end timestamptz);
    CREATE TABLE qa_write_log (at timestamptz DEFAULT clock_timestamp(), task_id bigint,
      app text, old_by text, new_by text, old_tries int, new_tries int,
      old_end timestamp, new_end timestamp, old_ok boolean, new_ok boolean);
    CREATE FUNCTION qa_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO qa_write_log (task_id, app, old_by, new_by, old_tries, new_tries, old_end,
        new_end, old_ok, new_ok)
      VALUES (NEW.id, current_setting('application_name'), OLD.rsv_by, NEW.rsv_by,
        OLD.rsv_tries, NEW.rsv_tries, OLD.ended_at, NEW.ended_at, OLD.ok, NEW.ok);
      RETURN NULL;
    END $$;
    CREATE TRIGGER qa_audit AFTER UPDATE ON qa_task FOR EACH ROW EXECUTE FUNCTION qa_audit();
  `);
}

/** The reservation columns of qa_task, as a job's `columns` option. */
export const QA_COLUMNS = {
  reservedBy: 'rsv_by',
  reservedAt: 'rsv_at',
  tries: 'rsv_tries',
  startedAt: 'started_at',
  endedAt: 'ended_at',
  success: 'ok',
  error: 'err',
} as const;

export interface QaConfigOptions {
  cluster?: string;
  queueSize?: number;
  maxTryTimes?: number;
  maxReservedSeconds?: number;
  maxJobDurationMinutes?: number;
  shutdownGraceMs?: number;
}

/**
 * Writes a config module (.js) for the qa job: the handler is driven by the payload
 * (`sleep:<ms>`, `fail:<text>`, `die`) and logs each execution into qa_exec_log on the worker's
 * own pool (ctx.db), before running and when it returns. Short timings throughout.
 */
export function writeQaConfig(dir: string, o: QaConfigOptions = {}): string {
  const file = join(dir, `pampa.config.${Math.random().toString(36).slice(2, 8)}.js`);
  const settings = {
    name: o.cluster ?? 'core',
    lease: { ttlMs: 1500, renewIntervalMs: 300, renewDeadlineMs: 1000 },
    mesh: {
      advertIntervalMs: 300,
      advertTtlMs: 1500,
      heartbeatIntervalMs: 300,
      nodeDeadAfterMs: 2000,
    },
    dispatchIntervalMs: 200,
    relaunchScanMs: 500,
    workerPollMs: 200,
    shutdownGraceMs: o.shutdownGraceMs ?? 1000,
  };
  const job = {
    name: 'qa',
    table: 'qa_task',
    primaryKey: 'id',
    columns: QA_COLUMNS,
    queueSize: o.queueSize ?? 5,
    maxTryTimes: o.maxTryTimes ?? 3,
    maxReservedSeconds: o.maxReservedSeconds ?? 5,
    maxJobDurationMinutes: o.maxJobDurationMinutes ?? 1,
    retryBackoffSeconds: 0,
  };
  writeFileSync(
    file,
    `import { defineCluster, defineJob } from ${JSON.stringify(INDEX_URL)};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function run(task, ctx) {
  const log = await ctx.db.query(
    'INSERT INTO qa_exec_log (task_id, worker, attempt, pid) VALUES ($1, $2, $3, $4) RETURNING id',
    [task.id, ctx.worker, ctx.attempt, process.pid],
  );
  const execId = log.rows[0].id;
  try {
    const p = String(task.payload);
    if (p.startsWith('sleep:')) {
      await sleep(Number(p.slice(6)));
      await ctx.db.query("UPDATE qa_task SET result = 'done' WHERE id = $1", [task.id]);
    } else if (p.startsWith('fail:')) {
      throw new Error(p.slice(5));
    } else if (p === 'die') {
      process.kill(process.pid, 'SIGKILL');
      await sleep(60000);
    } else {
      throw new Error('unknown payload ' + p);
    }
  } finally {
    await ctx.db.query('UPDATE qa_exec_log SET t_end = clock_timestamp() WHERE id = $1', [execId]);
  }
}

export default defineCluster({
  ...${JSON.stringify(settings)},
  jobs: [defineJob({ ...${JSON.stringify(job)}, run })],
});
`,
  );

  return file;
}

export interface AgentProcess {
  name: string;
  child: ChildProcess;
  pid: number;
  logFile: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL to the agent and every process it started (its process group). */
  killGroup(): void;
  /** SIGTERM to the agent only; resolves with its exit. */
  term(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  logTail(lines?: number): string;
}

/** Starts `pampa agent` in its own process group, its output in a log file of `dir`. */
export function startAgent(
  dir: string,
  configFile: string,
  databaseUrl: string,
  name: string,
  workers = 2,
): AgentProcess {
  const logFile = join(dir, `agent-${name}-${Date.now()}.log`);
  const out = createWriteStream(logFile);
  const child = spawn(
    process.execPath,
    [
      CLI,
      'agent',
      '--config',
      configFile,
      '--name',
      name,
      '--workers',
      String(workers),
      '--http-port',
      '0',
    ],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: databaseUrl,
        PAMPA_LOG_FORMAT: 'json',
        PAMPA_LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    },
  );
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    child.once('exit', (code, signal) => res({ code, signal })),
  );
  const pid = child.pid!;
  running.add(pid);
  void exited.then(() => running.delete(pid));

  return {
    name,
    child,
    pid,
    logFile,
    exited,
    killGroup() {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    },
    term() {
      child.kill('SIGTERM');

      return exited;
    },
    logTail(lines = 40) {
      try {
        return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
      } catch {
        return '(no log)';
      }
    },
  };
}

const running = new Set<number>();

/** Kills the process group of every agent still running (test clean-up). */
export function killAllAgents(): void {
  for (const pid of running) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  running.clear();
}

/** Invariant checks of cases.md §2 that hold after every scenario; returns violations. */
export async function invariantViolations(db: pg.Pool, maxTries = 3): Promise<string[]> {
  const out: string[] = [];
  const i1a = await db.query(`SELECT id, rsv_tries FROM qa_task WHERE rsv_tries > $1`, [maxTries]);
  if (i1a.rowCount) out.push(`I1 tries > max: ${JSON.stringify(i1a.rows)}`);
  const i1b = await db.query(
    `SELECT task_id, count(*)::int AS n FROM qa_exec_log GROUP BY 1 HAVING count(*) > $1`,
    [maxTries],
  );
  if (i1b.rowCount) out.push(`I1 execs > max: ${JSON.stringify(i1b.rows)}`);
  const i3 = await db.query(
    `SELECT t.id FROM qa_task t JOIN qa_exec_log e ON e.task_id = t.id
      WHERE t.ok AND t.ended_at IS NOT NULL AND e.t_start > (t.ended_at AT TIME ZONE 'UTC')`,
  );
  if (i3.rowCount) out.push(`I3 exec after done: ${JSON.stringify(i3.rows)}`);
  const i6 = await db.query(`SELECT id FROM qa_task WHERE note IS DISTINCT FROM 'keep-me'`);
  if (i6.rowCount) out.push(`I6 note changed: ${JSON.stringify(i6.rows)}`);
  const okZero = await db.query(`SELECT id FROM qa_task WHERE ok AND COALESCE(rsv_tries, 0) = 0`);
  if (okZero.rowCount) out.push(`ok with tries 0: ${JSON.stringify(okZero.rows)}`);
  const i7 = await db.query(
    `SELECT id, rsv_tries, ok, ended_at, err FROM qa_task
      WHERE ended_at IS NOT NULL AND ok IS NOT TRUE
        AND (err IS NULL OR rsv_tries IS DISTINCT FROM $1)`,
    [maxTries],
  );
  if (i7.rowCount) out.push(`I7 badly closed: ${JSON.stringify(i7.rows)}`);

  return out;
}

/**
 * The one fixture of the tests that run real agents, and of the chaos harness: Fixture F of
 * cases.md (the `qa_task` table, its exec and audit logs, a task function driven by the payload),
 * config modules with short timings, and `pampa agent` processes in their own process groups.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type pg from 'pg';
import { pino } from 'pino';
import { defineJob } from '../../src/config/define.js';
import type { JobInput } from '../../src/config/schema.js';
import { migrateJobTable } from '../../src/db/user-table.js';
import type { Logger } from '../../src/log.js';

/** Repository root: dist/test/helpers/ → ../../.. */
export const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
export const INDEX_URL = pathToFileURL(join(ROOT, 'dist', 'src', 'index.js')).href;

export function tempDir(prefix = 'pampa-test-'): string {
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

/** Fixture F's user table (cases.md §2): plain `timestamp` columns, as users have them. */
export const QA_TASK_SQL = `
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
  );`;

/**
 * qa_task, plus qa_exec_log (a row per execution, written by the task function itself) and
 * qa_write_log (a row per UPDATE of qa_task, with the writer's application_name).
 */
export const QA_TABLES_SQL = `${QA_TASK_SQL}
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
  CREATE TRIGGER qa_audit AFTER UPDATE ON qa_task FOR EACH ROW EXECUTE FUNCTION qa_audit();`;

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

/** Creates qa_task and its logs (QA_TABLES_SQL). */
export async function createQaTables(db: pg.Pool): Promise<void> {
  await db.query(QA_TABLES_SQL);
}

/** The qa job over qa_task, with Fixture F's columns and `extra` options. */
export function qaJob(extra: Partial<JobInput> = {}): ReturnType<typeof defineJob> {
  return defineJob({
    name: 'qa',
    table: 'qa_task',
    primaryKey: 'id',
    columns: QA_COLUMNS,
    run: () => undefined,
    ...extra,
  });
}

/** What `pampa migrate` does for the qa job: its index and new-row trigger on qa_task. */
export async function migrateQaJob(
  db: pg.Pool,
  log: Logger = pino({ level: 'silent' }),
): Promise<void> {
  await migrateJobTable(db, qaJob(), 'pampa', log);
}

/** Cluster timings for tests: a 1.5 s lease, adverts every 0.3 s, rounds every 0.2 s. */
export const TEST_SETTINGS = {
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
  shutdownGraceMs: 1000,
};

type Settings = typeof TEST_SETTINGS;

export type SettingsOverrides = Partial<Omit<Settings, 'lease' | 'mesh'>> & {
  lease?: Partial<Settings['lease']>;
  mesh?: Partial<Settings['mesh']>;
};

export function testSettings(o: SettingsOverrides = {}): Settings {
  const s = TEST_SETTINGS;

  return { ...s, ...o, lease: { ...s.lease, ...o.lease }, mesh: { ...s.mesh, ...o.mesh } };
}

export interface ConfigModuleOptions {
  dir: string;
  cluster: string;
  settings?: SettingsOverrides;
  /** Source text placed before `export default`: helpers the jobs' code calls. */
  prelude?: string;
  /** Source text of the rest of defineCluster's object: `jobs: [...]` and any other option. */
  body: string;
  /** File name in `dir`; a fresh `pampa.config.<random>.mjs` by default. */
  file?: string;
}

/** Writes a config module: TEST_SETTINGS (with overrides), then `body`; returns its path. */
export function writeConfigModule(o: ConfigModuleOptions): string {
  const file = join(o.dir, o.file ?? `pampa.config.${Math.random().toString(36).slice(2, 8)}.mjs`);
  writeFileSync(
    file,
    `import { defineCluster, defineJob } from ${JSON.stringify(INDEX_URL)};
${o.prelude ?? ''}
export default defineCluster({
  name: ${JSON.stringify(o.cluster)},
  ...${JSON.stringify(testSettings(o.settings))},
  ${o.body}
});
`,
  );

  return file;
}

/**
 * The qa job's task function, driven by the payload: `sleep:<ms>` sleeps then writes `result`,
 * `fail:<text>` throws that text, `die` SIGKILLs its own worker process. Each call logs its
 * execution (worker, attempt, pid) into qa_exec_log on the worker's pool, before running and
 * when it returns.
 */
const QA_RUN = `
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
`;

export interface QaConfigOptions {
  cluster?: string;
  queueSize?: number;
  maxTryTimes?: number;
  maxReservedSeconds?: number;
  maxJobDurationMinutes?: number;
  /** Only workers whose id matches this pattern get the job. */
  workerFilter?: string;
  shutdownGraceMs?: number;
  settings?: SettingsOverrides;
  /** Source text of further defineCluster options, e.g. `mesh: { clusterKey: '…' },`. */
  extra?: string;
}

/** Writes a config module for the qa job over qa_task in `dir`; returns its path. */
export function writeQaConfig(dir: string, o: QaConfigOptions = {}): string {
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
    workerFilter: o.workerFilter,
  };
  const settings = { ...o.settings };
  if (o.shutdownGraceMs !== undefined) settings.shutdownGraceMs = o.shutdownGraceMs;

  return writeConfigModule({
    dir,
    cluster: o.cluster ?? 'core',
    settings,
    prelude: QA_RUN,
    body: `${o.extra ?? ''}
  jobs: [defineJob({ ...${JSON.stringify(job)}, run })],`,
  });
}

export type Exit = { code: number | null; signal: NodeJS.Signals | null };

/** A `pampa agent` process, in its own process group so a SIGKILL takes its workers too. */
export interface AgentProcess {
  name: string;
  child: ChildProcess;
  pid: number;
  /** Its stdout and stderr (JSON log lines, its workers' included). */
  logFile: string;
  exited: Promise<Exit>;
  /** SIGKILL to the agent and every process it started (its process group). */
  killGroup(): void;
  /** SIGTERM to the agent only; resolves with its exit. */
  term(): Promise<Exit>;
  /** The JSON log lines written so far. */
  lines(): Record<string, unknown>[];
  logTail(lines?: number): string;
}

export interface SpawnAgentOptions {
  /** Where the log file goes. */
  dir: string;
  config: string;
  /** DATABASE_URL of the agent and its workers. */
  url: string;
  name: string;
  /** `--workers`; the node's maxWorkers in the config when absent. */
  workers?: number;
  /** More command-line arguments. */
  args?: string[];
  env?: Record<string, string>;
  /** Log file name in `dir`; `agent-<name>-<ms>.log` by default. */
  logName?: string;
  /** Called with each JSON line of stdout as it arrives. */
  onLine?: (line: Record<string, unknown>) => void;
}

const running = new Set<number>();

/** Starts `pampa agent` (status port 0, JSON logs at info) in its own process group. */
export function spawnAgent(o: SpawnAgentOptions): AgentProcess {
  const logFile = join(o.dir, o.logName ?? `agent-${o.name}-${Date.now()}.log`);
  const out = createWriteStream(logFile);
  const workers = o.workers === undefined ? [] : ['--workers', String(o.workers)];
  const child = spawn(
    process.execPath,
    [
      CLI,
      'agent',
      '--config',
      o.config,
      '--name',
      o.name,
      '--http-port',
      '0',
      ...workers,
      ...(o.args ?? []),
    ],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: o.url,
        PAMPA_LOG_FORMAT: 'json',
        PAMPA_LOG_LEVEL: 'info',
        ...o.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    },
  );
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    out.write(d);
    if (!o.onLine) return;
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = parseLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (line) o.onLine(line);
    }
  });
  child.stderr!.on('data', (d: Buffer) => out.write(d));
  child.once('close', () => out.end());
  const exited = new Promise<Exit>((res) =>
    child.once('exit', (code, signal) => res({ code, signal })),
  );
  const pid = child.pid!;
  running.add(pid);
  void exited.then(() => running.delete(pid));

  return {
    name: o.name,
    child,
    pid,
    logFile,
    exited,
    killGroup: () => killProcessGroup(pid),
    term() {
      child.kill('SIGTERM');

      return exited;
    },
    lines: () => readLines(logFile),
    logTail(lines = 40) {
      try {
        return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
      } catch {
        return '(no log)';
      }
    },
  };
}

/** `pampa agent --workers <workers>` with its log file in `dir`. */
export function startAgent(
  dir: string,
  configFile: string,
  databaseUrl: string,
  name: string,
  workers = 2,
): AgentProcess {
  return spawnAgent({ dir, config: configFile, url: databaseUrl, name, workers });
}

export function killProcessGroup(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/** Kills the process group of every agent still running (test clean-up). */
export function killAllAgents(): void {
  for (const pid of running) killProcessGroup(pid);
  running.clear();
}

/** Whether process `pid` exists and is not a zombie (an orphan's zombie may stay unreaped). */
export function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);

    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Whether the agent logged `msg` (with each of `fields`, when given). */
export function logged(
  a: AgentProcess,
  msg: string,
  fields: Record<string, unknown> = {},
): boolean {
  return a
    .lines()
    .some((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
}

/** The JSON log lines of an agent (its worker processes' lines included). */
export function logLines(a: AgentProcess): Record<string, unknown>[] {
  return a.lines();
}

/** The agent's status URL, from its 'agent started' log line. */
export async function statusUrl(a: AgentProcess): Promise<string> {
  return waitFor('agent started', () => {
    const line = a.lines().find((l) => l.msg === 'agent started');

    return (line?.statusUrl as string | undefined) ?? null;
  });
}

function readLines(file: string): Record<string, unknown>[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }

  return text.split('\n').flatMap((l) => {
    const line = parseLine(l);

    return line ? [line] : [];
  });
}

function parseLine(line: string): Record<string, unknown> | null {
  if (!line.startsWith('{')) return null;
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    // a line cut by a crash, or still being written
    return null;
  }
}

export interface AgentGroup {
  dir: string;
  config: string;
  agents: AgentProcess[];
  /** Starts an agent on the group's database, or on `url` (e.g. through a proxy). */
  start(name: string, workers?: number, url?: string): AgentProcess;
  /** The tail of every agent's log, for failure messages. */
  logs(): string;
}

/** Agents sharing one config module and one database. */
export function agentGroup(dir: string, config: string, url: string): AgentGroup {
  const agents: AgentProcess[] = [];

  return {
    dir,
    config,
    agents,
    start(name, workers = 2, agentUrl = url) {
      const a = startAgent(dir, config, agentUrl, name, workers);
      agents.push(a);

      return a;
    },
    logs: () => agents.map((a) => `--- ${a.name} (pid ${a.pid}) ---\n${a.logTail(30)}`).join('\n'),
  };
}

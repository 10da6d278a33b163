import { fork, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import type { Logger } from '../log.js';
import { releaseTasks } from '../dispatch/release.js';
import { isTransientDbError } from '../db/pool.js';
import { unstartTasks } from './statements.js';
import { CpuThrottle } from './throttle.js';
import { ProgressReader } from './progress.js';
import { Defaults } from '../config/defaults.js';
import { runRelauncher } from '../hooks/relauncher.js';
import { HookRunner } from '../hooks/run.js';
import { AGENT_ALIVE_MS, EXIT_AGENT_SILENT, EXIT_OVERRUN } from './protocol.js';
import type { FromWorker, ToWorker, WorkerInit } from './protocol.js';

const CHILD = fileURLToPath(new URL('./child.js', import.meta.url));
/** A worker silent this long (it heartbeats every 500 ms) gets no new tasks (ms). */
const UNRESPONSIVE_MS = 2000;
/** After the shutdown grace, workers told to stop get this long before they are killed (ms). */
const STOP_WAIT_MS = 1000;

/** Tries to release a gone worker's tasks while the agent shuts down (about 1.5 s in all). */
const SHUTDOWN_RELEASE_ATTEMPTS = 5;

export interface WorkerPoolOptions {
  configPath: string;
  databaseUrl: string;
  agentId: string;
  node: string;
  count: number;
  /** The job each worker serves when it starts (its assignment as last read), or null. */
  jobOf: (worker: string) => string | null;
  tables: Map<string, JobTable>;
  /**
   * Memory limit of each worker process (MB): its V8 heap is capped there
   * (--max-old-space-size), and a process whose resident set grows past it is killed, its
   * running task failed with that reason, and the process started again.
   */
  maxMemoryMb?: number;
  /** CPU share of each worker process (% of one core), held by a SIGSTOP/SIGCONT throttle. */
  maxCpuPercent?: number;
  db: pg.Pool;
  pollMs: number;
  /** A worker that hears nothing from this agent for this long stops by itself (ms). */
  agentSilentMs: number;
  log: Logger;
  /** Called when a worker's queue shrank or it went idle: the dispatcher may top it up. */
  onCapacity: () => void;
  onActivity?: (event: {
    worker: string;
    job: string;
    kind: 'started' | 'succeeded' | 'failed';
    n: number;
  }) => void;
}

export interface WorkerState {
  id: string;
  /** The job it is assigned, or null. */
  job: string | null;
  pid: number | null;
  busy: boolean;
  lastActivityAt: number | null;
  done: number;
  failed: number;
  restarts: number;
  /** Its process is up and heard from within UNRESPONSIVE_MS (not paused, not stuck). */
  responsive: boolean;
}

interface Slot extends Omit<WorkerState, 'responsive'> {
  child: ChildProcess | null;
  runningSince: number | null;
  lastHeartbeat: number;
  stopping: boolean;
  /** The batch started last, its number and job; which of its tasks ran is in `progress`. */
  batch: { pk: string; attempt: number }[];
  batchNo: number;
  batchJob: string | null;
  progress: ProgressReader | null;
  /** Why the pool killed the process, when it did (memory), for the tasks' error text. */
  killReason: string | null;
  /** Resolves once the process is gone and its tasks were released. */
  exited: Promise<void>;
  onGone: () => void;
}

/**
 * The worker processes of one agent. A worker process that dies — a crash, an OOM kill, a task
 * that overran — has its tasks given back at once and is started again, with a backoff that
 * grows while it keeps dying. The agent's event loop never runs task code.
 */
export class WorkerPool {
  private readonly slots: Slot[] = [];
  private started = false;
  private watchdog: NodeJS.Timeout | undefined;
  private alive: NodeJS.Timeout | undefined;
  private throttle: CpuThrottle | undefined;
  private readonly hooks: HookRunner;

  constructor(private readonly o: WorkerPoolOptions) {
    this.hooks = new HookRunner(o.log, Defaults.hookTimeoutMs);
  }

  ids(): string[] {
    return this.slots.map((s) => s.id);
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    for (let n = 1; n <= this.o.count; n++) {
      const id = `${this.o.node}.${n}`;
      const slot: Slot = {
        id,
        job: this.o.jobOf(id),
        pid: null,
        busy: false,
        lastActivityAt: null,
        done: 0,
        failed: 0,
        restarts: 0,
        child: null,
        runningSince: null,
        lastHeartbeat: Date.now(),
        stopping: false,
        exited: Promise.resolve(),
        onGone: () => undefined,
        batch: [],
        batchJob: null,
        killReason: null,
        batchNo: -1,
        progress: null,
      };
      this.slots.push(slot);
      this.spawn(slot);
    }
    this.watchdog = setInterval(() => this.checkOverruns(), 1000);
    this.watchdog.unref();
    this.alive = setInterval(() => {
      for (const s of this.slots) this.send(s, { t: 'alive' });
    }, AGENT_ALIVE_MS);
    this.alive.unref();
    if (this.o.maxCpuPercent) {
      const pids = () => this.slots.flatMap((s) => (s.child?.pid ? [s.child.pid] : []));
      this.throttle = new CpuThrottle(this.o.maxCpuPercent, pids, this.o.log);
      this.throttle.start();
    }
  }

  states(): WorkerState[] {
    const now = Date.now();

    return this.slots.map((s) => ({
      id: s.id,
      job: s.job,
      pid: s.pid,
      busy: s.busy,
      lastActivityAt: s.lastActivityAt,
      done: s.done,
      failed: s.failed,
      restarts: s.restarts,
      responsive: s.child !== null && now - s.lastHeartbeat < UNRESPONSIVE_MS,
    }));
  }

  /** Tells workers that tasks were reserved to them. */
  wake(ids?: Iterable<string>): void {
    const want = ids ? new Set(ids) : null;
    for (const s of this.slots) if (!want || want.has(s.id)) this.send(s, { t: 'wake' });
  }

  /** Assigns workers of this pool to jobs (null: none); others in the map are ignored. */
  assign(jobs: ReadonlyMap<string, string | null>): void {
    for (const s of this.slots) {
      if (!jobs.has(s.id)) continue;
      const job = jobs.get(s.id) ?? null;
      if (job === s.job) continue;
      s.job = job;
      this.send(s, { t: 'assign', job });
    }
  }

  private send(s: Slot, msg: ToWorker): void {
    if (s.child?.connected) s.child.send(msg, () => undefined);
  }

  private spawn(slot: Slot): void {
    const init: WorkerInit = {
      configPath: this.o.configPath,
      workerId: slot.id,
      job: slot.job,
      agentId: this.o.agentId,
      pollMs: this.o.pollMs,
      agentSilentMs: this.o.agentSilentMs,
    };
    const execArgv = process.execArgv.filter(
      (a) => !a.startsWith('--test') && !a.startsWith('--max-old-space-size'),
    );
    if (this.o.maxMemoryMb) execArgv.push(`--max-old-space-size=${this.o.maxMemoryMb}`);
    const child = fork(CHILD, [JSON.stringify(init)], {
      // fd 4: the progress pipe (progress.ts).
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', 'pipe'],
      execArgv,
      env: { ...process.env, DATABASE_URL: this.o.databaseUrl },
    });
    slot.child = child;
    slot.progress = new ProgressReader(child.stdio[4] as Readable);
    slot.pid = child.pid ?? null;
    slot.lastHeartbeat = Date.now();
    slot.runningSince = null;
    slot.killReason = null;
    slot.exited = new Promise((resolve) => (slot.onGone = resolve));
    child.on('error', (err) => this.o.log.error({ err, worker: slot.id }, 'worker process error'));
    child.on('message', (msg: FromWorker) => this.onMessage(slot, msg));
    child.once('exit', (code, signal) => void this.onExit(slot, child, code, signal));
  }

  private onMessage(s: Slot, msg: FromWorker): void {
    s.lastHeartbeat = Date.now();
    switch (msg.t) {
      case 'ready':
        s.restarts = 0;
        break;
      case 'started':
        s.batch = msg.tasks;
        s.batchJob = msg.job;
        s.batchNo = msg.batch;
        // The batch's start time, for the overrun watchdog, even if no heartbeat follows.
        s.runningSince = Date.now();
        s.busy = true;
        s.lastActivityAt = Date.now();
        this.o.onActivity?.({ worker: s.id, job: msg.job, kind: 'started', n: msg.n });
        this.o.onCapacity();
        break;
      case 'finished':
        s.batch = [];
        s.runningSince = null;
        s.busy = false;
        s.done += msg.ok;
        s.failed += msg.failed;
        s.lastActivityAt = Date.now();
        if (msg.ok)
          this.o.onActivity?.({ worker: s.id, job: msg.job, kind: 'succeeded', n: msg.ok });
        if (msg.failed)
          this.o.onActivity?.({ worker: s.id, job: msg.job, kind: 'failed', n: msg.failed });
        break;
      case 'heartbeat':
        s.runningSince = msg.runningSince;
        s.busy = msg.runningSince !== null;
        break;
      case 'fatal':
        this.o.log.error({ worker: s.id, message: msg.message }, 'worker process could not start');
        break;
    }
  }

  /**
   * This node may be declared dead (its registry heartbeat is failing), and its tasks relaunched
   * elsewhere: stop every running task now, so none runs twice at once.
   */
  fence(reason: string): void {
    for (const s of this.slots) {
      if (!s.child || s.stopping) continue;
      s.killReason = reason;
      s.child.kill('SIGKILL');
    }
  }

  /**
   * A task whose worker's event loop is stuck past the job's maximum duration: kill it. A
   * worker whose resident set passed maxMemoryMb: kill it too.
   */
  private checkOverruns(): void {
    const now = Date.now();
    if (this.o.maxMemoryMb) void this.checkMemory(this.o.maxMemoryMb);
    for (const s of this.slots) {
      const table = this.o.tables.get(s.batchJob ?? s.job ?? '');
      if (!table || !s.child || s.stopping) continue;
      const maxMs = table.job.maxJobDurationMinutes * 60_000;
      if (s.runningSince !== null && now - s.runningSince > maxMs + Defaults.overrunKillGraceMs) {
        this.o.log.warn(
          { worker: s.id, maxJobDurationMinutes: table.job.maxJobDurationMinutes },
          'task overran and its worker is stuck; killing it',
        );
        s.child.kill('SIGKILL');
      }
    }
  }

  private async checkMemory(maxMb: number): Promise<void> {
    for (const s of this.slots) {
      const child = s.child;
      if (!child?.pid || s.stopping || s.killReason) continue;
      const mb = await residentMb(child.pid);
      if (mb === null || mb <= maxMb || s.child !== child) continue;
      s.killReason =
        `worker process ${s.id} used ${mb} MB, more than maxMemoryMb (${maxMb} MB); ` +
        'it was killed and restarted';
      this.o.log.warn(
        { worker: s.id, rssMb: mb, maxMemoryMb: maxMb },
        'worker over its memory limit; killing it',
      );
      child.kill('SIGKILL');
    }
  }

  private async onExit(
    s: Slot,
    child: ChildProcess,
    code: number | null,
    signal: string | null,
  ): Promise<void> {
    if (s.child !== child) return;
    s.child = null;
    s.pid = null;
    s.busy = false;
    const reason = s.killReason
      ? s.killReason
      : this.o.maxMemoryMb && (signal === 'SIGABRT' || code === 134)
        ? `worker process ${s.id} ran out of memory: its heap reached maxMemoryMb (${this.o.maxMemoryMb} MB)`
        : signal
          ? `worker process ${s.id} was killed by ${signal}`
          : code === EXIT_OVERRUN
            ? `task ran longer than maxJobDurationMinutes (${this.maxMinutesOf(s)} min); stopped by its worker ${s.id}`
            : code === EXIT_AGENT_SILENT
              ? `worker process ${s.id} stopped: its agent was silent (paused or hung)`
              : `worker process ${s.id} exited with code ${code}`;
    if (!s.stopping) this.o.log.warn({ worker: s.id, code, signal }, 'worker process died');
    s.killReason = null;
    // Every progress record the process wrote before it died is read before judging its batch.
    await Promise.race([s.progress?.ended, new Promise((r) => setTimeout(r, 1000))]);
    await this.unstartUnrun(s);
    await this.releaseOf(s, s.stopping ? 'shutdown' : reason);
    s.onGone();
    if (s.stopping || !this.started) return;
    s.restarts++;
    const delay = Math.min(5000, 100 * 2 ** Math.min(s.restarts - 1, 6));
    setTimeout(() => {
      if (!s.stopping && this.started) this.spawn(s);
    }, delay).unref();
    this.o.onCapacity();
  }

  private maxMinutesOf(s: Slot): number | string {
    return this.o.tables.get(s.batchJob ?? s.job ?? '')?.job.maxJobDurationMinutes ?? '?';
  }

  /**
   * Tasks of the dead worker's last batch that it never began: their start is undone, so they
   * are not charged a try. The task reported running (and any before it) did run.
   */
  private async unstartUnrun(s: Slot): Promise<void> {
    const table = s.batchJob === null ? undefined : this.o.tables.get(s.batchJob);
    const running = s.progress?.runningIndex(s.batchNo) ?? -1;
    const unrun = s.batch.slice(s.batch.length > 1 ? running + 1 : s.batch.length);
    s.batch = [];
    if (!table || unrun.length === 0) return;
    try {
      const n = await unstartTasks(this.o.db, table, s.id, unrun);
      if (n > 0) this.o.log.info({ worker: s.id, tasks: n }, 'tasks that never ran given back');
    } catch (err) {
      this.o.log.warn({ err, worker: s.id }, 'could not give back tasks that never ran');
    }
  }

  /**
   * Gives back the tasks held by a worker that is gone, in every job (it may have switched job
   * with tasks still held), retrying while the database is down.
   */
  private async releaseOf(s: Slot, reason: string): Promise<void> {
    // Shutting down, the agent does not wait for a database that is gone: once it has stopped,
    // its node is taken for dead and the dispatcher releases what it held.
    const attempts = s.stopping ? SHUTDOWN_RELEASE_ATTEMPTS : 60;
    for (const table of this.o.tables.values()) {
      for (let attempt = 1; attempt <= attempts; attempt++) {
        try {
          const { rows, ...r } = await releaseTasks(this.o.db, table, {
            reason,
            workers: [s.id],
            returnRows: table.job.relauncher !== undefined,
          });
          if (r.requeued + r.closed > 0) {
            this.o.log.info(
              { worker: s.id, job: table.job.name, ...r, reason },
              'tasks of a gone worker released',
            );
          }
          await runRelauncher(this.hooks, table, this.o.db, this.o.log, rows);
          break;
        } catch (err) {
          if (!isTransientDbError(err) || attempt === attempts) {
            this.o.log.error({ err, worker: s.id, attempt }, 'release failed');
            break;
          }
          await new Promise((r) => setTimeout(r, Math.min(2000, 100 * attempt)));
        }
      }
    }
  }

  /**
   * SIGTERM: workers start nothing new; queued tasks are given back at once (tries unchanged);
   * running tasks get `graceMs` to finish; then the workers are killed and their tasks released.
   */
  async drain(graceMs: number): Promise<void> {
    if (!this.started) return;
    this.throttle?.stop();
    for (const s of this.slots) {
      s.stopping = true;
      this.send(s, { t: 'drain' });
    }
    const workers = this.ids();
    for (const [job, table] of this.o.tables) {
      try {
        const { rows, ...r } = await releaseTasks(this.o.db, table, {
          reason: 'shutdown',
          workers,
          onlyUnstarted: true,
          returnRows: table.job.relauncher !== undefined,
        });
        this.o.log.info({ job, ...r }, 'queued tasks given back');
        await runRelauncher(this.hooks, table, this.o.db, this.o.log, rows);
      } catch (err) {
        this.o.log.error({ err, job }, 'could not give back queued tasks');
      }
    }
    const all = Promise.all(this.slots.map((s) => s.exited));
    const timer = new Promise<'late'>((resolve) =>
      setTimeout(() => resolve('late'), graceMs).unref(),
    );
    if ((await Promise.race([all, timer])) === 'late') {
      // Running tasks are told through ctx.signal, and given a moment to stop on their own.
      this.o.log.warn({ graceMs }, 'grace period over; stopping running tasks');
      for (const s of this.slots) this.send(s, { t: 'stop' });
      const stopped = new Promise<'late'>((resolve) =>
        setTimeout(() => resolve('late'), STOP_WAIT_MS).unref(),
      );
      if ((await Promise.race([all, stopped])) === 'late') {
        for (const s of this.slots) s.child?.kill('SIGKILL');
      }
      await all;
    }
    this.stop();
  }

  stop(): void {
    this.started = false;
    clearInterval(this.watchdog);
    clearInterval(this.alive);
    this.throttle?.stop();
    for (const s of this.slots) {
      s.stopping = true;
      s.child?.kill('SIGKILL');
    }
  }
}

/** Resident set of a process (MB) from /proc; null where /proc is missing or the process gone. */
async function residentMb(pid: number): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);

    return kb ? Math.round(Number(kb[1]) / 1024) : null;
  } catch {
    return null;
  }
}

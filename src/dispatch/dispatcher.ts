import pMap from 'p-map';
import { CronExpressionParser } from 'cron-parser';
import type pg from 'pg';
import { Defaults } from '../config/defaults.js';
import type { JobTable } from '../db/table.js';
import { isTransientDbError } from '../db/pool.js';
import { HOOK_CONCURRENCY, runRelauncher } from '../hooks/relauncher.js';
import { HookResults, HookRunner, hookContext } from '../hooks/run.js';
import type { Logger } from '../log.js';
import { fenceParams, fenceSql, type LeaseToken } from '../lease/fence.js';
import { leasesTable } from '../lease/statements.js';
import {
  compileFilter,
  readAssignments,
  stretch,
  writeAssignments,
  type StretchJob,
} from './assignments.js';
import { releaseTasks } from './release.js';
import {
  countBacklog,
  NO_SELECTION,
  queuedPerWorker,
  reopenTasks,
  reserveTasks,
  type FreeRowSelection,
} from './statements.js';

/** A live worker the dispatcher may assign and reserve for: fresh advert, not draining. */
export interface EligibleWorker {
  id: string;
  /** The job its agent last heard it was assigned (informational; the database decides). */
  job?: string | null;
  /** Free slots the worker's agent advertised; the database count is authoritative. */
  freeSlots: number;
  /** Running a task, as its agent last said: its queue waits behind that task. */
  busy?: boolean;
}

export interface DispatcherOptions {
  db: pg.Pool;
  schema: string;
  cluster: string;
  tables: Map<string, JobTable>;
  /** The lease token while this agent holds the lease and is inside its renewal deadline. */
  token: () => LeaseToken | null;
  /** Live workers across the cluster. */
  workers: () => EligibleWorker[];
  /** Workers of nodes the membership declared dead (gossip silent, registry stale). */
  deadNodes: () => Promise<string[]>;
  /** Called after a reservation, so the workers start at once. */
  onReserved: (job: string, given: Map<string, number>, epoch: number) => void;
  /** Called after assignments changed: worker → job (null: none). */
  onAssigned?: (changes: Map<string, string | null>, epoch: number) => void;
  onRelaunched?: (job: string, reason: string, n: number) => void;
  /** After each reservation statement: its duration and how many tasks it reserved. */
  onRound?: (job: string, seconds: number, reserved: number) => void;
  /** Node name → its tags (nodes[].tags), for workerFilter.tags. */
  nodeTags?: ReadonlyMap<string, readonly string[]>;
  intervalMs: number;
  relaunchScanMs: number;
  /** Assignments are decided at most this often, besides the cases round() lists (ms). */
  assignEveryMs?: number;
  log: Logger;
}

/**
 * The round's fence, and check(): throws LeaseLost unless the round's token is still good by
 * this agent's own clock (inside its renewal deadline). Called right before every write, so
 * a write is never even sent after the deadline, however long the hooks before it took.
 */
type Fence = { sql: (first: number) => string; params: unknown[]; check: () => void };

/** The lease term a round started with ended (by the local deadline) before one of its writes. */
class LeaseLost extends Error {}

/** Default of assignEveryMs. */
const ASSIGN_EVERY_MS = 250;

/**
 * A round waits this long for its jobs' reservation steps; a step still running then (a slow
 * occupied or allowing hook) goes on alone, and its job is skipped by later rounds until it
 * ends, so one job's slow hook never holds back the others' reservations.
 */
const STEP_WAIT_MS = 1000;

/**
 * Runs while this agent holds the lease. Each round: relaunch and reopen what is due (every
 * relaunchScanMs), assign workers to jobs (elastic assignment, at most every 250 ms, and at once
 * when new rows arrive while a job has no worker), then top every assigned worker's queue up to
 * its job's queueSize. A round runs every intervalMs, and at once when kick() is called (a worker
 * that freed slots, an advert) or rowsArrived() (a new row's NOTIFY).
 * Every write carries the lease fence. A broken hook costs its job's step, never the round.
 */
export class Dispatcher {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private kicked = false;
  /** New rows were announced since the last round began. */
  private arrived = false;
  private looping = false;
  private lastScan = 0;
  private lastStretch = 0;
  private rounds = 0;
  private lastError: string | null = null;
  /** Failures so far: a round clears lastError only when none came while it ran. */
  private failures = 0;
  /** Worker → job, as last read or written; reread whenever this agent (re)gains the lease. */
  private assigned = new Map<string, string | null>();
  private assignedEpoch = -1;
  private liveKey = '';
  private readonly hooks: HookRunner;
  /** Jobs whose reservation step is still running, past the round that started it. */
  private readonly reserving = new Map<string, Promise<void>>();

  constructor(private readonly o: DispatcherOptions) {
    this.hooks = new HookRunner(o.log, Defaults.hookTimeoutMs);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    while (this.looping) await new Promise((r) => setTimeout(r, 10));
    await Promise.all(this.reserving.values());
  }

  /** Run a relaunch scan and a round as soon as possible (a node was just declared dead). */
  scanNow(): void {
    this.lastScan = 0;
    this.kick();
  }

  /**
   * New rows were announced (NOTIFY): run a round as soon as possible, and let it assign workers
   * at once to a job that has none (idle jobs drop their workers), rather than at the next
   * assignment period.
   */
  rowsArrived(): void {
    this.arrived = true;
    this.kick();
  }

  /** Run a round as soon as possible. */
  kick(): void {
    if (!this.running) return;
    this.kicked = true;
    if (!this.looping) this.schedule(0);
  }

  status(): { rounds: number; lastError: string | null } {
    return { rounds: this.rounds, lastError: this.lastError };
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.loop(), ms);
  }

  private async loop(): Promise<void> {
    if (this.looping || !this.running) return;
    this.looping = true;
    try {
      do {
        this.kicked = false;
        await this.round();
      } while (this.kicked && this.running);
    } finally {
      this.looping = false;
      if (this.running) this.schedule(this.o.intervalMs);
    }
  }

  private async round(): Promise<void> {
    const token = this.o.token();
    if (!token) return;
    const fence: Fence = {
      sql: (first: number) => fenceSql(leasesTable(this.o.schema), first),
      params: fenceParams(token) as unknown[],
      check: () => {
        if (this.o.token()?.epoch !== token.epoch)
          throw new LeaseLost(`lease epoch ${token.epoch} no longer held; write not sent`);
      },
    };
    this.rounds++;
    const arrived = this.arrived;
    this.arrived = false;
    const failuresBefore = this.failures;
    try {
      if (Date.now() - this.lastScan >= this.o.relaunchScanMs) {
        this.lastScan = Date.now();
        await this.relaunch(fence);
      }
      const eligible = this.o.workers();
      const live = [...new Set(eligible.map((w) => w.id))].sort();
      // A worker that serves a job but offers no slot is paused or stuck: it keeps its job and
      // its queue, and gets nothing more until it is heard from again.
      const busy = new Set(eligible.filter((w) => w.busy === true).map((w) => w.id));
      const stalled = new Set(
        eligible.filter((w) => w.freeSlots === 0 && w.job != null).map((w) => w.id),
      );
      // Every job's selecting hook at once: a slow one costs the round one hook timeout.
      const tables = [...this.o.tables];
      const chosen = await Promise.all(tables.map(([, t]) => this.selection(t, live.length)));
      const selections = new Map(tables.map(([job], i) => [job, chosen[i]]));
      const liveKey = live.join(',');
      if (
        token.epoch !== this.assignedEpoch ||
        liveKey !== this.liveKey ||
        Date.now() - this.lastStretch >= (this.o.assignEveryMs ?? ASSIGN_EVERY_MS) ||
        (arrived && this.someJobUnserved(live))
      ) {
        await this.assign(token, fence, live, selections);
        this.liveKey = liveKey;
        this.lastStretch = Date.now();
      }
      const steps: Promise<void>[] = [];
      for (const [job, table] of this.o.tables) {
        const selection = selections.get(job);
        if (!selection || this.reserving.has(job)) continue;
        const workers = live.filter((w) => this.assigned.get(w) === job && !stalled.has(w));
        if (workers.length === 0) continue;
        fence.check();
        const step = this.isolated(table, 'selecting', () =>
          this.reserve(job, table, workers, busy, selection, fence, token.epoch),
        )
          .then(
            () => undefined,
            (err: unknown) => this.failed(err, token.epoch),
          )
          .finally(() => this.reserving.delete(job));
        this.reserving.set(job, step);
        steps.push(step);
      }
      let waited: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(steps),
        new Promise((r) => (waited = setTimeout(r, STEP_WAIT_MS))),
      ]).finally(() => clearTimeout(waited));
      if (this.failures === failuresBefore) this.lastError = null;
    } catch (err) {
      this.failed(err, token.epoch);
    }
  }

  /** Whether some job has no live worker assigned to it. */
  private someJobUnserved(live: string[]): boolean {
    const served = new Set(live.map((w) => this.assigned.get(w)));

    return [...this.o.tables.keys()].some((job) => !served.has(job));
  }

  private failed(err: unknown, epoch: number): void {
    if (err instanceof LeaseLost) {
      this.o.log.info({ epoch }, 'dispatch round stopped: lease no longer held');
      return;
    }
    this.failures++;
    this.lastError = err instanceof Error ? err.message : String(err);
    const level = isTransientDbError(err) ? 'warn' : 'error';
    this.o.log[level]({ err }, 'dispatch round failed');
  }

  /** The selecting hook's fragments for this round, or null when the hook failed. */
  private async selection(t: JobTable, live: number): Promise<FreeRowSelection | null> {
    const hook = t.job.selecting;
    if (!hook) return NO_SELECTION;
    const n = t.job.queueSize * Math.min(live, t.job.maxAssignedWorkers ?? live);
    const got = await this.hooks.call(
      t.job.name,
      'selecting',
      () => hook(n, hookContext(t, this.o.db, this.o.log)),
      HookResults.selection,
    );
    if (!got.ok) return null;

    return {
      where: got.value?.where ?? null,
      orderBy: got.value?.orderBy ?? null,
      params: got.value?.params ?? [],
    };
  }

  /** Elastic assignment: decides which live worker serves which job, and writes the changes. */
  private async assign(
    token: LeaseToken,
    fence: Fence,
    live: string[],
    selections: Map<string, FreeRowSelection | null>,
  ): Promise<void> {
    if (token.epoch !== this.assignedEpoch) {
      const rows = await readAssignments(this.o.db, this.o.schema, this.o.cluster);
      this.assigned = new Map([...rows].map(([w, r]) => [w, r.job]));
      this.assignedEpoch = token.epoch;
    }
    if (live.length === 0) return;
    const jobs: StretchJob[] = [];
    for (const [name, t] of this.o.tables) {
      const j = t.job;
      const selection = selections.get(name);
      const cap = j.maxPendingTasks ? j.maxPendingTasks * (j.maxAssignedWorkers ?? live.length) : 1;
      const backlog = selection
        ? await this.isolated(t, 'selecting', () => countBacklog(this.o.db, t, cap, selection))
        : null;
      jobs.push({
        name,
        backlog: backlog ?? 0,
        maxPendingTasks: j.maxPendingTasks,
        maxAssignedWorkers: j.maxAssignedWorkers,
        filter: compileFilter(j.workerFilter, this.o.nodeTags),
        hold: backlog === null,
      });
    }
    const next = stretch(live, jobs, this.assigned, this.rounds);
    const changes = new Map<string, string | null>();
    for (const [w, job] of next) {
      if ((this.assigned.get(w) ?? null) !== job) changes.set(w, job);
    }
    if (changes.size === 0) return;
    fence.check();
    const written = await writeAssignments(
      this.o.db,
      this.o.schema,
      this.o.cluster,
      changes,
      token.epoch,
      fence,
    );
    if (written === 0) return;
    for (const [w, job] of changes) this.assigned.set(w, job);
    const perJob: Record<string, number> = {};
    for (const job of next.values()) if (job) perJob[job] = (perJob[job] ?? 0) + 1;
    this.o.log.info(
      { changed: Object.fromEntries(changes), workersPerJob: perJob, epoch: token.epoch },
      'workers assigned',
    );
    this.o.onAssigned?.(changes, token.epoch);
  }

  /** Tops up the queues of a job's workers in one fenced statement. */
  private async reserve(
    job: string,
    table: JobTable,
    workers: string[],
    busy: ReadonlySet<string>,
    selection: FreeRowSelection,
    fence: Fence,
    epoch: number,
  ): Promise<void> {
    const j = table.job;
    const ctx = hookContext(table, this.o.db, this.o.log);
    let queued: Map<string, number>;
    if (j.occupied) {
      // The workers' hook calls run at once (HOOK_CONCURRENCY at a time): hanging hooks cost
      // this step one hook timeout, not one per worker.
      const occupied = j.occupied;
      const got = await pMap(
        workers,
        (w) => this.hooks.call(job, 'occupied', () => occupied(w, ctx), HookResults.count),
        { concurrency: HOOK_CONCURRENCY },
      );
      queued = new Map(workers.map((w, i) => [w, got[i].ok ? got[i].value : j.queueSize]));
    } else {
      queued = await queuedPerWorker(this.o.db, table, workers);
    }
    let open = workers.filter((w) => j.queueSize - (queued.get(w) ?? 0) > 0);
    if (j.allowing && open.length > 0) {
      const allowing = j.allowing;
      const got = await pMap(
        open,
        (w) => this.hooks.call(job, 'allowing', () => allowing(w, ctx), HookResults.allowed),
        { concurrency: HOOK_CONCURRENCY },
      );
      open = open.filter((_, i) => got[i].ok && got[i].value);
    }
    // Slow hooks may have outlasted an assignment change: only the job's workers still. Each
    // slot has a place in its worker's line (its queued tasks, and the running one, come
    // first); the rows go to the slots nearest the front, so a new row goes to an idle worker
    // rather than behind a running task, and a round's rows spread across the workers.
    const lined: { w: string; place: number }[] = [];
    for (const w of open) {
      if (this.assigned.get(w) !== job) continue;
      const ahead = (queued.get(w) ?? 0) + (busy.has(w) ? 1 : 0);
      for (let i = 0; i < j.queueSize - (queued.get(w) ?? 0); i++) {
        lined.push({ w, place: ahead + i });
      }
    }
    if (lined.length === 0) return;
    const slots = lined.sort((a, b) => a.place - b.place).map((s) => s.w);
    fence.check();
    const t0 = performance.now();
    const given = await reserveTasks(this.o.db, table, slots, fence, selection);
    const n = [...given.values()].reduce((a, b) => a + b, 0);
    this.o.onRound?.(job, (performance.now() - t0) / 1000, n);
    if (n > 0) {
      this.o.onReserved(job, given, epoch);
      this.o.log.debug({ job, tasks: n, workers: given.size, epoch }, 'tasks reserved');
    }
  }

  private async relaunch(fence: Fence): Promise<void> {
    const dead = await this.o.deadNodes();
    for (const [job, table] of this.o.tables) {
      const j = table.job;
      const withRows = j.relauncher !== undefined;
      // The worker stops an overrunning task itself at maxJobDuration, and its agent kills a
      // stuck one overrunKillGraceMs later; the dispatcher steps in two scans after that, when
      // that worker is evidently gone.
      const lateMs = Defaults.overrunKillGraceMs + 2 * this.o.relaunchScanMs;
      fence.check();
      const overrun = await releaseTasks(this.o.db, table, {
        reason: `no result within maxJobDurationMinutes (${j.maxJobDurationMinutes} min)`,
        startedOlderThanSeconds: j.maxJobDurationMinutes * 60 + lateMs / 1000,
        reservedOlderThanSeconds: j.maxReservedSeconds,
        fence,
        returnRows: withRows,
      });
      await this.relaunched(table, 'overrun', overrun.requeued + overrun.closed, overrun.rows);
      if (dead.length > 0) {
        fence.check();
        const gone = await releaseTasks(this.o.db, table, {
          reason: 'worker lost: its node died',
          nodes: dead,
          fence,
          returnRows: withRows,
        });
        await this.relaunched(table, 'node-dead', gone.requeued + gone.closed, gone.rows);
      }
      await this.reopen(job, table, fence);
    }
  }

  /** Closed rows to run again: the relaunching hook's, and a recurrent job's due ones. */
  private async reopen(job: string, table: JobTable, fence: Fence): Promise<void> {
    const j = table.job;
    const limit = Defaults.reopenBatch;
    if (j.relaunching) {
      const relaunching = j.relaunching;
      const got = await this.hooks.call(
        job,
        'relaunching',
        () => relaunching(hookContext(table, this.o.db, this.o.log)),
        HookResults.relaunching,
      );
      if (got.ok && got.value) {
        const where = { sql: got.value.where, params: got.value.params ?? [] };
        fence.check();
        const rows = await this.isolated(table, 'relaunching', () =>
          reopenTasks(this.o.db, table, { where, limit, fence }),
        );
        if (rows) await this.relaunched(table, 'relaunching', rows.length, rows);
      }
    }
    if (j.recurEverySeconds !== undefined) {
      fence.check();
      const rows = await reopenTasks(this.o.db, table, {
        endedMoreThanSecondsAgo: j.recurEverySeconds,
        limit,
        fence,
      });
      await this.relaunched(table, 'recurrent', rows.length, rows);
    }
    if (j.cron !== undefined) {
      const now = await this.o.db.query<{ now: Date }>('SELECT now() AS now');
      const tick = CronExpressionParser.parse(j.cron, { currentDate: now.rows[0].now })
        .prev()
        .toDate();
      fence.check();
      const rows = await reopenTasks(this.o.db, table, { endedBefore: tick, limit, fence });
      await this.relaunched(table, 'recurrent', rows.length, rows);
    }
  }

  /**
   * Runs a statement that carries a hook's SQL fragments. When the job has that hook and the
   * database refuses the statement (a syntax error, an unknown column: anything but a lost
   * connection), the failure is the hook's: it is reported with the job's and the hook's name
   * and null returned, so the other jobs' steps go on.
   */
  private async isolated<T>(
    t: JobTable,
    hook: 'selecting' | 'relaunching',
    fn: () => Promise<T>,
  ): Promise<T | null> {
    try {
      return await fn();
    } catch (err) {
      if (!t.job[hook] || isTransientDbError(err) || err instanceof LeaseLost) throw err;
      this.hooks.report(t.job.name, hook, err);

      return null;
    }
  }

  /**
   * Reports relaunched rows and runs the relauncher hook on each, right after the statement
   * committed: inside it, the fence's share lock on the lease row would hold back the lease's
   * renewal for as long as the hook runs.
   */
  private async relaunched(
    table: JobTable,
    reason: string,
    n: number,
    rows: Record<string, unknown>[] | undefined,
  ): Promise<void> {
    if (n === 0) return;
    const job = table.job.name;
    this.o.log.info({ job, reason, tasks: n }, 'tasks relaunched');
    this.o.onRelaunched?.(job, reason, n);
    await runRelauncher(this.hooks, table, this.o.db, this.o.log, rows);
  }
}

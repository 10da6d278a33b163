import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import { isTransientDbError } from '../db/pool.js';
import type { Logger } from '../log.js';
import { fenceParams, fenceSql, type LeaseToken } from '../lease/fence.js';
import { leasesTable } from '../lease/statements.js';
import { releaseTasks } from './release.js';
import { queuedPerWorker, reserveTasks } from './statements.js';

/** A worker the dispatcher may reserve tasks for: fresh advert, not draining. */
export interface EligibleWorker {
  id: string;
  job: string;
  /** Free slots the worker's agent advertised; the database count is authoritative. */
  freeSlots: number;
}

export interface DispatcherOptions {
  db: pg.Pool;
  schema: string;
  tables: Map<string, JobTable>;
  /** The lease token while this agent holds the lease and is inside its renewal deadline. */
  token: () => LeaseToken | null;
  /** Workers with a fresh advert and free capacity, across the cluster. */
  workers: () => EligibleWorker[];
  /** Workers of nodes the membership declared dead (gossip silent, registry stale). */
  deadWorkers: () => Promise<string[]>;
  /** Called after a reservation, so the workers start at once. */
  onReserved: (job: string, given: Map<string, number>, epoch: number) => void;
  onRelaunched?: (job: string, reason: string, n: number) => void;
  onRound?: (job: string, seconds: number, reserved: number) => void;
  intervalMs: number;
  relaunchScanMs: number;
  log: Logger;
}

/**
 * Runs while this agent holds the lease: each round relaunches what overran or whose node died
 * (every relaunchScanMs), then tops every eligible worker's queue up to its job's queueSize.
 * A round runs every intervalMs, and at once when kick() is called (a new row's NOTIFY, a
 * worker that freed slots, an advert). Every write carries the lease fence.
 */
export class Dispatcher {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private kicked = false;
  private looping = false;
  private lastScan = 0;
  private rounds = 0;
  private lastError: string | null = null;

  constructor(private readonly o: DispatcherOptions) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    while (this.looping) await new Promise((r) => setTimeout(r, 10));
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

  /** One round: relaunch when a scan is due, then top up every eligible worker's queue. */
  private async round(): Promise<boolean> {
    const token = this.o.token();
    if (!token) return false;
    const fence = {
      sql: (first: number) => fenceSql(leasesTable(this.o.schema), first),
      params: fenceParams(token) as unknown[],
    };
    this.rounds++;
    try {
      if (Date.now() - this.lastScan >= this.o.relaunchScanMs) {
        this.lastScan = Date.now();
        await this.relaunch(fence);
      }
      const eligible = this.o.workers();
      for (const [job, table] of this.o.tables) {
        const workers = eligible.filter((w) => w.job === job);
        if (workers.length === 0) continue;
        if (!this.o.token()) return false;
        const t0 = performance.now();
        const queued = await queuedPerWorker(
          this.o.db,
          table,
          workers.map((w) => w.id),
        );
        const slots: string[] = [];
        for (const w of workers) {
          const free = table.job.queueSize - (queued.get(w.id) ?? 0);
          for (let i = 0; i < free; i++) slots.push(w.id);
        }
        if (slots.length === 0) continue;
        const given = await reserveTasks(this.o.db, table, interleave(slots), fence);
        const n = [...given.values()].reduce((a, b) => a + b, 0);
        this.o.onRound?.(job, (performance.now() - t0) / 1000, n);
        if (n > 0) {
          this.o.onReserved(job, given, token.epoch);
          this.o.log.debug(
            { job, tasks: n, workers: given.size, epoch: token.epoch },
            'tasks reserved',
          );
        }
      }
      this.lastError = null;

      return false;
    } catch (err) {
      this.lastError = err instanceof Error ? err.message : String(err);
      const level = isTransientDbError(err) ? 'warn' : 'error';
      this.o.log[level]({ err }, 'dispatch round failed');

      return false;
    }
  }

  private async relaunch(fence: {
    sql: (first: number) => string;
    params: unknown[];
  }): Promise<void> {
    const dead = await this.o.deadWorkers();
    for (const [job, table] of this.o.tables) {
      const j = table.job;
      // The worker stops an overrunning task itself at maxJobDuration; the dispatcher only
      // steps in two scan intervals later, when that worker is evidently gone.
      const overrun = await releaseTasks(this.o.db, table, {
        reason: `no result within maxJobDurationMinutes (${j.maxJobDurationMinutes} min)`,
        startedOlderThanSeconds: j.maxJobDurationMinutes * 60 + (2 * this.o.relaunchScanMs) / 1000,
        reservedOlderThanSeconds: j.maxReservedSeconds,
        fence,
      });
      this.report(job, 'overrun', overrun.requeued + overrun.closed);
      if (dead.length > 0) {
        const gone = await releaseTasks(this.o.db, table, {
          reason: 'worker lost: its node died',
          workers: dead,
          fence,
        });
        this.report(job, 'node-dead', gone.requeued + gone.closed);
      }
    }
  }

  private report(job: string, reason: string, n: number): void {
    if (n === 0) return;
    this.o.log.info({ job, reason, tasks: n }, 'tasks relaunched');
    this.o.onRelaunched?.(job, reason, n);
  }
}

/** Spreads slots so that a short batch of free rows is shared among workers, not given to one. */
function interleave(slots: string[]): string[] {
  const byWorker = new Map<string, number>();
  for (const s of slots) byWorker.set(s, (byWorker.get(s) ?? 0) + 1);
  const out: string[] = [];
  let left = true;
  for (let round = 0; left; round++) {
    left = false;
    for (const [w, n] of byWorker) {
      if (round < n) {
        out.push(w);
        left = true;
      }
    }
  }

  return out;
}

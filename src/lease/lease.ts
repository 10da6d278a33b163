import { EventEmitter } from 'node:events';
import type pg from 'pg';
import type { Logger } from '../log.js';
import type { LeaseToken } from './fence.js';
import { monoMs, withTimeout } from './clock.js';
import { acquire, renew, resign, type AcquireResult, type LeaseRow } from './statements.js';

export interface LeaseOptions {
  pool: pg.Pool;
  /** Pampa's schema, where the leases table lives. */
  schema: string;
  /** One lease row per cluster. */
  cluster: string;
  /** This agent's id; unique per process, since a holder id names who may write. */
  holder: string;
  /** Expiry written on every acquire and renew, from the database's now() (ms). */
  ttlMs: number;
  /** Period of acquire attempts while not holding and of renewals while holding (ms). */
  renewIntervalMs: number;
  /**
   * The holder steps down when no acquire or renewal *sent* within this long has succeeded
   * (ms; local monotonic clock). Must be below ttlMs, so the holder stops before any other
   * agent can take over, with ttlMs − renewDeadlineMs of margin for clock drift and pauses.
   */
  renewDeadlineMs: number;
  log: Logger;
  /**
   * Told the term this instance holds whenever it changes: on election, on every renewal that
   * succeeded (with the new confirmation time), and on step-down (null). Times are monoMs().
   */
  onTerm?: (term: { epoch: number; confirmedAt: number } | null) => void;
}

export type StepDownReason = 'lost' | 'deadline' | 'stop';

export interface LeaseEvents {
  elected: [epoch: number];
  'stepped-down': [epoch: number, reason: StepDownReason];
}

/** A plain object for the status port. */
export interface LeaseStatus {
  /** Holder as the database last said; it may have expired since (see msToExpiry). */
  holder: string | null;
  /** Epoch the database last reported; 0 before any answer. */
  epoch: number;
  /** Same as isHeld(). */
  isHolder: boolean;
  /** Database's ms-to-expiry at the last answer minus local time since; null before any. */
  msToExpiry: number | null;
  lastError: string | null;
  /** Failed or timed-out database calls since construction. */
  errors: number;
  elections: number;
  stepDowns: number;
}

interface Held {
  epoch: number;
  /** Monotonic send time of the last acquire or renewal that succeeded. */
  confirmedAt: number;
}

type Outcome<T> = { ok: true; value: T } | { ok: false; err: unknown };

const TIMED_OUT = Symbol('timed out');

/** A contender's attempt aimed at another holder's expiry comes this long after it (ms). */
const AFTER_EXPIRY_MS = 10;
/** The shortest wait between two acquire attempts (ms). */
const MIN_ATTEMPT_GAP_MS = 20;

/**
 * Holds the dispatcher lease of one cluster: tries to acquire it every renewIntervalMs (and
 * right after another holder's term is known to expire), renews it at the same pace while
 * holding, and steps down when it learns it lost the lease or when renewDeadlineMs passed since
 * the send time of the last successful call, even if the database never answers. Each call is bounded by 80 % of renewIntervalMs (Promise.race plus pg's
 * query_timeout), and at most one call is in flight: while a hung call is pending, attempts
 * are skipped rather than queued on the pool.
 *
 * Contract: start() and stop() are idempotent. start() resolves once the first attempt has
 * settled; stop() steps down, waits for the call in flight, and resigns the term unless the
 * database already said it is over, so another agent can take over at once. Database errors
 * are logged and counted, never thrown; listener errors are logged.
 */
export class Lease extends EventEmitter<LeaseEvents> {
  private readonly options: LeaseOptions;
  private readonly log: Logger;
  private readonly callTimeoutMs: number;
  private running = false;
  /** Bumped by stop(), so a tick chain from before a stop/start cycle ends itself. */
  private generation = 0;
  private stopping: Promise<void> | null = null;
  private tickTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  /** The database call in flight, raced or not; settles when pg gives up at the latest. */
  private inflight: Promise<void> | null = null;
  private held: Held | null = null;
  /** Epoch of the term the database may still give us; null once it said the term is over. */
  private term: number | null = null;
  private known: (LeaseRow & { receivedAt: number }) | null = null;
  private lastError: string | null = null;
  private errors = 0;
  private failureStreak = 0;
  private elections = 0;
  private stepDowns = 0;

  constructor(options: LeaseOptions) {
    super();
    this.options = options;
    this.log = options.log.child({
      component: 'lease',
      cluster: options.cluster,
      holder: options.holder,
    });
    this.callTimeoutMs = Math.max(1, Math.floor(options.renewIntervalMs * 0.8));
  }

  async start(): Promise<void> {
    if (this.stopping) await this.stopping;
    if (this.running) return;

    this.running = true;
    this.log.debug({ ttl_ms: this.options.ttlMs }, 'lease started');
    await this.tick();
  }

  async stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    if (!this.running) return;

    this.running = false;
    this.generation += 1;
    this.clearTimers();
    this.stopping = this.shutdown().finally(() => {
      this.stopping = null;
    });

    return this.stopping;
  }

  /** True only while this agent holds the lease and its last confirmation is recent enough. */
  isHeld(): boolean {
    if (!this.held) return false;

    return monoMs() - this.held.confirmedAt < this.options.renewDeadlineMs;
  }

  /** The fencing token for dispatcher writes; null when not held. */
  token(): LeaseToken | null {
    if (!this.held || !this.isHeld()) return null;

    return { cluster: this.options.cluster, holder: this.options.holder, epoch: this.held.epoch };
  }

  status(): LeaseStatus {
    const known = this.known;
    const msToExpiry = known
      ? Math.max(0, Math.round(known.msToExpiry - (monoMs() - known.receivedAt)))
      : null;

    return {
      holder: known?.holder ?? null,
      epoch: known?.epoch ?? 0,
      isHolder: this.isHeld(),
      msToExpiry,
      lastError: this.lastError,
      errors: this.errors,
      elections: this.elections,
      stepDowns: this.stepDowns,
    };
  }

  private async tick(): Promise<void> {
    this.tickTimer = null;
    const generation = this.generation;
    const startedAt = monoMs();
    // After a pause (SIGSTOP, a blocked event loop) this tick may run before the deadline
    // timer: a term past its deadline is never renewed back to life, it ends here.
    if (this.held && !this.isHeld()) this.stepDown('deadline');

    if (this.inflight) {
      this.log.debug('previous lease call still pending; attempt skipped');
    } else if (this.held) {
      await this.renewTerm(this.held.epoch);
    } else {
      await this.tryAcquire(generation);
    }

    if (!this.running || generation !== this.generation) return;

    this.tickTimer = setTimeout(() => void this.tick(), this.nextDelay(startedAt));
  }

  /**
   * renewIntervalMs after the last tick began; a contender that knows when another holder's
   * term expires (the last answer's msToExpiry, less the time since) tries right after that
   * instead, so a dead holder is replaced as soon as its lease runs out, not up to an interval
   * later.
   */
  private nextDelay(startedAt: number): number {
    const regular = Math.max(0, startedAt + this.options.renewIntervalMs - monoMs());
    const known = this.known;
    if (this.held || !known || known.holder === null) return regular;
    const untilExpiry = known.msToExpiry - (monoMs() - known.receivedAt);
    if (untilExpiry <= 0) return regular;

    return Math.min(regular, Math.max(MIN_ATTEMPT_GAP_MS, untilExpiry + AFTER_EXPIRY_MS));
  }

  private async tryAcquire(generation: number): Promise<void> {
    const { pool, schema, cluster, holder, ttlMs } = this.options;
    const sentAt = monoMs();
    const outcome = await this.call(
      acquire(pool, schema, { cluster, holder, ttlMs, timeoutMs: this.callTimeoutMs }),
      (row) => this.learnFromAcquire(row),
    );
    if (!outcome.ok || !outcome.value?.acquired) return;

    if (!this.running || generation !== this.generation || this.held) return;

    if (monoMs() - sentAt >= this.options.renewDeadlineMs) return;

    this.elect(outcome.value.epoch, sentAt);
  }

  private async renewTerm(epoch: number): Promise<void> {
    const { pool, schema, cluster, holder, ttlMs } = this.options;
    const sentAt = monoMs();
    const outcome = await this.call(
      renew(pool, schema, { cluster, holder, epoch, ttlMs, timeoutMs: this.callTimeoutMs }),
      (row) => this.learnFromRenew(epoch, row),
    );
    if (this.held?.epoch !== epoch) return;

    if (!outcome.ok) {
      if (!this.isHeld()) this.stepDown('deadline');
      return;
    }

    if (outcome.value === null) {
      this.stepDown('lost');
      return;
    }

    this.held.confirmedAt = Math.max(this.held.confirmedAt, sentAt);
    if (this.isHeld()) {
      this.options.onTerm?.({ ...this.held });
      this.armDeadline();
    } else this.stepDown('deadline');
  }

  /**
   * Runs one database call with a deadline. `learn` sees every answer, even one that arrives
   * after the race was lost, so the term we may still hold is always known for resign().
   */
  private async call<T>(op: Promise<T>, learn: (value: T) => void): Promise<Outcome<T>> {
    const observed = op.then((value) => {
      learn(value);
      return value;
    });
    this.inflight = observed.then(
      () => undefined,
      () => undefined,
    );
    const inflight = this.inflight;
    void inflight.then(() => {
      if (this.inflight === inflight) this.inflight = null;
    });

    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
      timer = setTimeout(() => resolve(TIMED_OUT), this.callTimeoutMs);
    });
    try {
      const value = await Promise.race([observed, timeout]);
      if (value === TIMED_OUT)
        throw new Error(`lease call timed out after ${this.callTimeoutMs} ms`);

      this.recovered();
      return { ok: true, value };
    } catch (err) {
      this.failed(err);
      return { ok: false, err };
    } finally {
      clearTimeout(timer);
    }
  }

  private learnFromAcquire(row: AcquireResult | null): void {
    if (!row) return;

    this.known = { ...row, receivedAt: monoMs() };
    this.term = row.acquired ? row.epoch : null;
  }

  private learnFromRenew(epoch: number, row: LeaseRow | null): void {
    if (row) {
      this.known = { ...row, receivedAt: monoMs() };
    } else if (this.term === epoch) {
      this.term = null;
    }
  }

  private elect(epoch: number, sentAt: number): void {
    this.held = { epoch, confirmedAt: sentAt };
    this.elections += 1;
    this.options.onTerm?.({ ...this.held });
    this.armDeadline();
    const expiresInS = this.known ? Math.round(this.known.msToExpiry / 100) / 10 : null;
    this.log.info({ epoch, expires_in_s: expiresInS }, 'lease elected');
    this.emitSafely('elected', () => this.emit('elected', epoch));
  }

  private stepDown(reason: StepDownReason): void {
    const held = this.held;
    if (!held) return;

    this.held = null;
    this.options.onTerm?.(null);
    this.stepDowns += 1;
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
    const sinceConfirmedMs = Math.round(monoMs() - held.confirmedAt);
    this.log.info(
      { epoch: held.epoch, reason, since_confirmed_ms: sinceConfirmedMs },
      'lease stepped down',
    );
    this.emitSafely('stepped-down', () => this.emit('stepped-down', held.epoch, reason));
  }

  /** Steps down when the deadline passes, whether or not the call in flight ever answers. */
  private armDeadline(): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    if (!this.held) return;

    const left = this.held.confirmedAt + this.options.renewDeadlineMs - monoMs();
    this.deadlineTimer = setTimeout(
      () => {
        this.deadlineTimer = null;
        if (this.held && !this.isHeld()) this.stepDown('deadline');
        else this.armDeadline();
      },
      Math.max(0, left),
    );
  }

  private async shutdown(): Promise<void> {
    this.stepDown('stop');
    if (this.inflight) await withTimeout(this.inflight, this.callTimeoutMs);

    const epoch = this.term;
    if (epoch === null) {
      this.log.debug('lease stopped');
      return;
    }

    this.term = null;
    const { pool, schema, cluster, holder } = this.options;
    try {
      const ended = await withTimeout(
        resign(pool, schema, { cluster, holder, epoch, timeoutMs: this.callTimeoutMs }),
        this.callTimeoutMs,
      );
      this.log.info({ epoch, resigned: ended === true }, 'lease resigned');
    } catch (err) {
      this.failed(err);
    }
  }

  private recovered(): void {
    if (this.failureStreak > 0) {
      this.log.info({ failures: this.failureStreak }, 'lease database calls recovered');
    }
    this.failureStreak = 0;
  }

  private failed(err: unknown): void {
    this.errors += 1;
    this.failureStreak += 1;
    this.lastError = err instanceof Error ? err.message : String(err);
    // One warning per outage, then every 10th failure, so an outage does not flood the log.
    const level = this.failureStreak === 1 || this.failureStreak % 10 === 0 ? 'warn' : 'debug';
    this.log[level]({ err, failures: this.failureStreak }, 'lease database call failed');
  }

  /** Emits through `fire`; a listener that throws is logged, never thrown into a timer. */
  private emitSafely(event: keyof LeaseEvents, fire: () => void): void {
    try {
      fire();
    } catch (err) {
      this.log.error({ err, event }, 'lease listener threw');
    }
  }

  private clearTimers(): void {
    if (this.tickTimer) clearTimeout(this.tickTimer);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.tickTimer = null;
    this.deadlineTimer = null;
  }
}

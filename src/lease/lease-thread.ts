import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import type { Logger } from '../log.js';
import type { LeaseToken } from './fence.js';
import { monoMs, withTimeout } from './clock.js';
import type { LeaseEvents, LeaseStatus } from './lease.js';
import { SharedTerm } from './shared-term.js';
import type { FromThread, ThreadData, ToThread } from './thread.js';

export interface LeaseThreadOptions {
  /** The database the lease thread opens its own connection to. */
  url: string;
  /** application_name of that connection. */
  applicationName: string;
  schema: string;
  cluster: string;
  holder: string;
  ttlMs: number;
  renewIntervalMs: number;
  renewDeadlineMs: number;
  log: Logger;
}

/** A thread that lived this long before it exited is restarted after renewIntervalMs (ms). */
const STEADY_MS = 10_000;
/** The longest wait before a thread that keeps exiting at once is started again (ms). */
const MAX_RESTART_DELAY_MS = 30_000;

/** Log fields the main thread's logger sets itself. */
const DROPPED = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'component']);

/**
 * The dispatcher lease, run in a thread of its own (src/lease/thread.ts) with its own database
 * connection: acquire, renew and resign never wait for the agent's event loop or pool. The
 * main thread reads the term from shared memory: isHeld() and token() are synchronous and
 * judge the renewal deadline by the monotonic clock at the moment they are called, so after
 * the main thread was blocked they say at once whether the term is still good. Events and
 * log lines come from the thread; 'stepped-down' (reason 'deadline') also fires here when the
 * deadline passes before the thread says so. A thread that dies is restarted renewIntervalMs
 * later, the wait doubling (up to 30 s) while each new thread dies within 10 s; its term ends
 * at its deadline. Contract: start() once; stop() is final, ends the term at once (the thread
 * resigns it) and waits for the thread to end.
 */
export class LeaseThread extends EventEmitter<LeaseEvents> {
  private readonly o: LeaseThreadOptions;
  private readonly term = new SharedTerm();
  private worker: Worker | null = null;
  private stopped = false;
  private stopping: Promise<void> | null = null;
  /** Epoch of the last 'elected' emitted and not yet followed by 'stepped-down'. */
  private announced: number | null = null;
  private last: { status: LeaseStatus; receivedAt: number } | null = null;
  private watchTimer: NodeJS.Timeout | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private restarts = 0;
  /** Exits in a row of threads that lived less than STEADY_MS: each doubles the restart delay. */
  private quickExits = 0;
  private waiting = new Map<'started' | 'stopped', () => void>();

  constructor(options: LeaseThreadOptions) {
    super();
    this.o = options;
  }

  /** Starts the thread; resolves once its first acquire attempt settled. */
  async start(): Promise<void> {
    if (this.worker || this.stopped) return;
    this.watchTimer = setInterval(() => this.watch(), Math.min(100, this.o.renewIntervalMs));
    await this.spawn();
  }

  /** True only while the thread holds the lease and confirmed it within renewDeadlineMs. */
  isHeld(): boolean {
    return !this.stopped && this.term.heldEpoch(this.o.renewDeadlineMs) !== null;
  }

  /** The fencing token for dispatcher writes; null when not held. */
  token(): LeaseToken | null {
    const epoch = this.stopped ? null : this.term.heldEpoch(this.o.renewDeadlineMs);
    if (epoch === null) return null;

    return { cluster: this.o.cluster, holder: this.o.holder, epoch };
  }

  status(): LeaseStatus & { threadRestarts: number } {
    const s = this.last?.status;
    const age = this.last ? monoMs() - this.last.receivedAt : 0;
    const msToExpiry = s?.msToExpiry == null ? null : Math.max(0, Math.round(s.msToExpiry - age));

    return {
      holder: s?.holder ?? null,
      epoch: s?.epoch ?? 0,
      isHolder: this.isHeld(),
      msToExpiry,
      lastError: s?.lastError ?? null,
      errors: s?.errors ?? 0,
      elections: s?.elections ?? 0,
      stepDowns: s?.stepDowns ?? 0,
      threadRestarts: this.restarts,
    };
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();

    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.stopped = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const worker = this.worker;
    if (worker) {
      const stopped = this.reply('stopped');
      this.send({ type: 'stop' });
      // The thread bounds each call to 80 % of the renew interval; this is a safety net.
      await withTimeout(stopped, 3 * this.o.renewIntervalMs + 2_000);
      this.worker = null;
      await worker.terminate();
    }
    if (this.watchTimer) clearInterval(this.watchTimer);
    this.watchTimer = null;
    if (this.announced !== null) this.announce(null, 'stop');
  }

  private spawn(): Promise<void> {
    const data: ThreadData = {
      url: this.o.url,
      applicationName: this.o.applicationName,
      schema: this.o.schema,
      cluster: this.o.cluster,
      holder: this.o.holder,
      ttlMs: this.o.ttlMs,
      renewIntervalMs: this.o.renewIntervalMs,
      renewDeadlineMs: this.o.renewDeadlineMs,
      logLevel: this.o.log.level,
      term: this.term.buffer,
    };
    const worker = new Worker(new URL('./thread.js', import.meta.url), { workerData: data });
    const spawnedAt = monoMs();
    this.worker = worker;
    worker.on('message', (m: FromThread) => this.receive(m));
    worker.on('error', (err) => this.o.log.error({ err }, 'lease thread failed'));
    worker.on('exit', (code) => {
      if (this.worker !== worker) return;
      this.worker = null;
      for (const resolve of this.waiting.values()) resolve();
      this.waiting.clear();
      if (this.stopped) return;
      this.restarts += 1;
      this.quickExits = monoMs() - spawnedAt < STEADY_MS ? this.quickExits + 1 : 0;
      const delayMs = Math.min(
        MAX_RESTART_DELAY_MS,
        this.o.renewIntervalMs * 2 ** Math.max(0, this.quickExits - 1),
      );
      this.o.log.error(
        { code, restarts: this.restarts, delayMs },
        'lease thread exited; restarting (this agent cannot be the dispatcher meanwhile)',
      );
      this.restartTimer = setTimeout(() => void this.spawn(), delayMs);
    });
    const started = this.reply('started');
    this.send({ type: 'start' });

    return started;
  }

  private receive(m: FromThread): void {
    if (m.type === 'log') this.relog(m.line);
    else if (m.type === 'status') this.last = { status: m.status, receivedAt: monoMs() };
    else if (m.type === 'started' || m.type === 'stopped') {
      this.waiting.get(m.type)?.();
      this.waiting.delete(m.type);
    } else if (m.type === 'elected') {
      // Already past its deadline (this thread was blocked meanwhile): never announced.
      if (this.token()?.epoch === m.epoch && this.announced !== m.epoch) {
        this.announce(m.epoch, 'lost');
      }
    } else if (m.type === 'stepped-down' && this.announced === m.epoch) {
      this.announce(null, m.reason);
    }
  }

  /** Moves the announced term to `epoch` (null: none), emitting the events in order. */
  private announce(epoch: number | null, reason: 'lost' | 'deadline' | 'stop'): void {
    const previous = this.announced;
    this.announced = epoch;
    try {
      if (previous !== null) this.emit('stepped-down', previous, reason);
      if (epoch !== null) this.emit('elected', epoch);
    } catch (err) {
      this.o.log.error({ err }, 'lease listener threw');
    }
  }

  /**
   * Keeps the announced term in step with the shared one: the deadline passed and the thread
   * has not said so yet (it may be stuck), so step down here; or a renewal answered just after
   * the deadline brought the same term back (or a new one came before its message), so
   * announce it.
   */
  private watch(): void {
    if (this.stopped) return;
    const epoch = this.token()?.epoch ?? null;
    if (epoch === this.announced) return;
    if (epoch === null) {
      this.o.log.info(
        { epoch: this.announced, reason: 'deadline' },
        'lease deadline passed before the lease thread reported it',
      );
      this.announce(null, 'deadline');
    } else {
      this.announce(epoch, 'lost');
    }
  }

  /** Logs a line of the thread's pino on the main logger, keeping its level and fields. */
  private relog(line: string): void {
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>;
      const label = pino.levels.labels[Number(parsed.level)] ?? 'info';
      const fields = Object.fromEntries(Object.entries(parsed).filter(([k]) => !DROPPED.has(k)));
      const method = this.o.log[label as 'info'];
      if (typeof method === 'function') method.call(this.o.log, fields, String(parsed.msg ?? ''));
    } catch {
      this.o.log.warn({ line }, 'unreadable lease thread log line');
    }
  }

  private reply(type: 'started' | 'stopped'): Promise<void> {
    return new Promise((resolve) => this.waiting.set(type, resolve));
  }

  private send(message: ToThread): void {
    this.worker?.postMessage(message);
  }
}

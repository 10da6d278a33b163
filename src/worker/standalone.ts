import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import type { StandaloneConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { AGENT_ALIVE_MS } from './protocol.js';
import {
  EXIT_STANDALONE_BUSY,
  EXIT_STANDALONE_DONE,
  EXIT_STANDALONE_STOPPED,
  type StandaloneInit,
} from './standalone-protocol.js';
import { completedAt } from './standalone-statements.js';

const CHILD = fileURLToPath(new URL('./standalone-child.js', import.meta.url));
/** How often the runner checks what is due (ms). */
const TICK_MS = 200;

export interface StandaloneRunnerOptions {
  configPath: string;
  databaseUrl: string;
  agentId: string;
  node: string;
  cluster: string;
  /** Pampa's own schema. */
  schema: string;
  /** The agent's pool: reads runOnce completions before starting a process for nothing. */
  db: pg.Pool;
  /** The lease settings, from which the stop grace is derived (see stopGraceMs). */
  lease: { ttlMs: number; renewDeadlineMs: number };
  /** A run stops by itself when its agent was silent this long (ms), as workers do. */
  agentSilentMs: number;
  processes: StandaloneConfig[];
  /** True while this agent holds the dispatcher lease. */
  isHolder: () => boolean;
  log: Logger;
  onRun?: (name: string, ok: boolean, seconds: number) => void;
}

/**
 * How fast a run stops once it is no longer this agent's. The holder steps down renewDeadlineMs
 * after its last confirmed renewal, and another agent may take the lease ttlMs after it; the
 * runner sees the step-down within TICK_MS and sends SIGTERM, then SIGKILL `graceMs` later:
 * graceMs = max(0, ttlMs − renewDeadlineMs) / 2, so the run is gone by renewDeadlineMs + TICK_MS
 * + graceMs (2.35 s with the defaults: 1.8 s, 0.2 s, 0.35 s), before the lease can move (2.5 s). A
 * run whose agent goes silent (paused, hung) stops itself after `agentSilentMs` of silence
 * (the workers' bound: the lease, renewed by a thread of its own, is not what a busy agent
 * loses first) plus graceMs. Neither bound is what keeps two runs apart (the advisory lock
 * is); they keep the new holder's runs from being skipped for long.
 */
export function stopGraceMs(lease: { ttlMs: number; renewDeadlineMs: number }): number {
  return Math.floor(Math.max(0, lease.ttlMs - lease.renewDeadlineMs) / 2);
}

interface Entry {
  p: StandaloneConfig;
  child: ChildProcess | null;
  exited: Promise<void>;
  nextAt: number;
  runs: number;
  /** A runOnce completion check is under way. */
  checking: boolean;
  /** This runOnce process was seen completed (logged once). */
  seenDone: boolean;
  halting: boolean;
}

/**
 * Runs the cluster's standalone processes that belong to this agent: those with a `node` equal
 * to this node, and the others while this agent holds the lease. Each run is a child process
 * (standalone-child.ts) that runs the function only under the process's advisory lock, so the
 * cluster runs one instance at a time even when the lease moves or two agents share a node
 * name; a run that finds the lock taken is skipped. Runs start `everySeconds` apart (start to
 * start), at once when the previous one overran. A run that fails is logged and the next one
 * comes as usual. A runOnce process that completed (a row in standalone_completions) is not run
 * again by any agent.
 */
export class StandaloneRunner {
  private readonly entries: Entry[];
  private readonly bounds: { graceMs: number; agentSilentMs: number };
  private timer: NodeJS.Timeout | undefined;
  private alive: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: StandaloneRunnerOptions) {
    this.bounds = { graceMs: stopGraceMs(o.lease), agentSilentMs: o.agentSilentMs };
    this.entries = o.processes.map((p) => ({
      p,
      child: null,
      exited: Promise.resolve(),
      nextAt: 0,
      runs: 0,
      checking: false,
      seenDone: false,
      halting: false,
    }));
  }

  start(): void {
    if (this.timer || this.entries.length === 0) return;
    this.stopped = false;
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
    // Runs stop themselves when this stops coming (agent-silence.ts).
    this.alive = setInterval(() => {
      for (const e of this.entries) if (e.child?.connected) e.child.send({ t: 'alive' }, noop);
    }, AGENT_ALIVE_MS);
    this.alive.unref();
    this.tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await Promise.all(this.entries.map((e) => this.halt(e, 'agent stopping')));
    clearInterval(this.alive);
  }

  private mine(p: StandaloneConfig): boolean {
    return p.node !== undefined ? p.node === this.o.node : this.o.isHolder();
  }

  private tick(): void {
    if (this.stopped) return;
    const now = Date.now();
    for (const e of this.entries) {
      if (!this.mine(e.p)) {
        if (e.child) void this.halt(e, 'no longer this node’s');
        continue;
      }
      if (e.child || e.checking || now < e.nextAt) continue;
      if (e.p.runOnce) void this.launchUnlessDone(e, now);
      else this.launch(e, now);
    }
  }

  /** The run's own process checks again under the lock; this spares forking one for nothing. */
  private async launchUnlessDone(e: Entry, now: number): Promise<void> {
    e.checking = true;
    try {
      const at = await completedAt(this.o.db, this.o.schema, this.o.cluster, e.p.name);
      e.seenDone &&= at !== null;
      if (at) {
        e.nextAt = now + e.p.everySeconds * 1000;
        if (!e.seenDone) {
          this.o.log.info({ standalone: e.p.name, completedAt: at }, 'standalone runOnce done');
        }
        e.seenDone = true;
      } else if (!this.stopped && !e.child && this.mine(e.p)) this.launch(e, now);
    } catch (err) {
      e.nextAt = now + e.p.everySeconds * 1000;
      this.o.log.warn({ err, standalone: e.p.name }, 'standalone runOnce check failed');
    } finally {
      e.checking = false;
    }
  }

  private launch(e: Entry, now: number): void {
    const { p } = e;
    e.runs++;
    e.nextAt = now + p.everySeconds * 1000;
    const init: StandaloneInit = {
      configPath: this.o.configPath,
      name: p.name,
      node: this.o.node,
      agentId: this.o.agentId,
      cluster: this.o.cluster,
      schema: this.o.schema,
      ...this.bounds,
    };
    const child = fork(CHILD, [JSON.stringify(init)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: process.execArgv.filter((a) => !a.startsWith('--test')),
      env: { ...process.env, DATABASE_URL: this.o.databaseUrl },
    });
    e.child = child;
    const run = e.runs;
    this.o.log.info({ standalone: p.name, run }, 'standalone run started');
    e.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        if (e.child === child) e.child = null;
        this.ended(p.name, run, now, code, signal);
        resolve();
      });
    });
    child.on('error', (err) => this.o.log.error({ err, standalone: p.name }, 'standalone error'));
  }

  private ended(
    name: string,
    run: number,
    startedAt: number,
    code: number | null,
    signal: NodeJS.Signals | null,
  ): void {
    const seconds = (Date.now() - startedAt) / 1000;
    const fields = { standalone: name, run, code, signal, seconds };
    if (code === EXIT_STANDALONE_BUSY || code === EXIT_STANDALONE_DONE) {
      this.o.log.info(fields, 'standalone run skipped');
      return;
    }
    if (code === 0) this.o.log.info(fields, 'standalone run finished');
    else if (code === EXIT_STANDALONE_STOPPED || signal) {
      this.o.log.info(fields, 'standalone run stopped');
    } else this.o.log.warn(fields, 'standalone run failed; the next one comes as usual');
    this.o.onRun?.(name, code === 0, seconds);
  }

  private async halt(e: Entry, reason: string): Promise<void> {
    const child = e.child;
    if (!child) return;
    if (e.halting) return e.exited;
    e.halting = true;
    this.o.log.info(
      { standalone: e.p.name, reason, graceMs: this.bounds.graceMs },
      'standalone run being stopped',
    );
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), this.bounds.graceMs);
    await e.exited;
    clearTimeout(timer);
    e.halting = false;
  }
}

function noop(): void {}

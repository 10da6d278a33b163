import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { StandaloneConfig } from '../config/schema.js';
import type { Logger } from '../log.js';

const CHILD = fileURLToPath(new URL('./standalone-child.js', import.meta.url));
/** How often the runner checks what is due (ms). */
const TICK_MS = 200;
/** A run told to stop gets this long before it is killed (ms). */
const STOP_GRACE_MS = 2000;

export interface StandaloneRunnerOptions {
  configPath: string;
  databaseUrl: string;
  agentId: string;
  node: string;
  processes: StandaloneConfig[];
  /** True while this agent holds the dispatcher lease. */
  isHolder: () => boolean;
  log: Logger;
  onRun?: (name: string, ok: boolean, seconds: number) => void;
}

interface Entry {
  p: StandaloneConfig;
  child: ChildProcess | null;
  exited: Promise<void>;
  nextAt: number;
  runs: number;
  /** Runs that ended by themselves (not stopped by the runner): what runOnce counts. */
  ended: number;
  halting: boolean;
}

/**
 * Runs the cluster's standalone processes that belong to this agent: those with a `node` equal
 * to this node, and the others while this agent holds the lease. One run at a time per
 * process, each in a child process; runs start `everySeconds` apart (start to start), at once
 * when the previous one overran. A run that fails is logged and the next one comes as usual.
 * When this agent loses the lease, a running run is stopped (SIGTERM, then SIGKILL), so two
 * agents never run the same process for longer than that grace.
 */
export class StandaloneRunner {
  private readonly entries: Entry[];
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: StandaloneRunnerOptions) {
    this.entries = o.processes.map((p) => ({
      p,
      child: null,
      exited: Promise.resolve(),
      nextAt: 0,
      runs: 0,
      ended: 0,
      halting: false,
    }));
  }

  start(): void {
    if (this.timer || this.entries.length === 0) return;
    this.stopped = false;
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
    this.tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await Promise.all(this.entries.map((e) => this.halt(e)));
  }

  private mine(p: StandaloneConfig): boolean {
    return p.node !== undefined ? p.node === this.o.node : this.o.isHolder();
  }

  private tick(): void {
    if (this.stopped) return;
    const now = Date.now();
    for (const e of this.entries) {
      if (!this.mine(e.p)) {
        if (e.child) void this.halt(e);
        continue;
      }
      if (e.child || now < e.nextAt || (e.p.runOnce && e.ended > 0)) continue;
      this.launch(e, now);
    }
  }

  private launch(e: Entry, now: number): void {
    const { p } = e;
    e.runs++;
    e.nextAt = now + p.everySeconds * 1000;
    const init = {
      configPath: this.o.configPath,
      name: p.name,
      node: this.o.node,
      agentId: this.o.agentId,
      databaseUrl: this.o.databaseUrl,
    };
    const child = fork(CHILD, [JSON.stringify(init)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: process.execArgv.filter((a) => !a.startsWith('--test')),
      env: { ...process.env, DATABASE_URL: this.o.databaseUrl },
    });
    e.child = child;
    this.o.log.info({ standalone: p.name, run: e.runs }, 'standalone run started');
    e.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        if (e.child === child) e.child = null;
        if (!e.halting) e.ended++;
        const ok = code === 0;
        const seconds = (Date.now() - now) / 1000;
        const fields = { standalone: p.name, run: e.runs, code, signal, seconds };
        if (ok) this.o.log.info(fields, 'standalone run finished');
        else this.o.log.warn(fields, 'standalone run failed; the next one comes as usual');
        this.o.onRun?.(p.name, ok, seconds);
        resolve();
      });
    });
    child.on('error', (err) => this.o.log.error({ err, standalone: p.name }, 'standalone error'));
  }

  private async halt(e: Entry): Promise<void> {
    const child = e.child;
    if (!child) return;
    if (e.halting) return e.exited;
    e.halting = true;
    this.o.log.info({ standalone: e.p.name }, 'standalone run stopped: no longer this node’s');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    await e.exited;
    clearTimeout(timer);
    e.halting = false;
  }
}

import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { formatJobCounts, formatNodes, formatSummary, formatWorkers } from './format.js';
import type { ClusterStatus } from './types.js';

/**
 * Calls `tick` `intervalMs` after the start and after each previous call settled, until SIGINT
 * or `signal` aborts; resolves then. The SIGINT listener replaces Node's default exit only
 * while it runs.
 */
export function repeatUntilInterrupted(
  tick: () => Promise<void>,
  intervalMs: number,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    const stop = (): void => {
      stopped = true;
      clearTimeout(timer);
      process.off('SIGINT', stop);
      signal?.removeEventListener('abort', stop);
      resolve();
    };
    const run = (): void => {
      void tick().finally(() => {
        if (!stopped) timer = setTimeout(run, intervalMs);
      });
    };

    process.on('SIGINT', stop);
    signal?.addEventListener('abort', stop);
    if (signal?.aborted) stop();
    else timer = setTimeout(run, intervalMs);
  });
}

/**
 * The `pampa status --watch` screen on a terminal: the summary, node and worker tables as
 * text lines, then one cli-progress bar per job. cli-progress redraws every line in place;
 * the whole stack is rebuilt (screen cleared) only when its shape changes: a node, worker or
 * job appears or leaves.
 */
export class WatchView {
  private multibar: MultiBar | undefined;
  private lines: SingleBar[] = [];
  private jobBars = new Map<string, SingleBar>();
  private shape = '';

  constructor(private readonly stream: NodeJS.WritableStream) {}

  draw(s: ClusterStatus, note: string): void {
    const text = [...formatSummary(s), '', ...formatNodes(s), '', ...formatWorkers(s), '', note];
    const shape = `${text.length}|${s.jobs.map((j) => j.name).join('\n')}`;
    if (shape !== this.shape) this.rebuild(text.length, s);
    this.shape = shape;

    text.forEach((line, i) => this.lines[i].update(0, { line }));
    for (const j of s.jobs) {
      const bar = this.jobBars.get(j.name);
      bar?.setTotal(Math.max(1, j.total));
      bar?.update(Math.min(j.completed + j.failed, Math.max(1, j.total)), {
        counts: formatJobCounts(j),
      });
    }
  }

  /** Leaves the last frame on screen and gives the cursor back. */
  stop(): void {
    this.multibar?.stop();
    this.multibar = undefined;
  }

  private rebuild(lineCount: number, s: ClusterStatus): void {
    this.stop();
    this.stream.write('\x1b[2J\x1b[H');
    const width = Math.max(4, ...s.jobs.map((j) => j.name.length));
    const multibar = new MultiBar(
      {
        stream: this.stream,
        hideCursor: true,
        clearOnComplete: false,
        gracefulExit: false,
        linewrap: false,
        barsize: 30,
        format: '  {name} {bar} {counts}',
      },
      Presets.shades_classic,
    );

    this.lines = Array.from({ length: lineCount }, () =>
      multibar.create(1, 0, { line: '' }, { format: '{line}' }),
    );
    this.jobBars = new Map(
      s.jobs.map((j) => [
        j.name,
        multibar.create(1, 0, { name: j.name.padEnd(width), counts: '' }),
      ]),
    );
    this.multibar = multibar;
  }
}

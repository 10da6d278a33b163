import { Option, type Command } from 'commander';
import { DEFAULT_STATUS_URL, StatusClientError, fetchStatus } from './client.js';
import { formatStatus, formatWorkerList } from './format.js';
import type { ClusterStatus } from './types.js';
import { WatchView, repeatUntilInterrupted } from './watch.js';

/** Exit code of `pampa status` / `pampa workers` when the status port cannot be used. */
export const STATUS_UNREACHABLE_EXIT_CODE = 2;
/** Redraw period of `--watch` (ms). */
const WATCH_INTERVAL_MS = 1000;

/** Where the commands print: stdout, or any stream (a TTY gets the live view). */
export type Output = NodeJS.WritableStream & { isTTY?: boolean };

export interface StatusCommandOptions {
  /** Status address of any agent, e.g. http://127.0.0.1:8787. */
  url: string;
  token?: string;
  /** Redraw every second until SIGINT (or `signal`). */
  watch?: boolean;
  /** Print the raw ClusterStatus JSON (one line per second with `watch`). */
  json?: boolean;
  out?: Output;
  signal?: AbortSignal;
}

export interface WorkersCommandOptions {
  url: string;
  token?: string;
  out?: Output;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `pampa status`: one view of the cluster, JSON, or a live view with a bar per job. */
export async function runStatusCommand(opts: StatusCommandOptions): Promise<void> {
  const out = opts.out ?? process.stdout;
  const first = await fetchStatus(opts.url, opts.token);
  if (!opts.watch) {
    out.write(opts.json ? `${JSON.stringify(first, null, 2)}\n` : formatStatus(first));
    return;
  }

  if (opts.json || !out.isTTY) {
    const print = (s: ClusterStatus): boolean =>
      out.write(opts.json ? `${JSON.stringify(s)}\n` : `${formatStatus(s)}\n`);
    print(first);
    await repeatUntilInterrupted(
      async () => {
        try {
          print(await fetchStatus(opts.url, opts.token));
        } catch (err) {
          process.stderr.write(`pampa: not updated: ${errorText(err)}\n`);
        }
      },
      WATCH_INTERVAL_MS,
      opts.signal,
    );
    return;
  }

  const view = new WatchView(out);
  let last = first;
  view.draw(first, 'Ctrl-C to stop');
  await repeatUntilInterrupted(
    async () => {
      try {
        last = await fetchStatus(opts.url, opts.token);
        view.draw(last, `updated ${new Date().toLocaleTimeString()}  Ctrl-C to stop`);
      } catch (err) {
        view.draw(last, `not updated: ${errorText(err)}`);
      }
    },
    WATCH_INTERVAL_MS,
    opts.signal,
  );
  view.stop();
}

/** `pampa workers`: per worker its job, queued tasks and last activity. */
export async function runWorkersCommand(opts: WorkersCommandOptions): Promise<void> {
  const out = opts.out ?? process.stdout;
  const status = await fetchStatus(opts.url, opts.token);
  out.write(formatWorkerList(status));
}

/** Runs a command; a StatusClientError becomes one line on stderr and exit code 2. */
async function reportErrors(run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    if (!(err instanceof StatusClientError)) throw err;
    process.stderr.write(`pampa: ${err.message}\n`);
    process.exitCode = STATUS_UNREACHABLE_EXIT_CODE;
  }
}

function connectionOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--url <url>', 'status address of any agent')
        .env('PAMPA_STATUS_URL')
        .default(DEFAULT_STATUS_URL),
    )
    .addOption(
      new Option('--token <token>', 'bearer token (the cluster status.token)').env(
        'PAMPA_STATUS_TOKEN',
      ),
    );
}

/** Adds `status` and `workers` to the CLI. */
export function registerStatusCommands(program: import('commander').Command): void {
  connectionOptions(program.command('status'))
    .description('show nodes, workers, the dispatcher lease and job progress')
    .option('--watch', 'redraw every second with a progress bar per job, until Ctrl-C')
    .option('--json', 'print the raw status JSON (one line per second with --watch)')
    .action((o: { url: string; token?: string; watch?: boolean; json?: boolean }) =>
      reportErrors(() => runStatusCommand(o)),
    );

  connectionOptions(program.command('workers'))
    .description('show each worker: job, queued tasks, last activity')
    .action((o: { url: string; token?: string }) => reportErrors(() => runWorkersCommand(o)));
}

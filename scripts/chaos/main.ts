import '../../src/polyfills.js';
import { Command } from 'commander';
import { DEFAULTS, formatSummary, runChaos } from './run.js';

const num = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number`);
  return n;
};

const program = new Command('chaos')
  .description(
    'N agents over T tasks while agents are SIGKILLed, the dispatcher SIGSTOPped and PostgreSQL restarted; checks the invariants. Exit code 1 on any violation.',
  )
  .option('--agents <n>', 'agents', num('--agents'), DEFAULTS.agents)
  .option('--tasks <n>', 'tasks', num('--tasks'), DEFAULTS.tasks)
  .option('--workers <n>', 'worker processes per agent', num('--workers'), DEFAULTS.workers)
  .option(
    '--kill-every <s>',
    'mean seconds between SIGKILLs',
    num('--kill-every'),
    DEFAULTS.killEveryMs / 1000,
  )
  .option(
    '--stop-ms <ms>',
    'how long the dispatcher stays SIGSTOPped',
    num('--stop-ms'),
    DEFAULTS.stopMs,
  )
  .option('--seed <n>', 'seed of the task mix and the kill choices', num('--seed'), DEFAULTS.seed)
  .option(
    '--timeout <s>',
    'give up (and fail) after this many seconds',
    num('--timeout'),
    DEFAULTS.timeoutMs / 1000,
  )
  .option('--json', 'print one JSON summary', false)
  .action(
    async (o: {
      agents: number;
      tasks: number;
      workers: number;
      killEvery: number;
      stopMs: number;
      seed: number;
      timeout: number;
      json: boolean;
    }) => {
      const s = await runChaos({
        agents: o.agents,
        tasks: o.tasks,
        workers: o.workers,
        killEveryMs: o.killEvery * 1000,
        stopMs: o.stopMs,
        seed: o.seed,
        timeoutMs: o.timeout * 1000,
        progress: !o.json,
      });
      process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : `${formatSummary(s)}\n`);
      process.exitCode = s.pass ? 0 : 1;
    },
  );

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(
    `chaos: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 2;
});

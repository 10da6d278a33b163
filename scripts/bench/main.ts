import '../../src/polyfills.js';
import { Command } from 'commander';
import { report } from './harness.js';
import { benchThroughput } from './throughput.js';

const program = new Command('bench').description(
  'Pampa benchmarks; figures are printed, never asserted',
);

program
  .command('throughput', { isDefault: true })
  .description(
    'no-op tasks per second and statements per task (1 agent × 8 workers × 100,000 rows)',
  )
  .option('--agents <n>', 'agents', (v) => Number(v), 1)
  .option('--workers <n>', 'workers per agent', (v) => Number(v), 8)
  .option('--tasks <n>', 'rows', (v) => Number(v), 100_000)
  .option('--task-ms <n>', 'task duration (ms)', (v) => Number(v), 0)
  .option('--json', 'one JSON object', false)
  .action(
    async (o: {
      agents: number;
      workers: number;
      tasks: number;
      taskMs: number;
      json: boolean;
    }) => {
      const r = await benchThroughput(o.agents, o.workers, o.tasks, o.taskMs);
      report(
        'throughput',
        [
          ['agents × workers', `${r.agents} × ${r.workers}`],
          ['tasks', r.tasks],
          ['task duration (ms)', r.taskMs],
          ['elapsed (s)', r.seconds.toFixed(2)],
          ['tasks per second', r.tasksPerSecond],
          ['statements per task', r.statementsPerTask],
        ],
        o.json,
        { bench: 'throughput', ...r },
      );
    },
  );

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});

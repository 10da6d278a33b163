import '../../src/polyfills.js';
import { Command } from 'commander';
import { report } from './harness.js';
import { benchThroughput } from './throughput.js';
import { benchFailover } from './failover.js';
import { benchMesh } from './mesh.js';

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

program
  .command('failover')
  .description("time from the lease holder's SIGKILL to the first reservation by the new holder")
  .option('--kills <n>', 'kills', (v) => Number(v), 20)
  .option('--json', 'one JSON object', false)
  .action(async (o: { kills: number; json: boolean }) => {
    const r = await benchFailover(o.kills);
    report(
      'failover (default lease: ttl 3 s, renew 0.7 s)',
      [
        ['kills', r.kills],
        ['median (ms)', r.medianMs],
        ['worst (ms)', r.worstMs],
      ],
      o.json,
      { bench: 'failover', ...r },
    );
  });

program
  .command('mesh')
  .description('mesh formation for N agents, time until all see one leave, idle agent memory')
  .option('--agents <n>', 'agents', (v) => Number(v), 30)
  .option('--json', 'one JSON object', false)
  .action(async (o: { agents: number; json: boolean }) => {
    const r = await benchMesh(o.agents);
    report(
      'mesh',
      [
        ['agents', r.agents],
        ['full mesh after (s)', r.formSeconds.toFixed(2)],
        ['all see a leave after (s)', r.leaveSeconds.toFixed(2)],
        ['idle agent RSS (MB)', r.idleRssMb],
      ],
      o.json,
      { bench: 'mesh', ...r },
    );
  });

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});

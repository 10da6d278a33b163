import '../../src/polyfills.js';
import { Command } from 'commander';
import { report } from './harness.js';
import { benchThroughput } from './throughput.js';
import { benchFailover } from './failover.js';
import { benchMesh } from './mesh.js';
import { benchLatency } from './latency.js';
import { benchDeadNode } from './deadnode.js';

const program = new Command('bench').description(
  'Pampa benchmarks; figures are printed, never asserted',
);

program
  .command('all', { isDefault: true })
  .description('every figure in one table (takes several minutes)')
  .option('--json', 'one JSON object', false)
  .option('--mesh-agents <n>', 'agents for the mesh figure', (v) => Number(v), 30)
  .action(async (o: { json: boolean; meshAgents: number }) => {
    const step = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
      const r = await run();
      process.stderr.write(`bench: ${name}: ${JSON.stringify(r)}\n`);
      return r;
    };
    const noop1 = await step('noop 1', () => benchThroughput(1, 8, 100_000, 0));
    const noop3 = await step('noop 3', () => benchThroughput(3, 8, 100_000, 0));
    const slow1 = await step('10ms 1', () => benchThroughput(1, 8, 10_000, 10));
    const slow3 = await step('10ms 3', () => benchThroughput(3, 8, 10_000, 10));
    const latency = await step('latency', () => benchLatency(200, 50));
    const failover = await step('failover', () => benchFailover(20));
    const dead = await step('deadnode', () => benchDeadNode(5));
    // A mesh that does not form in time is a figure too, not a reason to lose the others.
    const mesh = await step('mesh', () =>
      benchMesh(o.meshAgents).catch((err: Error) => ({
        agents: o.meshAgents,
        formSeconds: NaN,
        leaveSeconds: NaN,
        idleRssMb: NaN,
        error: err.message,
      })),
    );
    report(
      'Pampa benchmarks',
      [
        ['no-op tasks/s, 1 agent × 8 workers, 100k rows', noop1.tasksPerSecond],
        ['  statements per task', noop1.statementsPerTask],
        ['no-op tasks/s, 3 agents × 8 workers, 100k rows', noop3.tasksPerSecond],
        ['  tasks started twice (overload)', noop1.retried + noop3.retried],
        ['10 ms tasks/s, 1 agent × 8 workers, 10k rows', slow1.tasksPerSecond],
        ['10 ms tasks/s, 3 agents × 8 workers, 10k rows', slow3.tasksPerSecond],
        ['new row → start p50 / p99 (ms)', `${latency.p50Ms} / ${latency.p99Ms}`],
        ['failover median / worst (ms), 20 kills', `${failover.medianMs} / ${failover.worstMs}`],
        ['dead node → tasks elsewhere median / worst (ms)', `${dead.medianMs} / ${dead.worstMs}`],
        [
          `mesh of ${mesh.agents} agents formed (s)`,
          Number.isNaN(mesh.formSeconds) ? 'not formed in 300 s' : mesh.formSeconds.toFixed(2),
        ],
        ['  all see one leave (s)', mesh.leaveSeconds.toFixed(2)],
        ['idle agent RSS (MB)', mesh.idleRssMb],
      ],
      o.json,
      { bench: 'all', noop1, noop3, slow1, slow3, latency, failover, dead, mesh },
    );
  });

program
  .command('latency')
  .description('new row → task start, p50 and p99, one idle agent')
  .option('--samples <n>', 'rows, one at a time', (v) => Number(v), 200)
  .option('--json', 'one JSON object', false)
  .action(async (o: { samples: number; json: boolean }) => {
    const r = await benchLatency(o.samples, 50);
    report(
      'new row → task start',
      [
        ['samples', r.samples],
        ['p50 (ms)', r.p50Ms],
        ['p99 (ms)', r.p99Ms],
      ],
      o.json,
      { bench: 'latency', ...r },
    );
  });

program
  .command('deadnode')
  .description("time from a node's SIGKILL until its running task starts on another node")
  .option('--rounds <n>', 'kills', (v) => Number(v), 5)
  .option('--json', 'one JSON object', false)
  .action(async (o: { rounds: number; json: boolean }) => {
    const r = await benchDeadNode(o.rounds);
    report(
      'dead node → tasks elsewhere',
      [
        ['kills', r.rounds],
        ['median (ms)', r.medianMs],
        ['worst (ms)', r.worstMs],
      ],
      o.json,
      { bench: 'deadnode', ...r },
    );
  });

program
  .command('throughput')
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
          ['tasks started twice', r.retried],
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

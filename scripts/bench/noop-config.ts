import { defineCluster, defineJob } from '../../src/index.js';

/** No-op tasks over `bench_tasks`: measures Pampa's own cost per task. */
export default defineCluster({
  name: process.env.PAMPA_BENCH_CLUSTER ?? 'bench',
  databaseUrl: process.env.DATABASE_URL,
  jobs: [
    defineJob({
      name: 'noop',
      table: 'bench_tasks',
      primaryKey: 'id',
      queueSize: Number(process.env.PAMPA_BENCH_QUEUE_SIZE ?? 2000),
      run: async () => {
        const ms = Number(process.env.PAMPA_BENCH_TASK_MS ?? 0);
        if (ms > 0) await new Promise((r) => setTimeout(r, ms));
      },
    }),
  ],
});

import { defineCluster, defineJob } from '../../src/index.js';

/** No-op tasks with the default lease timings: what a user gets without tuning. */
export default defineCluster({
  name: 'bench-failover',
  databaseUrl: process.env.DATABASE_URL,
  jobs: [defineJob({ name: 'noop', table: 'bench_tasks', primaryKey: 'id', run: () => undefined })],
});

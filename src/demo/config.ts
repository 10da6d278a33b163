import { defineCluster, defineJob } from '../index.js';

/**
 * The getting-started example of the original Pampa: a table `numbers` holding 1..N, and a job
 * that records for each row whether it is odd. `pampa demo` seeds the table and runs agents
 * with this module as their config.
 */
export default defineCluster({
  name: process.env.PAMPA_DEMO_CLUSTER ?? 'demo',
  databaseUrl: process.env.DATABASE_URL,
  jobs: [
    defineJob({
      name: 'search_odd_numbers',
      table: 'numbers',
      primaryKey: 'value',
      queueSize: Number(process.env.PAMPA_DEMO_QUEUE_SIZE ?? 200),
      run: async (task, ctx) => {
        const value = Number(task.value);
        await ctx.db.query('UPDATE numbers SET odd = $2 WHERE value = $1', [
          value,
          value % 2 === 1,
        ]);
      },
    }),
  ],
});

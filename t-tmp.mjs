import { createTestDatabase } from './dist/test/helpers/database.js';
const t = Date.now();
const [a, b] = await Promise.all([createTestDatabase(), createTestDatabase()]);
console.log(a.url, b.url, Date.now() - t);
console.log((await a.pool.query('select current_database()')).rows);
const c = await b.pool.connect(); // held connection must not block drop
await a.drop(); await b.drop(); c.release();
console.log('dropped', Date.now() - t);

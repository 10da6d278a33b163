import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Defaults } from '../src/config/defaults.js';
import { defineCluster, defineJob } from '../src/config/define.js';
import { ConfigError } from '../src/config/errors.js';
import { loadConfig } from '../src/config/load.js';
import { reservationColumns } from '../src/config/schema.js';
import { inspectJobTable, TableError } from '../src/db/table.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { CLI, INDEX_URL, ROOT, tempDir } from './helpers/core-fixture.js';

const run = () => undefined;
const job = (extra: Record<string, unknown> = {}) =>
  ({ name: 'mail', table: 'outbox', primaryKey: 'id', run, ...extra }) as Parameters<
    typeof defineJob
  >[0];

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);

    return err.message;
  }
  assert.fail('no error thrown');
}

describe('config: defineJob / defineCluster', () => {
  test('defaults: queueSize 5, maxJobDurationMinutes 15, maxTryTimes 3, columns from the job name', () => {
    const j = defineJob(job());
    assert.equal(j.queueSize, 5);
    assert.equal(j.maxJobDurationMinutes, 15);
    assert.equal(j.maxTryTimes, 3);
    assert.equal(j.maxReservedSeconds, 120);
    assert.equal(j.retryBackoffSeconds, 1);
    assert.deepEqual(reservationColumns(j), {
      reservedBy: 'mail_reserved_by',
      reservedAt: 'mail_reserved_at',
      tries: 'mail_tries',
      startedAt: 'mail_started_at',
      endedAt: 'mail_ended_at',
      success: 'mail_success',
      error: 'mail_error',
    });
    const named = reservationColumns(
      defineJob(job({ columns: { tries: 'Attempts', success: null, error: null } })),
    );
    assert.equal(named.tries, 'Attempts');
    assert.equal(named.reservedBy, 'mail_reserved_by');
    assert.equal(named.success, null);
    assert.equal(named.error, null);

    const c = defineCluster({ name: 'prod', jobs: [j] });
    assert.equal(c.schema, 'pampa');
    assert.deepEqual(c.lease, {
      ttlMs: Defaults.leaseTtlMs,
      renewIntervalMs: Defaults.leaseRenewIntervalMs,
      renewDeadlineMs: Defaults.leaseRenewDeadlineMs,
    });
    assert.ok(
      c.lease.renewIntervalMs < c.lease.renewDeadlineMs && c.lease.renewDeadlineMs < c.lease.ttlMs,
    );
    assert.equal(c.shutdownGraceMs, Defaults.shutdownGraceMs);
    assert.equal(c.relaunchScanMs, Defaults.relaunchScanMs);
    assert.deepEqual(c.nodes, []);
  });

  test('errors name the field, the rule and the value', () => {
    let m = configError(() => defineJob(job({ queueSize: -1 })));
    assert.match(m, /job "mail"/);
    assert.match(m, /queueSize: .*(>|greater|positive|too small)/i);
    assert.match(m, /\(got -1\)/);

    m = configError(() => defineJob(job({ maxTryTimes: 1.5 })));
    assert.match(m, /maxTryTimes: .*int/i);
    assert.match(m, /\(got 1\.5\)/);

    m = configError(() => defineJob(job({ run: 'not a function' })));
    assert.match(m, /run: must be a function/);
    assert.match(m, /got "not a function"/);

    m = configError(() => defineJob(job({ qeueSize: 3 })));
    assert.match(m, /qeueSize/, 'an unknown key is named');

    m = configError(() => defineJob(job({ table: 'a.b.c' })));
    assert.match(m, /table: must be "table" or "schema.table" \(got "a.b.c"\)/);

    m = configError(() =>
      defineCluster({
        name: 'prod',
        jobs: [defineJob(job())],
        lease: { ttlMs: 1000, renewIntervalMs: 200, renewDeadlineMs: 1000 },
      }),
    );
    assert.match(m, /lease\.renewDeadlineMs: must be below ttlMs \(1000\) \(got 1000\)$/m);
    assert.match(m, /\(got 1000\)/);

    m = configError(() =>
      defineCluster({
        name: 'prod',
        jobs: [defineJob(job())],
        lease: { ttlMs: 5000, renewIntervalMs: 3000, renewDeadlineMs: 3000 },
      }),
    );
    assert.match(
      m,
      /lease\.renewIntervalMs: must be below renewDeadlineMs \(3000\) \(got 3000\)$/m,
    );

    m = configError(() =>
      defineCluster({ name: 'prod', jobs: [defineJob(job()), defineJob(job())] }),
    );
    assert.match(m, /jobs\[1\]\.name: duplicate job name "mail"/);

    m = configError(() => defineCluster({ name: 'prod', jobs: [] }));
    assert.match(m, /jobs: declare at least one job/);

    m = configError(() => defineCluster({ name: 'bad name!', jobs: [defineJob(job())] }));
    assert.match(m, /name: .*letters, digits/);
    assert.match(m, /got "bad name!"/);
  });
});

describe('config: loadConfig, inspectJobTable, pampa migrate', () => {
  let db: TestDatabase;
  let dir: string;
  const envBefore = process.env.DATABASE_URL;

  before(async () => {
    db = await createTestDatabase();
    dir = tempDir('pampa-core-config-');
    delete process.env.DATABASE_URL;
  });
  after(async () => {
    if (envBefore === undefined) delete process.env.DATABASE_URL;
    else process.env.DATABASE_URL = envBefore;
    await db?.drop();
  });

  function module(body: string): string {
    return `import { defineCluster, defineJob } from ${JSON.stringify(INDEX_URL)};
${body}`;
  }

  test('loads a .js and a .ts module; DATABASE_URL overrides the file', async () => {
    const js = join(dir, 'a.config.js');
    writeFileSync(
      js,
      module(`export default defineCluster({ name: 'js', databaseUrl: 'postgres://file/db',
        jobs: [defineJob({ name: 'j', table: 't', primaryKey: 'id', queueSize: 9, run: async () => 1 })] });`),
    );
    const ts = join(dir, 'b.config.ts');
    writeFileSync(
      ts,
      module(`interface Row { id: number }
const limit: number = 7;
export default defineCluster({ name: 'ts', databaseUrl: 'postgres://file/db',
  jobs: [defineJob({ name: 'k', table: 's.t', primaryKey: 'id', queueSize: limit,
    run: async (row) => (row as unknown as Row).id })] });`),
    );
    // The same .ts module inside a "type": "module" package (loaded as ESM, not CommonJS).
    const esmDir = join(dir, 'esm');
    mkdirSync(esmDir);
    writeFileSync(join(esmDir, 'package.json'), '{"type":"module"}\n');
    writeFileSync(join(esmDir, 'b.config.ts'), readFileSync(ts));
    const a = await loadConfig(js);
    assert.equal(a.name, 'js');
    assert.equal(a.jobs[0].queueSize, 9);
    assert.equal(a.databaseUrl, 'postgres://file/db');
    const b = await loadConfig(ts);
    assert.equal(b.name, 'ts');
    assert.equal(b.jobs[0].queueSize, 7);
    assert.equal(typeof b.jobs[0].run, 'function');
    assert.equal((await loadConfig(join(esmDir, 'b.config.ts'))).jobs[0].queueSize, 7);

    process.env.DATABASE_URL = 'postgres://env/db';
    try {
      assert.equal((await loadConfig(js)).databaseUrl, 'postgres://env/db');
    } finally {
      delete process.env.DATABASE_URL;
    }

    await assert.rejects(
      loadConfig(join(dir, 'missing.js')),
      (e: Error) => e instanceof ConfigError && /does not exist/.test(e.message),
    );
    const noDefault = join(dir, 'c.config.js');
    writeFileSync(noDefault, 'export const x = 1;\n');
    await assert.rejects(loadConfig(noDefault), /no default export/);
    const noDb = join(dir, 'd.config.js');
    writeFileSync(
      noDb,
      module(
        `export default { name: 'x', jobs: [{ name: 'j', table: 't', primaryKey: 'id', run() {} }] };`,
      ),
    );
    await assert.rejects(loadConfig(noDb), /no database/);
    const invalid = join(dir, 'e.config.js');
    writeFileSync(
      invalid,
      `export default { name: 'x', databaseUrl: 'postgres://x/y', jobs: [{ name: 'j', table: 't', primaryKey: 'id', queueSize: 0, run() {} }] };\n`,
    );
    await assert.rejects(
      loadConfig(invalid),
      (e: Error) =>
        e instanceof ConfigError &&
        e.message.includes(invalid) &&
        /jobs\[0\]\.queueSize: .*\(got 0\)/.test(e.message),
    );
  });

  test('a config importing pampa in a CommonJS project: .ts is refused with the fix, .mts loads', async () => {
    const project = join(dir, 'cjs-project');
    mkdirSync(join(project, 'node_modules'), { recursive: true });
    writeFileSync(join(project, 'package.json'), '{"type":"commonjs"}\n');
    symlinkSync(ROOT, join(project, 'node_modules', 'pampa'), 'dir');
    const source = `import { defineCluster, defineJob } from 'pampa';
export default defineCluster({ name: 'cjs', databaseUrl: 'postgres://file/db',
  jobs: [defineJob({ name: 'j', table: 't', primaryKey: 'id', run: async () => 1 })] });
`;
    writeFileSync(join(project, 'pampa.config.ts'), source);
    writeFileSync(join(project, 'pampa.config.mts'), source);
    await assert.rejects(
      loadConfig(join(project, 'pampa.config.ts')),
      (e: Error) =>
        e instanceof ConfigError &&
        /loads as CommonJS/.test(e.message) &&
        /\.mjs \(or \.mts\)/.test(e.message) &&
        /"type": "module"/.test(e.message),
    );
    assert.equal((await loadConfig(join(project, 'pampa.config.mts'))).name, 'cjs');
  });

  test('inspectJobTable on a missing column names table, column and existing columns, and writes nothing', async () => {
    await db.pool.query(
      `CREATE TABLE jobs_in (id bigint PRIMARY KEY, body text, mail_reserved_by text)`,
    );
    await db.pool.query(
      `INSERT INTO jobs_in (id, body) SELECT g, 'b' || g FROM generate_series(1, 5) g`,
    );
    const snapshot = async () => {
      await db.pool.query('SELECT pg_stat_force_next_flush()').catch(() => undefined);
      const rows = await db.pool.query(`SELECT * FROM jobs_in ORDER BY id`);
      const cols = await db.pool.query(
        `SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
          WHERE attrelid = 'jobs_in'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
      );
      const stat = await db.pool.query(
        `SELECT n_tup_upd, n_tup_ins, n_tup_del FROM pg_stat_user_tables WHERE relname = 'jobs_in'`,
      );
      const ns = await db.pool.query(`SELECT to_regnamespace('pampa') IS NULL AS absent`);
      const idx = await db.pool.query(
        `SELECT indexname FROM pg_indexes WHERE tablename = 'jobs_in' ORDER BY 1`,
      );
      const trg = await db.pool.query(
        `SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs_in'::regclass`,
      );

      return {
        rows: rows.rows,
        cols: cols.rows,
        stat: stat.rows,
        ns: ns.rows,
        idx: idx.rows,
        trg: trg.rows,
      };
    };
    const before = await snapshot();
    assert.equal(before.ns[0].absent, true);

    const j = defineJob({
      name: 'mail',
      table: 'jobs_in',
      primaryKey: 'id',
      columns: { startedAt: 'begun' },
      run,
    });
    await assert.rejects(inspectJobTable(db.pool, j), (e: Error) => {
      assert.ok(e instanceof TableError, String(e));
      assert.match(e.message, /table jobs_in/);
      assert.match(e.message, /begun \(option columns\.startedAt\)/);
      assert.match(e.message, /mail_reserved_at \(option columns\.reservedAt\)/);
      assert.doesNotMatch(
        e.message,
        /mail_reserved_by \(option/,
        'an existing column is not called missing',
      );
      assert.match(e.message, /its columns are: id, body, mail_reserved_by/);
      assert.match(e.message, /pampa migrate/);

      return true;
    });
    // A missing table and a missing primary key are named too.
    await assert.rejects(
      inspectJobTable(db.pool, defineJob({ name: 'x', table: 'nope.none', primaryKey: 'id', run })),
      /table nope\.none does not exist/,
    );
    await assert.rejects(
      inspectJobTable(
        db.pool,
        defineJob({ name: 'mail', table: 'jobs_in', primaryKey: 'Id', run }),
      ),
      /Id \(option primaryKey\)/,
    );
    assert.deepEqual(await snapshot(), before);
  });

  test('a database URL that is not one, or names an unreachable server, is explained', async () => {
    const file = join(dir, 'where.config.js');
    writeFileSync(
      file,
      module(`export default defineCluster({ name: 'where',
        jobs: [defineJob({ name: 'j', table: 't', primaryKey: 'id', run: async () => 1 })] });`),
    );
    const migrate = (url: string) =>
      new Promise<{ code: number | null; err: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, 'migrate', '--config', file], {
          cwd: ROOT,
          env: { ...process.env, DATABASE_URL: url, PAMPA_LOG_FORMAT: 'json' },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let err = '';
        child.stderr.on('data', (d) => (err += d));
        child.on('close', (code) => resolve({ code, err }));
      });
    const notUrl = await migrate('not a url');
    assert.equal(notUrl.code, 1);
    assert.match(notUrl.err, /DATABASE_URL is not a PostgreSQL URL: write it as postgres:\/\//);
    const refused = await migrate('postgres://postgres:pw@127.0.0.1:1/db');
    assert.equal(refused.code, 1);
    assert.match(
      refused.err,
      /cannot reach the database at 127\.0\.0\.1:1 \(ECONNREFUSED\): check DATABASE_URL/,
    );
    assert.doesNotMatch(refused.err, /pw@/, 'the password is not printed');
  });

  test('`pampa migrate` adds the columns; two concurrent runs and a third one all succeed', async () => {
    await db.pool.query(
      `CREATE TABLE "Mail Queue" (id bigint PRIMARY KEY, body text, note text DEFAULT 'keep-me')`,
    );
    await db.pool.query(
      `INSERT INTO "Mail Queue" (id, body) SELECT g, 'b' FROM generate_series(1, 3) g`,
    );
    const file = join(dir, 'migrate.config.js');
    writeFileSync(
      file,
      module(`export default defineCluster({ name: 'mig', schema: 'pampa_mig',
        jobs: [defineJob({ name: 'send', table: 'public.Mail Queue', primaryKey: 'id', run: async () => 1 })] });`),
    );
    const migrateOnce = () =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, 'migrate', '--config', file], {
          cwd: ROOT,
          env: { ...process.env, DATABASE_URL: db.url, PAMPA_LOG_FORMAT: 'json' },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.stderr.on('data', (d) => (out += d));
        child.on('close', (code) => resolve({ code, out }));
      });
    const [a, b] = await Promise.all([migrateOnce(), migrateOnce()]);
    assert.equal(a.code, 0, a.out);
    assert.equal(b.code, 0, b.out);
    const cols = async () =>
      (
        await db.pool.query<{ c: string }>(
          `SELECT attname || ' ' || format_type(atttypid, atttypmod) AS c FROM pg_attribute
            WHERE attrelid = '"Mail Queue"'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
        )
      ).rows.map((r) => r.c);
    const after1 = await cols();
    assert.deepEqual(after1, [
      'id bigint',
      'body text',
      'note text',
      'send_reserved_by character varying(500)',
      'send_reserved_at timestamp with time zone',
      'send_tries integer',
      'send_started_at timestamp with time zone',
      'send_ended_at timestamp with time zone',
      'send_success boolean',
      'send_error text',
    ]);
    const migs = await db.pool.query(`SELECT id FROM pampa_mig.migrations ORDER BY id`);
    assert.deepEqual(
      migs.rows.map((r) => r.id),
      [1, 2, 3, 4],
    );
    const c = await migrateOnce();
    assert.equal(c.code, 0, c.out);
    assert.deepEqual(await cols(), after1);
    const data = await db.pool.query(
      `SELECT id, body, note, send_tries FROM "Mail Queue" ORDER BY id`,
    );
    assert.deepEqual(
      data.rows,
      [1, 2, 3].map((id) => ({ id: String(id), body: 'b', note: 'keep-me', send_tries: 0 })),
    );
    const trig = await db.pool.query(
      `SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = '"Mail Queue"'::regclass AND NOT tgisinternal`,
    );
    assert.equal(trig.rows[0].n, 1, 'exactly one insert trigger');

    // The migrated table passes inspection.
    process.env.DATABASE_URL = db.url;
    try {
      const config = await loadConfig(file);
      const t = await inspectJobTable(db.pool, config.jobs[0]);
      assert.equal(t.table, '"public"."Mail Queue"');
    } finally {
      delete process.env.DATABASE_URL;
    }

    // A config error exits non-zero with the message on stderr.
    const bad = join(dir, 'bad.config.js');
    writeFileSync(
      bad,
      module(
        `export default { name: 'mig', jobs: [{ name: 'send', table: 't', primaryKey: 'id', queueSize: -1, run() {} }] };`,
      ),
    );
    const failed = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, 'migrate', '--config', bad], {
        cwd: ROOT,
        env: { ...process.env, DATABASE_URL: db.url },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stderr.on('data', (d) => (out += d));
      child.on('close', (code) => resolve({ code, out }));
    });
    assert.equal(failed.code, 1);
    assert.match(failed.out, /jobs\[0\]\.queueSize: .*\(got -1\)/);
  });
});

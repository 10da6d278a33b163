import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { migrate } from '../src/db/migrations.js';
import { quoteIdent } from '../src/db/quote.js';
import { NodeRegistry, type NodeRegistration } from '../src/mesh/registry.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

function registration(name: string, agentId: string): NodeRegistration {
  return {
    cluster: 'c1',
    name,
    agentId,
    peerId: `peer-${agentId}`,
    addresses: [`/ip4/127.0.0.1/tcp/4001/p2p/peer-${agentId}`],
    statusUrl: 'http://127.0.0.1:8787',
    version: '0.1.0',
    workers: [`${name}.1`, `${name}.2`],
  };
}

for (const schema of ['pampa', 'Odd "Schema"']) {
  describe(`NodeRegistry in schema ${schema}`, () => {
    let db: TestDatabase;
    let registry: NodeRegistry;

    before(async () => {
      db = await createTestDatabase();
      await migrate(db.pool, schema);
      registry = new NodeRegistry(db.pool, schema);
    });

    after(async () => {
      await db?.drop();
    });

    it('registers a node and lists it with a heartbeat age from the database clock', async () => {
      const record = await registry.upsertNode(registration('n1', 'a1'));
      assert.equal(record.agentId, 'a1');
      assert.deepEqual(record.workers, ['n1.1', 'n1.2']);
      assert.equal(record.stoppedAt, null);

      await db.pool.query(
        `UPDATE ${quoteIdent(schema)}.nodes SET heartbeat_at = now() - interval '2.5 seconds'`,
      );
      const [listed] = await registry.listNodes('c1');
      assert.equal(listed.name, 'n1');
      assert.deepEqual(listed.addresses, ['/ip4/127.0.0.1/tcp/4001/p2p/peer-a1']);
      assert.ok(
        listed.heartbeatAgeMs >= 2500 && listed.heartbeatAgeMs < 3500,
        `age ${listed.heartbeatAgeMs}`,
      );
      assert.equal(typeof listed.heartbeatAgeMs, 'number');
      assert.deepEqual(await registry.listNodes('other'), []);
    });

    it('heartbeats only while this agent owns the name', async () => {
      assert.equal(await registry.heartbeat('c1', 'n1', 'a1', ['n1.1']), true);
      const [renewed] = await registry.listNodes('c1');
      assert.ok(renewed.heartbeatAgeMs < 1000);
      assert.deepEqual(renewed.workers, ['n1.1']);

      await registry.upsertNode(registration('n1', 'a2'));
      assert.equal(await registry.heartbeat('c1', 'n1', 'a1', []), false, 'name taken over');
      assert.equal(await registry.heartbeat('c1', 'nope', 'a1', []), false, 'no row');
      assert.equal((await registry.listNodes('c1'))[0].agentId, 'a2');
    });

    it('marks a clean stop, and a new registration clears it', async () => {
      assert.equal(await registry.markStopped('c1', 'n1', 'a1'), false, 'not the owner');
      assert.equal(await registry.markStopped('c1', 'n1', 'a2'), true);
      assert.ok((await registry.listNodes('c1'))[0].stoppedAt instanceof Date);

      await registry.upsertNode(registration('n1', 'a3'));
      await registry.upsertNode(registration('n0', 'b1'));
      const nodes = await registry.listNodes('c1');
      assert.deepEqual(
        nodes.map((n) => [n.name, n.agentId, n.stoppedAt]),
        [
          ['n0', 'b1', null],
          ['n1', 'a3', null],
        ],
      );
    });
  });
}

import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, describe, test } from 'node:test';
import { AgentMetrics } from '../src/status/metrics.js';
import { StatusServer, type StatusServerOptions } from '../src/status/server.js';
import type { ClusterStatus } from '../src/status/types.js';
import { TOKEN, clusterStatus, silentLog } from './status-fixture.js';

const servers: StatusServer[] = [];
after(() => Promise.all(servers.map((s) => s.stop())));

async function serve(
  opts: Partial<StatusServerOptions> = {},
): Promise<{ url: string; server: StatusServer; metrics: AgentMetrics }> {
  const metrics = opts.metrics ?? new AgentMetrics();
  const server = new StatusServer({
    host: '127.0.0.1',
    port: 0,
    log: silentLog,
    status: async () => clusterStatus(),
    metrics,
    healthy: () => ({ ok: true }),
    ...opts,
  });
  servers.push(server);
  const { url } = await server.start();

  return { url, server, metrics };
}

/** Sends raw bytes, returns everything the server wrote until it closed the connection. */
function raw(url: string, data: string): Promise<string> {
  const { port } = new URL(url);

  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect(Number(port), '127.0.0.1', () => socket.write(data));
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return;
      reject(err);
    });
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

function statusCode(response: string): number {
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(response);
  assert.ok(m, `not an HTTP response: ${JSON.stringify(response.slice(0, 80))}`);

  return Number(m[1]);
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * A strict reader of the Prometheus text format 0.0.4: every line is HELP, TYPE, a sample or blank;
 * each family is typed once, before its samples; names, labels and values are well formed.
 */
function parsePrometheus(text: string): { types: Map<string, string>; samples: Sample[] } {
  const name = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  const help = new RegExp(`^# HELP (${name}) (.*)$`);
  const type = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`);
  const sample = new RegExp(`^(${name})(?:\\{(.*)\\})? (\\S+)(?: (-?\\d+))?$`);
  const label = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)/;
  const value = /^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)|NaN|[+-]Inf)$/;
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const samples: Sample[] = [];

  assert.ok(text.endsWith('\n'), 'exposition must end with a newline');
  text
    .slice(0, -1)
    .split('\n')
    .forEach((line, i) => {
      const where = `line ${i + 1}: ${JSON.stringify(line)}`;
      let m: RegExpExecArray | null;
      if (line === '') {
        return; // the format allows blank lines; prom-client puts one between families
      } else if ((m = help.exec(line))) {
        assert.ok(!helps.has(m[1]), `duplicate HELP, ${where}`);
        helps.add(m[1]);
      } else if ((m = type.exec(line))) {
        assert.ok(!types.has(m[1]), `duplicate TYPE, ${where}`);
        types.set(m[1], m[2]);
      } else if ((m = sample.exec(line))) {
        const labels: Record<string, string> = {};
        let rest = m[2] ?? '';
        while (rest.length > 0) {
          const l = label.exec(rest);
          assert.ok(l, `bad label set, ${where}`);
          assert.ok(!(l[1] in labels), `duplicate label, ${where}`);
          labels[l[1]] = l[2];
          rest = rest.slice(l[0].length);
        }
        assert.match(m[3], value, `bad value, ${where}`);
        const family = [m[1], m[1].replace(/_(bucket|sum|count)$/, '')].find((f) => types.has(f));
        assert.ok(family, `sample before its TYPE, ${where}`);
        if (m[1].endsWith('_bucket') && types.get(family) === 'histogram') {
          assert.ok('le' in labels, `bucket without le, ${where}`);
        }
        samples.push({ name: m[1], labels, value: Number(m[3].replace('Inf', 'Infinity')) });
      } else {
        assert.fail(`not HELP, TYPE or a sample, ${where}`);
      }
    });

  return { types, samples };
}

function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const s = samples.find(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  assert.ok(s, `no sample ${name} ${JSON.stringify(labels)}`);

  return s.value;
}

describe('StatusServer routes', () => {
  test('GET /status returns the ClusterStatus as JSON, on the real port', async () => {
    const fixed = clusterStatus(Date.parse('2025-01-01T12:00:00Z'));
    const { url } = await serve({ status: async () => fixed });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(new URL(url).port, '0');

    const res = await fetch(`${url}/status`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    const body = (await res.json()) as ClusterStatus;
    assert.deepEqual(body, JSON.parse(JSON.stringify(fixed)));
    assert.equal(body.nodes.length, 2);
    assert.equal(body.workers.length, 3);
    assert.deepEqual(
      body.jobs.map((j) => j.name),
      ['resize', 'thumbnails'],
    );
  });

  test('HEAD /status answers headers only', async () => {
    const { url } = await serve();
    const res = await fetch(`${url}/status`, { method: 'HEAD' });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '');
  });

  test('GET /metrics is valid Prometheus text with the agent metrics', async () => {
    const { url, metrics } = await serve();
    metrics.tasksStarted('resize', 3);
    metrics.tasksSucceeded('resize', 2);
    metrics.tasksFailed('resize');
    metrics.tasksRelaunched('resize', 'node_dead', 4);
    metrics.observeReservation('resize', 0.03, 4);
    metrics.observeReservation('resize', 2, 1);
    // A round that reserved nothing is not a reservation.
    metrics.observeReservation('resize', 0.5, 0);
    // A lease held before this agent started is no change; a new holder and a new epoch are.
    metrics.observeLease('a-1', 3, 'b-1');
    metrics.observeLease('a-1', 3, 'b-1');
    metrics.observeLease('b-1', 4, 'b-1');
    metrics.observeLease('b-1', 5, 'b-1');
    metrics.setPeers(1);
    metrics.setMeshSize(2);
    metrics.setDispatcher(true, 7);
    let drops: Record<string, number> = { invalid: 2, 'label "quoted" \\ and\nnewline': 1 };
    metrics.countDropsFrom(() => drops);

    const res = await fetch(`${url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const { types, samples } = parsePrometheus(await res.text());

    assert.equal(types.get('pampa_tasks_started_total'), 'counter');
    assert.equal(types.get('pampa_reservation_statement_seconds'), 'histogram');
    assert.equal(types.get('pampa_is_dispatcher'), 'gauge');
    assert.equal(types.get('process_cpu_user_seconds_total'), 'counter');
    assert.equal(sampleValue(samples, 'pampa_tasks_started_total', { job: 'resize' }), 3);
    assert.equal(sampleValue(samples, 'pampa_tasks_succeeded_total', { job: 'resize' }), 2);
    assert.equal(sampleValue(samples, 'pampa_tasks_failed_total', { job: 'resize' }), 1);
    const relaunched = { job: 'resize', reason: 'node_dead' };
    assert.equal(sampleValue(samples, 'pampa_tasks_relaunched_total', relaunched), 4);
    const latency = 'pampa_reservation_statement_seconds';
    assert.equal(sampleValue(samples, `${latency}_count`, { job: 'resize' }), 2);
    assert.equal(sampleValue(samples, `${latency}_bucket`, { job: 'resize', le: '0.05' }), 1);
    assert.equal(sampleValue(samples, `${latency}_bucket`, { job: 'resize', le: '+Inf' }), 2);
    assert.equal(sampleValue(samples, 'pampa_lease_changes_total'), 2);
    assert.equal(sampleValue(samples, 'pampa_peers'), 1);
    assert.equal(sampleValue(samples, 'pampa_mesh_size'), 2);
    assert.equal(sampleValue(samples, 'pampa_is_dispatcher'), 1);
    assert.equal(sampleValue(samples, 'pampa_lease_epoch'), 7);
    assert.equal(sampleValue(samples, 'pampa_gossip_dropped_total', { reason: 'invalid' }), 2);
    const escaped = { reason: 'label \\"quoted\\" \\\\ and\\nnewline' };
    assert.equal(sampleValue(samples, 'pampa_gossip_dropped_total', escaped), 1);

    // Each scrape reads the counts where they are kept.
    drops = { invalid: 5, stale: 3 };
    const again = parsePrometheus(await (await fetch(`${url}/metrics`)).text()).samples;
    assert.equal(sampleValue(again, 'pampa_gossip_dropped_total', { reason: 'invalid' }), 5);
    assert.equal(sampleValue(again, 'pampa_gossip_dropped_total', { reason: 'stale' }), 3);
  });

  test('two AgentMetrics never share counters', async () => {
    const a = new AgentMetrics();
    const b = new AgentMetrics();
    a.tasksStarted('resize', 5);
    const { samples } = parsePrometheus(await b.render());
    assert.ok(!samples.some((s) => s.name === 'pampa_tasks_started_total'));
  });

  test('GET /healthz is 200 when healthy, 503 with the reason otherwise', async () => {
    let health: { ok: boolean; reason?: string } = { ok: true };
    const { url } = await serve({ healthy: () => health });
    let res = await fetch(`${url}/healthz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { ok: true });

    health = { ok: false, reason: 'database unreachable' };
    res = await fetch(`${url}/healthz`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { ok: false, reason: 'database unreachable' });
  });

  test('GET / serves the self-contained dashboard with a strict CSP', async () => {
    const { url } = await serve();
    const res = await fetch(`${url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    const html = await res.text();
    assert.match(html, /<script>/);
    assert.doesNotMatch(html, /(src|href)="https?:/);
  });

  test('a failing status provider gives 503 with its message, and the server goes on', async () => {
    let fail = true;
    const { url } = await serve({
      status: async () => {
        if (fail) throw new Error('lease table unreachable');
        return clusterStatus();
      },
    });
    const res = await fetch(`${url}/status`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { error: 'lease table unreachable' });

    fail = false;
    assert.equal((await fetch(`${url}/status`)).status, 200);
  });

  test('a status provider that never answers gives 503 after providerTimeoutMs', async () => {
    const { url } = await serve({
      status: () => new Promise<ClusterStatus>(() => undefined),
      providerTimeoutMs: 200,
    });
    const res = await fetch(`${url}/status`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), {
      error: 'the status provider did not answer within 200 ms',
    });
  });

  test('anything but GET or HEAD is 405; an unknown path is 404', async () => {
    const { url } = await serve();
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      const res = await fetch(`${url}/status`, { method });
      assert.equal(res.status, 405, method);
      assert.equal(res.headers.get('allow'), 'GET, HEAD');
    }
    assert.equal((await fetch(`${url}/nope`)).status, 404);
    assert.equal((await fetch(`${url}/status/extra`)).status, 404);
  });
});

describe('StatusServer access rules', () => {
  test('with a token, every route needs the bearer token', async () => {
    const { url } = await serve({ token: TOKEN });
    for (const path of ['/status', '/metrics', '/healthz', '/']) {
      const none = await fetch(`${url}${path}`);
      assert.equal(none.status, 401, path);
      assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
      const wrong = await fetch(`${url}${path}`, {
        headers: { Authorization: `Bearer ${TOKEN}x` },
      });
      assert.equal(wrong.status, 401, path);
      const prefix = await fetch(`${url}${path}`, {
        headers: { Authorization: `Bearer ${TOKEN.slice(0, -1)}` },
      });
      assert.equal(prefix.status, 401, path);
      const right = await fetch(`${url}${path}`, {
        headers: { Authorization: `Bearer ${TOKEN}` },
      });
      assert.equal(right.status, 200, path);
    }
  });

  test('only the dashboard page accepts the token as ?token=', async () => {
    const { url } = await serve({ token: TOKEN });
    assert.equal((await fetch(`${url}/?token=${TOKEN}`)).status, 200);
    assert.equal((await fetch(`${url}/?token=nope`)).status, 401);
    assert.equal((await fetch(`${url}/status?token=${TOKEN}`)).status, 401);
  });

  test('a method check never leaks past the token check', async () => {
    const { url } = await serve({ token: TOKEN });
    assert.equal((await fetch(`${url}/status`, { method: 'POST' })).status, 401);
  });

  test('binding a non-loopback host without a token is refused, naming status.token', async () => {
    const server = new StatusServer({
      host: '0.0.0.0',
      port: 0,
      log: silentLog,
      status: async () => clusterStatus(),
      metrics: new AgentMetrics(),
      healthy: () => ({ ok: true }),
    });
    await assert.rejects(server.start(), /status\.token/);
    await server.stop();
  });

  test('a non-loopback host with a token starts', async () => {
    const { url } = await serve({ host: '0.0.0.0', token: TOKEN });
    const { port } = new URL(url);
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, {
      headers: { Authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(res.status, 200);
  });

  test('a token shorter than 16 characters is refused at start', async () => {
    await assert.rejects(serve({ token: 'short' }), /status\.token must be at least 16/);
  });

  test('without a token, a non-loopback Host header is refused (DNS rebinding)', async () => {
    const { url } = await serve();
    const res = await raw(
      url,
      'GET /status HTTP/1.1\r\nHost: evil.example:8787\r\nConnection: close\r\n\r\n',
    );
    assert.equal(statusCode(res), 403);
    const ok = await raw(
      url,
      'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
    );
    assert.equal(statusCode(ok), 200);
  });
});

describe('StatusServer malformed requests', () => {
  const cases: [string, (url: string) => string, number][] = [
    ['garbage bytes', () => '\x16\x03\x01\x02\x00 not http at all\r\n\r\n', 400],
    ['a header line without a colon', () => 'GET /status HTTP/1.1\r\nno colon here\r\n\r\n', 400],
    [
      'a 20 KB header',
      () => `GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      431,
    ],
    [
      'a path with %zz',
      () => 'GET /%zz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
      400,
    ],
    [
      'an absolute URL with a bad escape',
      () => 'GET http://x/status%zz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
      400,
    ],
    [
      'a query string with %zz',
      () => 'GET /status?%zz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
      400,
    ],
    [
      'a token query with %zz',
      () => 'GET /?token=%zz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
      400,
    ],
    [
      'a 100 KB URL',
      () => `GET /status?${'a'.repeat(100_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
      431,
    ],
    [
      'an unknown method name',
      () => 'FROB /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
      400,
    ],
    [
      'a method the status port does not serve',
      () => 'PROPFIND /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
      405,
    ],
  ];

  for (const [name, request, code] of cases) {
    test(`${name} gets ${code} and the server still answers`, async () => {
      const { url } = await serve();
      assert.equal(statusCode(await raw(url, request(url))), code);
      assert.equal((await fetch(`${url}/status`)).status, 200);
    });
  }

  test('with a token, a malformed ?token= gets 400, not a crash nor a pass', async () => {
    const { url } = await serve({ token: TOKEN });
    const res = await raw(
      url,
      'GET /?token=%zz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    );
    assert.equal(statusCode(res), 400);
    assert.equal((await fetch(`${url}/?token=${TOKEN}`)).status, 200);
  });

  test('a client that never finishes its headers gets 408', async () => {
    const { url } = await serve({ headersTimeoutMs: 300 });
    const res = await raw(url, 'GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    assert.equal(statusCode(res), 408);
    assert.equal((await fetch(`${url}/status`)).status, 200);
  });
});

describe('StatusServer lifecycle', () => {
  test('start and stop are idempotent', async () => {
    const { url, server } = await serve();
    assert.deepEqual(await server.start(), { url });
    const [a, b] = await Promise.all([server.start(), server.start()]);
    assert.equal(a.url, url);
    assert.equal(b.url, url);

    await Promise.all([server.stop(), server.stop()]);
    await server.stop();
    await assert.rejects(fetch(`${url}/status`));
  });

  test('stop closes kept-alive connections', async () => {
    const { url, server } = await serve();
    assert.equal((await fetch(`${url}/status`)).status, 200);
    const t0 = Date.now();
    await server.stop();
    assert.ok(Date.now() - t0 < 2000, 'stop waited for idle keep-alive connections');
  });

  test('a port in use rejects start, and a later start may retry', async () => {
    const { url } = await serve();
    const port = Number(new URL(url).port);
    const second = new StatusServer({
      host: '127.0.0.1',
      port,
      log: silentLog,
      status: async () => clusterStatus(),
      metrics: new AgentMetrics(),
      healthy: () => ({ ok: true }),
    });
    await assert.rejects(second.start(), /EADDRINUSE/);
    await assert.rejects(second.start(), /EADDRINUSE/);
    await second.stop();
  });
});

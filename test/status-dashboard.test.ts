import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { AgentMetrics } from '../src/status/metrics.js';
import { StatusServer } from '../src/status/server.js';
import type { ClusterStatus } from '../src/status/types.js';
import { TOKEN, clusterStatus, silentLog } from './status-fixture.js';
import { CHROMIUM, CHROMIUM_ARGS, skipWithoutChromium } from './helpers/chromium.js';

let browser: Browser | undefined;
let server: StatusServer;
let url: string;
/** What the status provider answers; a test may swap it. */
let current: () => ClusterStatus = () => clusterStatus();

before(async () => {
  server = new StatusServer({
    host: '127.0.0.1',
    port: 0,
    token: TOKEN,
    log: silentLog,
    status: async () => current(),
    metrics: new AgentMetrics(),
    healthy: () => ({ ok: true }),
  });
  ({ url } = await server.start());
  if (existsSync(CHROMIUM))
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await server.stop();
});

/** Opens the dashboard with the token in the query; fails the test on any page or CSP error. */
async function open(b: Browser): Promise<{ page: Page; errors: string[] }> {
  const page = await b.newPage({ viewport: { width: 1280, height: 860 } });
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  await page.goto(`${url}/?token=${TOKEN}`);
  await page.waitForSelector('body[data-state="live"]');

  return { page, errors };
}

test('the dashboard shows every node, worker and job of the status', async (t) => {
  if (!browser) return skipWithoutChromium(t);
  current = () => clusterStatus();
  const { page, errors } = await open(browser);
  const status = clusterStatus();

  assert.equal(await page.textContent('#cluster'), 'demo');
  assert.match((await page.textContent('#self')) ?? '', /node-a \(dispatcher, v0\.1\.0\)/);
  assert.equal(await page.textContent('#db'), 'db ok');
  assert.equal(await page.textContent('#lease-holder'), 'agent-a1 on node-a');
  assert.equal(await page.textContent('#lease-epoch'), '7');
  assert.equal(await page.textContent('#lease-expiry'), '3.2 s');

  for (const n of status.nodes) {
    const row = await page.waitForSelector(`[data-node="${n.name}"]`);
    const text = (await row.textContent()) ?? '';
    assert.match(text, new RegExp(n.state));
    assert.match(text, new RegExp(n.peerId?.slice(0, 6) ?? '-'));
  }
  for (const w of status.workers) {
    const row = await page.waitForSelector(`[data-worker="${w.id}"]`);
    const text = (await row.textContent()) ?? '';
    assert.match(text, w.busy ? /busy/ : /free/);
    assert.match(text, new RegExp(w.job ?? '-'));
  }
  assert.match((await page.textContent('[data-worker="node-a.2"]')) ?? '', /42s ago/);
  assert.match((await page.textContent('[data-worker="node-b.1"]')) ?? '', /never/);
  for (const j of status.jobs) {
    const row = await page.waitForSelector(`[data-job="${j.name}"]`);
    const text = (await row.textContent()) ?? '';
    assert.match(text, new RegExp(`${j.completed + j.failed} / ${j.total}`));
    assert.match(text, new RegExp(`${j.tasksPerSecond.toFixed(1)} tasks/s`));
    const bar = await row.$('[role="progressbar"]');
    assert.equal(await bar?.getAttribute('aria-valuenow'), String(j.completed + j.failed));
  }

  await page.screenshot({ path: '/tmp/dashboard.png', fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test('the dashboard follows the status every second and shows text as text', async (t) => {
  if (!browser) return skipWithoutChromium(t);
  current = () => clusterStatus();
  const { page, errors } = await open(browser);
  await page.waitForSelector('[data-job="resize"]');

  current = () => {
    const s = clusterStatus();
    s.jobs.push({ ...s.jobs[0], name: 'late-job', table: '<img src=x onerror=alert(1)>' });
    s.nodes.push({ ...s.nodes[1], name: 'node-c', state: 'dead' });
    s.jobs[0].completed = 900;
    return s;
  };
  await page.waitForSelector('[data-job="late-job"]');
  await page.waitForSelector('[data-node="node-c"]');
  await page.waitForFunction(() =>
    document.querySelector('[data-job="resize"]')?.textContent?.includes('912 / 1000'),
  );
  const table = await page.textContent('[data-job="late-job"]');
  assert.match(table ?? '', /<img src=x onerror=alert\(1\)>/);
  assert.equal(await page.$$eval('[data-job="late-job"] img', (imgs) => imgs.length), 0);

  current = () => {
    throw new Error('database unreachable');
  };
  await page.waitForSelector('body[data-state="stale"]');
  assert.match((await page.textContent('#conn')) ?? '', /database unreachable/);
  assert.ok(await page.$('[data-node="node-c"]'), 'the last view stays on screen');
  assert.deepEqual(
    errors.filter((e) => !/503/.test(e)),
    [],
  );
  await page.close();
});

test('without the token the dashboard page is refused', async (t) => {
  if (!browser) return skipWithoutChromium(t);
  const page = await browser.newPage();
  const res = await page.goto(`${url}/`);
  assert.equal(res?.status(), 401);
  await page.close();
});

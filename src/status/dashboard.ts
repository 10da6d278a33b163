import { createHash } from 'node:crypto';
import { DASHBOARD_SCRIPT } from './dashboard-script.js';

const STYLE = `
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1d232b; --muted: #6a7380;
  --line: #e2e5ea; --ok: #2e9d5b; --bad: #d0443e; --warn: #d89a1c; --idle: #8a94a3;
  --self: #3b6fd4; --track: #e9ecf1; }
@media (prefers-color-scheme: dark) { :root { --bg: #14181d; --card: #1c2128; --fg: #e4e8ee;
  --muted: #8b95a3; --line: #2c333d; --track: #2a313a; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif;
  background: var(--bg); color: var(--fg); }
header { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: baseline;
  padding: 14px 24px; border-bottom: 1px solid var(--line); background: var(--card); }
header h1 { margin: 0; font-size: 20px; }
main { display: grid; gap: 16px; padding: 16px 24px; grid-template-columns: 1fr 1fr; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 16px; min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { margin: 0 0 10px; font-size: 13px; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
.mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
  color: #fff; background: var(--idle); margin-left: 4px; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); }
.badge.warn { background: var(--warn); } .badge.self { background: var(--self); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; font-variant-numeric: tabular-nums; }
.job { margin-bottom: 14px; } .job:last-child { margin-bottom: 0; }
.bar { display: flex; height: 14px; border-radius: 7px; overflow: hidden; margin: 4px 0;
  background: var(--track); }
.seg.ok { background: var(--ok); } .seg.bad { background: var(--bad); }
.counts { color: var(--muted); font-size: 12.5px; font-variant-numeric: tabular-nums; }
body[data-state='stale'] #conn { color: var(--bad); font-weight: 600; }
@media (max-width: 800px) { main { grid-template-columns: 1fr; } }
`;

function sha256(text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
}

/** The dashboard page on `/`: one self-contained document, no external assets. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>Pampa</title>
<style>${STYLE}</style>
</head>
<body data-state="loading">
<header>
  <h1>Pampa <span id="cluster" class="muted">…</span></h1>
  <span>agent <strong id="self">…</strong></span>
  <span id="db"></span>
  <span id="mesh" class="muted"></span>
  <span id="conn" class="muted">connecting…</span>
</header>
<main>
  <section class="wide"><h2>Jobs</h2><div id="jobs"></div></section>
  <section>
    <h2>Dispatcher lease</h2>
    <dl id="lease">
      <dt>holder</dt><dd id="lease-holder">…</dd>
      <dt>epoch</dt><dd id="lease-epoch">…</dd>
      <dt>expires in</dt><dd id="lease-expiry">…</dd>
    </dl>
  </section>
  <section>
    <h2>Nodes</h2>
    <table><thead><tr><th>name</th><th>state</th><th>peer id</th><th>version</th>
      <th>last heartbeat</th></tr></thead><tbody id="nodes"></tbody></table>
  </section>
  <section class="wide">
    <h2>Workers</h2>
    <table><thead><tr><th>id</th><th>job</th><th>state</th><th class="num">queued</th>
      <th class="num">done</th><th class="num">failed</th><th>last activity</th></tr></thead>
      <tbody id="workers"></tbody></table>
  </section>
</main>
<script>${DASHBOARD_SCRIPT}</script>
</body>
</html>
`;

/**
 * Content-Security-Policy of the page: only its own inline style and script (by hash) run, and
 * it may only connect back to the status port that served it.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  `script-src ${sha256(DASHBOARD_SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

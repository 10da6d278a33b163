/**
 * The dashboard's browser script, kept as plain ES2017 text (no template literals, no build
 * step). It polls `status` next to the page every second and rebuilds the view with DOM calls
 * only: every value reaches the page through textContent, never through innerHTML.
 */
export const DASHBOARD_SCRIPT = String.raw`
(function () {
  'use strict';
  var token = new URLSearchParams(location.search).get('token');
  var headers = token ? { Authorization: 'Bearer ' + token } : {};
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return e;
  }

  function cell(text, cls) { return el('td', cls ? { class: cls } : {}, [String(text)]); }
  function badge(text, kind) { return el('span', { class: 'badge ' + kind }, [text]); }

  function age(iso, now) {
    if (!iso) return 'never';
    var s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
    if (s < 120) return s + 's ago';
    if (s < 7200) return Math.round(s / 60) + 'm ago';
    return Math.round(s / 3600) + 'h ago';
  }

  function shortId(id) {
    if (!id) return '-';
    return id.length > 14 ? id.slice(0, 6) + '\u2026' + id.slice(-6) : id;
  }

  function set(id, text) { $(id).textContent = text; }

  function renderHeader(s) {
    set('cluster', s.cluster);
    set('self', s.self.node + ' (' + s.role + ', v' + s.self.version + ')');
    $('db').replaceChildren(badge('db ' + s.db, s.db === 'ok' ? 'ok' : 'bad'));
    set('mesh', s.meshSize + ' in mesh, ' + s.peers + (s.peers === 1 ? ' peer' : ' peers'));
    var d = s.dispatcher;
    set('lease-holder', d.holder ? d.holder + (d.holderNode ? ' on ' + d.holderNode : '') : 'none');
    set('lease-epoch', String(d.epoch));
    set('lease-expiry', d.secondsToExpiry === null ? '-' : d.secondsToExpiry.toFixed(1) + ' s');
  }

  function renderJobs(s) {
    var rows = s.jobs.map(function (j) {
      var done = j.completed + j.failed;
      var pct = j.total > 0 ? Math.min(100, (100 * done) / j.total) : 0;
      var ok = el('div', { class: 'seg ok' });
      var bad = el('div', { class: 'seg bad' });
      ok.style.width = (j.total > 0 ? (100 * j.completed) / j.total : 0) + '%';
      bad.style.width = (j.total > 0 ? (100 * j.failed) / j.total : 0) + '%';
      var bar = el('div', {
        class: 'bar', role: 'progressbar', 'aria-valuemin': '0',
        'aria-valuemax': String(j.total), 'aria-valuenow': String(done),
      }, [ok, bad]);
      var counts = done + ' / ' + j.total + ' (' + pct.toFixed(1) + '%) \u00b7 ' +
        j.completed + ' done \u00b7 ' + j.failed + ' failed \u00b7 ' + j.running +
        ' running \u00b7 ' + j.pending + ' pending \u00b7 ' +
        j.tasksPerSecond.toFixed(1) + ' tasks/s';
      return el('div', { class: 'job', 'data-job': j.name }, [
        el('div', { class: 'job-head' }, [
          el('strong', {}, [j.name]), el('span', { class: 'muted' }, [' ' + j.table]),
        ]),
        bar,
        el('div', { class: 'counts' }, [counts]),
      ]);
    });
    if (rows.length === 0) rows.push(el('p', { class: 'muted' }, ['no jobs']));
    $('jobs').replaceChildren.apply($('jobs'), rows);
  }

  function renderNodes(s, now) {
    var rows = s.nodes.map(function (n) {
      var kind = n.state === 'alive' ? 'ok' : n.state === 'suspect' ? 'warn' : 'bad';
      var name = el('td', {}, [n.name]);
      if (n.name === s.self.node) name.appendChild(badge('this agent', 'self'));
      return el('tr', { 'data-node': n.name }, [
        name, el('td', {}, [badge(n.state, kind)]), cell(shortId(n.peerId), 'mono'),
        cell(n.version || '-'), cell(age(n.lastHeartbeat, now)),
      ]);
    });
    $('nodes').replaceChildren.apply($('nodes'), rows);
  }

  function renderWorkers(s, now) {
    var rows = s.workers.map(function (w) {
      return el('tr', { 'data-worker': w.id }, [
        cell(w.id, 'mono'), cell(w.job || '-'),
        el('td', {}, [w.busy ? badge('busy', 'ok') : badge('free', 'idle')]),
        cell(w.queued, 'num'), cell(w.done, 'num'), cell(w.failed, 'num'),
        cell(age(w.lastActivity, now)),
      ]);
    });
    $('workers').replaceChildren.apply($('workers'), rows);
  }

  function render(s) {
    var now = Date.parse(s.generatedAt) || Date.now();
    renderHeader(s);
    renderJobs(s);
    renderNodes(s, now);
    renderWorkers(s, now);
    document.title = 'Pampa \u00b7 ' + s.cluster;
    document.body.setAttribute('data-state', 'live');
    set('conn', 'updated ' + new Date().toLocaleTimeString());
  }

  function fail(msg) {
    document.body.setAttribute('data-state', 'stale');
    set('conn', msg);
  }

  function tick() {
    fetch('status', { headers: headers, cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401) {
          throw new Error('unauthorized: open this page with ?token=<status.token>');
        }
        if (!r.ok) {
          return r.json().then(function (b) { throw new Error(b.error || 'HTTP ' + r.status); });
        }
        return r.json();
      })
      .then(render)
      .catch(function (e) { fail('not updated: ' + e.message); })
      .then(function () { setTimeout(tick, 1000); });
  }

  tick();
})();
`;

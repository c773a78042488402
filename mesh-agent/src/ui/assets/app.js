// The mesh's web UI: reads /ui/api/mesh every second and draws the view
// the location's hash names; writes intentions through /ui/api/intention
// with the page's token. No library, nothing fetched from elsewhere.
'use strict';

const TOKEN = document.querySelector('meta[name="mesh-token"]').content;
const POLL_MS = 1000;
let doc = null;
let current = null; // { name, arg, update }
let polling = null;

// --- helpers ---------------------------------------------------------------

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function $(id) { return document.getElementById(id); }

function badge(text, kind) {
  return `<span class="badge ${esc(kind)}">${esc(text)}</span>`;
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function ago(unix) {
  if (!unix) return '';
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : '';
}

function rate(pair) {
  return (pair.minute.connections / doc.window_secs).toFixed(2);
}

function serviceLink(name) {
  if (name === '*') return '*';
  return `<a href="#/service/${encodeURIComponent(name)}">${esc(name)}</a>`;
}

// Per service: instances per state, and connections open into it.
function summaries() {
  const by = new Map();
  for (const s of doc.catalog.services) {
    const counts = { passing: 0, warning: 0, critical: 0 };
    for (const i of s.instances) counts[i.state] += 1;
    by.set(s.name, { counts, active: 0 });
  }
  for (const p of doc.pairs) {
    const s = by.get(p.destination);
    if (s) s.active += p.active;
  }
  return by;
}

function healthCell(counts) {
  return ['passing', 'warning', 'critical'].map((state) =>
    badge(`${counts[state]} ${state}`, counts[state] > 0 ? state : 'zero')).join('');
}

// --- views -----------------------------------------------------------------

const views = {
  services: {
    title: 'Services',
    mount() {
      return `<h1>Services</h1>
        <div class="toolbar"><input id="filter" placeholder="Filter by name" autocomplete="off">
        <span id="count" class="muted"></span></div>
        <table id="services"><thead><tr><th>Service</th><th class="counts">Instances</th>
        <th>Nodes</th><th>Address</th><th class="num">Open connections</th></tr></thead>
        <tbody></tbody></table>`;
    },
    wire() { $('filter').addEventListener('input', () => views.services.update()); },
    update() {
      const filter = $('filter').value.trim().toLowerCase();
      const sums = summaries();
      const rows = [];
      for (const s of doc.catalog.services) {
        if (filter && !s.name.toLowerCase().includes(filter)) continue;
        const { counts, active } = sums.get(s.name);
        rows.push(`<tr data-service="${esc(s.name)}" data-passing="${counts.passing}"
          data-warning="${counts.warning}" data-critical="${counts.critical}">
          <td>${serviceLink(s.name)}${s.public ? ' <span class="muted">(public)</span>' : ''}</td>
          <td class="counts">${healthCell(counts)}</td>
          <td>${s.instances.map((i) => esc(i.node)).join(', ')}</td>
          <td>${esc(s.vip)}:${s.port}</td><td class="num">${active}</td></tr>`);
      }
      document.querySelector('#services tbody').innerHTML = rows.join('');
      $('count').textContent = `${rows.length} of ${doc.catalog.services.length} services`;
    },
  },

  service: {
    title: 'Service',
    mount(name) {
      return `<h1 id="service-name">${esc(name)}</h1><p id="service-about" class="muted"></p>
        <h2>Instances</h2>
        <table id="instances"><thead><tr><th>Node</th><th>Address</th><th>State</th>
        <th>Checks</th></tr></thead><tbody></tbody></table>
        <div class="cards">
        <div><h2>Callers</h2><table id="callers"><thead>${pairHead('Caller')}</thead><tbody></tbody></table></div>
        <div><h2>Callees</h2><table id="callees"><thead>${pairHead('Callee')}</thead><tbody></tbody></table></div>
        </div>`;
    },
    update(name) {
      const s = doc.catalog.services.find((x) => x.name === name);
      if (!s) {
        $('service-about').textContent = `No service ${name} in the catalog.`;
        document.querySelector('#instances tbody').innerHTML = '';
        return;
      }
      $('service-about').textContent =
        `${s.vip}:${s.port}${s.public ? ', public' : ''}; checks: ${s.checks.join(', ') || 'none'}`;
      document.querySelector('#instances tbody').innerHTML = s.instances.map((i) => `
        <tr data-node="${esc(i.node)}" data-state="${esc(i.state)}">
        <td>${esc(i.node)}</td><td>${esc(i.address)}</td>
        <td>${badge(i.state, i.state)}${i.reason ? `<div class="muted">${esc(i.reason)}</div>` : ''}</td>
        <td>${i.checks.map((c) => `<div>${esc(c.name)} ${badge(c.state, c.state)}
          <span class="muted">${c.since ? `since ${esc(when(c.since))} (${ago(c.since)})` : ''}</span>
          <pre>${esc(c.output)}</pre></div>`).join('') || '<span class="muted">no checks</span>'}</td></tr>`).join('');
      const callers = doc.pairs.filter((p) => p.destination === name);
      const callees = doc.pairs.filter((p) => p.source === name);
      document.querySelector('#callers tbody').innerHTML = pairRows(callers, 'source');
      document.querySelector('#callees tbody').innerHTML = pairRows(callees, 'destination');
    },
  },

  nodes: {
    title: 'Nodes',
    mount() {
      return `<h1>Nodes</h1><table id="nodes"><thead><tr><th>Node</th><th>Address</th>
        <th>Agent</th><th>Reachable</th><th>Registration</th><th>Last heard</th>
        <th>Services</th></tr></thead><tbody></tbody></table>`;
    },
    update() {
      document.querySelector('#nodes tbody').innerHTML = doc.nodes.map((n) => `
        <tr data-node="${esc(n.name)}" data-reachable="${n.reachable}" data-registered="${n.registered}">
        <td>${esc(n.name)}${n.this ? ' <span class="muted">(this agent)</span>' : ''}</td>
        <td>${esc(n.address)}</td>
        <td>${n.version ? `mesh-agent ${esc(n.version)}, pid ${n.pid}, up since ${esc(when(n.started))}` : '<span class="muted">unknown</span>'}</td>
        <td>${n.reachable ? badge('reachable', 'passing') : badge('unreachable', 'critical')}
          ${n.why ? `<div class="muted">${esc(n.why)}</div>` : ''}</td>
        <td>${n.registered === null ? '<span class="muted">file catalog</span>'
          : n.registered ? badge('registered', 'passing') : badge('not registered', 'critical')}</td>
        <td>${n.last_heard ? esc(ago(n.last_heard)) : '<span class="muted">never</span>'}</td>
        <td>${n.services.map(serviceLink).join(', ')}</td></tr>`).join('');
    },
  },

  intentions: {
    title: 'Intentions',
    mount() {
      return `<h1>Intentions</h1>
        <p id="readonly" class="muted" hidden></p>
        <div class="cards"><div>
        <h2>Create</h2>
        <form id="create" class="toolbar">
          <input id="create-source" list="service-names" placeholder="source (or *)" required>
          <span>→</span>
          <input id="create-destination" list="service-names" placeholder="destination (or *)" required>
          <select id="create-action"><option value="allow">allow</option><option value="deny">deny</option></select>
          <button id="create-button" type="submit">Create</button>
        </form>
        <div id="write-result" class="result" hidden></div>
        </div><div>
        <h2>Explain</h2>
        <form id="explain" class="toolbar">
          <input id="explain-source" list="service-names" placeholder="may this service" required>
          <span>→</span>
          <input id="explain-destination" list="service-names" placeholder="call this one?" required>
          <button id="explain-button" type="submit">Explain</button>
        </form>
        <div id="explain-result" class="result" hidden></div>
        </div></div>
        <datalist id="service-names"></datalist>
        <h2>In precedence order</h2>
        <p class="muted">The first intention that matches a pair decides it: two names before a
        name and *, before * to *; deny before allow when equal.</p>
        <table id="intentions"><thead><tr><th>Source</th><th>Destination</th><th>Action</th>
        <th class="num">Precedence</th><th class="num">Line</th><th></th></tr></thead><tbody></tbody></table>`;
    },
    wire() {
      $('create').addEventListener('submit', (e) => {
        e.preventDefault();
        write($('create-source').value.trim(), $('create-destination').value.trim(),
          $('create-action').value);
      });
      $('explain').addEventListener('submit', (e) => {
        e.preventDefault();
        explain($('explain-source').value.trim(), $('explain-destination').value.trim());
      });
      $('intentions').addEventListener('click', (e) => {
        const button = e.target.closest('button[data-delete]');
        if (button) write(button.dataset.source, button.dataset.destination, 'delete');
      });
    },
    update() {
      const may = doc.you.may_write;
      $('readonly').hidden = may;
      $('readonly').textContent = may ? '' : `Read-only: ${doc.you.why_not}`;
      $('create-button').disabled = !may;
      const names = doc.catalog.services.map((s) => s.name);
      const list = $('service-names');
      if (list.childElementCount !== names.length + 1) {
        list.innerHTML = ['*', ...names].map((n) => `<option value="${esc(n)}">`).join('');
      }
      const rows = doc.intentions.map((i) => `
        <tr data-source="${esc(i.source)}" data-destination="${esc(i.destination)}" data-action="${esc(i.action)}">
        <td>${serviceLink(i.source)}</td><td>${serviceLink(i.destination)}</td>
        <td>${badge(i.action, i.action)}</td><td class="num">${i.precedence}</td>
        <td class="num">${i.line || ''}</td>
        <td><button class="danger" data-delete data-source="${esc(i.source)}"
          data-destination="${esc(i.destination)}" ${may ? '' : 'disabled'}>Delete</button></td></tr>`);
      rows.push(`<tr class="default"><td>*</td><td>*</td><td>${badge(doc.default_policy, doc.default_policy)}</td>
        <td class="num">—</td><td></td><td class="muted">default policy</td></tr>`);
      document.querySelector('#intentions tbody').innerHTML = rows.join('');
    },
  },

  topology: {
    title: 'Topology',
    mount() {
      return `<h1>Topology</h1>
        <p class="legend muted"><span><i class="swatch"></i>allowed, traffic in the last minute</span>
        <span><i class="swatch idle"></i>allowed, idle</span>
        <span><i class="swatch denied"></i>denied</span><span id="window"></span></p>
        <svg id="topology" class="topology" viewBox="0 0 1000 640" role="img" aria-label="service topology">
        <defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7"
        orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#7f8aa3"/></marker>
        <marker id="arrow-denied" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7"
        orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#c53030"/></marker></defs>
        <g id="edges"></g><g id="services-drawn"></g></svg>
        <h2>Edges</h2><table id="edges-table"><thead>${pairHead('Caller', 'Callee')}</thead><tbody></tbody></table>`;
    },
    update() {
      $('window').textContent = `rates over the last ${doc.window_secs} s, every agent heard`;
      const seen = doc.pairs.filter((p) => p.total.connections + p.total.denied + p.active > 0);
      const names = [...new Set(seen.flatMap((p) => [p.source, p.destination]))].sort();
      const states = new Map(doc.catalog.services.map((s) => {
        const worst = s.instances.some((i) => i.state === 'passing') ? 'passing'
          : s.instances.some((i) => i.state === 'warning') ? 'warning' : 'critical';
        return [s.name, s.instances.length ? worst : 'passing'];
      }));
      const at = new Map();
      const r = names.length > 1 ? 250 : 0;
      names.forEach((n, k) => {
        const a = (2 * Math.PI * k) / names.length - Math.PI / 2;
        at.set(n, [500 + r * Math.cos(a) * 1.5, 320 + r * Math.sin(a)]);
      });
      const R = 34;
      $('edges').innerHTML = seen.map((p) => {
        const [x1, y1] = at.get(p.source);
        const [x2, y2] = at.get(p.destination);
        const len = Math.hypot(x2 - x1, y2 - y1) || 1;
        const [ux, uy] = [(x2 - x1) / len, (y2 - y1) / len];
        const side = p.source < p.destination ? 1 : -1; // two ways: side by side
        const [ox, oy] = [-uy * 5 * side, ux * 5 * side];
        const denied = p.action === 'deny';
        const idle = !denied && p.minute.connections === 0 && p.active === 0;
        const kind = denied ? 'denied' : idle ? 'idle' : 'allowed';
        const label = denied ? `denied ${p.minute.denied}/min` : `${rate(p)}/s`;
        return `<g class="edge ${kind}" data-source="${esc(p.source)}" data-destination="${esc(p.destination)}"
          data-verdict="${denied ? 'denied' : 'allowed'}"><title>${esc(p.source)} → ${esc(p.destination)}: ${esc(p.action)} by ${esc(p.rule)}
${p.minute.connections} connections, ${bytes(p.minute.bytes)}, ${p.minute.denied} denied in the last minute; ${p.active} open</title>
          <line x1="${x1 + ux * R + ox}" y1="${y1 + uy * R + oy}" x2="${x2 - ux * R + ox}" y2="${y2 - uy * R + oy}"
          marker-end="url(#${denied ? 'arrow-denied' : 'arrow'})"/>
          <text x="${(x1 + x2) / 2 + ox * 3}" y="${(y1 + y2) / 2 + oy * 3}">${esc(label)}</text></g>`;
      }).join('');
      $('services-drawn').innerHTML = names.map((n) => {
        const [x, y] = at.get(n);
        return `<g class="svc ${esc(states.get(n) || 'passing')}" data-service="${esc(n)}">
          <circle cx="${x}" cy="${y}" r="${R}"/><text x="${x}" y="${y + 4}">${esc(n)}</text></g>`;
      }).join('');
      document.querySelector('#edges-table tbody').innerHTML = pairRows(seen, 'both');
    },
  },
};

function pairHead(first, second) {
  return `<tr><th>${first}</th>${second ? `<th>${second}</th>` : ''}<th>Verdict</th><th>Rule</th>
    <th class="num">Conns/s</th><th class="num">Bytes (1 min)</th><th class="num">Denied (1 min)</th>
    <th class="num">Open</th></tr>`;
}

function pairRows(pairs, show) {
  if (pairs.length === 0) return '<tr><td colspan="8" class="muted">none seen or named by an intention</td></tr>';
  return pairs.map((p) => {
    const who = show === 'both' ? `<td>${serviceLink(p.source)}</td><td>${serviceLink(p.destination)}</td>`
      : `<td>${serviceLink(p[show])}</td>`;
    return `<tr data-source="${esc(p.source)}" data-destination="${esc(p.destination)}" data-verdict="${esc(p.action)}">
      ${who}<td>${badge(p.action, p.action)}</td><td>${esc(p.rule)}</td>
      <td class="num">${rate(p)}</td><td class="num">${bytes(p.minute.bytes)}</td>
      <td class="num">${p.minute.denied}</td><td class="num">${p.active}</td></tr>`;
  }).join('');
}

// --- writes ----------------------------------------------------------------

async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Mesh-Token': TOKEN },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  return { ok: response.ok, answer };
}

function show(id, ok, text) {
  const box = $(id);
  if (!box) return;
  box.hidden = false;
  box.classList.toggle('error', !ok);
  box.textContent = text;
}

async function write(source, destination, action) {
  try {
    const { ok, answer } = await post('/ui/api/intention', { source, destination, action });
    show('write-result', ok, ok ? answer.message : answer.error);
  } catch (e) {
    show('write-result', false, `cannot reach the agent: ${e}`);
  }
  poll();
}

async function explain(source, destination) {
  try {
    const { ok, answer } = await post('/ui/api/explain', { source, destination });
    show('explain-result', ok, ok ? answer.explain : answer.error);
  } catch (e) {
    show('explain-result', false, `cannot reach the agent: ${e}`);
  }
}

// --- routing and polling ---------------------------------------------------

function route() {
  const [, name = 'services', ...rest] = (location.hash || '#/services').split('/');
  const view = views[name] ? name : 'services';
  const arg = decodeURIComponent(rest.join('/'));
  current = { name: view, arg };
  $('view').innerHTML = views[view].mount(arg);
  if (views[view].wire) views[view].wire();
  document.title = `${view === 'service' ? arg : views[view].title} · mesh`;
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('current', a.dataset.view === view || (view === 'service' && a.dataset.view === 'services'));
  }
  draw();
}

function draw() {
  if (!doc || !current) return;
  views[current.name].update(current.arg);
  // How long from navigation to the first view drawn (the tests measure it).
  if (!document.body.dataset.firstDrawMs) {
    document.body.dataset.firstDrawMs = performance.now().toFixed(0);
  }
  document.body.dataset.drawn = String(doc.generated);
  document.body.dataset.view = current.name;
}

let inflight = false;
let again = false;

async function poll() {
  if (inflight) { again = true; return; }
  inflight = true;
  clearTimeout(polling);
  try {
    const response = await fetch('/ui/api/mesh', { cache: 'no-store' });
    if (!response.ok) throw new Error(`the agent answered ${response.status}`);
    doc = await response.json();
    $('banner').hidden = true;
    $('where').textContent = `node ${doc.node} · mesh-agent ${doc.version}`;
    $('status').textContent = `catalog: ${doc.store}${doc.store_connected ? '' : ` (unreachable: ${doc.store_error})`}` +
      ` · updated ${new Date(doc.generated * 1000).toLocaleTimeString()}` +
      (doc.you.may_write ? '' : ' · read-only');
    draw();
  } catch (e) {
    $('banner').hidden = false;
    $('banner').textContent = `Cannot read the mesh from the agent (${e.message}); retrying.`;
  } finally {
    inflight = false;
    if (again) {
      again = false;
      poll();
    } else {
      polling = setTimeout(poll, POLL_MS);
    }
  }
}

window.addEventListener('hashchange', route);
route();
poll();

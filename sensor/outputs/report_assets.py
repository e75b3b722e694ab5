"""Inline CSS and JavaScript of the HTML report (no external resource; the JS only sorts, filters and expands)."""

from __future__ import annotations

CSS = """
:root{--bg:#fff;--fg:#1b1f24;--muted:#5b6470;--card:#f3f5f7;--border:#d5dae0;--accent:#1f5fd1;--hl:#fff4e5;
--low:#3b82f6;--medium:#c98a10;--high:#e0572b;--critical:#b3124a;--modbus:#1f9d8f;--s7comm:#8059c9;--mqtt:#c27c0e;
--other:#7a8591;--write:#d62f2f;--control:#a21caf;--traffic:#6b8fb8}
@media (prefers-color-scheme:dark){:root{--bg:#14171b;--fg:#e4e7eb;--muted:#9aa3ad;--card:#1f242a;--border:#353c45;
--accent:#7aa7ff;--hl:#3a2a14;--low:#5b9cff;--medium:#e0a52a;--high:#ff7a4d;--critical:#ff4f8b;--modbus:#3cc4b4;
--s7comm:#a68af0;--mqtt:#e8a33a;--other:#9aa3ad;--write:#ff5c5c;--control:#e879f9;--traffic:#7ea6d6}}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--fg)}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;background:var(--bg);color:var(--fg)}
header{padding:16px 24px 8px;border-bottom:1px solid var(--border);position:sticky;top:0;background:var(--bg);z-index:2}
h1{margin:0;font-size:22px}h2{font-size:19px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--border)}
h3{font-size:15px;margin:18px 0 6px}.sub{margin:2px 0 6px;color:var(--muted)}
nav a{margin-right:14px;color:var(--accent);text-decoration:none;font-size:13px}nav a:hover{text-decoration:underline}
main{padding:0 24px 24px}footer{padding:12px 24px;color:var(--muted);border-top:1px solid var(--border);font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{background:var(--card);border:1px solid var(--border);border-radius:6px;padding:8px 14px;min-width:120px}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:20px;font-weight:600}
table{border-collapse:collapse}table.kv th{text-align:left;padding:3px 14px 3px 0;color:var(--muted);font-weight:500;vertical-align:top}
table.kv td{padding:3px 0;word-break:break-word}
table.data{width:100%;font-size:13px}table.data th,table.data td{border-bottom:1px solid var(--border);padding:4px 6px;text-align:left;vertical-align:top}
table.data thead th{position:sticky;top:0;background:var(--card);z-index:1}
td.r{text-align:right;font-variant-numeric:tabular-nums}tr.hl{background:var(--hl)}
td.msg{max-width:380px}td.topic{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
td.facts div{font-size:12px}.fk{color:var(--muted)}
.scroll{max-height:640px;overflow:auto;border:1px solid var(--border);border-radius:4px}
.note{background:var(--card);border-left:3px solid var(--medium);padding:6px 10px}.empty{color:var(--muted)}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
.chip{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;color:#fff;background:var(--other);margin-right:4px}
.legend{margin:4px 0;font-size:12px;color:var(--muted)}.legend span{margin-right:8px}
.chip.sev-low{background:var(--low)}.chip.sev-medium{background:var(--medium)}.chip.sev-high{background:var(--high)}
.chip.sev-critical{background:var(--critical)}.chip.proto-modbus{background:var(--modbus)}.chip.proto-s7comm{background:var(--s7comm)}
.chip.proto-mqtt{background:var(--mqtt)}.chip.write{background:var(--write)}.chip.control{background:var(--control)}
.chip.alerted{background:transparent;color:var(--fg);border:2px solid var(--critical)}
span.tech{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;background:var(--card);border:1px solid var(--border);border-radius:3px;padding:0 3px}
svg.chart{display:block;max-width:100%;height:auto;margin:6px 0;overflow:visible}
svg text{fill:var(--fg);font-size:12px}svg .tick{fill:var(--muted);font-size:11px}svg .axis{stroke:var(--border)}
svg .num{fill:var(--muted);font-size:11px}
.bar,.tbar{fill:var(--accent)}.sev-low{fill:var(--low)}.sev-medium{fill:var(--medium)}.sev-high{fill:var(--high)}
.sev-critical{fill:var(--critical)}.traffic{fill:var(--traffic)}.fn.write{fill:var(--write)}.fn.control{fill:var(--control)}
svg.graph{border:1px solid var(--border);border-radius:4px}
.edge{fill:none;stroke:var(--other);stroke-opacity:.75}.edge.proto-modbus{stroke:var(--modbus)}.edge.proto-s7comm{stroke:var(--s7comm)}
.edge.proto-mqtt{stroke:var(--mqtt)}.edge.write{stroke:var(--write)}.edge.control{stroke:var(--control);stroke-dasharray:7 3}
.edge:hover{stroke-opacity:1}
.node circle{fill:var(--bg);stroke:var(--fg);stroke-width:2}.node.writer circle{fill:var(--write);stroke:var(--write)}
.node.alerted circle{stroke:var(--critical);stroke-width:4}
.nlabel{font-weight:600}.nrole{fill:var(--muted);font-size:10.5px}
.elabel{font-size:10.5px;fill:var(--muted);paint-order:stroke;stroke:var(--bg);stroke-width:3px}
.matrix{display:flex;gap:8px;overflow-x:auto;align-items:flex-start}
.tactic{min-width:170px;flex:1;background:var(--card);border:1px solid var(--border);border-radius:4px}
.tactic h4{margin:0;padding:6px 8px;font-size:13px;border-bottom:1px solid var(--border)}.tactic h4 small{display:block;color:var(--muted);font-weight:400}
.tactic ul{list-style:none;margin:0;padding:4px}.tcell{padding:4px 6px;margin:3px 0;background:var(--bg);border-left:3px solid var(--high);border-radius:2px;font-size:12px}
.tid{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600}.cnt{float:right;color:var(--muted)}
.controls{display:flex;flex-wrap:wrap;gap:8px 14px;align-items:center;margin:8px 0;font-size:13px}
.controls select,.controls input,.controls button{font:inherit;color:var(--fg);background:var(--bg);border:1px solid var(--border);border-radius:4px;padding:2px 4px;max-width:240px}
#alert-count{color:var(--muted)}
th .sort{font:inherit;font-weight:600;background:none;border:0;color:var(--fg);cursor:pointer;padding:0}
th[aria-sort=ascending] .sort::after{content:" ▲"}th[aria-sort=descending] .sort::after{content:" ▼"}
button.exp{background:none;border:0;color:var(--accent);cursor:pointer;padding:0 4px 0 0;font-size:12px}
tr.arow.open{background:var(--card)}tr.adetail td{background:var(--card)}
table.fields{font-size:12px;margin:2px 0 6px 18px}table.fields th{text-align:left;font-weight:500;color:var(--muted);padding:1px 12px 1px 0;vertical-align:top;white-space:nowrap}
table.fields td{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all;padding:1px 0}
table.alerts{table-layout:fixed;min-width:1100px}table.alerts td{overflow-wrap:anywhere}
td.sev{font-weight:600;color:var(--sev)}td.sev-low{--sev:var(--low)}td.sev-medium{--sev:var(--medium)}
td.sev-high{--sev:var(--high)}td.sev-critical{--sev:var(--critical)}td.sev::before{content:"● "}
td.tech{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
section{content-visibility:auto;contain-intrinsic-size:auto 900px}
@media print{section{content-visibility:visible}:root{--bg:#fff;--fg:#000;--muted:#444;--card:#f3f3f3;--border:#bbb;--hl:#fff1dc}
header{position:static}nav,.controls,button.exp{display:none}.scroll{max-height:none;overflow:visible;border:0}
table.data thead th{position:static}svg.chart,.tactic,tr{break-inside:avoid}section{break-before:auto}
h2{break-after:avoid}a{color:inherit}}
"""

JS = r"""
(function () {
  'use strict';
  var SEV = {critical: 4, high: 3, medium: 2, low: 1};
  var table = document.getElementById('alert-table');
  if (!table || !table.tBodies.length) { return; }
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.querySelectorAll('tr.arow'));
  var selects = Array.prototype.slice.call(document.querySelectorAll('#alert-filters select[data-filter]'));
  var search = document.getElementById('alert-search');
  var countEl = document.getElementById('alert-count');
  var details = null;
  var ncols = table.tHead ? table.tHead.rows[0].cells.length : 9;

  function fields(r) {
    if (details === null) { details = JSON.parse(document.getElementById('alert-data').textContent); }
    var own = details.rows[+r.getAttribute('data-i')] || [];
    return own.concat(details.rules[r.getAttribute('data-rule')] || []);
  }
  function detailRow(r) {
    var d = r.nextElementSibling;
    return d && d.classList.contains('adetail') ? d : null;
  }
  function apply() {
    var want = {};
    selects.forEach(function (s) { want[s.getAttribute('data-filter')] = s.value; });
    var q = search ? search.value.trim().toLowerCase() : '';
    var shown = 0;
    rows.forEach(function (r) {
      var ok = true;
      Object.keys(want).forEach(function (k) {
        var v = want[k];
        if (!v || !ok) { return; }
        var have = r.getAttribute('data-' + k) || '';
        ok = k === 'technique' ? (' ' + have + ' ').indexOf(' ' + v + ' ') >= 0 : have === v;
      });
      if (ok && q) { ok = r.textContent.toLowerCase().indexOf(q) >= 0; }
      r.hidden = !ok;
      var d = detailRow(r);
      if (d) { d.hidden = !ok || !r.classList.contains('open'); }
      if (ok) { shown += 1; }
    });
    if (countEl) { countEl.textContent = shown.toLocaleString('en') + ' of ' + rows.length.toLocaleString('en') + ' rows'; }
  }
  function toggle(r) {
    var btn = r.querySelector('button.exp');
    var d = detailRow(r);
    var open = !r.classList.contains('open');
    r.classList.toggle('open', open);
    if (btn) { btn.setAttribute('aria-expanded', String(open)); btn.textContent = open ? '▾' : '▸'; }
    if (open && !d) {
      d = document.createElement('tr');
      d.className = 'adetail';
      var td = document.createElement('td');
      td.colSpan = ncols;
      var t = document.createElement('table');
      t.className = 'fields';
      fields(r).forEach(function (kv) {
        var tr = document.createElement('tr');
        var th = document.createElement('th');
        var v = document.createElement('td');
        th.textContent = kv[0];
        v.textContent = kv[1];
        tr.appendChild(th); tr.appendChild(v); t.appendChild(tr);
      });
      td.appendChild(t); d.appendChild(td);
      r.parentNode.insertBefore(d, r.nextSibling);
    }
    if (d) { d.hidden = !open; }
  }
  function sortBy(th) {
    var key = th.getAttribute('data-key');
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.setAttribute('aria-sort', 'none'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    var idx = th.cellIndex;
    function val(r) {
      if (key === 'sev') { return SEV[r.getAttribute('data-severity')] || 0; }
      if (key === 'count') { return +r.getAttribute('data-count'); }
      if (key === 'ts') { return r.getAttribute('data-ts'); }
      return r.cells[idx].textContent.toLowerCase();
    }
    var keyed = rows.map(function (r, i) { return [val(r), i, r]; });
    keyed.sort(function (a, b) { return (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]) * (a[0] === b[0] ? 1 : dir); });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) {
      var d = detailRow(k[2]);
      frag.appendChild(k[2]);
      if (d) { frag.appendChild(d); }
    });
    tbody.appendChild(frag);
    rows = keyed.map(function (k) { return k[2]; });
  }
  tbody.addEventListener('click', function (ev) {
    var t = ev.target;
    if (t.closest && t.closest('tr.adetail')) { return; }
    var r = t.closest ? t.closest('tr.arow') : null;
    if (r && (t.closest('button.exp') || !window.getSelection().toString())) { toggle(r); }
  });
  Array.prototype.forEach.call(table.querySelectorAll('th[data-key] button.sort'), function (b) {
    b.addEventListener('click', function () { sortBy(b.parentNode); });
  });
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  if (search) { search.addEventListener('input', apply); }
  var reset = document.getElementById('alert-reset');
  if (reset) {
    reset.addEventListener('click', function () {
      selects.forEach(function (s) { s.value = ''; });
      if (search) { search.value = ''; }
      apply();
    });
  }
  // #filter=severity:high,rule:ICS-MODBUS-0004 preselects filters (shareable views, print of a subset).
  var m = /^#filter=(.*)$/.exec(window.location.hash);
  if (m) {
    decodeURIComponent(m[1]).split(',').forEach(function (part) {
      var i = part.indexOf(':');
      var k = part.slice(0, i);
      var v = part.slice(i + 1);
      selects.forEach(function (s) { if (s.getAttribute('data-filter') === k) { s.value = v; } });
      if (k === 'text' && search) { search.value = v; }
    });
    apply();
  }
  window.icsReport = {apply: apply, toggle: toggle, sortBy: sortBy};
})();
"""

// Berth console: live updates and the filter box. Plain JavaScript, no
// library; the pages work without it (every action is a form). It never
// builds markup from data: events are set as text, and a refreshed page
// is the server's own HTML, escaped by its templates.
"use strict";

(function () {
  const body = document.body;
  const mode = body.dataset.live || "";
  const app = body.dataset.app || "";
  const status = document.getElementById("live");

  function setStatus(text, state) {
    if (!status) return;
    status.textContent = text;
    status.dataset.state = state;
  }

  // The filter box hides the rows whose data-name does not hold its text.
  const filter = document.querySelector("input[data-filter]");
  function applyFilter() {
    if (!filter) return;
    const q = filter.value.trim().toLowerCase();
    for (const row of document.querySelectorAll(filter.dataset.filter)) {
      row.hidden = q !== "" && !(row.dataset.name || "").toLowerCase().includes(q);
    }
  }
  if (filter) {
    filter.addEventListener("input", applyFilter);
    applyFilter();
  }

  // refresh fetches the page again and swaps its content, at most once a
  // second and never two at once: a burst of events costs one fetch.
  let inflight = false, again = false, timer = null, last = 0;
  function schedule() {
    if (inflight) { again = true; return; }
    if (timer) return;
    timer = setTimeout(refresh, Math.max(100, last + 1000 - Date.now()));
  }
  // patch makes content what fresh is, touching only what differs: a
  // top-level element the same as before stays, and a table whose rows
  // carry data-name keeps its unchanged rows, so one app's new state
  // redraws its row, not 1,000. Anything else is replaced whole.
  function patch(content, fresh) {
    const olds = Array.from(content.childNodes), news = Array.from(fresh.childNodes);
    if (olds.length !== news.length) { content.replaceChildren(...news); return; }
    for (let i = 0; i < news.length; i++) {
      const o = olds[i], n = news[i];
      if (o.nodeType !== n.nodeType || o.nodeName !== n.nodeName) { o.replaceWith(n); continue; }
      if (o.nodeType !== Node.ELEMENT_NODE) { if (o.nodeValue !== n.nodeValue) o.replaceWith(n); continue; }
      if (o.outerHTML === n.outerHTML) continue;
      if (!(o.nodeName === "TABLE" && patchRows(o, n))) o.replaceWith(n);
    }
  }

  // patchRows patches table o into n when only their bodies' rows differ
  // and every row has a data-name; it says whether it could.
  function patchRows(o, n) {
    if (o.tBodies.length !== 1 || n.tBodies.length !== 1) return false;
    const ob = o.tBodies[0], nb = n.tBodies[0];
    const shell = (t, b) => t.outerHTML.replace(b.outerHTML, "");
    if (shell(o, ob) !== shell(n, nb)) return false;
    const keyed = (rows) => Array.from(rows).every((r) => r.dataset.name !== undefined);
    if (!keyed(ob.rows) || !keyed(nb.rows)) return false;
    const old = new Map();
    for (const r of ob.rows) old.set(r.dataset.name, r);
    const want = Array.from(nb.rows).map((r) => {
      const had = old.get(r.dataset.name);
      return had && had.outerHTML === r.outerHTML ? had : r;
    });
    const have = Array.from(ob.rows);
    if (have.length === want.length && have.every((r, i) => r.dataset.name === want[i].dataset.name)) {
      have.forEach((r, i) => { if (r !== want[i]) r.replaceWith(want[i]); });
    } else {
      ob.replaceChildren(...want);
    }
    return true;
  }

  async function refresh() {
    timer = null;
    inflight = true;
    last = Date.now();
    try {
      const res = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (res.redirected && new URL(res.url).pathname === "/ui/login") {
        location.assign("/ui/login");
        return;
      }
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById("content");
      const content = document.getElementById("content");
      if (fresh && content) {
        // An action's flash shows once: the refreshed page no longer has
        // it, so the one on screen is kept.
        const flash = content.querySelector(".flash");
        if (flash && !fresh.querySelector(".flash")) fresh.insertBefore(flash, fresh.firstChild);
        patch(content, fresh);
        body.dataset.refreshed = String(Date.now());
        applyFilter();
      }
    } catch (e) {
      setStatus("cannot reach the scheduler: retrying", "error");
    } finally {
      inflight = false;
      if (again) { again = false; schedule(); }
    }
  }

  // Events mode: each event becomes a row at the top of the table, in
  // batches at most four times a second however fast they come (a
  // batch per frame laid the table out 60 times a second: at 100 events
  // a second the main thread had a task over 50 ms five times a second),
  // and the table keeps the newest maxRows.
  const maxRows = 500;
  const eventsTable = () => document.querySelector("table.events");
  const seen = new Set();
  let queue = [];
  function cell(row, text, cls) {
    const td = row.insertCell(-1);
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function flush() {
    const table = eventsTable();
    if (!table) { queue = []; return; }
    const tbody = table.tBodies[0];
    const batch = queue.splice(0, queue.length);
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) {
      const ev = batch[i];
      const row = document.createElement("tr");
      row.className = "new " + (ev.kind || "");
      row.dataset.name = ev.app;
      if (ev.id) row.dataset.id = ev.id;
      cell(row, new Date(ev.at).toLocaleTimeString(), "at");
      const a = document.createElement("a");
      a.href = "/ui/apps/" + encodeURIComponent(ev.app);
      a.textContent = ev.app;
      row.insertCell(-1).appendChild(a);
      cell(row, ev.instance || "", "instance");
      cell(row, ev.kind, "kind");
      cell(row, ev.actor || "", "actor");
      cell(row, ev.message, "message");
      frag.appendChild(row);
    }
    tbody.insertBefore(frag, tbody.firstChild);
    while (tbody.rows.length > maxRows) tbody.deleteRow(-1);
    const empty = document.getElementById("no-events");
    if (empty) empty.hidden = true;
    applyFilter();
  }
  function addEvent(ev) {
    if (ev.id) {
      if (seen.has(ev.id)) return;
      seen.add(ev.id);
      if (seen.size > 4 * maxRows) seen.delete(seen.values().next().value);
    }
    const table = eventsTable();
    if (!table) return;
    const kind = table.dataset.kind || "", only = table.dataset.app || "";
    if ((kind && ev.kind !== kind) || (only && ev.app !== only)) return;
    if (queue.push(ev) === 1) setTimeout(function () { requestAnimationFrame(flush); }, 250);
  }

  if (!mode || typeof EventSource === "undefined") return;
  if (mode === "events" && eventsTable()) {
    for (const row of eventsTable().querySelectorAll("tr[data-id]")) seen.add(row.dataset.id);
  }
  let broken = false;
  const es = new EventSource("/ui/live" + (app ? "?app=" + encodeURIComponent(app) : ""));
  es.addEventListener("open", function () {
    setStatus("live", "live");
    // Back after a break: what changed meanwhile is on the page again.
    if (broken && mode === "refresh") schedule();
    broken = false;
  });
  es.addEventListener("error", function () {
    broken = true;
    if (es.readyState === EventSource.CLOSED) {
      setStatus("live updates stopped: reload the page", "error");
    } else {
      setStatus("reconnecting… (the page still works)", "reconnecting");
    }
  });
  es.addEventListener("event", function (e) {
    let ev;
    try { ev = JSON.parse(e.data); } catch (err) { return; }
    if (mode === "events") addEvent(ev); else schedule();
  });
  es.addEventListener("missed", function () { schedule(); });
  // An instance's recorded health changed (no event says so).
  es.addEventListener("change", function () { if (mode === "refresh") schedule(); });
})();

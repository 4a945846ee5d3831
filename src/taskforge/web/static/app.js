// The TaskForge dashboard: plain JavaScript over the HTTP API (/v1), no dependencies.
// Views are chosen by the URL hash; the active view refreshes itself every two seconds.
// Every piece of data is inserted as text (never as HTML), since job payloads are user data.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const STATES = ["queued", "scheduled", "active", "dead", "completed"];
  const FINAL = new Set(["completed", "dead", "canceled"]);
  const view = document.getElementById("view");
  const statusEl = document.getElementById("status");
  let timer = null;
  let renderSeq = 0;
  let eventsAbort = null;

  // -- DOM helpers ------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) {
        el.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return el;
  }

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 120) return `${seconds.toFixed(1)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  function since(iso) {
    return iso ? (Date.now() - Date.parse(iso)) / 1000 : null;
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return `${d.toLocaleString()} (${fmtAge(Math.max(0, since(iso)))} ago)`;
  }

  function fmtNum(n) {
    return Number(n).toLocaleString();
  }

  function badge(status) {
    return h("span", { class: `badge s-${status}` }, status);
  }

  function jobLink(id) {
    return h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono" }, id);
  }

  function pretty(value) {
    return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  }

  function toast(message, kind) {
    const el = h("div", { class: `toast ${kind || ""}` }, message);
    document.getElementById("toasts").append(el);
    setTimeout(() => el.remove(), 5000);
  }

  // -- API --------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.message ? body.message : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function headers(json) {
    const out = { "X-TaskForge-CSRF": CSRF };
    const token = sessionStorage.getItem("taskforge-token");
    if (token) out.Authorization = `Bearer ${token}`;
    if (json) out["Content-Type"] = "application/json";
    return out;
  }

  async function api(method, path, body, params) {
    let url = path.replace(/^\//, "");
    if (params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) {
        if (v === null || v === undefined || v === "") continue;
        for (const item of Array.isArray(v) ? v : [v]) q.append(k, item);
      }
      const text = q.toString();
      if (text) url += `?${text}`;
    }
    let response;
    try {
      response = await fetch(url, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
    } catch (err) {
      setStatus("offline", "the dashboard cannot reach its server");
      throw err;
    }
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) data = await response.json();
    if (response.status === 401) {
      askToken(data && data.message);
      throw new ApiError(401, data);
    }
    if (response.status === 503) setStatus("redis-down", data ? data.message : "Redis is down");
    else setStatus("ok", "connected");
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function setStatus(kind, title) {
    statusEl.className = `status ${kind}`;
    statusEl.title = title;
    statusEl.textContent = { ok: "live", offline: "offline", "redis-down": "Redis down" }[kind] || kind;
  }

  // -- modal dialogs ----------------------------------------------------------------------------

  function dialog(title, body, okText, danger) {
    const modal = document.getElementById("modal");
    const ok = document.getElementById("modal-ok");
    const cancel = document.getElementById("modal-cancel");
    document.getElementById("modal-title").textContent = title;
    const holder = document.getElementById("modal-body");
    holder.replaceChildren(typeof body === "string" ? h("p", {}, body) : body);
    ok.textContent = okText || "OK";
    ok.className = danger ? "danger" : "primary";
    modal.hidden = false;
    (holder.querySelector("input") || ok).focus();
    return new Promise((resolve) => {
      function done(result) {
        modal.hidden = true;
        ok.removeEventListener("click", yes);
        cancel.removeEventListener("click", no);
        document.removeEventListener("keydown", key);
        resolve(result);
      }
      const yes = () => done(true);
      const no = () => done(false);
      const key = (e) => {
        if (e.key === "Escape") done(false);
        if (e.key === "Enter" && e.target.tagName !== "BUTTON") done(true);
      };
      ok.addEventListener("click", yes);
      cancel.addEventListener("click", no);
      document.addEventListener("keydown", key);
    });
  }

  let asking = false;
  async function askToken(message) {
    if (asking) return;
    asking = true;
    const input = h("input", { type: "password", id: "token-input", placeholder: "TASKFORGE_API_TOKEN",
      autocomplete: "off" });
    const body = h("div", {}, h("p", {}, message || "This server needs its API token."), input);
    const ok = await dialog("API token", body, "Use token");
    asking = false;
    if (ok && input.value) {
      sessionStorage.setItem("taskforge-token", input.value.trim());
      route();
    }
  }

  async function act(promise, success) {
    try {
      const result = await promise;
      toast(typeof success === "function" ? success(result) : success, "ok");
      return result;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) toast(err.message, "error");
      return null;
    }
  }

  // -- the throughput chart ---------------------------------------------------------------------

  function chart(data) {
    const W = 760, H = 200, L = 44, B = 24, T = 10, R = 10;
    const completed = data.total.completed;
    const dead = data.total.dead;
    const n = completed.length;
    const top = Math.max(1, ...completed.map((c, i) => c + dead[i]));
    const tick = niceStep(top / 4);
    const ticks = Math.max(1, Math.ceil(top / tick));
    const scale = tick * ticks;
    const bw = (W - L - R) / n;
    const y = (v) => H - B - (v / scale) * (H - B - T);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
      "aria-label": "jobs finished per interval" });
    for (let i = 0; i <= ticks; i++) {
      const v = tick * i;
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      root.append(svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
        fmtNum(Math.round(v))));
    }
    const start = Date.parse(data.start);
    const step = data.step_seconds * 1000;
    for (let i = 0; i < n; i++) {
      const x = L + i * bw;
      const at = new Date(start + i * step).toLocaleTimeString();
      const tip = `${at}: ${completed[i]} completed, ${dead[i]} dead`;
      if (completed[i]) {
        root.append(svg("rect", { x: x + 0.5, width: Math.max(1, bw - 1), y: y(completed[i]),
          height: y(0) - y(completed[i]), class: "bar ok" }, svg("title", {}, tip)));
      }
      if (dead[i]) {
        root.append(svg("rect", { x: x + 0.5, width: Math.max(1, bw - 1),
          y: y(completed[i] + dead[i]), height: y(0) - y(dead[i]), class: "bar bad" },
          svg("title", {}, tip)));
      }
      if (i % Math.ceil(n / 6) === 0) {
        root.append(svg("text", { x: x, y: H - 6, class: "axis" },
          new Date(start + i * step).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
      }
    }
    root.append(svg("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "base" }));
    return root;
  }

  function niceStep(v) {
    // The smallest of 1, 2, 5 x 10^k that is >= v (and at least 1: counts are whole).
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // -- views ------------------------------------------------------------------------------------

  function totals(queues) {
    const t = { queued: 0, scheduled: 0, active: 0, dead: 0, completed: 0, done: 0, failed: 0 };
    for (const q of queues) {
      for (const s of STATES) t[s] += q.counts[s];
      t.done += q.completed_last_minute;
      t.failed += q.dead_last_minute;
    }
    return t;
  }

  function card(label, value, cls, href) {
    const shown = typeof value === "number" ? fmtNum(value) : value;
    const body = [h("div", { class: "card-value", dataset: { count: label } }, shown),
      h("div", { class: "card-label" }, label)];
    return href ? h("a", { class: `card ${cls || ""}`, href }, body) : h("div", { class: `card ${cls || ""}` }, body);
  }

  // The chart's buckets are 10 s wide: fetching them more often would redraw the same bars.
  const throughputCache = { at: 0, data: null };

  async function throughput() {
    if (!throughputCache.data || Date.now() - throughputCache.at > 5000) {
      throughputCache.data = await api("GET", "/v1/throughput", undefined, { window: 600, step: 10 });
      throughputCache.at = Date.now();
    }
    return throughputCache.data;
  }

  async function overview(seq) {
    const [queues, workers, tp] = await Promise.all([
      api("GET", "/v1/queues"), api("GET", "/v1/workers"), throughput(),
    ]);
    if (seq !== renderSeq) return;
    const t = totals(queues.queues);
    const busy = workers.workers.reduce((n, w) => n + w.jobs.length, 0);
    const slots = workers.workers.reduce((n, w) => n + w.concurrency, 0);
    const content = h("div", {},
      h("section", { class: "cards" },
        card("queued", t.queued, "c-queued", "#/queues"),
        card("scheduled", t.scheduled, "c-scheduled", "#/queues"),
        card("active", t.active, "c-active", "#/queues"),
        card("dead", t.dead, "c-dead", "#/dead"),
        card("completed", t.completed, "c-completed", "#/queues"),
        card("done / min", t.done, "c-rate"),
        card("workers", workers.workers.length, "c-workers", "#/workers"),
        card("busy slots", `${busy}/${slots}`, "c-workers", "#/workers")),
      h("section", { class: "panel" },
        h("h2", {}, "Throughput, last 10 minutes ",
          h("span", { class: "legend ok" }, "completed"), h("span", { class: "legend bad" }, "dead")),
        chart(tp)),
      h("section", { class: "panel" }, h("h2", {}, "Queues"), queuesTable(queues.queues, false)),
      h("section", { class: "panel" }, h("h2", {}, "Live events"), eventsPanel()));
    swap(content, "overview");
  }

  function queuesTable(queues, actions) {
    if (!queues.length) return h("p", { class: "empty" }, "No queues yet: enqueue a job or start a worker.");
    const head = h("tr", {}, h("th", {}, "queue"), STATES.map((s) => h("th", { class: "num" }, s)),
      h("th", { class: "num" }, "oldest waiting"), h("th", { class: "num" }, "done/min"),
      h("th", { class: "num" }, "workers"), h("th", {}, ""), actions ? h("th", {}, "actions") : null);
    const rows = queues.map((q) => h("tr", { dataset: { queue: q.queue } },
      h("td", {}, h("a", { href: `#/queues/${encodeURIComponent(q.queue)}/queued`, class: "strong" }, q.queue)),
      STATES.map((s) => h("td", { class: `num c-${s}`, dataset: { state: s } },
        h("a", { href: `#/queues/${encodeURIComponent(q.queue)}/${s}` }, fmtNum(q.counts[s])))),
      h("td", { class: "num" }, fmtAge(q.oldest_waiting_seconds)),
      h("td", { class: "num" }, fmtNum(q.completed_last_minute)),
      h("td", { class: "num" }, q.workers),
      h("td", {}, q.paused ? h("span", { class: "badge paused" }, "paused") : ""),
      actions ? h("td", { class: "actions" },
        q.paused
          ? h("button", { onclick: () => steer(q.queue, "resume") }, "Resume")
          : h("button", { onclick: () => steer(q.queue, "pause") }, "Pause"),
        h("button", { class: "danger", onclick: () => purge(q.queue) }, "Purge…")) : null));
    return h("table", { class: "grid-table" }, h("thead", {}, head), h("tbody", {}, rows));
  }

  async function steer(queue, verb) {
    await act(api("POST", `/v1/queues/${encodeURIComponent(queue)}/${verb}`),
      `${queue} ${verb === "pause" ? "paused" : "resumed"}`);
    route();
  }

  async function purge(queue) {
    const select = h("select", { id: "purge-state" },
      ["queued", "scheduled", "dead", "completed"].map((s) => h("option", { value: s }, s)));
    const body = h("div", {}, h("p", {}, `Delete every job of queue ${queue} in state:`), select,
      h("p", { class: "hint" }, "Records are deleted for good. Active jobs cannot be purged (cancel them)."));
    if (!(await dialog(`Purge ${queue}`, body, "Delete", true))) return;
    await act(api("POST", `/v1/queues/${encodeURIComponent(queue)}/purge`, { state: select.value }),
      (r) => `deleted ${r.deleted} ${r.state} job(s) of ${queue}`);
    route();
  }

  const pages = {};  // cursor history per listing, for "previous"

  async function queues(seq, queue, state) {
    const list = await api("GET", "/v1/queues");
    let listing = null;
    if (queue) {
      const key = `${queue}/${state}`;
      const stack = pages[key] || (pages[key] = [null]);
      const page = await api("GET", `/v1/queues/${encodeURIComponent(queue)}/jobs`, undefined,
        { state, cursor: stack[stack.length - 1], limit: 50 });
      listing = h("section", { class: "panel" },
        h("h2", {}, `${queue}: ${state} `, h("span", { class: "muted" }, `${fmtNum(page.total)} job(s)`)),
        h("div", { class: "tabs" }, STATES.map((s) => h("a", {
          href: `#/queues/${encodeURIComponent(queue)}/${s}`, class: s === state ? "on" : "" }, s))),
        jobsTable(page.jobs, false),
        pager(stack, page.next_cursor));
    }
    if (seq !== renderSeq) return;
    swap(h("div", {}, h("section", { class: "panel" }, h("h2", {}, "Queues"), queuesTable(list.queues, true)),
      listing), "queues");
  }

  function pager(stack, next) {
    const prev = stack.length > 1;
    if (!prev && !next) return null;
    return h("div", { class: "pager" },
      h("button", { disabled: !prev, onclick: () => { stack.pop(); route(); } }, "← Previous"),
      h("span", { class: "muted" }, `page ${stack.length}`),
      h("button", { disabled: !next, onclick: () => { stack.push(next); route(); } }, "Next →"));
  }

  function jobsTable(jobs, selectable, selected) {
    if (!jobs.length) return h("p", { class: "empty" }, "No jobs here.");
    const head = h("tr", {}, selectable ? h("th", {}, h("input", { type: "checkbox", "aria-label": "select all",
      onchange: (e) => { for (const box of e.target.closest("table").querySelectorAll("tbody input")) {
        box.checked = e.target.checked; box.dispatchEvent(new Event("change")); } } })) : null,
      h("th", {}, "id"), h("th", {}, "task"), h("th", {}, "queue"), h("th", {}, "status"),
      h("th", { class: "num" }, "attempt"), h("th", {}, "when"), h("th", {}, "error"));
    const rows = jobs.map((j) => h("tr", { dataset: { job: j.id } },
      selectable ? h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${j.id}`,
        checked: selected.has(j.id), onchange: (e) => e.target.checked ? selected.add(j.id) : selected.delete(j.id) })) : null,
      h("td", {}, jobLink(j.id)), h("td", {}, j.task), h("td", {}, j.queue), h("td", {}, badge(j.status)),
      h("td", { class: "num" }, `${j.attempt}/${j.max_attempts}`),
      h("td", { class: "muted" }, fmtAge(since(j.finished_at || j.started_at || j.due_at || j.created_at)), " ago"),
      h("td", { class: "error-cell" }, j.error ? `${j.error.type}: ${j.error.message}` : "")));
    return h("table", { class: "grid-table" }, h("thead", {}, head), h("tbody", {}, rows));
  }

  async function job(seq, id) {
    let data;
    try {
      data = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      if (seq !== renderSeq) return;
      swap(h("section", { class: "panel" }, h("h2", {}, "Job ", h("span", { class: "mono" }, id)),
        h("p", { class: "error-text", id: "job-error" }, err.message)), "job");
      return;
    }
    if (seq !== renderSeq) return;
    const actions = [];
    if (!FINAL.has(data.status)) {
      actions.push(h("button", { class: "danger", onclick: async () => {
        if (await dialog("Cancel job", `Cancel job ${data.id}?`, "Cancel job", true)) {
          await act(api("DELETE", `/v1/jobs/${encodeURIComponent(data.id)}`, undefined, { queue: data.queue }),
            (r) => r.cancel_requested ? "cancel requested: the worker stops it shortly" : "job canceled");
          route();
        }
      } }, "Cancel"));
    }
    if (data.status === "dead") {
      actions.push(h("button", { class: "primary", onclick: async () => {
        await act(api("POST", `/v1/dead/${encodeURIComponent(data.id)}/requeue`, undefined, { queue: data.queue }), "requeued");
        route();
      } }, "Requeue"));
      actions.push(h("button", { class: "danger", onclick: async () => {
        if (await dialog("Delete job", `Delete dead job ${data.id} for good?`, "Delete", true)) {
          await act(api("DELETE", `/v1/dead/${encodeURIComponent(data.id)}`, undefined, { queue: data.queue }), "deleted");
          location.hash = "#/dead";
        }
      } }, "Delete"));
    }
    const fields = [
      ["queue", h("a", { href: `#/queues/${encodeURIComponent(data.queue)}/queued` }, data.queue)],
      ["task", data.task], ["priority", data.priority],
      ["attempt", `${data.attempt} of ${data.max_attempts}`], ["redeliveries", data.redeliveries],
      ["timeout", data.timeout ? `${data.timeout} s` : "none"], ["idempotency key", data.key || "–"],
      ["worker", data.worker || "–"],
    ];
    const content = h("div", {},
      h("section", { class: "panel" },
        h("div", { class: "job-head" }, h("h2", {}, "Job ", h("span", { class: "mono", id: "job-id" }, data.id)),
          badge(data.status), h("div", { class: "actions" }, actions)),
        h("dl", { class: "fields" }, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
      h("section", { class: "panel" }, h("h2", {}, "Timeline"), timeline(data)),
      h("section", { class: "panel two" },
        h("div", {}, h("h3", {}, "args"), pretty(data.args)),
        h("div", {}, h("h3", {}, "kwargs"), pretty(data.kwargs))),
      data.progress !== null && data.progress !== undefined
        ? h("section", { class: "panel" }, h("h2", {}, "Progress"), pretty(data.progress)) : null,
      data.status === "completed" ? h("section", { class: "panel" }, h("h2", {}, "Result"), pretty(data.result)) : null,
      data.error ? h("section", { class: "panel error" },
        h("h2", {}, "Error"), h("p", { class: "error-text" }, `${data.error.type}: ${data.error.message}`),
        data.error.traceback ? h("pre", { class: "traceback" }, data.error.traceback) : null) : null);
    swap(content, "job");
    return !FINAL.has(data.status);  // keep refreshing while the job can still change
  }

  function timeline(job) {
    const steps = [["enqueued", job.created_at]];
    if (job.due_at && job.created_at && Date.parse(job.due_at) - Date.parse(job.created_at) > 5) {
      steps.push([job.status === "retrying" ? "next attempt due" : "due", job.due_at]);
    }
    if (job.started_at) steps.push([job.attempt > 1 ? `attempt ${job.attempt} started` : "started", job.started_at]);
    if (job.finished_at) steps.push([job.status, job.finished_at]);
    else if (job.status === "retrying") steps.push(["failed, retrying", null]);
    const items = steps.map(([label, at], i) => {
      const prev = i > 0 && steps[i - 1][1] && at ? (Date.parse(at) - Date.parse(steps[i - 1][1])) / 1000 : null;
      return h("li", {}, h("span", { class: "tl-label" }, label), h("span", { class: "tl-time" }, fmtTime(at)),
        prev !== null ? h("span", { class: "tl-delta" }, `+${fmtAge(Math.max(0, prev))}`) : null);
    });
    return h("ol", { class: "timeline" }, items);
  }

  const deadState = { queue: "", task: "", cursor: [null], selected: new Set() };

  async function dead(seq) {
    const [queues, page] = await Promise.all([
      api("GET", "/v1/queues"),
      api("GET", "/v1/dead", undefined, { queue: deadState.queue, task: deadState.task,
        cursor: deadState.cursor[deadState.cursor.length - 1], limit: 50 }),
    ]);
    if (seq !== renderSeq) return;
    const sel = deadState.selected;
    const queueSelect = h("select", { id: "dead-queue", onchange: (e) => { deadState.queue = e.target.value;
      deadState.cursor = [null]; route(); } },
      h("option", { value: "" }, "all queues"),
      queues.queues.map((q) => h("option", { value: q.queue, selected: q.queue === deadState.queue },
        `${q.queue} (${q.counts.dead})`)));
    const taskInput = h("input", { id: "dead-task", type: "search", placeholder: "task name", value: deadState.task,
      onchange: (e) => { deadState.task = e.target.value.trim(); deadState.cursor = [null]; route(); } });
    const filter = { queue: deadState.queue || null, task: deadState.task || null };
    const scope = [deadState.queue && `queue ${deadState.queue}`, deadState.task && `task ${deadState.task}`]
      .filter(Boolean).join(", ") || "all queues";
    const bulk = async (verb, ids) => {
      const what = ids ? `${ids.length} selected job(s)` : `every dead job of ${scope}`;
      const label = verb === "requeue" ? "Requeue" : "Delete";
      if (!(await dialog(`${label} dead jobs`, `${label} ${what}?`, label, verb !== "requeue"))) return;
      const body = ids ? { ...filter, ids } : filter;
      await act(api("POST", `/v1/dead/${verb === "requeue" ? "requeue" : "purge"}`, body),
        (r) => verb === "requeue" ? `requeued ${r.requeued} job(s)` : `deleted ${r.deleted} job(s)`);
      sel.clear();
      deadState.cursor = [null];
      route();
    };
    const content = h("section", { class: "panel" },
      h("h2", {}, "Dead letters ", h("span", { class: "muted", id: "dead-total" }, `${fmtNum(page.total)} job(s)`)),
      h("div", { class: "toolbar" }, queueSelect, taskInput,
        h("button", { id: "requeue-selected", onclick: () => sel.size && bulk("requeue", [...sel]) }, "Requeue selected"),
        h("button", { id: "delete-selected", class: "danger", onclick: () => sel.size && bulk("purge", [...sel]) }, "Delete selected"),
        h("span", { class: "spacer" }),
        h("button", { id: "requeue-all", onclick: () => bulk("requeue", null) }, "Requeue all"),
        h("button", { id: "delete-all", class: "danger", onclick: () => bulk("purge", null) }, "Delete all")),
      jobsTable(page.jobs, true, sel),
      pager(deadState.cursor, page.next_cursor));
    swap(content, "dead");
  }

  async function workers(seq) {
    const data = await api("GET", "/v1/workers");
    if (seq !== renderSeq) return;
    if (!data.workers.length) {
      swap(h("section", { class: "panel" }, h("h2", {}, "Workers"),
        h("p", { class: "empty" }, "No live workers. Start one: taskforge worker myapp.tasks:forge")), "workers");
      return;
    }
    const rows = data.workers.map((w) => {
      const bar = h("div", { class: "meter" }, h("div", { class: "meter-fill" }));
      bar.firstChild.style.width = `${Math.round((100 * w.jobs.length) / Math.max(1, w.concurrency))}%`;
      return h("tr", { dataset: { worker: w.id } },
        h("td", { class: "mono" }, w.id), h("td", {}, `${w.host} (pid ${w.pid})`), h("td", {}, w.queues.join(", ")),
        h("td", {}, bar, h("span", { class: "muted" }, `${w.jobs.length}/${w.concurrency}`)),
        h("td", { class: "num" }, fmtNum(w.processed)), h("td", { class: "num c-dead" }, fmtNum(w.failed)),
        h("td", {}, fmtAge(since(w.started_at))), h("td", {}, `${fmtAge(Math.max(0, since(w.last_beat)))} ago`),
        h("td", {}, w.jobs.length ? h("ul", { class: "plain" }, w.jobs.map((j) => h("li", {}, jobLink(j.id), " ",
          h("span", { class: "muted" }, `${j.task || "?"} · ${fmtAge(since(j.started_at))}`)))) : h("span", { class: "muted" }, "idle")));
    });
    swap(h("section", { class: "panel" }, h("h2", {}, "Workers"),
      h("table", { class: "grid-table" }, h("thead", {}, h("tr", {}, ["worker", "host", "queues", "busy", "processed",
        "failed", "up", "last beat", "running now"].map((c) => h("th",
        { class: ["processed", "failed"].includes(c) ? "num" : null }, c)))), h("tbody", {}, rows))), "workers");
  }

  // -- live events (Server-Sent Events over fetch, so that the token header can be sent) -------

  const eventLog = [];
  let eventsLive = false;

  function eventsPanel() {
    const list = h("ol", { class: "events", id: "events", dataset: { live: eventsLive ? "1" : "0" } });
    renderEvents(list);
    if (!eventsAbort) followEvents();
    return list;
  }

  function renderEvents(list) {
    list.replaceChildren(...(eventLog.length ? eventLog.map((e) => h("li", {},
      h("span", { class: "muted" }, new Date(e.ts).toLocaleTimeString()), " ", badge(e.event), " ",
      h("span", {}, e.task), " ", jobLink(e.id), " ", h("span", { class: "muted" }, e.queue)))
      : [h("li", { class: "muted" }, "Waiting for job events…")]));
  }

  async function followEvents() {
    eventsAbort = new AbortController();
    try {
      const response = await fetch("v1/events", { headers: headers(false), signal: eventsAbort.signal });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const name = (block.match(/^event: (.*)$/m) || [])[1];
          const data = (block.match(/^data: (.*)$/m) || [])[1];
          if (name === "ready") {
            eventsLive = true;
            const list = document.getElementById("events");
            if (list) list.dataset.live = "1";
          }
          if (name === "job" && data) {
            eventLog.unshift(JSON.parse(data));
            eventLog.length = Math.min(eventLog.length, 50);
            const list = document.getElementById("events");
            if (list) renderEvents(list);
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
    } finally {
      eventsAbort = null;
      eventsLive = false;
    }
    // Reconnect after a pause, while the overview is shown.
    setTimeout(() => { if (document.getElementById("events") && !eventsAbort) followEvents(); }, 3000);
  }

  // -- routing ----------------------------------------------------------------------------------

  function swap(content, name) {
    view.replaceChildren(content);
    view.dataset.view = name;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("on", a.dataset.view === name);
  }

  async function route() {
    clearTimeout(timer);
    const seq = ++renderSeq;
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const [name, a, b] = parts;
    let render;
    if (name === "queues") render = () => queues(seq, a, b || "queued");
    else if (name === "jobs" && a) render = () => job(seq, a);
    else if (name === "dead") render = () => dead(seq);
    else if (name === "workers") render = () => workers(seq);
    else render = () => overview(seq);
    if (name !== "" && name !== undefined && eventsAbort) { eventsAbort.abort(); eventsAbort = null; }
    let again = true;
    try {
      const result = await render();
      if (result === false) again = false;
    } catch (err) {
      if (seq === renderSeq && !(err instanceof ApiError && err.status === 401)) {
        swap(h("section", { class: "panel" }, h("p", { class: "error-text" }, err.message)), "error");
      }
    }
    if (seq === renderSeq && again) {
      timer = setTimeout(() => { if (seq === renderSeq) refresh(); }, REFRESH_MS);
    }
  }

  function refresh() {
    // Do not redraw under an open dialog, a focused input or a text selection.
    const active = document.activeElement;
    const busy = !document.getElementById("modal").hidden ||
      (active && ["INPUT", "SELECT", "TEXTAREA"].includes(active.tagName) && view.contains(active)) ||
      String(window.getSelection()).length > 0 || document.hidden;
    if (busy) {
      timer = setTimeout(refresh, REFRESH_MS);
      return;
    }
    route();
  }

  document.getElementById("find").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("find-id").value.trim();
    if (id) location.hash = `#/jobs/${encodeURIComponent(id)}`;
  });
  window.addEventListener("hashchange", route);
  if (document.querySelector('meta[name="auth-required"]').content === "1" &&
      !sessionStorage.getItem("taskforge-token")) {
    askToken("This server needs its API token (TASKFORGE_API_TOKEN).");
  }
  route();
})();

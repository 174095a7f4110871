// The Lazarus web view: a read-only picture of the controller's JSON API, the one `lazarus
// status` and `lazarus watch` read. Plain JavaScript, no framework, no build step.
//
// Two pages, chosen by the URL's fragment: `#/` lists every node; `#/node/NAME` shows one node
// and its repair timeline drawn as SVG. Each page polls its API route every second.
//
// Credentials: over TCP the API wants `Authorization: Bearer TOKEN`. The token comes from the
// fragment (`#token=…`, which browsers never send to a server) or from the form, is kept in
// sessionStorage (this tab only, never a cookie) and removed from the address bar at once.
// Everything shown is built with DOM calls and textContent: no text from the cluster is ever
// parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "lazarus-api-token";
  const POLL_MS = 1000;
  // Rows drawn at once: a cluster of thousands of nodes shows the ones under repair or failing
  // first, and the filter finds any other.
  const MAX_ROWS = 500;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const REPAIR_STEPS = [
    "queued", "fencing", "awaiting_fence", "promoting", "attaching", "waiting_ready",
    "recovering", "detaching", "rebooting", "verifying", "quarantined",
  ];

  const main = document.getElementById("main");
  const conn = document.getElementById("conn");
  const login = document.getElementById("login");
  const tokenInput = document.getElementById("token");
  let generation = 0;
  let timer = null;
  let filterText = "";

  // --- credentials -------------------------------------------------------------------------

  // A token in the fragment (`#token=…` or `#/node/w1&token=…`) is kept for this tab and taken
  // out of the address bar and the history entry.
  function takeToken() {
    const m = /[#&]token=([^&]*)/.exec(location.hash);
    if (!m) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    const rest = location.hash.replace(/[#&]token=[^&]*/, "").replace(/^&/, "");
    history.replaceState(null, "", location.pathname + location.search + "#" + (rest.replace(/^#/, "") || "/"));
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  login.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = tokenInput.value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    tokenInput.value = "";
    login.hidden = true;
    refresh();
  });

  // --- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJson(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const resp = await fetch(path, { headers, cache: "no-store", credentials: "omit", redirect: "error" });
    const text = await resp.text();
    if (!resp.ok) {
      let message = text.trim();
      try {
        message = JSON.parse(text).error || message;
      } catch (_) {
        // Not JSON: shown as it came.
      }
      throw new ApiError(resp.status, "HTTP " + resp.status + ": " + message);
    }
    return JSON.parse(text);
  }

  // --- formatting --------------------------------------------------------------------------

  function fmtDuration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  // As the CLI shows sizes (`api_client::size`).
  function fmtBytes(n) {
    if (n >= 2 ** 40) return (n / 2 ** 40).toFixed(1) + " TiB";
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
    return n + " B";
  }

  function fmtTime(t) {
    return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function fmtClock(t) {
    return new Date(t * 1000).toISOString().slice(11, 19) + " UTC";
  }

  // What a recovering node's copy did so far, as `lazarus status` says it: the counters that
  // are not zero, then whether the image source is stalled; "" when there is nothing to say.
  function copyText(c) {
    if (!c) return "";
    const parts = [["checked", c.checked], ["fetched", c.fetched], ["written", c.written]]
      .filter(([, b]) => b > 0)
      .map(([what, b]) => what + " " + fmtBytes(b));
    let text = parts.join(", ");
    if (c.source_stalled_since) {
      text += (text ? "; " : "") + "source stalled since " + fmtClock(c.source_stalled_since);
    }
    return text;
  }

  function percent(done, total) {
    return total > 0 ? Math.floor((Math.min(done, total) * 100) / total) : 0;
  }

  // --- DOM helpers -------------------------------------------------------------------------

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function nodeLink(name) {
    return el("a", { href: "#/node/" + encodeURIComponent(name), text: name });
  }

  // The copy progress of a node writing its disk (a bar, and its copy counters under it), or a
  // dash.
  function progressCell(n) {
    const copy = n.state === "recovering" ? copyText(n.copy) : "";
    const counters = copy ? el("div", { class: "copy" + (n.copy.source_stalled_since ? " stalled" : ""), text: copy }) : null;
    if (n.state !== "recovering" || !(n.bytes_total > 0)) {
      return counters ? el("span", {}, counters) : el("span", { class: "muted", text: "–" });
    }
    const p = percent(n.bytes_done, n.bytes_total);
    return el("span", {},
      el("span", { class: "bar" },
        el("progress", { max: n.bytes_total, value: Math.min(n.bytes_done, n.bytes_total), "data-percent": p }),
        el("span", { class: "pct", text: p + "% · " + fmtBytes(n.bytes_done) + " of " + fmtBytes(n.bytes_total) })),
      counters);
  }

  function stateOf(n) {
    if (n.state === "quarantined") return "quarantined";
    return REPAIR_STEPS.includes(n.state) ? "under repair" : n.state;
  }

  function stepOf(n) {
    if (!REPAIR_STEPS.includes(n.state)) return "–";
    return n.state + (n.step_attempt > 0 ? " (attempt " + (n.step_attempt + 1) + ")" : "");
  }

  function rowClass(n) {
    if (n.state === "quarantined") return "quarantined";
    if (n.state === "failing") return "failing";
    return REPAIR_STEPS.includes(n.state) ? "repairing" : "";
  }

  function since(t, now) {
    return el("span", { title: fmtTime(t), text: fmtDuration(now - t) + " ago" });
  }

  // --- the node list -----------------------------------------------------------------------

  function renderList(s) {
    const order = (n) => (n.state === "healthy" ? 2 : REPAIR_STEPS.includes(n.state) ? 0 : 1);
    const f = filterText.toLowerCase();
    const nodes = s.nodes
      .filter((n) => !f || n.name.toLowerCase().includes(f) || n.state.includes(f) || n.role.includes(f))
      .sort((a, b) => order(a) - order(b) || a.name.localeCompare(b.name));
    const counts = {};
    for (const n of s.nodes) counts[n.state] = (counts[n.state] || 0) + 1;
    const summary = s.nodes.length + " nodes: " +
      Object.entries(counts).map(([k, v]) => v + " " + k).join(", ");

    const rows = nodes.slice(0, MAX_ROWS).map((n) =>
      el("tr", { "data-node": n.name, class: rowClass(n) },
        el("td", {}, nodeLink(n.name)),
        el("td", { text: n.role }),
        el("td", { class: "state", text: stateOf(n) }),
        el("td", { class: "step", text: stepOf(n) }),
        el("td", { class: "progress" }, progressCell(n)),
        el("td", { class: "time" }, since(n.since, s.now)),
        el("td", { class: n.last_error ? "error" : "muted", text: n.last_error || "–" })));

    let filter = document.getElementById("filter");
    const focused = document.activeElement === filter;
    if (!filter) {
      filter = el("input", { id: "filter", type: "search", placeholder: "filter by name, state or role", value: filterText });
      filter.addEventListener("input", () => {
        filterText = filter.value;
        refresh();
      });
    }
    const children = [];
    if (s.paused) children.push(el("div", { class: "banner", text: "Automatic repair is PAUSED: too many nodes failed at once." }));
    children.push(el("p", { class: "summary", id: "summary", text: summary }));
    children.push(el("div", { class: "filter" }, filter));
    children.push(el("table", { id: "nodes" },
      el("thead", {}, el("tr", {}, ...["Node", "Role", "State", "Step", "Progress", "Since", "Last error"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)));
    if (nodes.length > MAX_ROWS) {
      children.push(el("p", { class: "muted", id: "more", text: (nodes.length - MAX_ROWS) + " more nodes not shown; the filter finds them." }));
    }
    if (s.alerts.length) {
      children.push(el("section", { class: "alerts" },
        el("h2", { text: "Alerts" }),
        el("ul", {}, ...s.alerts.slice(0, 10).map(([t, node, msg]) =>
          el("li", {}, el("span", { class: "muted", text: fmtTime(t) + " " }), node ? nodeLink(node) : "", node ? ": " : "", msg)))));
    }
    main.replaceChildren(...children);
    if (focused) filter.focus();
    document.title = "Lazarus: " + summary;
  }

  // --- one node ----------------------------------------------------------------------------

  function renderNode(d) {
    const n = d.node;
    const facts = [
      ["Role", n.role],
      ["State", stateOf(n)],
      ["Step", stepOf(n)],
      ["Since", fmtTime(n.since) + " (" + fmtDuration(d.now - n.since) + " ago)"],
    ];
    if (n.deadline) facts.push(["Step times out", fmtTime(n.deadline) + " (in " + fmtDuration(n.deadline - d.now) + ")"]);
    if (n.plan_id) facts.push(["Plan", n.plan_id]);
    if (n.replaced_by) facts.push(["Replaced by", n.replaced_by]);
    const dl = el("dl", { class: "facts" });
    for (const [k, v] of facts) dl.append(el("dt", { text: k }), el("dd", { text: v }));
    dl.append(el("dt", { text: "Progress" }), el("dd", { id: "node-progress" }, progressCell(n)));
    dl.append(el("dt", { text: "Last error" }), el("dd", { class: n.last_error ? "error" : "muted", text: n.last_error || "–" }));

    const children = [
      el("p", {}, el("a", { href: "#/", text: "← all nodes" })),
      el("h2", { id: "node-name", text: n.name }),
      dl,
    ];
    if (!d.repairs.length) children.push(el("p", { class: "muted", id: "no-repairs", text: "No repair of this node in the event log." }));
    const repairs = d.repairs.slice().reverse();
    repairs.forEach((r, i) => children.push(renderRepair(r, d.now, i === 0)));
    main.replaceChildren(...children);
    document.title = "Lazarus: " + n.name + " " + n.state;
  }

  function renderRepair(r, now, latest) {
    const end = r.ended === null ? now : r.ended;
    const head = el("h3", {},
      (latest ? "Latest repair" : "Repair") + ", started " + fmtTime(r.started) + ": ",
      el("span", { class: "outcome " + r.outcome, text: r.outcome }),
      ", " + fmtDuration(end - r.started) + (r.ended === null ? " so far" : ""));
    const table = el("table", { class: "steps" },
      el("thead", {}, el("tr", {}, ...["Step", "Start", "Duration", "Bytes", "Outcome", "Why it began", "Why it ended"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...r.steps.map((s) =>
        el("tr", { "data-step": s.step },
          el("td", { text: s.step }),
          el("td", { class: "time", text: fmtTime(s.start) }),
          el("td", { class: "num", text: fmtDuration(s.seconds) }),
          el("td", { class: "num", text: s.bytes_total > 0 ? fmtBytes(s.bytes_done) + " of " + fmtBytes(s.bytes_total) : "–" }),
          el("td", {}, el("span", { class: "outcome " + s.outcome, text: s.outcome })),
          el("td", { text: s.reason }),
          el("td", { class: "muted", text: s.ended_by || "–" })))));
    return el("section", { class: "repair", "data-outcome": r.outcome }, head, timeline(r, now), table);
  }

  // The repair as a picture: one row per step, a bar from its start for its duration on a
  // common time axis, coloured by outcome; a recovering step's bar shows the bytes written.
  function timeline(r, now) {
    const LABEL = 110, WIDTH = 560, NOTE = 260, ROW = 22, TOP = 22;
    const t0 = r.started;
    const t1 = Math.max(r.ended === null ? now : r.ended, t0 + 1);
    const scale = WIDTH / (t1 - t0);
    const height = TOP + r.steps.length * ROW + 6;
    const root = svg("svg", {
      class: "timeline", viewBox: "0 0 " + (LABEL + WIDTH + NOTE) + " " + height,
      role: "img", "aria-label": "repair timeline",
    });
    // The time axis: about six ticks at a round number of seconds.
    const span = t1 - t0;
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    const every = steps.find((s) => span / s <= 6) || 86400;
    for (let t = 0; t <= span; t += every) {
      const x = LABEL + t * scale;
      root.append(svg("line", { class: "tick", x1: x, x2: x, y1: TOP - 4, y2: height }));
      root.append(svg("text", { class: "axis", x: x + 2, y: 12 }, "+" + fmtDuration(t)));
    }
    r.steps.forEach((s, i) => {
      const y = TOP + i * ROW;
      if (i % 2 === 0) root.append(svg("rect", { class: "band", x: 0, y: y, width: LABEL + WIDTH + NOTE, height: ROW }));
      root.append(svg("text", { x: 4, y: y + 15 }, s.step));
      const x = LABEL + (s.start - t0) * scale;
      const w = Math.max(s.seconds * scale, 3);
      const bar = svg("rect", {
        class: "step outcome-" + s.outcome, "data-step": s.step, "data-outcome": s.outcome,
        x: x, y: y + 4, width: w, height: ROW - 8, rx: 2,
      });
      let note = fmtDuration(s.seconds);
      if (s.bytes_total > 0) note += ", " + fmtBytes(s.bytes_done) + " of " + fmtBytes(s.bytes_total);
      note += ", " + s.outcome;
      bar.append(svg("title", {}, s.step + ": " + note + (s.ended_by ? " (" + s.ended_by + ")" : "")));
      root.append(bar);
      if (s.bytes_total > 0) {
        root.append(svg("rect", {
          class: "bytes", x: x, y: y + 4 + (ROW - 8) / 2,
          width: w * Math.min(s.bytes_done, s.bytes_total) / s.bytes_total, height: (ROW - 8) / 2,
        }));
      }
      root.append(svg("text", { class: "note", x: Math.min(x + w + 4, LABEL + WIDTH + 4), y: y + 15 }, note));
    });
    return root;
  }

  // --- the poll loop -----------------------------------------------------------------------

  function route() {
    const m = /^#\/node\/([^&]+)/.exec(location.hash);
    return m ? { node: decodeURIComponent(m[1]) } : {};
  }

  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    const r = route();
    try {
      const data = await getJson(r.node ? "api/nodes/" + encodeURIComponent(r.node) : "api/status");
      if (mine !== generation) return; // the page changed meanwhile
      login.hidden = true;
      if (r.node) renderNode(data);
      else renderList(data);
      conn.className = "conn ok";
      conn.textContent = "live, updated " + new Date().toLocaleTimeString();
    } catch (e) {
      if (mine !== generation) return;
      conn.className = "conn bad";
      if (e instanceof ApiError && e.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        login.hidden = false;
        conn.textContent = "the API needs its token";
      } else if (e instanceof ApiError && e.status === 404) {
        main.replaceChildren(el("p", {}, el("a", { href: "#/", text: "← all nodes" })),
          el("p", { class: "error", text: e.message }));
        conn.textContent = e.message;
      } else {
        conn.textContent = (e instanceof ApiError ? e.message : "connection lost: " + e.message) + " (retrying)";
      }
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  window.addEventListener("hashchange", () => {
    takeToken();
    refresh();
  });
  takeToken();
  refresh();
})();

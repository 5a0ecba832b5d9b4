// Intelligent Video console: a client of the daemon's documented JSON API and nothing else.
// Pages (hash routes): #/streams, #/stream/NAME, #/events, #/try, #/system. Text from the daemon
// (stream names, labels, queries, errors) is only ever set as text (textContent, attribute
// values), never parsed as HTML; the page's Content-Security-Policy forbids inline script too.
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = encodeURIComponent;
  const BLANK = "data:image/gif;base64,R0lGODlhAQABAAAAACw=";
  const COLORS = ["#ff5a5a", "#4aa8ff", "#3fd17a", "#ffb13b", "#c07bff", "#ff7ad9", "#2fd4d4", "#c9d43b"];
  const TYPES = ["new", "update", "end", "zone_enter", "zone_exit", "loiter", "line_cross"];
  const NAME_RE = /^[a-z0-9_-]{1,64}$/;

  /** An element: props are attributes (on* are listeners, text is textContent), kids nodes or text. */
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k === "class") el.className = v;
      else if (k === "value") el.value = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const field = (text, input, cls) => h("label", { class: cls }, text, input);

  /** One API call; a non-2xx answer throws its `{"error": {kind, message}}` as text. */
  async function api(method, path, body, signal) {
    const opts = { method, headers: {}, signal };
    if (body !== undefined) {
      opts.headers["content-type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    if (r.status === 204) return null;
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (!r.ok) {
      const e = data && data.error;
      throw new Error(e ? `${e.kind}: ${e.message}` : `${r.status} ${r.statusText}`);
    }
    return data;
  }

  function toast(message, bad) {
    const el = h("div", { class: bad ? "bad" : "", text: message });
    $("#toast").append(el);
    setTimeout(() => el.remove(), bad ? 8000 : 3000);
  }
  const fail = (e) => toast(String(e.message || e), true);
  const sleep = (ms, signal) => new Promise((done) => {
    const t = setTimeout(done, ms);
    signal && signal.addEventListener("abort", () => { clearTimeout(t); done(); }, { once: true });
  });
  const fmtTime = (t) => new Date(t * 1000).toLocaleString();
  const fmtNum = (x, d = 2) => (x == null || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
  /** Sets a live (never-ending) image's source once the page has loaded, so that it never holds
   * the page's load event. */
  function setLive(img, url) {
    if (document.readyState === "complete") img.src = url;
    else window.addEventListener("load", () => { if (img.isConnected) img.src = url; }, { once: true });
  }
  const lines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);

  /** What a page holds while shown: timers, fetches and live images, all released on leaving. */
  class Page {
    constructor() { this.ac = new AbortController(); this.closers = []; }
    get signal() { return this.ac.signal; }
    every(ms, fn) {
      fn();
      const id = setInterval(fn, ms);
      this.closers.push(() => clearInterval(id));
    }
    close() {
      this.ac.abort();
      this.closers.forEach((f) => f());
      // A multipart image keeps its connection (and a follower slot) until its source changes.
      document.querySelectorAll("img[data-live]").forEach((i) => { i.src = BLANK; });
    }
  }

  /**
   * Follows an NDJSON body (`/v1/events…`): each event to `onEvent`, reconnecting from the last
   * `seq` seen after an interruption, until the page's signal aborts.
   */
  async function follow(makePath, page, onEvent) {
    let since = null;
    while (!page.signal.aborted) {
      try {
        const r = await fetch(makePath(since), { signal: page.signal });
        if (!r.ok) throw new Error(`${r.status}`);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            let e;
            try { e = JSON.parse(line); } catch (_) { continue; }
            if (typeof e.seq === "number") since = e.seq;
            if (e.id && e.type) onEvent(e);
          }
        }
      } catch (_) { /* reconnect below */ }
      await sleep(2000, page.signal);
    }
  }
  const withSince = (base, since) => (since == null ? base : `${base}${base.includes("?") ? "&" : "?"}since=${since}`);

  // ---- events: one row ---------------------------------------------------------------------

  function describe(e) {
    if (e.type === "line_cross") return `${e.line} ${e.direction}`;
    if (e.zone) return e.zone;
    if (e.current_zones && e.current_zones.length) return `in ${e.current_zones.join(", ")}`;
    return "";
  }

  function eventRow(e) {
    const shot = `/v1/events/${enc(e.id)}/snapshot.jpg`;
    const img = h("img", { src: shot, alt: `best snapshot of track ${e.track_id}`, loading: "lazy", width: 96, height: 64 });
    img.addEventListener("error", () => img.replaceWith(h("div", { class: "nothumb", title: "no snapshot yet: saved when the track ends" })), { once: true });
    return h("li", { class: "event", "data-seq": e.seq, "data-type": e.type },
      h("a", { href: shot, target: "_blank", rel: "noopener", "aria-label": "open the snapshot" }, img),
      h("div", {},
        h("div", { class: "what" }, h("span", { class: `t-${e.type}`, text: e.type }), " ", e.label || "", " ",
          h("span", { class: "muted", text: describe(e) })),
        h("div", { class: "muted" },
          h("a", { href: `#/stream/${enc(e.stream)}`, text: e.stream }),
          ` · #${e.track_id} · ${fmtNum(e.score)} · ${fmtTime(e.time)}`)));
  }

  // ---- streams --------------------------------------------------------------------------------

  function stats(s) {
    const rows = [["fps", fmtNum(s.fps, 1)], ["frames", s.frames], ["dropped", s.dropped],
      ["decoder", s.decoder || "–"], ["queries", (s.query_set ? [`set ${s.query_set}`] : []).concat(s.queries).join(", ") || "–"],
      ["threshold", s.threshold], ["max fps", s.max_fps || "as fast as it goes"]];
    return rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]);
  }
  const isLive = (s) => ["running", "starting", "reconnecting"].includes(s.state);

  /** A stream's card: live while it runs, its last frame otherwise. */
  function streamCard(s, onEdit, onDelete) {
    const img = h("img", { class: "view", alt: `live view of ${s.name}`, "data-live": "" });
    const state = h("span", { class: "pill" });
    const dl = h("dl", { class: "stats" });
    const err = h("p", { class: "error" });
    const detail = `#/stream/${enc(s.name)}`;
    const card = h("article", { class: "card", "data-stream": s.name },
      h("div", { class: "row spread" }, h("h2", {}, h("a", { href: detail, text: s.name })), state),
      h("a", { href: detail, tabindex: "-1" }, img), dl, err,
      h("div", { class: "row" },
        h("button", { type: "button", class: "edit", onclick: () => onEdit(card.status) }, "Edit"),
        h("button", { type: "button", class: "danger delete", onclick: () => onDelete(card.status) }, "Delete")));
    card.update = (st) => {
      card.status = st;
      state.textContent = st.state;
      state.className = `pill s-${st.state}`;
      dl.replaceChildren(...stats(st));
      err.textContent = st.last_error || "";
      const want = isLive(st) ? `/v1/streams/${enc(st.name)}/live.mjpeg?fps=2`
        : `/v1/streams/${enc(st.name)}/snapshot.jpg#f${st.frames}`;
      if (img.dataset.want !== want) { img.dataset.want = want; setLive(img, want); }
    };
    card.update(s);
    return card;
  }

  /** Add (PUT) or edit (PATCH: the URL is sent only when retyped, its credentials stay hidden). */
  function streamForm(s, sets, done) {
    const editing = !!s;
    const name = h("input", { id: "f-name", required: true, pattern: "[a-z0-9_\\-]{1,64}", value: s ? s.name : "", disabled: editing, autocomplete: "off" });
    const url = h("input", { id: "f-url", required: !editing, value: "", placeholder: editing ? `unchanged: ${s.url}` : "rtsp://camera/stream or /path/to/video.mp4", autocomplete: "off" });
    const queries = h("textarea", { id: "f-queries", placeholder: "one query per line: a person" });
    queries.value = s ? s.queries.join("\n") : "";
    const set = h("select", { id: "f-set" }, h("option", { value: "", text: "none" }),
      sets.map((q) => h("option", { value: q.name, text: q.name, selected: s && s.query_set === q.name })));
    const threshold = h("input", { id: "f-threshold", type: "number", min: 0, max: 1, step: 0.01, value: s ? s.threshold : "" , placeholder: "default" });
    const maxFps = h("input", { id: "f-maxfps", type: "number", min: 0, max: 1000, step: 0.5, value: s ? s.max_fps : 0 });
    const err = h("p", { class: "error", role: "alert" });
    const form = h("form", { class: "panel", id: "stream-form" },
      h("h2", { text: editing ? `Edit ${s.name}` : "Add a stream" }),
      h("div", { class: "fields" }, field("Name (a-z, 0-9, _ and -)", name), field("URL", url, "wide"),
        field("Queries", queries, "wide"), field("Query set", set), field("Threshold", threshold), field("Max fps (0: all)", maxFps)),
      err,
      h("div", { class: "row" }, h("button", { class: "primary", type: "submit", id: "f-save" }, editing ? "Save" : "Add"),
        h("button", { type: "button", onclick: () => done(false) }, "Cancel")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      const body = { queries: lines(queries.value), query_set: set.value || null, max_fps: Number(maxFps.value || 0) };
      body.threshold = threshold.value === "" ? null : Number(threshold.value);
      if (url.value.trim()) body.url = url.value.trim();
      try {
        if (editing) {
          await api("PATCH", `/v1/streams/${enc(s.name)}`, body);
        } else {
          if (!NAME_RE.test(name.value)) throw new Error("a name is 1 to 64 of a-z, 0-9, _ and -");
          for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
          await api("PUT", `/v1/streams/${enc(name.value)}`, body);
        }
        toast(editing ? "Saved" : `Added ${name.value}`);
        done(true);
      } catch (e) { err.textContent = e.message; }
    });
    setTimeout(() => (editing ? queries : name).focus(), 0);
    return form;
  }

  function streamsPage(main, page) {
    const grid = h("div", { class: "grid", id: "grid" });
    const formBox = h("div");
    const empty = h("p", { class: "muted", id: "no-streams", hidden: true, text: "No streams yet: add a camera (rtsp://…) or a video file." });
    const listErr = h("p", { class: "error" });
    main.append(h("div", { class: "row spread" }, h("h1", { text: "Streams" }),
      h("button", { type: "button", class: "primary", id: "add-stream", onclick: () => showForm(null) }, "Add stream")),
    formBox, listErr, empty, grid);
    const cards = new Map();
    async function showForm(s) {
      let sets = [];
      try { sets = (await api("GET", "/v1/query-sets")).query_sets; } catch (_) { /* none */ }
      formBox.replaceChildren(streamForm(s, sets, (changed) => { formBox.replaceChildren(); if (changed) refresh(); }));
    }
    async function remove(s) {
      if (!confirm(`Delete the stream ${s.name}?`)) return;
      try { await api("DELETE", `/v1/streams/${enc(s.name)}`); toast(`Deleted ${s.name}`); refresh(); } catch (e) { fail(e); }
    }
    async function refresh() {
      let list;
      try { list = (await api("GET", "/v1/streams", undefined, page.signal)).streams; listErr.textContent = ""; } catch (e) {
        if (!page.signal.aborted) listErr.textContent = e.message;
        return;
      }
      const names = new Set(list.map((s) => s.name));
      for (const [n, card] of cards) if (!names.has(n)) { $("img", card).src = BLANK; card.remove(); cards.delete(n); }
      for (const s of list) {
        const card = cards.get(s.name);
        if (card) card.update(s);
        else { const c = streamCard(s, showForm, remove); cards.set(s.name, c); grid.append(c); }
      }
      empty.hidden = list.length > 0;
    }
    page.every(2000, refresh);
  }

  // ---- stream detail: live view, settings, zones and lines, counts, events ---------------------

  /** Pixels of the canvas for a rule point (fractions). */
  const toPx = (c, p) => [p[0] * c.width, p[1] * c.height];

  function drawArrow(ctx, x0, y0, x1, y1) {
    const a = Math.atan2(y1 - y0, x1 - x0);
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.lineTo(x1 - 9 * Math.cos(a - 0.5), y1 - 9 * Math.sin(a - 0.5));
    ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - 9 * Math.cos(a + 0.5), y1 - 9 * Math.sin(a + 0.5));
    ctx.stroke();
  }

  /** Draws the rules (and the one being drawn) over the live view; lines show their `in` side.
   * The daemon's own drawing of the picture names them. */
  function paintRules(canvas, zones, lines_, draft, hover) {
    const ctx = canvas.getContext("2d");
    const css = getComputedStyle(document.documentElement);
    const zoneColor = css.getPropertyValue("--zone").trim() || "#f0b429";
    const lineColor = css.getPropertyValue("--wire").trim() || "#22d3ee";
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.lineWidth = 2;
    ctx.font = "13px system-ui, sans-serif";
    for (const z of Object.values(zones)) {
      const pts = z.polygon.map((p) => toPx(canvas, p));
      ctx.strokeStyle = zoneColor; ctx.fillStyle = zoneColor;
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.stroke();
    }
    for (const l of Object.values(lines_)) {
      const [[x0, y0], [x1, y1]] = l.points.map((p) => toPx(canvas, p));
      ctx.strokeStyle = lineColor; ctx.fillStyle = lineColor;
      drawArrow(ctx, x0, y0, x1, y1);
      // The positive side (entered by an `in` crossing) is along (-dy, dx).
      const len = Math.hypot(x1 - x0, y1 - y0) || 1;
      const [nx, ny] = [-(y1 - y0) / len, (x1 - x0) / len];
      const [mx, my] = [(x0 + x1) / 2, (y0 + y1) / 2];
      drawArrow(ctx, mx - nx * 14, my - ny * 14, mx + nx * 14, my + ny * 14);
      ctx.fillText("in", mx + nx * 18, my + ny * 18);
    }
    if (draft && draft.points.length) {
      const pts = draft.points.map((p) => toPx(canvas, p));
      if (hover) pts.push(toPx(canvas, hover));
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = draft.kind === "zone" ? zoneColor : lineColor;
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.stroke();
      ctx.setLineDash([]);
      for (const [x, y] of pts) ctx.fillRect(x - 3, y - 3, 6, 6);
    }
  }

  function streamPage(main, page, name) {
    const base = `/v1/streams/${enc(name)}`;
    const live = h("img", { id: "live", alt: `live view of ${name}`, "data-live": "" });
    const canvas = h("canvas", { id: "draw", tabindex: 0, "aria-label": "drawing area for zones and lines" });
    const stage = h("div", { class: "stage", id: "stage" }, live, canvas);
    const state = h("span", { class: "pill" });
    const dl = h("dl", { class: "stats" });
    const err = h("p", { class: "error" });
    const hint = h("p", { class: "muted", id: "draw-hint", text: "Draw a zone (click its corners, then click the first one or press Enter) or a line (drag from p0 to p1)." });
    const zoneBtn = h("button", { type: "button", id: "draw-zone", "aria-pressed": "false" }, "Draw zone");
    const lineBtn = h("button", { type: "button", id: "draw-line", "aria-pressed": "false" }, "Draw line");
    const finishBtn = h("button", { type: "button", id: "draw-finish", hidden: true }, "Finish zone");
    const ruleForm = h("form", { class: "panel", id: "rule-form", hidden: true });
    const ruleList = h("ul", { id: "rules" });
    const counts = h("table", { id: "counts" });
    const events = h("ul", { class: "events", id: "stream-events" });
    const queries = h("textarea", { id: "d-queries" });
    const threshold = h("input", { id: "d-threshold", type: "number", min: 0, max: 1, step: 0.01 });
    const maxFps = h("input", { id: "d-maxfps", type: "number", min: 0, max: 1000, step: 0.5 });
    const settings = h("form", { class: "panel", id: "settings" },
      h("h2", { text: "Detection" }),
      h("div", { class: "fields" }, field("Queries (one per line)", queries, "wide"), field("Threshold", threshold), field("Max fps", maxFps)),
      h("button", { class: "primary", type: "submit", id: "d-apply" }, "Apply"));
    main.append(
      h("div", { class: "row spread" }, h("h1", {}, h("a", { href: "#/streams", text: "Streams" }), " / ", name), state),
      h("div", { class: "detail" },
        h("section", {}, stage, h("div", { class: "row" }, zoneBtn, lineBtn, finishBtn), hint, ruleForm, dl, err),
        h("section", {}, settings, h("h2", { text: "Zones and lines" }), ruleList, h("h2", { text: "Counts" }), counts,
          h("h2", { text: "Recent events" }), events)));

    let status = null;
    let draft = null;
    let hover = null;
    const occupancy = {}; // zone → label → tracks inside
    const crossings = {}; // line → label → {in, out}
    const repaint = () => status && paintRules(canvas, status.zones || {}, status.lines || {}, draft, hover);

    function fit() {
      if (live.naturalWidth) stage.style.aspectRatio = `${live.naturalWidth} / ${live.naturalHeight}`;
      const r = stage.getBoundingClientRect();
      const w = Math.round(r.width), hgt = Math.round(r.height);
      if (canvas.width !== w || canvas.height !== hgt) { canvas.width = w; canvas.height = hgt; repaint(); }
    }
    live.addEventListener("load", fit);
    const ro = new ResizeObserver(fit);
    ro.observe(stage);
    page.closers.push(() => ro.disconnect());
    stage.style.aspectRatio = "16 / 9";

    function showStatus(s) {
      const first = !status;
      status = s;
      state.textContent = s.state;
      state.className = `pill s-${s.state}`;
      dl.replaceChildren(...stats(s));
      err.textContent = s.last_error || "";
      // Live while the source runs; a finished or failed one shows its last drawn frame.
      const want = isLive(s) ? `${base}/live.mjpeg?fps=5` : `${base}/snapshot.jpg#f${s.frames}`;
      if (live.dataset.want !== want) { live.dataset.want = want; setLive(live, want); }
      if (first) {
        queries.value = s.queries.join("\n");
        threshold.value = s.threshold;
        maxFps.value = s.max_fps;
      }
      ruleList.replaceChildren(
        ...Object.keys(s.zones || {}).map((z) => ruleItem("zone", z)),
        ...Object.keys(s.lines || {}).map((l) => ruleItem("line", l)));
      if (!ruleList.children.length) ruleList.append(h("li", { class: "muted", text: "none yet" }));
      renderCounts();
      repaint();
    }
    async function refresh() {
      try { showStatus(await api("GET", base, undefined, page.signal)); } catch (e) { if (!page.signal.aborted) err.textContent = e.message; }
    }
    async function patch(body, what) {
      try { showStatus(await api("PATCH", base, body)); toast(what); return true; } catch (e) { fail(e); return false; }
    }
    function ruleItem(kind, rule) {
      return h("li", { "data-rule": `${kind}:${rule}` }, `${kind} `, h("strong", { text: rule }), " ",
        h("button", { type: "button", class: "danger", "aria-label": `delete ${kind} ${rule}`, onclick: () => {
          if (!confirm(`Delete the ${kind} ${rule}?`)) return;
          const key = kind === "zone" ? "zones" : "lines";
          const rest = Object.assign({}, status[key]);
          delete rest[rule];
          patch({ [key]: rest }, `Deleted ${rule}`);
        } }, "Delete"));
    }
    function renderCounts() {
      const rows = [];
      for (const [z, byLabel] of Object.entries(occupancy)) for (const [l, n] of Object.entries(byLabel)) rows.push(["zone", z, l, `${n} inside`]);
      for (const [ln, byLabel] of Object.entries(crossings)) for (const [l, c] of Object.entries(byLabel)) rows.push(["line", ln, l, `in ${c.in} · out ${c.out}`]);
      counts.replaceChildren(h("tr", {}, ["", "rule", "label", "count"].map((t) => h("th", { text: t }))),
        ...rows.map((r) => h("tr", {}, r.map((t) => h("td", { text: t })))));
      if (!rows.length) counts.append(h("tr", {}, h("td", { colspan: 4, class: "muted", text: "no zone or line events yet" })));
    }
    function count(e) {
      if (e.zone && typeof e.occupancy === "number") (occupancy[e.zone] = occupancy[e.zone] || {})[e.label] = e.occupancy;
      if (e.type === "line_cross" && e.counts) (crossings[e.line] = crossings[e.line] || {})[e.label] = e.counts;
    }

    // Drawing: clicks make a zone's corners, a drag makes a line.
    const at = (ev) => {
      const r = canvas.getBoundingClientRect();
      return [Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (ev.clientY - r.top) / r.height))];
    };
    function setMode(kind) {
      draft = kind ? { kind, points: [] } : null;
      hover = null;
      zoneBtn.setAttribute("aria-pressed", String(kind === "zone"));
      lineBtn.setAttribute("aria-pressed", String(kind === "line"));
      finishBtn.hidden = kind !== "zone";
      canvas.classList.toggle("drawing", !!kind);
      ruleForm.hidden = true;
      if (kind) canvas.focus();
      repaint();
    }
    zoneBtn.addEventListener("click", () => setMode(draft && draft.kind === "zone" ? null : "zone"));
    lineBtn.addEventListener("click", () => setMode(draft && draft.kind === "line" ? null : "line"));
    finishBtn.addEventListener("click", () => finishZone());
    canvas.addEventListener("pointerdown", (ev) => {
      if (!draft || draft.done) return;
      const p = at(ev);
      if (draft.kind === "line") {
        draft.points = [p];
        canvas.setPointerCapture(ev.pointerId);
        return;
      }
      const first = draft.points[0];
      const near = first && Math.hypot((p[0] - first[0]) * canvas.width, (p[1] - first[1]) * canvas.height) < 12;
      if (near && draft.points.length >= 3) finishZone();
      else draft.points.push(p);
      repaint();
    });
    canvas.addEventListener("pointermove", (ev) => { if (draft && !draft.done && draft.points.length) { hover = at(ev); repaint(); } });
    canvas.addEventListener("pointerup", (ev) => {
      if (!draft || draft.done || draft.kind !== "line" || !draft.points.length) return;
      const p = at(ev);
      const [q] = draft.points;
      if (Math.hypot((p[0] - q[0]) * canvas.width, (p[1] - q[1]) * canvas.height) < 8) return;
      draft.points.push(p);
      hover = null;
      askName();
    });
    canvas.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") setMode(null);
      if (ev.key === "Enter" && draft && draft.kind === "zone") { ev.preventDefault(); finishZone(); }
    });
    function finishZone() {
      if (!draft || draft.kind !== "zone" || draft.points.length < 3) { toast("A zone needs at least 3 corners", true); return; }
      hover = null;
      askName();
    }
    function askName() {
      draft.done = true;
      finishBtn.hidden = true;
      repaint();
      const kind = draft.kind;
      const key = kind === "zone" ? "zones" : "lines";
      const taken = new Set(Object.keys(status[key] || {}));
      let n = 1;
      while (taken.has(`${kind}${n}`)) n += 1;
      const nameIn = h("input", { id: "rule-name", value: `${kind}${n}`, required: true, pattern: "[a-z0-9_\\-]{1,64}" });
      const labelsIn = h("input", { id: "rule-labels", placeholder: "every query" });
      ruleForm.replaceChildren(h("h2", { text: `New ${kind}` }),
        h("div", { class: "fields" }, field("Name", nameIn), field("Labels (comma-separated)", labelsIn)),
        h("div", { class: "row" }, h("button", { class: "primary", type: "submit", id: "rule-save" }, "Save"),
          h("button", { type: "button", onclick: () => setMode(null) }, "Cancel")));
      ruleForm.hidden = false;
      ruleForm.onsubmit = async (ev) => {
        ev.preventDefault();
        const labels = labelsIn.value.split(",").map((s) => s.trim()).filter(Boolean);
        const round = (p) => p.map((v) => Math.round(v * 1e4) / 1e4);
        const rule = kind === "zone" ? { polygon: draft.points.map(round) } : { points: draft.points.map(round) };
        if (labels.length) rule.labels = labels;
        const all = Object.assign({}, status[key], { [nameIn.value]: rule });
        if (await patch({ [key]: all }, `Saved ${kind} ${nameIn.value}`)) setMode(null);
      };
      nameIn.focus();
      nameIn.select();
    }

    settings.addEventListener("submit", (ev) => {
      ev.preventDefault();
      patch({ queries: lines(queries.value), threshold: threshold.value === "" ? null : Number(threshold.value), max_fps: Number(maxFps.value || 0) }, "Applied");
    });

    page.every(2000, refresh);
    (async () => {
      let since = null;
      try {
        const hist = await api("GET", `/v1/events/history?stream=${enc(name)}&limit=100`, undefined, page.signal);
        since = hist.last_seq;
        const recent = hist.events;
        recent.slice().reverse().forEach(count);
        events.replaceChildren(...recent.slice(0, 20).map(eventRow));
        renderCounts();
      } catch (e) { if (!page.signal.aborted) fail(e); }
      follow((s) => withSince(`/v1/events?stream=${enc(name)}`, s == null ? since : s), page, (e) => {
        count(e);
        renderCounts();
        events.prepend(eventRow(e));
        while (events.children.length > 50) events.lastChild.remove();
      });
    })();
  }

  // ---- events timeline ----------------------------------------------------------------------

  function eventsPage(main, page) {
    const stream = h("select", { id: "ev-stream" }, h("option", { value: "", text: "all" }));
    const type = h("select", { id: "ev-type" }, h("option", { value: "", text: "all" }), TYPES.map((t) => h("option", { value: t, text: t })));
    const label = h("input", { id: "ev-label", placeholder: "any" });
    const zone = h("input", { id: "ev-zone", placeholder: "any" });
    const from = h("input", { id: "ev-from", type: "datetime-local" });
    const to = h("input", { id: "ev-to", type: "datetime-local" });
    const list = h("ul", { class: "events", id: "event-list" });
    const older = h("button", { type: "button", id: "ev-older", hidden: true }, "Older events");
    const status = h("p", { class: "muted", id: "ev-status" });
    const form = h("form", { class: "panel", id: "ev-filters" },
      h("div", { class: "fields" }, field("Stream", stream), field("Type", type), field("Label", label), field("Zone", zone),
        field("From", from), field("To", to)),
      h("button", { class: "primary", type: "submit" }, "Apply"));
    main.append(h("h1", { text: "Events" }), form, status, list, older);
    api("GET", "/v1/streams", undefined, page.signal).then((r) => r.streams.forEach((s) => stream.append(h("option", { value: s.name, text: s.name })))).catch(() => {});

    let run = null;
    function query() {
      const q = [];
      if (stream.value) q.push(`stream=${enc(stream.value)}`);
      if (type.value) q.push(`type=${enc(type.value)}`);
      if (label.value.trim()) q.push(`label=${enc(label.value.trim())}`);
      if (zone.value.trim()) q.push(`zone=${enc(zone.value.trim())}`);
      if (from.value) q.push(`from=${new Date(from.value).getTime() / 1000}`);
      if (to.value) q.push(`to=${new Date(to.value).getTime() / 1000}`);
      return q.join("&");
    }
    async function load() {
      if (run) run.close();
      run = new Page();
      page.closers.push(() => run.close());
      const mine = run;
      const q = query();
      let next = null;
      list.replaceChildren();
      async function page_(before) {
        const sep = q ? `&${q}` : "";
        const r = await api("GET", `/v1/events/history?limit=50${before ? `&before=${before}` : ""}${sep}`, undefined, mine.signal);
        r.events.forEach((e) => list.append(eventRow(e)));
        next = r.next_before;
        older.hidden = next == null;
        status.textContent = list.children.length ? `${list.children.length} events shown; new ones appear at the top.` : "No events match yet; new ones appear here as they happen.";
        return r.last_seq;
      }
      older.onclick = () => page_(next).catch(fail);
      let since;
      try { since = await page_(null); } catch (e) { status.textContent = e.message; return; }
      if (to.value) return;
      follow((s) => withSince(`/v1/events${q ? `?${q}` : ""}`, s == null ? since : s), mine, (e) => {
        list.prepend(eventRow(e));
        status.textContent = `${list.children.length} events shown; new ones appear at the top.`;
      });
    }
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
    load();
  }

  // ---- Try it: one image, text queries and example boxes, boxes drawn, threshold re-filtered ---

  function readImage(file) {
    return new Promise((done, failed) => {
      const r = new FileReader();
      r.onload = () => done(r.result);
      r.onerror = () => failed(r.error);
      r.readAsDataURL(file);
    });
  }
  const b64 = (dataUrl) => dataUrl.slice(dataUrl.indexOf(",") + 1);

  /** An image with a canvas over it, scaled to its box; `draw(ctx, scale)` paints in image pixels. */
  function picture(id) {
    const img = h("img", { alt: "" });
    const canvas = h("canvas", { id: `${id}-canvas` });
    const stage = h("div", { class: "stage", id, hidden: true }, img, canvas);
    let painter = () => {};
    const paint = () => {
      const r = img.getBoundingClientRect();
      canvas.width = Math.round(r.width);
      canvas.height = Math.round(r.height);
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (img.naturalWidth) painter(ctx, canvas.width / img.naturalWidth);
    };
    img.addEventListener("load", paint);
    new ResizeObserver(paint).observe(stage);
    return {
      stage, img, canvas, paint,
      show(src) { img.src = src; stage.hidden = false; },
      onPaint(f) { painter = f; paint(); },
      /** The pointer's position in image pixels. */
      at(ev) {
        const r = canvas.getBoundingClientRect();
        const s = img.naturalWidth / r.width;
        return [Math.round(Math.min(r.width, Math.max(0, ev.clientX - r.left)) * s), Math.round(Math.min(r.height, Math.max(0, ev.clientY - r.top)) * s)];
      },
    };
  }

  function tryPage(main, page) {
    const file = h("input", { type: "file", id: "try-file", accept: "image/*" });
    const drop = h("div", { class: "drop", id: "try-drop" }, "Drop an image here, or ", field("choose one", file));
    const pic = picture("try-stage");
    const queries = h("textarea", { id: "try-queries", placeholder: "one query per line: a person" });
    const slider = h("input", { id: "try-threshold", type: "range", min: 0.01, max: 1, step: 0.01, value: 0.1 });
    const sliderOut = h("output", { id: "try-threshold-value", text: "0.10" });
    const run = h("button", { type: "button", class: "primary", id: "try-run", disabled: true }, "Detect");
    const countOut = h("p", { id: "try-count", class: "muted" });
    const results = h("table", { id: "try-results" });
    const exFile = h("input", { type: "file", id: "try-example-file", accept: "image/*" });
    const exPic = picture("try-example-stage");
    const exLabel = h("input", { id: "try-example-label", placeholder: "label (optional)" });
    const exAdd = h("button", { type: "button", id: "try-example-add", disabled: true }, "Use the box as an example");
    const exList = h("ul", { id: "try-examples" });
    const setName = h("input", { id: "try-set-name", placeholder: "name", pattern: "[a-z0-9_\\-]{1,64}" });
    const save = h("button", { type: "button", id: "try-save" }, "Save as query set");
    main.append(h("h1", { text: "Try it" }),
      h("div", { class: "detail" },
        h("section", {}, drop, pic.stage, countOut, results),
        h("section", {},
          h("div", { class: "panel" }, field("Queries (one per line)", queries),
            h("div", { class: "row" }, field("Threshold", slider), sliderOut), h("div", { class: "row" }, run)),
          h("div", { class: "panel" }, h("h2", { text: "Query by example" }),
            h("p", { class: "muted", text: "Choose another image, drag a box around the object, add it." }),
            exFile, exPic.stage, h("div", { class: "row" }, exLabel, exAdd), exList),
          h("div", { class: "panel" }, h("h2", { text: "Save" }), h("div", { class: "row" }, setName, save)))));

    let image = null; // data URL
    let answer = null;
    let ranAt = 0.01;
    const examples = []; // {image_base64, box, label}
    let exImage = null;
    let exBox = null;

    async function take(f) {
      if (!f) return;
      image = await readImage(f);
      answer = null;
      pic.show(image);
      run.disabled = false;
      countOut.textContent = "";
      results.replaceChildren();
      pic.onPaint(() => {});
    }
    file.addEventListener("change", () => take(file.files[0]).catch(fail));
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); take(ev.dataTransfer.files[0]).catch(fail); });

    function show() {
      const t = Number(slider.value);
      sliderOut.textContent = t.toFixed(2);
      if (!answer) return;
      const kept = answer.detections.filter((d) => d.score >= t);
      countOut.textContent = `${kept.length} boxes at ${t.toFixed(2)} or more` + (t < ranAt ? ` (run again for scores under ${ranAt})` : "");
      countOut.dataset.count = String(kept.length);
      results.replaceChildren(h("tr", {}, ["label", "score", "box"].map((x) => h("th", { text: x }))),
        ...kept.map((d) => h("tr", {}, h("td", {}, h("span", { class: "swatch", "data-color": d.query_index % COLORS.length }), d.label),
          h("td", { text: d.score.toFixed(3) }), h("td", { text: d.box.map((v) => Math.round(v)).join(", ") }))));
      results.querySelectorAll(".swatch").forEach((s) => { s.style.background = COLORS[Number(s.dataset.color)]; });
      pic.onPaint((ctx, s) => {
        ctx.lineWidth = 2;
        ctx.font = "13px system-ui, sans-serif";
        for (const d of kept) {
          const [x0, y0, x1, y1] = d.box.map((v) => v * s);
          ctx.strokeStyle = ctx.fillStyle = COLORS[d.query_index % COLORS.length];
          ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
          ctx.fillText(`${d.label} ${d.score.toFixed(2)}`, x0 + 3, Math.max(12, y0 - 3));
        }
      });
    }
    slider.addEventListener("input", show);

    run.addEventListener("click", async () => {
      if (!image) return;
      ranAt = Math.min(0.01, Number(slider.value));
      const body = { image_base64: b64(image), queries: lines(queries.value), threshold: ranAt };
      if (examples.length) body.query_images = examples.map((e) => ({ image_base64: e.image_base64, box: e.box, label: e.label || undefined }));
      run.disabled = true;
      try { answer = await api("POST", "/v1/detect", body); show(); } catch (e) { fail(e); } finally { run.disabled = false; }
    });

    exFile.addEventListener("change", async () => {
      const f = exFile.files[0];
      if (!f) return;
      exImage = await readImage(f);
      exBox = null;
      exAdd.disabled = true;
      exPic.show(exImage);
      exPic.onPaint(() => {});
    });
    let dragFrom = null;
    const paintBox = () => exPic.onPaint((ctx, s) => {
      if (!exBox) return;
      ctx.strokeStyle = "#ffb13b";
      ctx.lineWidth = 2;
      ctx.strokeRect(exBox[0] * s, exBox[1] * s, (exBox[2] - exBox[0]) * s, (exBox[3] - exBox[1]) * s);
    });
    exPic.canvas.addEventListener("pointerdown", (ev) => { dragFrom = exPic.at(ev); exPic.canvas.setPointerCapture(ev.pointerId); });
    exPic.canvas.addEventListener("pointermove", (ev) => {
      if (!dragFrom) return;
      const p = exPic.at(ev);
      exBox = [Math.min(dragFrom[0], p[0]), Math.min(dragFrom[1], p[1]), Math.max(dragFrom[0], p[0]), Math.max(dragFrom[1], p[1])];
      paintBox();
    });
    exPic.canvas.addEventListener("pointerup", () => {
      dragFrom = null;
      exAdd.disabled = !(exBox && exBox[2] - exBox[0] >= 2 && exBox[3] - exBox[1] >= 2);
    });
    exAdd.addEventListener("click", () => {
      if (!exImage || !exBox) return;
      const e = { image_base64: b64(exImage), box: exBox, label: exLabel.value.trim() };
      examples.push(e);
      exList.append(h("li", {}, `${e.label || "example"} [${e.box.join(", ")}] `,
        h("button", { type: "button", onclick: (ev) => { examples.splice(examples.indexOf(e), 1); ev.target.parentNode.remove(); } }, "Remove")));
      exBox = null;
      exAdd.disabled = true;
      paintBox();
    });

    save.addEventListener("click", async () => {
      const n = setName.value.trim();
      if (!NAME_RE.test(n)) { toast("A query set's name is 1 to 64 of a-z, 0-9, _ and -", true); return; }
      const body = { queries: lines(queries.value) };
      if (examples.length) body.query_images = examples.map((e) => ({ image_base64: e.image_base64, box: e.box, label: e.label || undefined }));
      try { await api("PUT", `/v1/query-sets/${enc(n)}`, body); toast(`Saved the query set ${n}`); } catch (e) { fail(e); }
    });
  }

  // ---- System: health, backend and why, metrics as small charts --------------------------------

  /** Prometheus text: name → [{labels, value}]. */
  function parseMetrics(text) {
    const out = {};
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = line.match(/^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/);
      if (!m) continue;
      const labels = {};
      (m[3] || "").replace(/(\w+)="((?:[^"\\]|\\.)*)"/g, (_, k, v) => { labels[k] = v; return ""; });
      (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
    }
    return out;
  }
  const sum = (series) => (series || []).reduce((a, s) => a + s.value, 0);

  /** The q-quantile (seconds) of a histogram's increase between two scrapes. */
  function quantile(prev, cur, name, q) {
    const b = (m) => (m[`${name}_bucket`] || []).map((s) => [s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), s.value]);
    const now = b(cur);
    const then = new Map(b(prev));
    let d = now.map(([le, v]) => [le, v - (then.get(le) || 0)]).sort((x, y) => x[0] - y[0]);
    // No request between the two reads: the quantile since the daemon started.
    if (!d.length || !d[d.length - 1][1]) d = now.slice().sort((x, y) => x[0] - y[0]);
    const total = d.length ? d[d.length - 1][1] : 0;
    if (!total) return null;
    const hit = d.find(([, v]) => v >= q * total);
    return hit && Number.isFinite(hit[0]) ? hit[0] : (d.length > 1 ? d[d.length - 2][0] : null);
  }

  function chart(id, title, unit) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("preserveAspectRatio", "none");
    const poly = document.createElementNS(NS, "polyline");
    poly.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(poly);
    const now = h("span", { class: "muted", text: "–" });
    const el = h("div", { class: "card chart", id }, h("div", { class: "row spread" }, h("strong", { text: title }), now), svg);
    const points = [];
    el.push = (v) => {
      points.push(v == null ? null : v);
      if (points.length > 60) points.shift();
      const vals = points.filter((x) => x != null);
      const top = Math.max(1e-9, ...vals);
      poly.setAttribute("points", points.map((x, i) => (x == null ? null : `${(i / 59) * 100},${30 - (x / top) * 28}`)).filter(Boolean).join(" "));
      now.textContent = v == null ? "–" : `${fmtNum(v, v < 10 ? 2 : 0)} ${unit}`;
    };
    return el;
  }

  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v == null ? "–" : String(v) })]));
  }

  function systemPage(main, page) {
    const health = h("div", { class: "panel", id: "sys-health" });
    const opt = h("div", { class: "panel", id: "sys-backend" });
    const charts = h("div", { class: "charts", id: "sys-charts" });
    const perStream = h("div", { class: "charts", id: "sys-streams" });
    const checks = h("div", { class: "panel", id: "sys-doctor" }, h("h2", { text: "Checks" }), h("p", { class: "muted", text: "running doctor…" }));
    main.append(h("h1", { text: "System" }), h("div", { class: "detail" }, h("section", {}, health, opt, checks),
      h("section", {}, h("h2", { text: "Detection" }), charts, h("h2", { text: "Streams (frames/s)" }), perStream)));
    const rerun = h("button", { type: "button", id: "sys-doctor-run" }, "Run the checks again");
    async function doctor() {
      rerun.disabled = true;
      try {
        const r = await api("GET", "/api/doctor", undefined, page.signal);
        const rows = r.checks.map((c) => h("tr", { "data-check": c.name, "data-status": c.status },
          h("td", {}, h("span", { class: `pill s-${c.status === "ok" ? "healthy" : c.status === "warn" ? "starting" : "failed"}`, text: c.status })),
          h("td", { text: c.name }), h("td", {}, c.detail, c.fix ? h("div", { class: "muted", text: `fix: ${c.fix}` }) : null)));
        checks.replaceChildren(h("h2", { text: r.ok ? "Checks: the daemon can serve" : "Checks: something fails" }),
          h("table", { id: "sys-checks" }, rows), rerun);
      } catch (e) {
        if (!page.signal.aborted) checks.replaceChildren(h("h2", { text: "Checks" }), h("p", { class: "error", text: e.message }), rerun);
      } finally { rerun.disabled = false; }
    }
    rerun.addEventListener("click", doctor);
    doctor();
    const rate = chart("chart-rate", "Requests", "/s");
    const p50 = chart("chart-p50", "Latency p50", "ms");
    const p95 = chart("chart-p95", "Latency p95", "ms");
    const queue = chart("chart-queue", "Queue depth", "");
    charts.append(rate, p50, p95, queue);
    const streamCharts = new Map();

    async function once() {
      try {
        const r = await fetch("/api/health", { signal: page.signal });
        const hl = await r.json();
        const o = hl.optimization || {};
        health.replaceChildren(h("h2", { text: "Health" }), kv([["status", hl.status], ["model loaded", hl.model_loaded],
          ["GPU", hl.gpu_available ? "available" : "none"], ["backend", o.backend], ["status line", hl.status_line],
          ["streams", hl.streams ? Object.entries(hl.streams).map(([k, v]) => `${k} ${v}`).join(", ") : null]]));
        const op = await api("GET", "/api/optimization", undefined, page.signal);
        const oo = op.optimization || {};
        const fallbacks = (oo.fallbacks || []).map((f) => h("li", {}, h("strong", { text: f.backend }), `: ${f.reason}`));
        opt.replaceChildren(h("h2", { text: "Backend" }), kv([["serving", oo.backend], ["model", op.model_name], ["device", op.device],
          ["ONNX Runtime", op.onnxruntime_version], ["optimization time", oo.optimization_time], ["cached engine", oo.cached],
          ["speed-up estimate", oo.speedup_estimate], ["preference", op.settings && op.settings.backend_preference]]),
        h("h2", { text: "Why not a faster tier" }), fallbacks.length ? h("ul", { id: "sys-fallbacks" }, fallbacks) : h("p", { class: "muted", text: "no fallback: the preferred tier serves" }));
      } catch (e) { if (!page.signal.aborted) health.replaceChildren(h("p", { class: "error", text: e.message })); }
    }
    let prev = null;
    let prevAt = 0;
    async function scrape() {
      let cur;
      try { cur = parseMetrics(await (await fetch("/metrics", { signal: page.signal })).text()); } catch (_) { return; }
      const at = performance.now();
      if (prev) {
        const dt = (at - prevAt) / 1000;
        rate.push((sum(cur.iv_requests_total) - sum(prev.iv_requests_total)) / dt);
        const q50 = quantile(prev, cur, "iv_request_latency_seconds", 0.5);
        const q95 = quantile(prev, cur, "iv_request_latency_seconds", 0.95);
        p50.push(q50 == null ? null : q50 * 1000);
        p95.push(q95 == null ? null : q95 * 1000);
        for (const s of cur.iv_stream_frames_total || []) {
          const n = s.labels.stream;
          if (!streamCharts.has(n)) { const c = chart(`chart-stream-${n}`, n, "fps"); streamCharts.set(n, c); perStream.append(c); }
          const before = (prev.iv_stream_frames_total || []).find((x) => x.labels.stream === n);
          streamCharts.get(n).push(before ? (s.value - before.value) / dt : null);
        }
      }
      queue.push(sum(cur.iv_queue_depth));
      prev = cur;
      prevAt = at;
    }
    page.every(5000, once);
    page.every(2000, scrape);
  }

  // ---- shell: health pill, navigation --------------------------------------------------------

  async function pill() {
    const el = $("#health");
    try {
      const r = await fetch("/api/health");
      const hl = await r.json();
      const b = hl.optimization && hl.optimization.backend;
      el.textContent = `${hl.status}${b ? ` · ${b}` : ""}`;
      el.className = `pill s-${hl.status}`;
    } catch (_) {
      el.textContent = "unreachable";
      el.className = "pill s-error";
    }
  }

  const pages = { streams: streamsPage, stream: streamPage, events: eventsPage, try: tryPage, system: systemPage };
  let current = null;
  function route() {
    if (current) current.close();
    const m = location.hash.match(/^#\/([a-z]+)(?:\/(.+))?$/);
    const name = m && pages[m[1]] ? m[1] : "streams";
    const arg = m && m[2] ? decodeURIComponent(m[2]) : null;
    document.querySelectorAll("nav a").forEach((a) => {
      if (a.dataset.page === (name === "stream" ? "streams" : name)) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    const main = $("#main");
    main.replaceChildren();
    current = new Page();
    document.title = `${arg || name[0].toUpperCase() + name.slice(1)} · Intelligent Video`;
    if (name === "stream" && !arg) location.hash = "#/streams";
    else pages[name](main, current, arg);
  }
  window.addEventListener("hashchange", route);
  route();
  pill();
  setInterval(pill, 5000);
})();

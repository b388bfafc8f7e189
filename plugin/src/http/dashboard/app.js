// The shardgate finance dashboard. Everything shown comes from one request:
// GET /v1/reports/summary?days=N with the finance or admin token. No
// third-party code and no network beyond the gateway.
//
// Every figure is rendered into an element carrying data-field (where in the
// JSON it comes from) and data-raw (the JSON value), so a test can check
// that what a person reads matches the data.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  let currency = null;
  let days = 30;

  // ---- formatting for people ----------------------------------------
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  const num = (v, min, max) =>
    Number(v).toLocaleString("en-US", { minimumFractionDigits: min, maximumFractionDigits: max });
  const fmt = {
    bytes(n) {
      n = Number(n);
      if (n < 1024) return num(n, 0, 0) + " B";
      let u = 0;
      while (n >= 1024 && u < UNITS.length - 1) { n /= 1024; u++; }
      return num(n, 2, 2) + " " + UNITS[u];
    },
    btt: (s) => num(s, 2, 6) + " BTT",
    fiat(s) {
      const v = Number(s);
      const small = v !== 0 && Math.abs(v) < 0.01;
      const opts = small
        ? { style: "currency", currency, maximumSignificantDigits: 2 }
        : { style: "currency", currency, minimumFractionDigits: 2, maximumFractionDigits: 2 };
      return v.toLocaleString("en-US", opts);
    },
    pct: (r) => (r === null || r === undefined ? "n/a" : num(r * 100, 1, 1) + "%"),
    count: (n) => num(n, 0, 0),
    ms: (v) => (v === null || v === undefined ? "no requests yet" : num(v, 1, 1) + " ms"),
    secs: (v) => (v === null || v === undefined ? "none yet" : num(v, 1, 1) + " s"),
    axisBtt: (v) => num(v, 0, 2) + " BTT",
  };

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // A figure: its text for people, and where it came from for tests.
  function fig(node, field, raw, text) {
    node.textContent = text;
    node.dataset.field = field;
    node.dataset.raw = raw === null || raw === undefined ? "" : String(raw);
    return node;
  }

  function cell(row, field, raw, text, cls) {
    const td = el("td", cls ? { class: cls } : {});
    fig(td, field, raw, text);
    row.appendChild(td);
    return td;
  }

  // ---- charts ---------------------------------------------------------
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Stacked bars, one per day. series: [{key, label, cls}]; value(day, key) -> number.
  function barChart(host, trend, series, value, format) {
    host.textContent = "";
    const W = 960, H = 220, L = 90, B = 28, T = 10;
    const max = Math.max(1, ...trend.map((d) => series.reduce((a, s) => a + value(d, s.key), 0)));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": host.id });
    const bw = (W - L) / trend.length;
    for (const f of [0, 0.5, 1]) {
      const y = T + (H - T - B) * (1 - f);
      root.appendChild(svg("line", { x1: L, x2: W, y1: y, y2: y, class: "grid" }));
      root.appendChild(svg("text", { x: L - 6, y: y + 4, class: "axis", "text-anchor": "end" }, format(max * f)));
    }
    trend.forEach((d, i) => {
      let y = H - B;
      for (const s of series) {
        const v = value(d, s.key);
        const h = ((H - T - B) * v) / max;
        if (h > 0) {
          const r = svg("rect", { x: L + i * bw + 1, y: y - h, width: Math.max(1, bw - 2), height: h, class: s.cls });
          r.appendChild(svg("title", {}, `${d.day} ${s.label}: ${format(v)}`));
          root.appendChild(r);
          y -= h;
        }
      }
      const every = Math.ceil(trend.length / 10);
      if (i % every === 0) {
        root.appendChild(svg("text", { x: L + i * bw + bw / 2, y: H - 8, class: "axis", "text-anchor": "middle" }, d.day.slice(5)));
      }
    });
    host.appendChild(root);
    const legend = el("p", { class: "legend" });
    for (const s of series) {
      legend.appendChild(el("span", { class: "key " + s.cls }, ""));
      legend.appendChild(document.createTextNode(" " + s.label + "  "));
    }
    host.appendChild(legend);
  }

  // ---- rendering --------------------------------------------------------
  // The members of a fleet (reports.peers): each one's figures, and any
  // member the totals leave out, marked with why.
  function renderFleet(s) {
    const f = s.fleet;
    $("fleet").hidden = !f;
    const alert = $("fleet-alert");
    alert.textContent = "";
    alert.hidden = true;
    if (!f) {
      $("scope").textContent = "gateway";
      delete document.body.dataset.fleetComplete;
      return;
    }
    const counted = f.members.filter((m) => m.status === "ok").length;
    $("scope").textContent = `a fleet of ${f.members.length} gateways, merged by`;
    document.body.dataset.fleetComplete = String(f.complete);
    const missing = f.members.filter((m) => m.status !== "ok" && m.status !== "duplicate");
    const notes = [];
    if (missing.length) {
      notes.push(`The totals below leave out ${missing.length} of ${f.members.length} members: ` +
        missing.map((m) => `${m.url} (${m.status.replace("_", " ")}: ${m.error})`).join("; ") + ".");
    }
    for (const w of f.warnings) notes.push(w);
    if (notes.length) {
      for (const n of notes) alert.appendChild(el("p", {}, n));
      alert.hidden = false;
    }
    const tb = $("members").tBodies[0];
    tb.textContent = "";
    f.members.forEach((m, i) => {
      const r = el("tr", { class: m.status, "data-member": String(i), "data-status": m.status });
      const k = (x) => `fleet.members.${i}.${x}`;
      r.appendChild(el("th", { scope: "row" }, m.instance || "unknown"));
      r.appendChild(el("td", {}, m.url || "this gateway"));
      const st = el("td");
      st.appendChild(fig(el("span", { class: "badge " + m.status }), k("status"), m.status, m.status === "ok" ? "counted" : m.status));
      r.appendChild(st);
      if (m.served) {
        cell(r, k("served.bytes"), m.served.bytes, fmt.bytes(m.served.bytes), "n");
        cell(r, k("served.hit_ratio"), m.served.hit_ratio, fmt.pct(m.served.hit_ratio), "n");
        cell(r, k("served.origin_egress_bytes"), m.served.origin_egress_bytes, fmt.bytes(m.served.origin_egress_bytes), "n");
        cell(r, k("served.requests"), m.served.requests, fmt.count(m.served.requests), "n");
        if (m.billed) cell(r, k("billed.btt"), m.billed.btt, fmt.btt(m.billed.btt), "n");
        else r.appendChild(el("td", {}, "n/a"));
        cell(r, k("manifest_p99_ms"), m.manifest_p99_ms, fmt.ms(m.manifest_p99_ms), "n");
        cell(r, k("file_ttfb_p99_ms"), m.file_ttfb_p99_ms, fmt.ms(m.file_ttfb_p99_ms), "n");
        cell(r, k("checksum_failures"), m.checksum_failures, fmt.count(m.checksum_failures), "n");
      } else {
        const why = el("td", { colspan: "8", class: "why" });
        fig(why, k("error"), m.error, "Not counted: " + m.error);
        r.appendChild(why);
      }
      tb.appendChild(r);
    });
    document.body.dataset.members = String(f.members.length);
    document.body.dataset.counted = String(counted);
  }

  function render(s) {
    currency = s.pricing ? s.pricing.currency : null;
    $("instance").textContent = s.gateway_instance;
    renderFleet(s);
    const p = s.pricing;
    $("meta").textContent =
      `Last ${s.days} days (UTC days from ${s.trend[0].day}), generated ${s.generated_at}. ` +
      (p
        ? `Prices: ${num(p.storage_ubtt_per_gib_day, 0, 6)} µBTT per GiB per day, ` +
          `${num(p.retrieval_ubtt_per_mib, 0, 6)} µBTT per MiB retrieved, ` +
          `${p.replication}, contracts of at least ${p.min_contract_days} days; 1 BTT = ${p.fiat_rate} ${p.currency} ` +
          `on ${p.rate_date}, with a ${p.risk_buffer_percent}% risk buffer.`
        : "No pricing is configured (usage.pricing): bytes only.");

    fig($("stored"), "stored.stored_bytes", s.stored.stored_bytes, fmt.bytes(s.stored.stored_bytes));
    const sd = $("stored-detail");
    sd.textContent = "";
    sd.appendChild(fig(el("span"), "stored.live_releases", s.stored.live_releases, fmt.count(s.stored.live_releases)));
    sd.appendChild(document.createTextNode(" live releases"));
    if (s.stored.replicated_bytes !== null) {
      sd.appendChild(document.createTextNode(", "));
      sd.appendChild(fig(el("span"), "stored.replicated_bytes", s.stored.replicated_bytes, fmt.bytes(s.stored.replicated_bytes)));
      sd.appendChild(document.createTextNode(" on hosts"));
    }

    fig($("served"), "served.bytes", s.served.bytes, fmt.bytes(s.served.bytes));
    const vd = $("served-detail");
    vd.textContent = "";
    vd.appendChild(fig(el("span"), "served.hot_bytes", s.served.hot_bytes, fmt.bytes(s.served.hot_bytes)));
    vd.appendChild(document.createTextNode(" hot tier, "));
    vd.appendChild(fig(el("span"), "served.origin_bytes", s.served.origin_bytes, fmt.bytes(s.served.origin_bytes)));
    vd.appendChild(document.createTextNode(" origin; "));
    vd.appendChild(fig(el("span"), "served.requests", s.served.requests, fmt.count(s.served.requests)));
    vd.appendChild(document.createTextNode(" requests"));

    fig($("hit"), "served.hit_ratio", s.served.hit_ratio, fmt.pct(s.served.hit_ratio));
    const hd = $("hit-detail");
    hd.textContent = "";
    hd.appendChild(fig(el("span"), "served.origin_egress_bytes", s.served.origin_egress_bytes, fmt.bytes(s.served.origin_egress_bytes)));
    hd.appendChild(document.createTextNode(" fetched from BTFS"));

    const b = s.btt;
    if (b) {
      fig($("committed"), "btt.committed.btt", b.committed.btt, fmt.btt(b.committed.btt));
      $("committed-detail").textContent = `storage contracts of live releases (${p.min_contract_days} days each)`;
      fig($("spent"), "btt.spent.btt", b.spent.btt, fmt.btt(b.spent.btt));
      const spd = $("spent-detail");
      spd.textContent = "";
      spd.appendChild(fig(el("span"), "btt.retrieval_spent.btt", b.retrieval_spent.btt, fmt.btt(b.retrieval_spent.btt)));
      spd.appendChild(document.createTextNode(" retrieval + "));
      spd.appendChild(fig(el("span"), "btt.storage_accrued.btt", b.storage_accrued.btt, fmt.btt(b.storage_accrued.btt)));
      spd.appendChild(document.createTextNode(" storage (estimate)"));
      fig($("fiat"), "btt.spent.fiat", b.spent.fiat, fmt.fiat(b.spent.fiat));
      const fd = $("fiat-detail");
      fd.textContent = "";
      fd.appendChild(fig(el("span"), "btt.spent.fiat_buffered", b.spent.fiat_buffered, fmt.fiat(b.spent.fiat_buffered)));
      fd.appendChild(document.createTextNode(` with the ${p.risk_buffer_percent}% buffer; billed to tenants `));
      fd.appendChild(fig(el("span"), "btt.billed.btt", b.billed.btt, fmt.btt(b.billed.btt)));
    } else {
      for (const id of ["committed", "spent", "fiat"]) {
        $(id).textContent = "n/a";
        $(id + "-detail").textContent = "set usage.pricing";
      }
    }

    barChart($("trend-bytes"), s.trend,
      [{ key: "hot_bytes", label: "hot tier", cls: "hot" }, { key: "origin_bytes", label: "origin", cls: "origin" }],
      (d, k) => d[k], fmt.bytes);
    if (b) {
      barChart($("trend-btt"), s.trend, [{ key: "retrieval_btt", label: "retrieval", cls: "btt" }],
        (d, k) => Number(d[k] || 0), fmt.axisBtt);
    } else {
      $("trend-btt").textContent = "No pricing is configured.";
    }

    const tb = $("tenants").tBodies[0];
    tb.textContent = "";
    if (s.tenants.length === 0) {
      const r = el("tr");
      r.appendChild(el("td", { colspan: "8" }, "No usage in this period."));
      tb.appendChild(r);
    }
    for (const t of s.tenants) {
      const r = el("tr");
      const f = (k) => `tenants.${t.tenant}.${k}`;
      r.appendChild(el("th", { scope: "row" }, t.tenant));
      cell(r, f("hot_bytes"), t.hot_bytes, fmt.bytes(t.hot_bytes), "n");
      cell(r, f("origin_bytes"), t.origin_bytes, fmt.bytes(t.origin_bytes), "n");
      cell(r, f("bytes"), t.bytes, fmt.bytes(t.bytes), "n");
      cell(r, f("requests"), t.requests, fmt.count(t.requests), "n");
      cell(r, f("hit_ratio"), t.hit_ratio, fmt.pct(t.hit_ratio), "n");
      if (t.charge) {
        cell(r, f("charge.btt"), t.charge.btt, fmt.btt(t.charge.btt), "n");
        cell(r, f("charge.fiat_buffered"), t.charge.fiat_buffered, fmt.fiat(t.charge.fiat_buffered), "n");
      } else {
        r.appendChild(el("td", {}, "n/a"));
        r.appendChild(el("td", {}, "n/a"));
      }
      tb.appendChild(r);
    }

    const rb = $("releases").tBodies[0];
    rb.textContent = "";
    for (const x of s.releases) {
      const r = el("tr", { class: x.state });
      const id = `${x.name}@${x.version}`;
      const f = (k) => `releases.${id}.${k}`;
      r.appendChild(el("th", { scope: "row", title: x.release_id }, id));
      const st = el("td");
      st.appendChild(fig(el("span", { class: "badge " + x.state }), f("state"), x.state, x.state.replace("_", " ")));
      r.appendChild(st);
      r.appendChild(el("td", {}, x.tags.join(", ")));
      cell(r, f("files"), x.files, fmt.count(x.files), "n");
      cell(r, f("file_bytes"), x.file_bytes, fmt.bytes(x.file_bytes), "n");
      cell(r, f("stored_bytes"), x.stored_bytes, fmt.bytes(x.stored_bytes), "n");
      if (x.committed) cell(r, f("committed.btt"), x.committed.btt, fmt.btt(x.committed.btt), "n");
      else r.appendChild(el("td", {}, x.state === "taken_down" ? "none" : "n/a"));
      rb.appendChild(r);
    }

    const slo = $("slo");
    slo.textContent = "";
    const objective = (title, key, o) => {
      const c = el("div", { class: "card " + (o.met === false ? "bad" : o.met ? "good" : "") });
      c.appendChild(el("h2", {}, title));
      c.appendChild(fig(el("p", { class: "big" }), `slo.${key}.p99_ms`, o.p99_ms, fmt.ms(o.p99_ms)));
      const d = el("p", { class: "small" });
      d.appendChild(document.createTextNode("objective "));
      d.appendChild(fig(el("span"), `slo.${key}.objective_ms`, o.objective_ms, fmt.ms(o.objective_ms)));
      d.appendChild(document.createTextNode(o.met === null ? "" : o.met ? ": met" : ": missed"));
      d.appendChild(document.createTextNode("; "));
      d.appendChild(fig(el("span"), `slo.${key}.samples`, o.samples, fmt.count(o.samples)));
      d.appendChild(document.createTextNode(" responses"));
      c.appendChild(d);
      slo.appendChild(c);
    };
    objective("Manifest p99", "manifest", s.slo.manifest);
    objective("File time to first byte p99", "file_ttfb", s.slo.file_ttfb);
    const cf = el("div", { class: "card " + (s.slo.checksum_failures > 0 ? "bad" : "good") });
    cf.appendChild(el("h2", {}, "Checksum failures"));
    cf.appendChild(fig(el("p", { class: "big" }), "slo.checksum_failures", s.slo.checksum_failures, fmt.count(s.slo.checksum_failures)));
    const cd = el("p", { class: "small" });
    cd.appendChild(document.createTextNode("chunks refused, never served; "));
    cd.appendChild(fig(el("span"), "served.integrity_failed_bytes", s.served.integrity_failed_bytes, fmt.bytes(s.served.integrity_failed_bytes)));
    cd.appendChild(document.createTextNode(" thrown away in the period"));
    cf.appendChild(cd);
    slo.appendChild(cf);
    const ph = s.slo.pin_health;
    if (ph) {
      const bad = ph.under_replicated_blobs > 0 || ph.met === false;
      const pc = el("div", { class: "card " + (bad ? "bad" : "good") });
      pc.appendChild(el("h2", {}, "Pin health"));
      pc.appendChild(fig(el("p", { class: "big" }), "slo.pin_health.under_replicated_blobs", ph.under_replicated_blobs, fmt.count(ph.under_replicated_blobs)));
      const pd = el("p", { class: "small" });
      pd.appendChild(document.createTextNode("blobs under-replicated; repairs "));
      pd.appendChild(fig(el("span"), "slo.pin_health.repairs_ok", ph.repairs_ok, fmt.count(ph.repairs_ok)));
      pd.appendChild(document.createTextNode(" ok, "));
      pd.appendChild(fig(el("span"), "slo.pin_health.repairs_failed", ph.repairs_failed, fmt.count(ph.repairs_failed)));
      pd.appendChild(document.createTextNode(" failed; slowest "));
      pd.appendChild(fig(el("span"), "slo.pin_health.slowest_repair_s", ph.slowest_repair_s, fmt.secs(ph.slowest_repair_s)));
      pd.appendChild(document.createTextNode(", objective "));
      pd.appendChild(fig(el("span"), "slo.pin_health.repair_objective_s", ph.repair_objective_s, fmt.secs(ph.repair_objective_s)));
      pd.appendChild(document.createTextNode(ph.met === null ? "" : ph.met ? ": met" : ": missed"));
      pc.appendChild(pd);
      slo.appendChild(pc);
    }
    const since = new Date(s.slo.since * 1000).toISOString().replace(".000Z", "Z");
    slo.appendChild(el("p", { class: "small wide" }, s.fleet
      ? `Latency and checksum counts since the members started (the earliest at ${since}); latency is the worst member's.`
      : `Latency and checksum counts since the gateway started (${since}).`));

    for (const btn of document.querySelectorAll("#period button")) {
      btn.setAttribute("aria-pressed", String(Number(btn.dataset.days) === s.days));
    }
    $("report").hidden = false;
  }

  // ---- loading ----------------------------------------------------------
  async function load() {
    const token = sessionStorage.getItem("shardgate-token");
    if (!token) return;
    document.body.dataset.state = "loading";
    $("status").textContent = `Loading the last ${days} days…`;
    try {
      const r = await fetch(`/v1/reports/summary?days=${days}`, {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
      render(body);
      $("status").textContent = "";
      document.body.dataset.days = String(body.days);
      document.body.dataset.state = "ready";
    } catch (e) {
      $("status").textContent = "Could not load the report: " + e.message;
      document.body.dataset.state = "error";
    }
  }

  // A link may carry #token=...&days=N; the token is moved to session
  // storage and taken out of the address bar (and so out of history).
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) sessionStorage.setItem("shardgate-token", hash.get("token"));
  const d = Number(hash.get("days"));
  if ([30, 60, 90].includes(d)) days = d;
  if (location.hash) history.replaceState(null, "", location.pathname);

  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem("shardgate-token", t);
    $("token").value = "";
    load();
  });
  for (const btn of document.querySelectorAll("#period button")) {
    btn.addEventListener("click", () => { days = Number(btn.dataset.days); load(); });
  }
  load();
})();

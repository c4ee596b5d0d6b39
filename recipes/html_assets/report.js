// halign comparison report: renders the JSON block #halign-data. Built by recipes/html_report.py.
// Text from reports is inserted with textContent only, never as HTML. Items are rendered one page at a
// time, so a 5,000-item report costs one JSON.parse and PAGE_SIZE cards of DOM.
"use strict";
(function () {
  const PAGE_SIZE = 50;
  const DATA = JSON.parse(document.getElementById("halign-data").textContent);
  const $ = (id) => document.getElementById(id);
  // Metrics with a direction, for colouring significant changes (length and yes-ratio have none).
  const LOWER_IS_BETTER = new Set(["chair_s", "chair_i"]);
  const HIGHER_IS_BETTER = new Set(["recall", "accuracy", "precision", "f1"]);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "n/a" : typeof v === "number" ? v.toFixed(digits) : String(v));
  const signed = (v) => (v === null || v === undefined ? "n/a" : (v >= 0 ? "+" : "") + v.toFixed(3));
  function table(head, rows) {
    return el("table", {}, [el("thead", {}, [el("tr", {}, head.map((h) => el("th", { text: h })))]), el("tbody", {}, rows)]);
  }
  function thumb(index) {
    if (index === null || index === undefined) return null;
    const src = DATA.images[index];
    return src ? el("img", { src: src, alt: "image", loading: "lazy" }) : el("div", { class: "empty", text: "image not found" });
  }
  function pager(state, total, ids) {
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    $(ids.page).textContent = `page ${state.page + 1} of ${pages}`;
    $(ids.prev).disabled = state.page === 0;
    $(ids.next).disabled = state.page >= pages - 1;
    return [state.page * PAGE_SIZE, Math.min(total, (state.page + 1) * PAGE_SIZE)];
  }
  function wirePager(state, ids, render) {
    $(ids.prev).addEventListener("click", () => { state.page -= 1; render(); });
    $(ids.next).addEventListener("click", () => { state.page += 1; render(); });
  }

  // ---- header, metrics, plots -------------------------------------------------------------------
  function renderHeader() {
    $("title").textContent = DATA.title;
    const count = DATA.items ? DATA.items.length : DATA.pope ? DATA.pope.n : DATA.n_items;
    const sub = $("subtitle");
    sub.append(`benchmark ${DATA.benchmark} · `, el("span", { id: "item-count", text: String(count) }), " items · ",
      `changes against ${DATA.labels[0]}`);
    const sections = [["metrics", "Metrics"], ["browser", "Items", DATA.items], ["pope", "POPE", DATA.pope], ["judge", "Judge", DATA.judge]];
    for (const [id, name, present] of sections) {
      if (id !== "metrics" && !present) continue;
      $(id).hidden = false;
      $("nav").append(el("a", { href: "#" + id, text: name }));
    }
    for (const w of DATA.warnings) $("warnings").append(el("p", { class: "warning", text: "warning: " + w }));
    if (DATA.missing_images.length) {
      $("warnings").append(el("p", { class: "warning", text: "images not found: " + DATA.missing_images.join(", ") }));
    }
  }

  function renderMetrics() {
    const rows = DATA.rows.map((r) => {
      const ci = r.ci_low === null || r.ci_low === undefined ? "n/a" : `[${signed(r.ci_low)}, ${signed(r.ci_high)}]`;
      let cls = "";
      const directed = LOWER_IS_BETTER.has(r.metric) || HIGHER_IS_BETTER.has(r.metric);
      if (directed && typeof r.diff === "number" && r.diff !== 0 && r.p !== null && r.p !== undefined && r.p < 0.05) {
        cls = (r.diff < 0) === LOWER_IS_BETTER.has(r.metric) ? "better" : "worse";
      }
      const rel = r.rel === null || r.rel === undefined ? "n/a" : (r.rel >= 0 ? "+" : "") + (100 * r.rel).toFixed(1) + "%";
      return el("tr", {}, [el("td", { text: r.metric }), el("td", { text: r.report }), el("td", { text: fmt(r.a) }),
        el("td", { text: fmt(r.b) }), el("td", { class: cls, text: signed(r.diff) }), el("td", { text: rel }),
        el("td", { text: ci }), el("td", { text: fmt(r.p, 4) })]);
    });
    $("metric-table").append(table(["metric", "report", DATA.labels[0], "value", "change", "relative", "95% CI of change", "p"], rows));
    $("metric-table").append(el("p", { class: "hint", text: "95% CI: paired bootstrap over items; p: paired permutation test. Green / red: significant (p < 0.05) improvement / regression." }));
    for (const plot of DATA.plots) $("plots").append(el("img", { src: plot.src, alt: plot.title, title: plot.title }));
  }

  // ---- item browser ------------------------------------------------------------------------------
  const view = { pair: DATA.labels.length - 1, filter: "all", object: "", search: "", sort: "input", page: 0 };
  const CHANGE_KEYS = { gained: "a", lost: "r", covlost: "cl", covgained: "cg" };
  const searchText = DATA.items ? DATA.items.map((it) => [it.id, it.q || "", ...it.ans.map((a) => a.t)].join("\n").toLowerCase()) : [];

  function matches(item, index) {
    const d = item.d[view.pair - 1];
    const key = CHANGE_KEYS[view.filter];
    if (key) {
      const list = d ? d[key] : [];
      if (!list.length || (view.object && !list.includes(view.object))) return false;
    } else if (view.filter === "changed") {
      if (!d) return false;
      if (view.object && ![d.a, d.r, d.cl, d.cg].some((l) => l.includes(view.object))) return false;
    } else if (view.object) {
      const [a, b] = [item.ans[0], item.ans[view.pair]];
      const involved = item.gt.includes(view.object) || a.h.includes(view.object) || b.h.includes(view.object);
      if (!involved) return false;
    }
    return !view.search || searchText[index].includes(view.search);
  }

  function sortKey(item) {
    const [a, b] = [item.ans[0], item.ans[view.pair]];
    switch (view.sort) {
      case "hal_down": return b.h.length - a.h.length;
      case "hal_up": return a.h.length - b.h.length;
      case "chair_i": return a.ci - b.ci;
      case "recall": return b.r - a.r;
      case "len": return -Math.abs(b.w - a.w);
      default: return 0;
    }
  }

  function filteredItems() {
    const out = [];
    DATA.items.forEach((item, i) => { if (matches(item, i)) out.push(item); });
    if (view.sort !== "input") out.sort((x, y) => sortKey(x) - sortKey(y));  // stable: ties keep input order
    return out;
  }

  function highlighted(answer) {
    const node = el("div", { class: "text" });
    let pos = 0;
    for (const [start, end, hal] of answer.s) {
      if (start < pos) continue;
      node.append(answer.t.slice(pos, start), el("mark", { class: hal ? "hal" : "cov", text: answer.t.slice(start, end) }));
      pos = end;
    }
    node.append(answer.t.slice(pos));
    return node;
  }

  function answerCard(answer, label) {
    const parts = [];
    if (answer.h.length) parts.push(el("div", {}, ["hallucinated: ", el("span", { class: "wrong", text: answer.h.join(", ") })]));
    if (answer.m.length) parts.push(el("div", { class: "missed", text: "missed: " + answer.m.join(", ") }));
    const scores = `CHAIR_s ${answer.cs} · CHAIR_i ${fmt(answer.ci, 2)} · recall ${fmt(answer.r, 2)} · ${answer.w} words`;
    return el("div", { class: "answer" }, [el("div", { class: "label", text: label }), highlighted(answer), ...parts,
      el("div", { class: "scores", text: scores })]);
  }

  function badges(d) {
    if (!d) return [el("span", { class: "badge", text: "unchanged" })];
    const out = [];
    for (const [kind, key, sign] of [["gained", "a", "+"], ["lost", "r", "−"], ["covlost", "cl", "coverage −"], ["covgained", "cg", "coverage +"]]) {
      if (d[key].length) out.push(el("span", { class: "badge " + kind, text: sign + d[key].join(", ") }));
    }
    return out.length ? out : [el("span", { class: "badge", text: "text changed" })];
  }

  function itemCard(item) {
    const shown = [0, view.pair];
    const answers = el("div", { class: "answers" }, shown.map((j) => answerCard(item.ans[j], DATA.labels[j])));
    answers.style.gridTemplateColumns = `repeat(${shown.length}, minmax(0, 1fr))`;
    const meta = el("div", { class: "meta" }, [el("div", { class: "id", text: item.id }), thumb(item.img),
      item.q ? el("div", { text: "prompt: " + item.q }) : null,
      el("div", { text: "ground truth: " + (item.gt.join(", ") || "none") }), el("div", {}, badges(item.d[view.pair - 1]))]);
    return el("div", { class: "item", "data-id": item.id }, [meta, answers]);
  }

  function renderItems() {
    const items = filteredItems();
    $("shown-count").textContent = `showing ${items.length} of ${DATA.items.length} items`;
    const [start, end] = pager(view, items.length, { page: "page", prev: "prev", next: "next" });
    const box = $("items");
    box.replaceChildren(...items.slice(start, end).map(itemCard));
    if (!items.length) box.append(el("p", { class: "empty", text: "no item matches" }));
  }

  function renderObjectTable() {
    const counts = new Map();
    for (const item of DATA.items) {
      const d = item.d[view.pair - 1];
      if (!d) continue;
      for (const [key, col] of [["r", 0], ["a", 1], ["cl", 2], ["cg", 3]]) {
        for (const obj of d[key]) {
          if (!counts.has(obj)) counts.set(obj, [0, 0, 0, 0]);
          counts.get(obj)[col] += 1;
        }
      }
    }
    const filters = ["lost", "gained", "covlost", "covgained"];
    const rows = [...counts.keys()].sort().map((obj) => {
      const row = el("tr", { class: obj === view.object ? "selected" : "", onclick: () => setView({ object: obj === view.object ? "" : obj }) },
        [el("td", { text: obj })]);
      counts.get(obj).forEach((n, col) => row.append(el("td", { class: "count", text: String(n), onclick: (ev) => {
        ev.stopPropagation(); setView({ object: obj, filter: filters[col] }); } })));
      return row;
    });
    $("object-table").replaceChildren(rows.length ? table(["object", "halluc. removed", "halluc. added", "coverage lost", "coverage gained"], rows)
      : el("p", { class: "empty", text: "no object changed" }));
  }

  function setView(changes) {
    Object.assign(view, changes, { page: 0 });
    $("pair").value = String(view.pair);
    $("filter").value = view.filter;
    $("object").value = view.object;
    renderObjectTable();
    renderItems();
  }

  function initBrowser() {
    DATA.labels.slice(1).forEach((label, i) => $("pair").append(el("option", { value: String(i + 1), text: `${label} vs ${DATA.labels[0]}` })));
    const objects = new Set();
    for (const item of DATA.items) {
      item.gt.forEach((o) => objects.add(o));
      item.ans.forEach((a) => a.h.forEach((o) => objects.add(o)));
    }
    [...objects].sort().forEach((o) => $("object").append(el("option", { value: o, text: o })));
    $("pair").addEventListener("change", (e) => setView({ pair: Number(e.target.value) }));
    $("filter").addEventListener("change", (e) => setView({ filter: e.target.value }));
    $("object").addEventListener("change", (e) => setView({ object: e.target.value }));
    $("sort").addEventListener("change", (e) => setView({ sort: e.target.value }));
    $("search").addEventListener("input", (e) => setView({ search: e.target.value.trim().toLowerCase() }));
    wirePager(view, { prev: "prev", next: "next" }, renderItems);
    setView({});
  }

  // ---- POPE ----------------------------------------------------------------------------------------
  const popeView = { kind: "", filter: "any", page: 0 };

  function popeMatches(w) {
    if (popeView.kind && w.kind !== popeView.kind) return false;
    const wrong = w.pred.map((p) => p !== w.label);
    if (popeView.filter === "any") return true;
    if (popeView.filter === "newly_wrong") return !wrong[0] && wrong[wrong.length - 1];
    if (popeView.filter === "newly_right") return wrong[0] && !wrong[wrong.length - 1];
    return wrong[Number(popeView.filter)];
  }

  function renderPopeWrong() {
    const P = DATA.pope;
    const rows = P.wrong.filter(popeMatches);
    $("pope-count").textContent = `${rows.length} of ${P.wrong.length} questions answered wrongly by some report`;
    const [start, end] = pager(popeView, rows.length, { page: "pope-page", prev: "pope-prev", next: "pope-next" });
    $("pope-wrong").replaceChildren(...rows.slice(start, end).map((w) => el("div", { class: "pope-row" }, [thumb(w.img),
      el("div", {}, [el("div", {}, [el("b", { text: w.id }), ` (${w.kind}) `, w.q || `object ${w.obj}`, " — truth: ", el("b", { text: w.label })]),
        ...P.labels.map((label, j) => el("div", {}, [label + ": ", el("span", { class: w.pred[j] === w.label ? "right" : "wrong", text: w.pred[j] || "no answer" }),
          w.text[j] ? ` — “${w.text[j]}”` : ""]))])])));
  }

  function initPope() {
    const P = DATA.pope;
    const rows = [];
    for (const row of P.table) {
      P.labels.forEach((label, j) => rows.push(el("tr", {}, [el("td", { text: j === 0 ? row.kind : "" }), el("td", { text: j === 0 ? String(row.n) : "" }),
        el("td", { class: "text", text: label }), ...P.keys.map((k) => el("td", { text: fmt(row.reports[j][k]) }))])));
    }
    $("pope-table").append(table(["split", "questions", "report", ...P.keys], rows));
    P.table.slice(0, -1).forEach((r) => $("pope-kind").append(el("option", { value: r.kind, text: r.kind })));
    const filters = [["any", "wrong in any report"], ...P.labels.map((l, j) => [String(j), "wrong in " + l])];
    if (P.labels.length > 1) filters.push(["newly_wrong", `right in ${P.labels[0]}, wrong in ${P.labels[P.labels.length - 1]}`],
      ["newly_right", `wrong in ${P.labels[0]}, right in ${P.labels[P.labels.length - 1]}`]);
    filters.forEach(([v, t]) => $("pope-filter").append(el("option", { value: v, text: t })));
    $("pope-kind").addEventListener("change", (e) => { popeView.kind = e.target.value; popeView.page = 0; renderPopeWrong(); });
    $("pope-filter").addEventListener("change", (e) => { popeView.filter = e.target.value; popeView.page = 0; renderPopeWrong(); });
    wirePager(popeView, { prev: "pope-prev", next: "pope-next" }, renderPopeWrong);
    renderPopeWrong();
  }

  // ---- judge ---------------------------------------------------------------------------------------
  const judgeView = { page: 0 };
  function renderJudge() {
    const J = DATA.judge;
    const [start, end] = pager(judgeView, J.prompts.length, { page: "judge-page", prev: "judge-prev", next: "judge-next" });
    $("judge-list").replaceChildren(...J.prompts.slice(start, end).map((p) => el("div", { class: "judge-prompt" }, [
      el("div", { class: "meta" }, [el("b", { text: p.pid }), thumb(p.img), p.q ? el("div", { text: p.q }) : null]),
      table(["candidate", "score", "answer", "hallucinated", "rationale"], p.cands.map((c) => el("tr", {}, [
        el("td", { text: c.cid }), el("td", { text: c.score === null ? "failed" : fmt(c.score, 2) }),
        el("td", { text: c.text || "" }), el("td", { class: "wrong", text: c.hal.join(", ") }),
        el("td", { text: c.err ? "error: " + c.err : c.rat })])))])));
  }
  function initJudge() {
    const J = DATA.judge;
    const shown = J.prompts.length < J.n_prompts ? `; the first ${J.prompts.length} prompts shown` : "";
    $("judge-summary").textContent = `${J.n} judgments by ${J.judge || "the judge"} over ${J.n_prompts} prompts (${J.path})${shown}`;
    wirePager(judgeView, { prev: "judge-prev", next: "judge-next" }, renderJudge);
    renderJudge();
  }

  renderHeader();
  renderMetrics();
  if (DATA.items) initBrowser();
  if (DATA.pope) initPope();
  if (DATA.judge) initJudge();
  window.halignReadyMs = performance.now();  // read by the tests and the size/speed benchmark
  document.body.dataset.ready = "1";
})();

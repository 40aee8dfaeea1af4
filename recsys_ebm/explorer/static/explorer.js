// recsys-ebm temperature explorer: asks /api/recommend for the list at the chosen temperature
// and draws it, its statistics and the energy histogram. Plain DOM and SVG, no libraries.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, titles: new Map(), ids: new Set(), history: [], seq: 0, timer: null };
const $ = (id) => document.getElementById(id);

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function label(itemId) {
  const title = state.titles.get(itemId);
  return title ? `${title} · ${itemId}` : itemId;
}

function option(value) {
  const element = document.createElement("option");
  element.value = value;
  return element;
}

async function start() {
  const [info, users, items] = await Promise.all(
    ["/api/info", "/api/users", "/api/items"].map((url) => getJSON(url)));
  state.info = info;
  for (const item of items.items) {
    state.ids.add(item.id);
    if (item.title) state.titles.set(item.id, item.title);
  }
  $("model-info").textContent = `${info.model} from ${info.source}` +
    (info.dataset ? ` · ${info.dataset}` : "") + ` · ${info.n_users} users × ${info.n_items} items` +
    (info.has_titles ? "" : " · no titles (give --items-file)") +
    (info.is_ebm ? "" : " · not an energy model: E is −score here");
  $("user-list").replaceChildren(...users.users.map(option));
  $("item-list").replaceChildren(...items.items.map((item) => option(item.title ? `${item.id} · ${item.title}` : item.id)));
  $("history-rating").hidden = !info.fits_ratings;
  for (const node of document.querySelectorAll(".visits")) node.textContent = info.visits;
  $("coverage-label").textContent = `Expected coverage (${info.visits} visits)`;
  $("user").value = users.users[0] || "";
  wire();
  schedule();
}

function wire() {
  const temperature = $("temperature");
  temperature.addEventListener("input", () => {
    $("temperature-value").textContent = Number(temperature.value).toFixed(2);
    schedule();
  });
  const lam = $("lam");
  lam.addEventListener("input", () => {
    $("lam-value").textContent = Number(lam.value).toFixed(2);
    schedule();
  });
  const mixWith = $("mix-with");
  for (const event of ["input", "change"]) {
    mixWith.addEventListener(event, () => { lam.disabled = !mixWith.value.trim(); });
  }
  for (const id of ["k", "seed", "user", "mix-with"]) {
    $(id).addEventListener("input", schedule);
    $(id).addEventListener("change", schedule);
  }
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      const history = mode() === "history";
      $("history-box").hidden = !history;
      $("user-box").hidden = history;
      schedule();
    });
  }
  $("history-add").addEventListener("click", addHistoryItem);
  $("history-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); addHistoryItem(); }
  });
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function addHistoryItem() {
  const text = $("history-input").value.trim();
  if (!text) return;
  const itemId = resolveItem(text);
  if (!state.history.some((entry) => entry.item === itemId)) {
    const rating = state.info.fits_ratings ? Number($("history-rating").value) : null;
    state.history.push({ item: itemId, rating });
  }
  $("history-input").value = "";
  drawHistoryChips();
  schedule();
}

// "50 · Star Wars (1977)" (a suggestion), "50" (an id) or "star wars (1977)" (a title).
function resolveItem(text) {
  const head = text.split(" · ")[0].trim();
  if (state.ids.has(head)) return head;
  const wanted = text.toLowerCase();
  for (const [itemId, title] of state.titles) if (title.toLowerCase() === wanted) return itemId;
  return head;  // unknown: the server's answer names it
}

function drawHistoryChips() {
  const chips = state.history.map((entry, position) => {
    const chip = document.createElement("li");
    chip.dataset.item = entry.item;
    chip.textContent = label(entry.item) + (entry.rating === null ? "" : ` ★${entry.rating}`);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove";
    remove.addEventListener("click", () => {
      state.history.splice(position, 1);
      drawHistoryChips();
      schedule();
    });
    chip.append(remove);
    return chip;
  });
  $("history-chips").replaceChildren(...chips);
}

// The request for the current controls, and a key naming it (the page's tests wait on it).
function currentQuery() {
  const query = { k: Number($("k").value), temperature: Number($("temperature").value),
                  seed: Number($("seed").value) };
  let who;
  if (mode() === "user") {
    query.user = $("user").value.trim();
    if (!query.user) return null;
    who = `user:${query.user}`;
    const mixWith = $("mix-with").value.trim();
    if (mixWith) {  // a taste mix of two trained users
      query.mix_with = mixWith;
      query.lam = Number($("lam").value);
      who = `mix:${query.user}+${mixWith}@${query.lam}`;
    }
  } else {
    if (!state.history.length) return null;
    query.history = state.history.map((entry) => entry.item);
    if (state.info.fits_ratings) query.ratings = state.history.map((entry) => entry.rating);
    who = `history:${query.history.join(",")}`;
  }
  return { query, key: `${who}|${query.k}|${query.temperature}|${query.seed}` };
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, 60);
}

async function refresh() {
  const current = currentQuery();
  if (!current) return;
  const seq = ++state.seq;
  try {
    const result = await getJSON("/api/recommend", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(current.query),
    });
    if (seq !== state.seq) return;  // a newer request is on its way
    $("error").hidden = true;
    render(result, current.key);
  } catch (error) {
    if (seq !== state.seq) return;
    $("error").textContent = error.message;
    $("error").hidden = false;
    $("results").dataset.query = `error|${current.key}`;
  }
}

function render(result, key) {
  drawList(result);
  drawStats(result);
  drawHistogram(result.histogram);
  drawCurve(result.curve, result.temperature, result.entropy);
  const seen = result.history.items.map((item) => {
    const chip = document.createElement("li");
    chip.textContent = label(item.item_id);
    return chip;
  });
  $("user-history").querySelector("ul").replaceChildren(...seen);
  $("user-history").querySelector("h2").firstChild.textContent =
    result.mix ? "The mixed users already have " : "Already has ";
  const more = result.history.count - result.history.items.length;
  $("history-count").textContent = `(${result.history.count} items${more > 0 ? `, first ${result.history.items.length} shown` : ""})`;
  $("results").dataset.query = key;
}

function drawList(result) {
  const top = Math.max(...result.items.map((item) => item.probability), 1e-300);
  const rows = result.items.map((item) => {
    const row = document.createElement("tr");
    row.dataset.item = item.item_id;
    row.dataset.probability = item.probability;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * item.probability / top).toFixed(1)}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.textContent = formatProbability(item.probability);
    const cells = [String(item.rank), item.title || item.item_id, item.energy.toFixed(3)];
    for (const [position, text] of cells.entries()) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (position === 2) cell.className = "num";
      if (position === 1 && item.title) {
        const id = document.createElement("span");
        id.className = "id";
        id.textContent = item.item_id;
        cell.append(" ", id);
      }
      row.append(cell);
    }
    const probability = document.createElement("td");
    probability.className = "probability";
    probability.append(track, value);
    row.append(probability);
    return row;
  });
  $("results").querySelector("tbody").replaceChildren(...rows);
  const mix = result.mix ? `taste mix of ${result.mix.user} and ${result.mix.with} at λ = ${result.mix.lam}; ` : "";
  $("list-note").textContent = mix + (result.temperature > 0
    ? `sampled at T = ${result.temperature} with seed ${result.seed}; p at T = ${result.temperature}`
    : "exact top-k at T = 0; p shown at T = 1");
}

function formatProbability(p) {
  return p >= 0.01 ? `${(100 * p).toFixed(1)}%` : `${(100 * p).toPrecision(2)}%`;
}

function drawStats(result) {
  const stats = [
    ["entropy", result.entropy, `${result.entropy.toFixed(3)} nats`],
    ["perplexity", result.perplexity, `${result.perplexity.toFixed(1)} of ${result.n_eligible} items`],
    ["coverage", result.coverage.mean,
     `${result.coverage.mean.toFixed(1)}${result.coverage.stderr ? ` ± ${result.coverage.stderr.toFixed(1)}` : ""} distinct items`],
    ["list-mass", result.items.reduce((total, item) => total + item.probability, 0), null],
  ];
  for (const [id, value, text] of stats) {
    $(id).dataset.value = value;
    $(id).textContent = text ?? formatProbability(value);
  }
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawHistogram(histogram) {
  const plot = $("histogram");
  const [width, height, left, right, top, bottom] = [560, 280, 48, 48, 12, 44];
  const shapes = [];
  const edges = histogram.edges;
  if (edges.length < 2) { plot.replaceChildren(); return; }
  const low = edges[0], high = edges[edges.length - 1], span = high - low || 1;
  const x = (energy) => left + (width - left - right) * (energy - low) / span;
  const maxCount = Math.max(...histogram.counts, 1);
  const maxMass = Math.max(...histogram.mass, 1e-300);
  const inner = height - top - bottom;
  histogram.counts.forEach((count, bin) => {
    const barHeight = inner * count / maxCount;
    shapes.push(svg("rect", { class: "count", x: x(edges[bin]) + 0.5, y: top + inner - barHeight,
      width: Math.max(x(edges[bin + 1]) - x(edges[bin]) - 1, 1), height: barHeight }));
  });
  const line = histogram.mass.map((mass, bin) =>
    `${((x(edges[bin]) + x(edges[bin + 1])) / 2).toFixed(1)},${(top + inner - inner * mass / maxMass).toFixed(1)}`);
  shapes.push(svg("polyline", { class: "mass", points: line.join(" ") }));
  for (const energy of histogram.listed) {
    shapes.push(svg("line", { class: "listed", x1: x(energy), x2: x(energy), y1: top + inner + 2, y2: top + inner + 12 }));
  }
  shapes.push(svg("line", { class: "axis", x1: left, x2: width - right, y1: top + inner, y2: top + inner }));
  for (const energy of [low, (low + high) / 2, high]) {
    shapes.push(svg("text", { class: "tick", x: x(energy), y: top + inner + 26, "text-anchor": "middle" }, energy.toFixed(2)));
  }
  shapes.push(svg("text", { class: "tick", x: left - 6, y: top + 10, "text-anchor": "end" }, String(maxCount)));
  shapes.push(svg("text", { class: "tick mass-tick", x: width - right + 6, y: top + 10 }, formatProbability(maxMass)));
  shapes.push(svg("text", { class: "axis-label", x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" },
    "energy E = −score (lower: more likely)"));
  plot.replaceChildren(...shapes);
}

function drawCurve(curve, temperature, entropy) {
  const [width, height, left, right, top, bottom] = [560, 130, 48, 48, 10, 30];
  const maxT = curve.temperature[curve.temperature.length - 1] || 1;
  const maxH = Math.max(...curve.entropy, 1e-9);
  const x = (t) => left + (width - left - right) * Math.min(t, maxT) / maxT;
  const y = (h) => top + (height - top - bottom) * (1 - h / maxH);
  const points = curve.temperature.map((t, i) => `${x(t).toFixed(1)},${y(curve.entropy[i]).toFixed(1)}`);
  const shapes = [
    svg("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }),
    svg("polyline", { class: "entropy", points: points.join(" ") }),
    svg("circle", { class: "now", cx: x(temperature), cy: y(Math.min(entropy, maxH)), r: 5 }),
    svg("text", { class: "tick", x: left - 6, y: top + 10, "text-anchor": "end" }, maxH.toFixed(2)),
    svg("text", { class: "tick", x: left - 6, y: y(0), "text-anchor": "end" }, "0"),
  ];
  for (const t of [0, maxT / 2, maxT]) {
    shapes.push(svg("text", { class: "tick", x: x(t), y: height - 12, "text-anchor": "middle" }, t.toFixed(1)));
  }
  shapes.push(svg("text", { class: "axis-label", x: (left + width - right) / 2, y: height - 1, "text-anchor": "middle" },
    "temperature T (nats on the left; the dot is the current T)"));
  $("curve").replaceChildren(...shapes);
}

start().catch((error) => {
  $("error").textContent = `the explorer could not start: ${error.message}`;
  $("error").hidden = false;
});

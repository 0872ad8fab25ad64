// convlens serve: the page's behaviour. Plain JavaScript, no build step; talks to /api/*.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { image: null, info: null, audit: null, atlas: null, view: {}, offset: 0, pageSize: 48 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message ? "error: " + message : "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok || body.error) throw new Error(body.error || response.statusText);
  return body;
}

async function load() {
  const info = await api("/api/info");
  state.info = info;
  $("model").textContent = info.model;
  for (const name of info.samples) {
    $("samples").append(el("button", { text: name, "data-sample": name,
      onclick: () => choose(api("/api/samples/" + name, { method: "POST" })) }));
  }
  for (const [family, methods] of Object.entries(info.families)) {
    const box = el("fieldset", {}, el("legend", { text: family }));
    for (const m of methods) {
      const input = el("input", { type: "checkbox", value: m.name, id: "m-" + m.name });
      if (m.name === "gradcam") input.checked = true;
      box.append(el("label", { title: m.reference }, input, " " + m.name),
                 el("small", { text: m.summary }));
    }
    $("methods").append(box);
  }
  for (const layer of info.layers) {
    const text = `${layer.name} (${layer.type}, ${layer.shape.join("x")})`;
    $("layer").append(el("option", { value: layer.name, text }));
    $("vis-layer").append(el("option", { value: layer.name, text }));
  }
  if (info.layers.length) $("vis-layer").value = info.layers[Math.floor(info.layers.length / 2)].name;
  for (const label of info.labels) $("labels").append(el("option", { value: label }));
  if (info.audits.length) {
    $("audit-panel").hidden = false;
    for (const a of info.audits) $("audit-select").append(el("option", { value: a.id, text: a.name }));
    openAudit(info.audits[0].id);
  }
  if ((info.atlases || []).length) {
    $("atlas-panel").hidden = false;
    for (const a of info.atlases) $("atlas-select").append(el("option", { value: a.id, text: `${a.name} (${a.layer})` }));
    openAtlas(info.atlases[0].id);
  }
}

async function choose(promise) {
  showError("");
  try {
    const image = await promise;
    state.image = image;
    $("photo").src = "/api/images/" + image.id;
    $("photo").hidden = false;
    const rows = $("predictions").querySelector("tbody");
    rows.replaceChildren(...image.predictions.map((p) => el("tr", {},
      el("td", { text: p.label }), el("td", { text: (100 * p.probability).toFixed(1) + "%" }))));
    $("predictions").hidden = false;
    $("explain").disabled = false;
    $("maps").replaceChildren();
  } catch (error) { showError(error.message); }
}

$("file").onchange = () => {
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  choose(api("/api/images", { method: "POST", body: form }));
  $("file").value = "";
};

function opacity() { return $("opacity").value / 100; }
$("opacity").oninput = () => {
  for (const img of document.querySelectorAll("img.heat")) img.style.opacity = opacity();
};

function fmt(x) { return Math.abs(x) >= 1e3 || (x !== 0 && Math.abs(x) < 1e-2) ? x.toExponential(2) : x.toFixed(3); }

$("explain").onclick = async () => {
  const methods = [...document.querySelectorAll("#methods input:checked")].map((i) => i.value);
  showError("");
  $("explain").disabled = true;
  $("explain-status").textContent = "computing " + methods.join(", ") + "…";
  try {
    const result = await api("/api/explain", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ image: state.image.id, methods, layer: $("layer").value,
                             target: $("target").value, sign: $("sign").value }) });
    $("maps").replaceChildren(...result.explanations.map((exp) => el("div", { class: "explanation" },
      el("h3", { text: `${exp.label} (${(100 * exp.probability).toFixed(1)}%)` +
                       (exp.layer ? ` · layer ${exp.layer}` : "") }),
      ...(exp.notes || []).map((note) => el("p", { class: "note", text: "note: " + note })),
      el("div", { class: "maps" }, ...exp.maps.map((m) => {
        const heat = el("img", { class: "heat", src: m.image, alt: m.method, "data-method": m.method });
        heat.style.opacity = opacity();
        return el("figure", { class: "map", "data-method": m.method },
          el("figcaption", { text: m.method + (m.empty ? " (empty)" : "") }),
          el("div", { class: "stack" }, el("img", { src: "/api/images/" + state.image.id, alt: "" }), heat),
          el("div", { class: "colorbar" }),
          el("div", { class: "colorbar-labels" }, el("span", { text: fmt(m.low) }),
             el("span", { text: "raw value" }), el("span", { text: fmt(m.high) })));
      })))));
    $("explain-status").textContent = "";
  } catch (error) { showError(error.message); $("explain-status").textContent = ""; }
  $("explain").disabled = false;
};

$("visualize").onclick = async () => {
  const kind = document.querySelector("input[name=vis-kind]:checked").value;
  const body = { steps: Number($("vis-steps").value) };
  if (kind === "class") body.class = $("vis-class").value;
  else { body.layer = $("vis-layer").value; body.channel = Number($("vis-channel").value); }
  showError("");
  $("visualize").disabled = true;
  $("vis-progress").hidden = false;
  $("vis-progress").value = 0;
  try {
    const response = await fetch("/api/visualize", { method: "POST",
      headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const event = JSON.parse(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 1);
        if (event.error) throw new Error(event.error);
        if (event.step) {
          $("vis-progress").value = event.step / event.steps;
          $("vis-status").textContent = `step ${event.step}/${event.steps}, objective ${fmt(event.value)}`;
        }
        if (event.done) {
          $("vis-image").src = event.image; $("vis-image").hidden = false;
          $("vis-status").textContent = event.name;
        }
      }
    }
  } catch (error) { showError(error.message); }
  $("visualize").disabled = false;
};

async function openAudit(id) {
  try {
    const audit = await api("/api/audits/" + id);
    state.audit = id;
    $("audit-summary").textContent = `${audit.model} · ${audit.method}` +
      ` · ${audit.images} images, ${audit.mistakes} mistakes, ${audit.errors} unreadable`;
    $("audit-strategies").replaceChildren(...(audit.strategies || []).map((s) => el("li", {},
      el("a", { class: "pick", text: s.kind === "cross-class"
                  ? (s.groups.length > 1 ? `across ${s.groups.length} groups: ` : "in ") +
                    s.groups.slice(0, 4).join(", ")
                  : `${s.groups[0]} cluster`,
                onclick: () => browse({ strategy: s.id, title: `strategy ${s.id}` }) }),
      ` ${s.size} images, errors ${fmt(s.error_rate)}`, el("br"),
      el("small", { class: "muted", text: s.why || "" }),
      ...(s.causal ? [el("br"), el("small", { text: s.causal })] : []),
      ...((s.concepts || []).length ? [el("br"), el("small", { text: "concepts: " }),
        ...s.concepts.flatMap((c) => [el("a", { class: "pick", text: `channel ${c.channel}`,
          title: `relevance share ${fmt(c.member_share)} in the strategy, ` +
                 `${fmt(c.rest_share)} in the rest: its reference images`,
          onclick: () => browse({ strategy: s.id, concept: c.channel,
                                  title: `strategy ${s.id}: concept ${c.channel} of ${c.layer}` }) }),
          " "])] : []))));
    $("audit-suspicious").replaceChildren(...audit.suspicious.map((s) => el("li", {},
      el("a", { class: "pick", text: `${s.class} / cluster ${s.cluster}`,
                onclick: () => browse({ label: s.class, cluster: s.cluster }) }),
      ` suspicion ${fmt(s.suspicion)}`, el("br"), el("small", { class: "muted", text: s.why || "" }))));
    $("audit-classes").replaceChildren(...audit.classes.map((c) => el("li", {},
      el("a", { class: "pick", text: c.name, onclick: () => browse({ label: c.name }) }),
      ` support ${c.support}, precision ${fmt(c.precision)}, recall ${fmt(c.recall)}`,
      el("ul", {}, ...c.clusters.map((k) => el("li", {},
        el("a", { class: "pick", text: `cluster ${k.id}`, "data-cluster": `${c.name}/${k.id}`,
                  onclick: () => browse({ label: c.name, cluster: k.id }) }),
        ` ${k.size} images, errors ${fmt(k.error_rate)}, suspicion ${fmt(k.suspicion)}`))))));
    const top = (audit.strategies || [])[0];
    const first = audit.suspicious[0];
    browse(top ? { strategy: top.id, title: `strategy ${top.id}` }
      : first ? { label: first.class, cluster: first.cluster } : {});
  } catch (error) { showError(error.message); }
}
$("audit-select").onchange = () => openAudit(Number($("audit-select").value));

async function browse(view, offset = 0) {
  state.view = view; state.offset = offset;
  const query = new URLSearchParams({ offset, limit: state.pageSize });
  if (view.label !== undefined) query.set("label", view.label);
  if (view.cluster !== undefined && view.cluster !== null) query.set("cluster", view.cluster);
  if (view.strategy !== undefined) query.set("strategy", view.strategy);
  if (view.concept !== undefined) query.set("concept", view.concept);
  if ($("audit-mistakes").checked) query.set("mistakes", "true");
  try {
    const page = await api(`/api/audits/${state.audit}/images?${query}`);
    $("audit-view").textContent = view.title !== undefined ? view.title :
      view.label === undefined ? "all images" :
      view.label + (view.cluster !== undefined ? ` / cluster ${view.cluster}` : "");
    const last = Math.min(page.offset + page.items.length, page.total);
    $("audit-page").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "none";
    $("audit-prev").disabled = page.offset === 0;
    $("audit-next").disabled = last >= page.total;
    $("audit-grid").replaceChildren(...page.items.map((item) => el("figure",
      { class: item.correct ? "right" : "wrong", "data-index": item.index },
      el("img", { src: `/api/audits/${state.audit}/thumbs/${item.index}`, alt: item.name, loading: "lazy" }),
      el("figcaption", { text: `${item.name}: ${item.predicted} (${(100 * item.probability).toFixed(0)}%)` }))));
  } catch (error) { showError(error.message); }
}
$("audit-prev").onclick = () => browse(state.view, Math.max(0, state.offset - state.pageSize));
$("audit-next").onclick = () => browse(state.view, state.offset + state.pageSize);
$("audit-mistakes").onchange = () => browse(state.view, 0);

load().catch((error) => showError(error.message));

// Concept atlases: channels by relevance over the data; patches cut by the server on demand.
async function openAtlas(id) {
  try {
    const atlas = await api("/api/atlases/" + id);
    state.atlas = id;
    $("atlas-summary").textContent = `${atlas.model} · ${atlas.layer} · ${atlas.channels} channels,` +
      ` k=${atlas.k}, ${atlas.images} images, ${atlas.rule}`;
    $("atlas-channels").replaceChildren(...atlas.ranked.map((c) => el("li",
      { onclick: () => showChannel(c.channel) }, `channel ${c.channel} `,
      el("span", { class: "muted", text: `(${c.total.toPrecision(3)})` }))));
    if (atlas.ranked.length) showChannel(atlas.ranked[0].channel);
  } catch (error) { showError(error.message); }
}
$("atlas-select").onchange = () => openAtlas(Number($("atlas-select").value));

async function showChannel(channel) {
  try {
    const entry = await api(`/api/atlases/${state.atlas}/channels/${channel}`);
    $("atlas-view").textContent = `channel ${channel}: relevance over the data ${entry.total.toPrecision(3)}`;
    for (const mode of ["relevance", "activation"]) {
      $("atlas-" + mode).replaceChildren(...entry[mode].map((item) => el("figure", {},
        el("img", { src: `/api/atlases/${state.atlas}/patches/${channel}/${mode}/${item.rank}`,
                    alt: `${mode} patch of channel ${channel} in ${item.name}`, loading: "lazy" }),
        el("figcaption", { text: `${item.score.toPrecision(3)} · ${item.name}` }))));
    }
  } catch (error) { showError(error.message); }
}

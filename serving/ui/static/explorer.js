// The model explorer: pick a model and version, drop or paste images, see the top-k, and for a chosen
// image the explanations, every layer's activations, the filters and the model's metadata; optionally a
// second version side by side (the same images through both, and where they disagree).
//
// Everything goes to this page's own server through the JSON API (api.js); pictures come back as PNG bytes
// and are shown as data: URLs; dropped images stay in this tab (blob: URLs). No framework, no build step.

import { Api, ApiError, toBase64 } from "./api.js";

const SIDES = ["A", "B"];
const IN_FLIGHT = 4; // calls the page keeps in flight at once (the server batches them)

// -- small DOM helpers ----------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function replace(container, ...children) {
  container.classList.remove("placeholder");
  container.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function placeholder(container, text) {
  container.classList.add("placeholder");
  container.replaceChildren(text);
}

function percent(score) {
  return `${(score * 100).toFixed(2)}%`;
}

// A score as a bar; its width is set through the CSSOM (the page's policy forbids inline style attributes).
function bar(score) {
  const fill = el("span");
  fill.style.width = `${(Math.max(0, Math.min(1, score)) * 100).toFixed(1)}%`;
  return el("span", { class: "bar" }, fill);
}

function dims(values) {
  return (values || []).map(Number).join("×");
}

function pngImage(base64, alt, kind, side, extra = {}) {
  return el("img", {
    src: `data:image/png;base64,${base64}`,
    alt,
    class: "picture",
    dataset: { kind, side, ...extra },
    title: "click to see it full size",
    onclick: () => zoom(base64, alt),
  });
}

// A picture at full size (mosaics of big layers are shrunk to fit the page).
function zoom(base64, caption) {
  const dialog = $("#zoom");
  $("#zoom-image").src = `data:image/png;base64,${base64}`;
  $("#zoom-image").alt = caption;
  $("#zoom-caption").textContent = caption;
  dialog.showModal();
}

function errorText(error) {
  return error instanceof ApiError ? error.message : `unexpected error: ${error.message || error}`;
}

function errorNode(error, what) {
  return el("p", { class: "error", dataset: { status: error.status ?? "" } }, `${what}: ${errorText(error)}`);
}

function limiter(count) {
  let active = 0;
  const queue = [];
  const next = () => {
    if (active >= count || queue.length === 0) return;
    active += 1;
    const { task, resolve, reject } = queue.shift();
    task()
      .then(resolve, reject)
      .finally(() => {
        active -= 1;
        next();
      });
  };
  return (task) =>
    new Promise((resolve, reject) => {
      queue.push({ task, resolve, reject });
      next();
    });
}

// -- state ----------------------------------------------------------------------------------------------

const state = {
  models: [], // [{name, versions: [{version, state, reason}]}]
  model: "",
  versions: { A: 0, B: 0 }, // B = 0: no comparison
  meta: { A: null, B: null },
  topK: 3,
  images: [], // {id, name, bytes, base64, url, results: {A, B}}
  selected: null,
  target: null, // the class explained; null = the top-1 class of A
  generation: 0, // bumped on every choice of model or version: answers to older choices are dropped
  cache: new Map(), // per image and version: activations and explanations; per version: filters
  nextId: 1,
};

const limited = limiter(IN_FLIGHT);
const api = new Api(askToken, (hasToken) => {
  $("#token-state").hidden = !hasToken;
});

function sides() {
  return state.versions.B ? SIDES : ["A"];
}

function versionPath(side) {
  return `/v1/models/${encodeURIComponent(state.model)}/versions/${state.versions[side]}`;
}

function sideName(side) {
  return `v${state.versions[side]}`;
}

function classCount(meta) {
  if (meta.labels && meta.labels.length) return meta.labels.length;
  if (meta.output_kind === "SIGMOID") return 2;
  const output = (meta.outputs || [])[0];
  return output ? output.dims.map(Number).reduce((a, b) => a * b, 1) : 1;
}

function labelOf(meta, index) {
  return meta.labels && index < meta.labels.length ? meta.labels[index] : String(index);
}

// Memoise a computation per key; a failed one is forgotten so that it can be asked again.
function cached(key, compute) {
  if (!state.cache.has(key)) {
    const promise = compute();
    promise.catch(() => state.cache.delete(key));
    state.cache.set(key, promise);
  }
  return state.cache.get(key);
}

// -- the token prompt -----------------------------------------------------------------------------------

function askToken(reason) {
  const dialog = $("#token-dialog");
  const form = $("#token-form");
  const input = $("#token-input");
  $("#token-reason").textContent = reason;
  input.value = "";
  return new Promise((resolve) => {
    const finish = (value) => {
      form.removeEventListener("submit", submit);
      $("#token-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      dialog.close();
      resolve(value);
    };
    const submit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (token) finish(token);
    };
    const cancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    form.addEventListener("submit", submit);
    $("#token-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
    input.focus();
  });
}

// -- the banner -----------------------------------------------------------------------------------------

function showBanner(text, action = null) {
  const banner = $("#banner");
  const buttons = [el("button", { type: "button", onclick: hideBanner }, "dismiss")];
  if (action) buttons.unshift(el("button", { type: "button", onclick: action.run }, action.label));
  banner.replaceChildren(el("span", { text }), el("span", { class: "banner-buttons" }, buttons));
  banner.hidden = false;
}

function hideBanner() {
  $("#banner").hidden = true;
}

// -- the location: /models/{model}[/versions/{version}][?compare={version}] -------------------------------

function parseLocation() {
  const match = location.pathname.match(/^\/models\/([^/]+)(?:\/versions\/([^/]+))?\/?$/);
  const compare = new URLSearchParams(location.search).get("compare");
  return {
    model: match ? decodeURIComponent(match[1]) : null,
    version: match && match[2] !== undefined ? match[2] : null,
    compare: compare || null,
  };
}

function updateLocation() {
  let path = `/models/${encodeURIComponent(state.model)}/versions/${state.versions.A}`;
  if (state.versions.B) path += `?compare=${state.versions.B}`;
  if (location.pathname + location.search !== path) history.replaceState(null, "", path);
}

// -- models and versions --------------------------------------------------------------------------------

function availableVersions(name) {
  const model = state.models.find((m) => m.name === name);
  return model
    ? model.versions.filter((v) => v.state === "AVAILABLE").map((v) => Number(v.version)).sort((a, b) => b - a)
    : [];
}

function renderPickers() {
  const modelSelect = $("#model");
  modelSelect.replaceChildren(
    el("option", { value: "", disabled: true, selected: !state.model }, "choose a model"),
    ...state.models.map((m) =>
      el(
        "option",
        { value: m.name, selected: m.name === state.model, disabled: availableVersions(m.name).length === 0 },
        availableVersions(m.name).length ? m.name : `${m.name} (unavailable)`,
      ),
    ),
  );
  modelSelect.disabled = state.models.length === 0;
  const model = state.models.find((m) => m.name === state.model);
  const versions = model ? model.versions.filter((v) => Number(v.version) > 0) : [];
  const options = (chosen, other, none) => [
    ...(none ? [el("option", { value: "", selected: !chosen }, none)] : []),
    ...versions
      .slice()
      .sort((a, b) => Number(b.version) - Number(a.version))
      .map((v) =>
        el(
          "option",
          {
            value: v.version,
            selected: Number(v.version) === chosen,
            disabled: v.state !== "AVAILABLE" || Number(v.version) === other,
            title: v.reason || undefined,
          },
          v.state === "AVAILABLE" ? `v${v.version}` : `v${v.version} (${v.state.toLowerCase()})`,
        ),
      ),
  ];
  $("#version").replaceChildren(...options(state.versions.A, 0, null));
  $("#version").disabled = versions.length === 0;
  $("#compare").replaceChildren(...options(state.versions.B, state.versions.A, "no other version"));
  $("#compare").disabled = availableVersions(state.model).length < 2;
}

async function loadModels() {
  const answer = await api.call("GET", "/v1/models");
  state.models = (answer.models || []).map((m) => ({ name: m.name, versions: m.versions || [] }));
}

async function chooseModel(name, version, compare) {
  state.generation += 1;
  state.model = name;
  state.versions = { A: Number(version) || availableVersions(name)[0] || 0, B: Number(compare) || 0 };
  if (state.versions.B === state.versions.A) state.versions.B = 0;
  state.meta = { A: null, B: null };
  state.target = null;
  state.cache.clear();
  renderPickers();
  const generation = state.generation;
  let metas;
  try {
    // A version the URL names goes to the server as written: its answer says what is wrong with it.
    const asked = { A: version || state.versions.A, B: state.versions.B };
    metas = await Promise.all(
      sides().map((side) => {
        const path = `/v1/models/${encodeURIComponent(name)}`;
        return api.call("GET", asked[side] ? `${path}/versions/${encodeURIComponent(asked[side])}` : path);
      }),
    );
  } catch (error) {
    if (generation !== state.generation) return;
    const which = `model “${name}”${version ? ` version ${version}` : ""}`;
    showBanner(`Cannot open ${which}: ${errorText(error)}`);
    state.model = "";
    renderPickers();
    renderAll();
    return;
  }
  if (generation !== state.generation) return;
  hideBanner();
  sides().forEach((side, i) => {
    state.meta[side] = metas[i];
  });
  state.versions.A = Number(metas[0].version);
  updateLocation();
  renderPickers();
  const classes = classCount(state.meta.A);
  $("#top-k").max = String(classes);
  state.topK = Math.min(state.topK, classes);
  $("#top-k").value = String(state.topK);
  renderAll();
  for (const image of state.images) classifyImage(image);
}

// -- images ---------------------------------------------------------------------------------------------

async function addFiles(files) {
  const list = Array.from(files || []).filter((f) => f && f.size !== undefined);
  if (list.length === 0) return;
  const added = await Promise.all(
    list.map(async (file, i) => {
      const bytes = new Uint8Array(await file.arrayBuffer());
      return {
        id: state.nextId++,
        name: file.name || `pasted image ${i + 1}`,
        bytes,
        base64: toBase64(bytes),
        url: URL.createObjectURL(file),
        results: {},
      };
    }),
  );
  state.images.push(...added);
  renderGallery();
  if (!state.selected) selectImage(added[0]);
  for (const image of added) classifyImage(image);
}

function clearImages() {
  for (const image of state.images) URL.revokeObjectURL(image.url);
  state.images = [];
  state.selected = null;
  state.cache.clear();
  renderAll();
}

async function classifyImage(image) {
  if (!state.model || !state.meta.A) return;
  const generation = state.generation;
  await Promise.all(
    sides().map(async (side) => {
      image.results[side] = { pending: true };
      renderCard(image);
      let result;
      try {
        result = await limited(() => infer(side, image));
      } catch (error) {
        result = { error };
      }
      if (generation !== state.generation) return;
      image.results[side] = result;
      renderCard(image);
      renderSummary();
      if (image === state.selected) renderPrediction();
    }),
  );
  if (generation === state.generation && image === state.selected) renderImageDetail();
}

// Every class's probability through the Open Inference Protocol: the encoded image as a BYTES input that
// the server decodes with the model's own preprocessing, through the same batcher as Classify.
async function infer(side, image) {
  const meta = state.meta[side];
  const answer = await api.call(
    "POST",
    `/v2/models/${encodeURIComponent(state.model)}/versions/${state.versions[side]}/infer`,
    {
      inputs: [
        { name: meta.input.name, datatype: "BYTES", shape: [1], data: [image.base64], parameters: { content_type: "base64" } },
      ],
      outputs: [{ name: "probabilities" }],
    },
  );
  const output = (answer.outputs || []).find((o) => o.name === "probabilities");
  if (!output) throw new ApiError(500, "INTERNAL", "the answer holds no probabilities");
  const predictions = output.data
    .map((score, index) => ({ index, score, label: labelOf(meta, index) }))
    .sort((a, b) => b.score - a.score || a.index - b.index);
  return { version: Number(answer.model_version), predictions };
}

function top1(image, side) {
  const result = image.results[side];
  return result && result.predictions ? result.predictions[0] : null;
}

function disagrees(image) {
  if (!state.versions.B) return false;
  const a = top1(image, "A");
  const b = top1(image, "B");
  return Boolean(a && b && a.index !== b.index);
}

// -- the gallery ----------------------------------------------------------------------------------------

function renderSummary() {
  const count = state.images.length;
  const summary = $("#summary");
  $("#clear-images").hidden = count === 0;
  $("#only-disagreements-label").hidden = !state.versions.B || count === 0;
  if (count === 0) {
    summary.textContent = "No image yet.";
    return;
  }
  let text = `${count} image${count === 1 ? "" : "s"}`;
  if (state.versions.B) {
    const done = state.images.filter((i) => top1(i, "A") && top1(i, "B")).length;
    const differ = state.images.filter(disagrees).length;
    text += ` · ${sideName("A")} and ${sideName("B")} disagree on ${differ} of ${done}`;
    summary.dataset.disagreements = String(differ);
  }
  summary.textContent = text;
}

function renderGallery() {
  const gallery = $("#gallery");
  gallery.replaceChildren(...state.images.map(cardNode));
  renderSummary();
}

function renderCard(image) {
  const old = document.querySelector(`#gallery [data-id="${image.id}"]`);
  if (old) old.replaceWith(cardNode(image));
}

function sideResultNode(image, side) {
  const result = image.results[side];
  const head = state.versions.B ? el("span", { class: "tag" }, sideName(side)) : null;
  if (!result || result.pending) {
    return el("div", { class: "side pending", dataset: { side } }, head, "classifying…");
  }
  if (result.error) {
    return el("div", { class: "side", dataset: { side } }, head, errorNode(result.error, "not classified"));
  }
  const best = result.predictions.slice(0, state.topK);
  return el(
    "div",
    {
      class: "side",
      dataset: {
        side,
        version: result.version,
        top1Label: best[0].label,
        top1Index: best[0].index,
        top1Score: best[0].score,
      },
    },
    head,
    el(
      "ol",
      { class: "topk" },
      best.map((p) =>
        el(
          "li",
          { dataset: { label: p.label, index: p.index, score: p.score }, title: `${p.label}: ${p.score}` },
          el("span", { class: "label" }, p.label),
          bar(p.score),
          el("span", { class: "score" }, percent(p.score)),
        ),
      ),
    ),
  );
}

function cardNode(image) {
  const differ = disagrees(image);
  const hidden = $("#only-disagreements").checked && state.versions.B && !differ;
  return el(
    "li",
    {
      class: `card${image === state.selected ? " selected" : ""}${differ ? " disagree" : ""}`,
      dataset: { id: image.id, name: image.name },
      hidden,
    },
    el(
      "button",
      { type: "button", class: "thumb", title: `show ${image.name}`, onclick: () => selectImage(image) },
      el("img", { src: image.url, alt: image.name }),
    ),
    el(
      "div",
      { class: "card-body" },
      el("div", { class: "name", title: image.name }, image.name, differ ? el("span", { class: "badge" }, "disagree") : null),
      sides().map((side) => sideResultNode(image, side)),
    ),
  );
}

// -- the chosen image -----------------------------------------------------------------------------------

function selectImage(image) {
  state.selected = image;
  state.target = null;
  for (const card of document.querySelectorAll("#gallery .card")) {
    card.classList.toggle("selected", Number(card.dataset.id) === image.id);
  }
  renderPrediction();
  renderImageDetail();
}

function renderAll() {
  renderGallery();
  renderPrediction();
  renderImageDetail();
  renderFilters();
  renderMetadata();
}

function renderPrediction() {
  const container = $("#prediction");
  const image = state.selected;
  if (!image || !state.meta.A) {
    placeholder(container, state.meta.A ? "Choose an image to see every class's score." : "Choose a model.");
    return;
  }
  const meta = state.meta.A;
  const scores = {};
  for (const side of sides()) {
    const result = image.results[side];
    if (result && result.predictions) {
      scores[side] = new Map(result.predictions.map((p) => [p.index, p.score]));
    }
  }
  const winners = Object.fromEntries(sides().map((side) => [side, top1(image, side)?.index ?? null]));
  const rows = [];
  for (let index = 0; index < classCount(meta); index += 1) {
    rows.push(
      el(
        "tr",
        { class: sides().some((s) => winners[s] === index) ? "winner" : undefined, dataset: { index } },
        el("th", { scope: "row" }, labelOf(meta, index)),
        sides().map((side) => {
          const score = scores[side]?.get(index);
          return el(
            "td",
            { dataset: { side, score: score ?? "" } },
            score === undefined ? "…" : [bar(score), percent(score)],
          );
        }),
        state.versions.B ? deltaCell(scores.A?.get(index), scores.B?.get(index)) : null,
      ),
    );
  }
  const head = el(
    "tr",
    {},
    el("th", { scope: "col" }, "class"),
    sides().map((side) => el("th", { scope: "col" }, sideName(side))),
    state.versions.B ? el("th", { scope: "col", title: "B minus A, in percentage points" }, "change") : null,
  );
  const nodes = [
    el("div", { class: "chosen" }, el("img", { src: image.url, alt: image.name }), el("strong", {}, image.name)),
  ];
  if (disagrees(image)) {
    const a = top1(image, "A");
    const b = top1(image, "B");
    nodes.push(
      el(
        "p",
        { class: "disagreement" },
        `${sideName("A")} says ${a.label} (${percent(a.score)}), ${sideName("B")} says ${b.label} (${percent(b.score)}).`,
      ),
    );
  }
  for (const side of sides()) {
    const result = image.results[side];
    if (result && result.error) nodes.push(errorNode(result.error, `${sideName(side)} could not classify it`));
  }
  nodes.push(el("table", { class: `scores sides-${sides().length}` }, el("thead", {}, head), el("tbody", {}, rows)));
  replace(container, nodes);
}

function deltaCell(a, b) {
  if (a === undefined || b === undefined) return el("td", { class: "delta" }, "…");
  const points = (b - a) * 100;
  const text = `${points >= 0 ? "+" : "−"}${Math.abs(points).toFixed(2)}`;
  return el("td", { class: `delta${Math.abs(points) >= 1 ? " notable" : ""}` }, text);
}

function renderTargetPicker() {
  const select = $("#target-class");
  const image = state.selected;
  const meta = state.meta.A;
  if (!image || !meta) {
    select.replaceChildren();
    select.disabled = true;
    return null;
  }
  const best = top1(image, "A");
  const target = state.target ?? best?.index ?? null;
  if (target === null) {
    select.disabled = true;
    return null;
  }
  const options = [];
  for (let index = 0; index < classCount(meta); index += 1) {
    const suffix = index === best?.index ? " (top-1)" : "";
    options.push(el("option", { value: index, selected: index === target }, `${labelOf(meta, index)}${suffix}`));
  }
  select.replaceChildren(...options);
  select.disabled = false;
  return target;
}

function renderImageDetail() {
  const image = state.selected;
  const explanations = $("#explanations");
  const activations = $("#activations");
  if (!image || !state.meta.A) {
    renderTargetPicker();
    placeholder(explanations, "Choose an image to see what made the model answer.");
    placeholder(activations, "Choose an image to see what each layer computes.");
    return;
  }
  renderActivations(image);
  const target = renderTargetPicker();
  if (target === null) {
    const failed = image.results.A && image.results.A.error;
    placeholder(explanations, failed ? "The image could not be classified." : "Waiting for the prediction…");
    return;
  }
  renderExplanations(image, target);
}

function pairRow(title, subtitle, renderSide) {
  const row = el("div", { class: "row" }, el("h3", {}, title, subtitle ? el("small", {}, subtitle) : null));
  const pair = el("div", { class: `pair sides-${sides().length}` });
  row.append(pair);
  for (const side of sides()) {
    const slot = el("figure", { dataset: { side } }, el("div", { class: "loading" }, "computing…"));
    if (state.versions.B) slot.append(el("figcaption", {}, sideName(side)));
    pair.append(slot);
    renderSide(side, slot);
  }
  return row;
}

function fill(slot, node) {
  slot.querySelector(".loading, .picture, .error")?.replaceWith(node);
}

function renderActivations(image) {
  const container = $("#activations");
  const generation = state.generation;
  const layers = state.meta.A.activation_layers || [];
  if (layers.length === 0) {
    placeholder(container, "This model exposes no activation layer.");
    return;
  }
  const fetchSide = (side) =>
    cached(`activations/${image.id}/${state.versions[side]}`, () =>
      limited(() =>
        api.call("POST", `${versionPath(side)}/activations?fields=layers.layer,layers.mosaic_png`, {
          images: [{ encoded: image.base64 }],
          mosaic: true,
        }),
      ),
    );
  const rows = layers.map((layer) =>
    pairRow(layer.name, `${layer.kind} · ${dims(layer.dims)}`, (side, slot) => {
      fetchSide(side).then(
        (answer) => {
          if (generation !== state.generation || image !== state.selected) return;
          const found = (answer.layers || []).find((l) => l.layer === layer.name);
          fill(
            slot,
            found
              ? pngImage(found.mosaic_png, `${layer.name} feature maps`, "activation", side, { layer: layer.name })
              : el("p", { class: "error" }, `${sideName(side)} has no layer ${layer.name}`),
          );
        },
        (error) => fill(slot, errorNode(error, "activations")),
      );
    }),
  );
  replace(container, el("div", { class: `rows sides-${sides().length}` }, rows));
}

const METHOD_TITLES = {
  OCCLUSION: ["Occlusion", "how much the class's probability drops when a patch over each pixel is blanked"],
  GRADCAM: ["Grad-CAM", "where the last convolution's features drive the class"],
};

function renderExplanations(image, target) {
  const container = $("#explanations");
  const generation = state.generation;
  const methods = state.meta.A.explain_methods || ["OCCLUSION"];
  const rows = methods.map((method) => {
    const [title, subtitle] = METHOD_TITLES[method] || [method, ""];
    return pairRow(title, subtitle, (side, slot) => {
      if (!(state.meta[side].explain_methods || []).includes(method)) {
        fill(slot, el("p", { class: "error" }, `${sideName(side)} offers no ${title}`));
        return;
      }
      cached(`explain/${image.id}/${state.versions[side]}/${method}/${target}`, () =>
        limited(() =>
          api.call("POST", `${versionPath(side)}/explain?fields=method,target,overlay_png`, {
            image: { encoded: image.base64 },
            method,
            target_class: target,
            has_target_class: true,
            overlay: true,
          }),
        ),
      ).then(
        (answer) => {
          if (generation !== state.generation || image !== state.selected) return;
          const picture = pngImage(answer.overlay_png, `${title} for ${answer.target.label}`, method.toLowerCase(), side, {
            target: answer.target.index,
          });
          const wrap = el(
            "div",
            { class: "picture-with-note" },
            picture,
            el("small", {}, `${answer.target.label}: ${percent(answer.target.score)} on the image`),
          );
          fill(slot, wrap);
        },
        (error) => fill(slot, errorNode(error, title)),
      );
    });
  });
  replace(container, el("div", { class: `rows sides-${sides().length}` }, rows));
}

// -- filters (per version) ------------------------------------------------------------------------------

function kernelNote(answer) {
  const shape = answer.kernel && answer.kernel.shape ? answer.kernel.shape.map(Number) : [];
  return shape.length === 4
    ? `kernel ${shape[0]}×${shape[1]}, ${shape[2]} in → ${shape[3]} out`
    : shape.length === 2
      ? `${shape[0]} in → ${shape[1]} out`
      : "";
}

function renderFilters() {
  const container = $("#filters");
  const meta = state.meta.A;
  if (!meta) {
    placeholder(container, "Choose a model.");
    return;
  }
  const layers = meta.weight_layers || [];
  if (layers.length === 0) {
    placeholder(container, "This model has no Conv or Dense layer with weights.");
    return;
  }
  replace(container, el("div", { class: `rows sides-${sides().length}` }, layers.map((layer) => filterRow(layer, -1))));
}

function filterRow(layer, channel) {
  const generation = state.generation;
  const notes = {};
  const row = pairRow(layer, "", (side, slot) => {
    cached(`filters/${state.versions[side]}/${layer}/${channel}`, () =>
      limited(() =>
        api.call(
          "GET",
          `${versionPath(side)}/filters/${encodeURIComponent(layer)}?mosaic=true&input_channel=${channel}` +
            "&fields=layer,mosaic_png,kernel.shape",
        ),
      ),
    ).then(
      (answer) => {
        if (generation !== state.generation) return;
        notes[side] = answer;
        fill(slot, pngImage(answer.mosaic_png, `${layer} filters`, "filter", side, { layer }));
        const heading = row.querySelector("h3");
        if (!heading.querySelector("small")) heading.append(el("small", {}, kernelNote(answer)));
        addChannelPicker(row, layer, answer, channel);
      },
      (error) => fill(slot, errorNode(error, "filters")),
    );
  });
  row.dataset.layer = layer;
  return row;
}

// A convolution reading several channels shows their mean, or one channel chosen here.
function addChannelPicker(row, layer, answer, channel) {
  const shape = answer.kernel && answer.kernel.shape ? answer.kernel.shape.map(Number) : [];
  const first = (state.meta.A.weight_layers || [])[0] === layer;
  const rgb = first && state.meta.A.preprocessing?.color_mode === "RGB";
  if (shape.length !== 4 || shape[2] < 2 || rgb || row.querySelector("select")) return;
  const options = [el("option", { value: -1, selected: channel === -1 }, `mean of the ${shape[2]} input channels`)];
  for (let c = 0; c < shape[2]; c += 1) options.push(el("option", { value: c, selected: channel === c }, `input channel ${c}`));
  const select = el(
    "select",
    { "aria-label": `${layer} input channel`, onchange: () => row.replaceWith(filterRow(layer, Number(select.value))) },
    options,
  );
  row.querySelector("h3").append(select);
}

// -- the model's metadata -------------------------------------------------------------------------------

function parityFacts(parity) {
  if (!parity) return [["parity", "no parity record"]];
  const facts = [];
  if (parity.passed !== undefined) facts.push(["parity check", parity.passed ? "passed" : "FAILED"]);
  const output = parity.output || {};
  const bounds = parity.thresholds || {};
  if (output.max_abs_error !== undefined) {
    const bound = bounds.max_abs_error !== undefined ? ` (bound ${bounds.max_abs_error})` : "";
    facts.push(["max abs error vs Keras", `${Number(output.max_abs_error).toExponential(2)}${bound} over ${output.samples} samples`]);
  }
  if (output.top1_agreement !== undefined) facts.push(["top-1 agreement", percent(output.top1_agreement)]);
  const e2e = parity.end_to_end || {};
  for (const format of ["png", "jpeg"]) {
    if (e2e[format]) facts.push([`end to end, ${format.toUpperCase()} files`, `${percent(e2e[format].top1_agreement)} top-1 agreement on ${e2e[format].images} images`]);
  }
  if (parity.versions) {
    facts.push(["exported with", Object.entries(parity.versions).map(([k, v]) => `${k} ${v}`).join(", ")]);
  }
  if (parity.exported_at) facts.push(["exported at", parity.exported_at]);
  return facts;
}

function metadataFacts(meta) {
  const pre = meta.preprocessing || {};
  const input = meta.input || {};
  let parity = null;
  try {
    parity = meta.parity_json ? JSON.parse(meta.parity_json) : null;
  } catch {
    parity = null;
  }
  const layers = (meta.activation_layers || []).map((l) => `${l.name} (${l.kind}, ${dims(l.dims)})`).join(", ");
  return {
    parity,
    facts: [
      ["version", `v${meta.version}`],
      ["versions", (meta.versions || []).map((v) => `v${v.version} ${v.state.toLowerCase()}${v.reason ? `: ${v.reason}` : ""}`).join("; ")],
      ["input", `${input.name} · ${input.data_type} · ${dims(input.dims)}`],
      ["output", `${meta.output_kind} · ${classCount(meta)} classes`],
      ["labels", (meta.labels || []).join(", ") || "none (class indices)"],
      [
        "preprocessing",
        `${pre.color_mode}, resized to ${pre.height}×${pre.width} (${pre.resize_filter}), value × ${pre.scale} + ${pre.offset}`,
      ],
      ["execution providers", (meta.execution_providers || []).join(", ")],
      ["max batch size", String(meta.max_batch_size)],
      ["activation layers", layers || "none"],
      ["weight layers", (meta.weight_layers || []).join(", ") || "none"],
      ["explanations", (meta.explain_methods || []).join(", ")],
      ...parityFacts(parity),
    ],
  };
}

function renderMetadata() {
  const container = $("#metadata");
  if (!state.meta.A) {
    placeholder(container, "Choose a model.");
    return;
  }
  const described = Object.fromEntries(sides().map((side) => [side, metadataFacts(state.meta[side])]));
  const names = described.A.facts.map(([name]) => name);
  const rows = names.map((name, i) =>
    el(
      "tr",
      { dataset: { fact: name } },
      el("th", { scope: "row" }, name),
      sides().map((side) => el("td", { dataset: { side } }, described[side].facts[i]?.[1] ?? "")),
    ),
  );
  const head = state.versions.B
    ? el("thead", {}, el("tr", {}, el("th", {}, state.model), sides().map((side) => el("th", {}, sideName(side)))))
    : el("thead", {}, el("tr", {}, el("th", {}, "model"), el("th", {}, state.model)));
  const raw = sides().map((side) =>
    el(
      "details",
      {},
      el("summary", {}, `parity.json of ${sideName(side)}`),
      el("pre", {}, described[side].parity ? JSON.stringify(described[side].parity, null, 2) : "none"),
    ),
  );
  replace(container, el("table", { class: "facts" }, head, el("tbody", {}, rows)), raw);
}

// -- wiring ---------------------------------------------------------------------------------------------

function imageFilesOf(transfer) {
  if (!transfer) return [];
  if (transfer.files && transfer.files.length) return Array.from(transfer.files);
  return Array.from(transfer.items || [])
    .filter((item) => item.kind === "file")
    .map((item) => item.getAsFile())
    .filter(Boolean);
}

function wire() {
  const dropzone = $("#dropzone");
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) dropzone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    addFiles(imageFilesOf(event.dataTransfer));
  });
  document.addEventListener("paste", (event) => {
    const files = imageFilesOf(event.clipboardData);
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
  $("#files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  $("#model").addEventListener("change", (event) => chooseModel(event.target.value, 0, 0));
  $("#version").addEventListener("change", (event) => chooseModel(state.model, event.target.value, state.versions.B));
  $("#compare").addEventListener("change", (event) => chooseModel(state.model, state.versions.A, event.target.value));
  $("#top-k").addEventListener("change", (event) => {
    const value = Math.round(Number(event.target.value));
    const classes = state.meta.A ? classCount(state.meta.A) : 10;
    state.topK = Math.max(1, Math.min(Number.isFinite(value) ? value : 1, classes));
    event.target.value = String(state.topK);
    renderGallery();
  });
  $("#target-class").addEventListener("change", (event) => {
    state.target = Number(event.target.value);
    renderImageDetail();
  });
  $("#only-disagreements").addEventListener("change", renderGallery);
  $("#clear-images").addEventListener("click", clearImages);
  $("#forget-token").addEventListener("click", () => api.forgetToken());
  $("#pickers").addEventListener("submit", (event) => event.preventDefault());
  $("#zoom").addEventListener("click", () => $("#zoom").close());
}

async function start() {
  const wanted = parseLocation();
  try {
    await loadModels();
  } catch (error) {
    const retry = { label: error.status === 401 ? "enter a token" : "retry", run: () => { hideBanner(); start(); } };
    showBanner(`Cannot list the models: ${errorText(error)}`, retry);
    $("#model").replaceChildren(el("option", { value: "" }, "unavailable"));
    return;
  }
  renderPickers();
  if (wanted.model !== null) {
    await chooseModel(wanted.model, wanted.version, wanted.compare);
    return;
  }
  const first = state.models.find((m) => availableVersions(m.name).length > 0);
  if (first) await chooseModel(first.name, 0, 0);
  else showBanner("This server serves no model yet: publish one to its repository and reload.");
}

document.body.dataset.state = "starting";
wire();
start().finally(() => {
  document.body.dataset.state = "ready";
});

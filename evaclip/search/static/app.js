// The search page: text search, search by a dropped or chosen image, zero-shot classification of that image.
"use strict";

const $ = (id) => document.getElementById(id);
let uploaded = null;  // the File last dropped or chosen

function message(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "muted";
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function showResults(results, what) {
  const grid = $("grid");
  grid.replaceChildren();
  for (const r of results) {
    const card = document.createElement("a");
    card.className = "card";
    card.href = r.url;
    card.target = "_blank";
    card.rel = "noopener";
    card.title = r.caption ? `${r.path}\n${r.caption}` : r.path;
    const img = document.createElement("img");
    img.src = r.thumbnail;
    img.alt = r.caption || r.path;
    img.loading = "lazy";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = r.path;
    card.append(img, score, path);
    grid.append(card);
  }
  message(results.length ? `${results.length} results for ${what}` : `no results for ${what}`);
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = $("query").value.trim();
  if (!q) return;
  message("searching…");
  try {
    const body = await api(`/api/search?q=${encodeURIComponent(q)}&k=${$("k").value}`);
    showResults(body.results, `“${q}”`);
  } catch (e) { message(e.message, true); }
});

async function searchByImage(file) {
  uploaded = file;
  $("upload").hidden = false;
  $("upload-preview").src = URL.createObjectURL(file);
  $("classes").replaceChildren();
  const form = new FormData();
  form.append("image", file);
  message("searching by image…");
  try {
    const body = await api(`/api/search?k=${$("k").value}`, { method: "POST", body: form });
    showResults(body.results, `image ${file.name}`);
  } catch (e) { message(e.message, true); }
}

$("file").addEventListener("change", () => { if ($("file").files[0]) searchByImage($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) searchByImage(file);
});

$("classify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!uploaded) return;
  const form = new FormData();
  form.append("image", uploaded);
  form.append("labels", $("labels").value);
  try {
    const body = await api("/api/classify", { method: "POST", body: form });
    const list = $("classes");
    list.replaceChildren();
    for (const r of body.results) {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(100 * r.probability)}%`;
      const text = document.createElement("span");
      text.textContent = `${r.label} ${(100 * r.probability).toFixed(1)}%`;
      li.append(bar, text);
      list.append(li);
    }
  } catch (e) { message(e.message, true); }
});

api("/api/health").then(
  (h) => { $("status").textContent = `${h.count} images · ${h.model}`; },
  (e) => { $("status").textContent = e.message; });

// Runs the review page's own script (static/review.html) in Node against a live `matcher serve`, with a
// minimal DOM in place of a browser's: for machines without Chromium. It cannot check layout or that images
// decode; it checks what the script asks the service for and what it puts on the page.
// Usage: node review_page_smoke.mjs BASE_URL PAGE.html USER_ID   -> prints one JSON object.
import fs from "node:fs";

const [base, pagePath, userId] = process.argv.slice(2);
const html = fs.readFileSync(pagePath, "utf8");
const script = html.match(/<script>([\s\S]*)<\/script>/)[1];

class El {
  constructor(tag, id = null) {
    this.tagName = tag; this.id = id; this.children = []; this.dataset = {}; this.hidden = false;
    this.checked = false; this.value = ""; this.className = ""; this._text = ""; this.onclick = null;
    this.onchange = null; this.src = ""; this.alt = "";
  }
  append(...items) { for (const x of items) this.children.push(typeof x === "string" ? new Text(x) : x); }
  set textContent(t) { this._text = String(t); this.children = []; }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  set innerHTML(h) { this._html = h; this._uid = new El("span"); this.children = [this._uid]; this._text = h.replace(/<[^>]+>/g, ""); }
  querySelector() { return this._uid ?? new El("span"); }
  all() { return [this, ...this.children.flatMap((c) => (c instanceof El ? c.all() : []))]; }
}
class Text { constructor(t) { this.t = t; } get textContent() { return this.t; } }

const byId = {};
for (const m of html.matchAll(/<(\w+)([^>]*)\sid="([^"]+)"([^>]*)>/g)) {
  const el = new El(m[1], m[3]);
  const attrs = m[2] + m[4];
  el.value = attrs.match(/\svalue="([^"]*)"/)?.[1] ?? "";
  el.hidden = /\shidden\b/.test(attrs);
  byId[m[3]] = el;
}
const checkbox = byId.compare;
const document = {
  getElementById: (id) => byId[id],
  createElement: (tag) => new El(tag),
  body: new El("body"),
};
const storage = {};
const sandbox = {
  document,
  localStorage: { getItem: (k) => storage[k] ?? null, setItem: (k, v) => { storage[k] = v; } },
  location: new URL(`/review?user=${encodeURIComponent(userId)}`, base),
  fetch: (path, opts) => fetch(new URL(path, base), opts),
  URL, URLSearchParams, console,
};
const requests = [];
const realFetch = sandbox.fetch;
sandbox.fetch = (path, opts) => { requests.push(String(path)); return realFetch(path, opts); };

new Function(...Object.keys(sandbox), script)(...Object.values(sandbox));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(test, what) {
  for (let i = 0; i < 300; i++) { if (test()) return; await sleep(100); }
  throw new Error(`timed out waiting for ${what}; status: ${byId.status.textContent}`);
}
const matches = (col) => byId[`matches-${col}`].children.filter((c) => c.className === "match");

await until(() => document.body.dataset.ready, "the page to load");
const out = { ready: document.body.dataset.ready, status: byId.status.textContent };
out.who = byId.who.textContent;
out.own_photos = byId["own-photos"].children.length;
out.views_b = byId["view-b"].children.map((o) => o.value);
out.view_b = byId["view-b"].value;
out.matches_a = matches("a").map((m) => m.dataset.userId);
checkbox.checked = true;
checkbox.onchange();
await until(() => matches("b").length > 0 && byId["matches-b"].dataset.store, "column B");
out.column_b_hidden = byId["column-b"].hidden;
out.store_b = byId["matches-b"].dataset.store;
out.encoder_b = byId["encoder-b"].textContent;
out.matches_b = matches("b").map((m) => m.dataset.userId);
const photo = byId["matches-b"].all().find((e) => e.tagName === "img");
out.photo_b_src = photo.src;
const r = await realFetch(photo.src);
out.photo_b_status = r.status;
out.photo_b_type = r.headers.get("content-type");
await photo.onclick();
out.neighbour_store = byId.neighbours.dataset.store;
out.neighbour_owners = byId.neighbours.children.map((d) => d.dataset.userId ?? null);
out.requests = requests;
console.log(JSON.stringify(out));

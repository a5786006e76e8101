"""The operators' API reference at ``/admin/docs``: one self-contained HTML page (no CDN, no
asset to fetch) that reads ``/openapi.json`` in the browser and lists every operation with
its parameters, body and answer schemas.

It is public, like ``/openapi.json`` itself: the document describes shapes only and holds no
token, key or account data; calling an ``/admin`` operation still takes an operator token.
"""

from __future__ import annotations

HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Antex API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2em}
details{border:1px solid #ddd;border-radius:6px;margin:.4em 0;padding:.3em .7em}
summary{cursor:pointer}
.m{display:inline-block;width:4.5em;font:bold 13px monospace;text-transform:uppercase}
.get{color:#2a7}.post{color:#27c}.put{color:#a60}.delete{color:#c33}
code,pre{font:13px monospace;background:#f6f6f6}pre{padding:.5em;overflow:auto}
</style></head><body>
<h1 id="title">Antex API reference</h1><p id="intro">Loading /openapi.json&hellip;</p>
<div id="ops"></div>
<script>
"use strict";
const el = (tag, text, cls) => {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
};
const show = (title, value) => {
  const box = el("div");
  box.append(el("strong", title), el("pre", JSON.stringify(value, null, 2)));
  return box;
};
fetch("/openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("intro").textContent = doc.info.description;
  const schemas = doc.components.schemas, byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (method === "parameters") continue;
      const tag = (op.tags || ["other"])[0];
      (byTag[tag] = byTag[tag] || []).push([method, path, op, item.parameters || []]);
    }
  }
  const ref = s => s && s.$ref ? {[s.$ref.split("/").pop()]: schemas[s.$ref.split("/").pop()]} : s;
  const root = document.getElementById("ops");
  for (const [tag, ops] of Object.entries(byTag)) {
    root.append(el("h2", tag));
    for (const [method, path, op, shared] of ops) {
      const d = el("details"), s = el("summary");
      s.append(el("span", method, "m " + method), el("code", path), " " + (op.summary || ""));
      d.append(s, el("p", "operationId: " + op.operationId));
      const params = [...shared, ...(op.parameters || [])];
      if (params.length) {
        const list = el("ul");
        for (const p of params) {
          list.append(el("li", p.in + " " + p.name + ": " + (p.description || "")));
        }
        d.append(el("strong", "Parameters"), list);
      }
      const body = op.requestBody && op.requestBody.content["application/json"];
      if (body) d.append(show("Request body", ref(body.schema)));
      for (const [status, res] of Object.entries(op.responses)) {
        const json = res.content && res.content["application/json"];
        const text = status + " " + (res.description || (res.$ref || "").split("/").pop());
        d.append(json ? show(text, ref(json.schema)) : el("p", text));
      }
      root.append(d);
    }
  }
  root.append(el("h2", "schemas"));
  for (const [name, schema] of Object.entries(schemas)) {
    const d = el("details");
    d.append(el("summary", name), el("pre", JSON.stringify(schema, null, 2)));
    root.append(d);
  }
}).catch(err => { document.getElementById("intro").textContent = "Could not load: " + err; });
</script></body></html>
"""

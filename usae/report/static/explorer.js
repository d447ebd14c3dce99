/* USAE concept explorer: concepts.html (table) and concept.html (one concept).
   Data comes from <script> files that set window.USAE_META, USAE_CONCEPTS, USAE_CONCEPT,
   so the pages work from disk (file://) with no network request. */
(function () {
  "use strict";

  // Viridis, 9 stops (same table as usae/report/explorer.py).
  var VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { if (c) { node.appendChild(c); } });
    return node;
  }

  // A text showing zero carries no sign: "-0.000" -> "0.000" (as usae/report/numbers.py).
  function unsigned(text) {
    return text.charAt(0) === "-" && !/[1-9]/.test(text.split("e")[0]) ? text.slice(1) : text;
  }

  // `real`: a measured value whose JSON may read as an integer (4.0 -> "4"): shown with decimals all the same.
  function fmt(v, real) {
    if (v === null || v === undefined) { return "\u2013"; }
    if (typeof v !== "number") { return String(v); }
    if (Number.isInteger(v) && !real) { return unsigned(v.toLocaleString("en")); }
    if (v !== 0 && Math.abs(v) < 0.001) { return unsigned(v.toExponential(2)); }
    return unsigned(v.toFixed(3));
  }

  // One format for a whole table column, chosen by usae.report.numbers.column_format (data/meta.js `formats`).
  function fmtAs(v, f) {
    if (!f || typeof v !== "number") { return fmt(v); }
    if (f.kind === "int") { return unsigned(Math.round(v).toLocaleString("en")); }
    if (f.kind === "percent") { return unsigned((100 * v).toFixed(f.digits)) + "%"; }
    if (f.kind === "sci") { return unsigned(v.toExponential(Math.max(f.digits - 1, 0)).replace(/e([+-])(\d)$/, "e$10$2")); }
    return unsigned(v.toFixed(f.digits));
  }

  function meta() { return window.USAE_META || { models: [], pages: [], grid: [1, 1], thumb_size: 128 }; }

  /* ---------- concepts.html ---------- */
  function columns(models) {
    var cols = [["id", "id"], ["factor", "factor"], ["factor_auroc", "AUROC"], ["fe", "firing entropy"],
      ["cofires", "co-fires"], ["cofires_chance", "co-fires by chance"], ["spread", "position spread"],
      ["energy_total", "energy"]];
    models.forEach(function (m) {
      cols.push(["fires_" + m, "fires " + m], ["energy_" + m, "energy " + m], ["share_" + m, "energy share " + m],
        ["cfp_" + m, "CFP " + m]);
    });
    return cols;
  }

  function compare(key, dir) {
    return function (a, b) {
      var x = a[key], y = b[key];
      if (x === null || x === undefined) { return (y === null || y === undefined) ? a.id - b.id : 1; }
      if (y === null || y === undefined) { return -1; }
      if (x < y) { return -dir; }
      if (x > y) { return dir; }
      return a.id - b.id;
    };
  }

  function initIndex() {
    var data = (window.USAE_CONCEPTS || []).slice();
    var info = meta();
    var pages = {};
    info.pages.forEach(function (id) { pages[id] = true; });
    var cols = columns(info.models);
    var formats = info.formats || {};
    var head = document.getElementById("head");
    var body = document.getElementById("rows");
    var filter = document.getElementById("filter");
    var onlyPages = document.getElementById("only-pages");
    var count = document.getElementById("count");
    var sort = { key: "id", dir: 1 };
    var rowOf = {};

    data.forEach(function (r) {
      var tr = el("tr", { "data-id": String(r.id) });
      cols.forEach(function (c) {
        var td = el("td", { "class": c[0] === "factor" ? "text" : "num" });
        if (c[0] === "id" && pages[r.id]) {
          td.appendChild(el("a", { href: "concept.html?id=" + r.id, text: String(r.id) }));
        } else {
          td.textContent = c[0] === "id" ? String(r.id) : fmtAs(r[c[0]], formats[c[0]]);
        }
        tr.appendChild(td);
      });
      rowOf[r.id] = tr;
      r._text = (String(r.id) + " " + (r.factor || "")).toLowerCase();
    });

    cols.forEach(function (c) {
      var th = el("th", { "data-key": c[0], title: "sort by " + c[1], text: c[1] });
      th.addEventListener("click", function () {
        sort = { key: c[0], dir: sort.key === c[0] ? -sort.dir : (c[0] === "id" || c[0] === "factor" ? 1 : -1) };
        render();
      });
      head.appendChild(th);
    });

    function render() {
      var q = filter.value.trim().toLowerCase();
      data.sort(compare(sort.key, sort.dir));
      var shown = 0;
      var frag = document.createDocumentFragment();
      data.forEach(function (r) {
        var ok = (!q || r._text.indexOf(q) !== -1 || String(r.id) === q) && (!onlyPages.checked || pages[r.id]);
        rowOf[r.id].hidden = !ok;
        if (ok) { shown += 1; }
        frag.appendChild(rowOf[r.id]);
      });
      body.appendChild(frag);
      Array.prototype.forEach.call(head.children, function (th) {
        th.className = th.getAttribute("data-key") === sort.key ? (sort.dir > 0 ? "sorted asc" : "sorted desc") : "";
      });
      count.textContent = shown + " of " + data.length + " concepts";
    }
    filter.addEventListener("input", render);
    onlyPages.addEventListener("change", render);
    render();
  }

  /* ---------- concept.html ---------- */
  function colour(v, alpha) {
    var pos = Math.min(Math.max(v, 0), 1) * (VIRIDIS.length - 1);
    var lo = Math.min(Math.floor(pos), VIRIDIS.length - 2);
    var f = pos - lo;
    var c = VIRIDIS[lo], d = VIRIDIS[lo + 1];
    return [c[0] + (d[0] - c[0]) * f, c[1] + (d[1] - c[1]) * f, c[2] + (d[2] - c[2]) * f,
      255 * alpha * Math.sqrt(Math.min(Math.max(v, 0), 1))];
  }

  // A grid of values drawn on `canvas` in viridis from 0 to `vmax`: over an image, smoothed (bilinear) with the
  // opacity growing with the value; alone (`cells`), each cell opaque and sharp (a firing map's token positions).
  function drawHeatmap(canvas, heatmap, vmax, alpha, cells) {
    var h = heatmap.length, w = heatmap[0].length;
    var small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    var sctx = small.getContext("2d");
    var img = sctx.createImageData(w, h);
    for (var i = 0; i < h; i += 1) {
      for (var j = 0; j < w; j += 1) {
        var rgba = colour(vmax > 0 ? heatmap[i][j] / vmax : 0, alpha);
        var k = 4 * (i * w + j);
        img.data[k] = rgba[0]; img.data[k + 1] = rgba[1]; img.data[k + 2] = rgba[2];
        img.data[k + 3] = cells ? 255 : rgba[3];
      }
    }
    sctx.putImageData(img, 0, 0);
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = !cells;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  // Where one model fires the concept on the image grid: the share of validation images per token position.
  function whereTile(where, model, size) {
    var canvas = el("canvas", { "class": "where", width: size, height: size,
      title: "where " + model + " fires the concept: the share of the " + fmt(where.n_images) +
        " validation images in which it fires at each patch, 0 to " + pct(where.max) });
    drawHeatmap(canvas, where.share, where.max, 1, true);
    return el("figure", { "class": "tile where" }, [el("span", { "class": "stack" }, [canvas]),
      el("figcaption", { text: "where: up to " + pct(where.max) + " of images" })]);
  }

  function pct(v) { return fmtAs(v, { kind: "percent", digits: 1 }); }

  var LEGEND = "Under each image: #N, the image's row in the manifest; max, the concept's largest activation Z_k " +
    "on any of its patches (images are ranked by it). Heatmap: Z_k on each patch, coloured from 0 (clear) to the " +
    "largest value over that model's top images (the bar under the model's name). Energy share: the concept's " +
    "energy in that model over its energy in all models. Where (last per model): the share of the validation " +
    "images in which the model fires the concept (Z_k > tau) at each patch, from 0 (dark) to the largest share " +
    "(under the map); a concept every model fires at the same patches of every image co-fires there by chance.";

  // The heatmaps' colour scale: viridis from 0 to `max` (same stops as static/style.css .scale .ramp).
  function scaleBar(max) {
    return el("div", { "class": "scale", title: "heatmap colour: Z_k per patch, 0 to " + fmt(max, true) }, [
      el("span", { "class": "lo", text: "0" }), el("span", { "class": "ramp" }),
      el("span", { "class": "hi", text: fmt(max, true) }), el("span", { "class": "what", text: "Z_k per patch" })]);
  }

  function stat(label, value) { return [el("dt", { text: label }), el("dd", { text: fmt(value) })]; }

  // MACO: the image optimised for one model (outlined, before the dataset images), its value beside it,
  // and the best dataset image's and the random-phase images' values with the ratios (same as card.html).
  function macoTile(t, alt, size) {
    var stack = el("span", { "class": "stack" }, [t.image
      ? el("img", { "class": "thumb", src: t.image, alt: alt, width: size, height: size })
      : el("span", { "class": "thumb missing", text: "MACO image missing" })]);
    var caption = el("figcaption", {}, [el("strong", { "class": "achieved", text: fmt(t.achieved, true) }),
      document.createTextNode(" MACO"), el("br"),
      document.createTextNode(t.best_dataset === null ? "no dataset image"
        : "best image " + fmt(t.best_dataset, true) + " (\u00d7" + fmt1(t.ratio_vs_dataset) + ")"), el("br"),
      document.createTextNode("random " + fmt(t.random_phase, true) + " (\u00d7" + fmt1(t.ratio_vs_random) + ")")]);
    return el("figure", { "class": "tile maco" }, [stack, caption]);
  }

  function fmt1(v) { return (v === null || v === undefined) ? "\u2013" : v.toFixed(1); }

  function macoCaption(objectiveText) {
    return el("p", { "class": "maco-caption", text: "Outlined, first per model: the image optimised for that model " +
      "(MACO) to maximise " + objectiveText + ". Under it the value it reaches, the best dataset image's value and " +
      "the ratio, and the value of random-phase images with the ratio." });
  }

  function renderConcept(c, info) {
    var card = document.getElementById("card");
    card.textContent = "";
    var s = c.summary;
    document.title = "USAE concept " + c.id;
    document.getElementById("crumb").textContent = "Concept " + c.id;
    var h = el("h1", { text: "Concept " + c.id });
    if (s.factor) { h.appendChild(el("span", { "class": "factor", text: s.factor })); }
    var dl = el("dl", { "class": "stats" });
    var chance = s.cofires_chance === null || s.cofires_chance === undefined ? [] : stat("by chance", s.cofires_chance);
    var spread = s.spread === null || s.spread === undefined ? [] : stat("position spread", s.spread);
    [].concat(stat("firing entropy", s.fe), stat("co-fires", s.cofires), chance, spread, stat("energy", s.energy_total),
      stat("factor AUROC", s.factor_auroc)).forEach(function (n) { dl.appendChild(n); });
    var article = el("article", { "class": "usae-card big" }, [h, dl]);
    var cols = el("div", { "class": "models" });
    var alpha = Number(document.getElementById("opacity").value) / 100;
    var canvases = [];
    info.models.forEach(function (m) {
      var block = c.models[m] || { top: [], max: 0 };
      var title = el("h4", { text: m + " " }, [el("small", {
        text: "fires " + fmt(s["fires_" + m]) + " \u00b7 energy " + fmt(s["energy_" + m]) +
          (s["share_" + m] === null || s["share_" + m] === undefined ? "" : " \u00b7 energy share " +
            fmtAs(s["share_" + m], { kind: "percent", digits: 0 })) +
          " \u00b7 CFP " + fmt(s["cfp_" + m]) +
          (s["factor_" + m] ? " \u00b7 " + s["factor_" + m] + " (" + fmt(s["factor_auroc_" + m]) + ")" : "")
      })]);
      var tiles = el("div", { "class": "tiles" });
      if (c.maco && c.maco.models[m]) {
        tiles.appendChild(macoTile(c.maco.models[m], "concept " + c.id + " optimised for " + m, info.thumb_size));
      }
      block.top.forEach(function (t) {
        var size = info.thumb_size;
        var stack = el("span", { "class": "stack" });
        if (t.thumb) {
          stack.appendChild(el("img", { "class": "thumb", src: t.thumb, alt: "image " + t.row, width: size, height: size }));
        } else if (!info.no_images) {
          stack.appendChild(el("span", { "class": "thumb missing", text: "image " + t.row + " unreadable" }));
        }
        if (t.heatmap) {
          var canvas = el("canvas", { "class": "overlay", width: size, height: size });
          stack.appendChild(canvas);
          canvases.push([canvas, t.heatmap, block.max]);
        }
        tiles.appendChild(el("figure", { "class": "tile" }, [info.no_images ? null : stack,
          el("figcaption", { text: "#" + t.row + " \u00b7 max " + fmt(t.value, true),
            title: "image " + t.row + " of the manifest; the concept's largest activation Z_k on its patches" })]));
      });
      if (!block.top.length) { tiles.appendChild(el("p", { "class": "empty", text: "never fires" })); }
      if (block.where && block.where.max > 0) { tiles.appendChild(whereTile(block.where, m, info.thumb_size)); }
      cols.appendChild(el("div", { "class": "model-col" }, [title, block.max > 0 ? scaleBar(block.max) : null, tiles]));
    });
    if (info.no_images) { article.appendChild(el("p", { "class": "empty", id: "no-images", text: info.no_images })); }
    article.appendChild(cols);
    article.appendChild(el("p", { "class": "legend", text: LEGEND }));
    if (c.maco) { article.appendChild(macoCaption(c.maco.objective_text)); }
    card.appendChild(article);
    function paint() {
      var a = Number(document.getElementById("opacity").value) / 100;
      canvases.forEach(function (x) { drawHeatmap(x[0], x[1], x[2], a); });
    }
    document.getElementById("opacity").addEventListener("input", paint);
    if (alpha >= 0) { paint(); }
    setLink("prev", c.prev);
    setLink("next", c.next);
  }

  function setLink(id, target) {
    var a = document.getElementById(id);
    if (target === null || target === undefined) { a.removeAttribute("href"); a.className = "disabled"; return; }
    a.href = "concept.html?id=" + target;
    a.className = "";
  }

  function message(text) {
    var card = document.getElementById("card");
    card.textContent = "";
    card.appendChild(el("p", { "class": "message", text: text }));
  }

  function initConcept() {
    var info = meta();
    var raw = new URLSearchParams(window.location.search).get("id");
    var id = raw === null ? NaN : Number(raw);
    var pages = info.pages;
    if (raw === null || raw === "" || !Number.isInteger(id)) {
      message(pages.length ? "No concept chosen: add ?id=<concept> to the address, or pick one from the list."
        : "No concept has a page.");
      if (pages.length) { setLink("next", pages[0]); }
      return;
    }
    if (pages.indexOf(id) === -1) {
      message("Concept " + raw + " has no page (it never fires, or was not selected for a page).");
      var after = pages.filter(function (p) { return p > id; });
      var before = pages.filter(function (p) { return p < id; });
      setLink("prev", before.length ? before[before.length - 1] : null);
      setLink("next", after.length ? after[0] : null);
      return;
    }
    var script = document.createElement("script");
    script.src = "data/c" + id + ".js";
    script.onload = function () {
      if (window.USAE_CONCEPT && window.USAE_CONCEPT.id === id) { renderConcept(window.USAE_CONCEPT, info); }
      else { message("The data of concept " + id + " did not load."); }
    };
    script.onerror = function () { message("The data of concept " + id + " is missing (data/c" + id + ".js)."); };
    document.body.appendChild(script);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.body.getAttribute("data-page");
    if (page === "concepts") { initIndex(); } else if (page === "concept") { initConcept(); }
  });
}());

/* msae dashboard front end: vanilla JS, no libraries, no network (works from file://).
 *
 * Data arrive as classic scripts that assign into window.MSAE_DASH: data/meta.js (loaded by
 * index.html) holds per-latent summary columns; data/page-NNNN.js files hold the cards and are
 * inserted on demand for the latents of the current view only, so a 16k-latent SAE stays fast.
 *
 * All state lives in the URL hash (#q=&sort=&dir=&view=&per=&latent=&dead=), so a view can be
 * bookmarked and tests can drive the page by URL. latent=<id> shows the view that contains that
 * latent under the current sort and filter; when the filter hides it, the search and the dead
 * filter are cleared so that it can be shown.
 *
 * Test hooks: body[data-ready] is "0" while rendering and "1" when done; #count starts with the
 * number of latents matching the filter; every card is .card[data-id]; #errors lists errors.
 */
(function () {
  "use strict";

  var DASH = (window.MSAE_DASH = window.MSAE_DASH || { pages: {} });
  DASH.pages = DASH.pages || {};
  var SORTS = ["id", "name", "freq", "freq_token", "mean", "max", "level"];
  var DESC_FIRST = { freq: 1, freq_token: 1, mean: 1, max: 1 };
  var DEFAULT_PER = 12;
  var el = function (id) { return document.getElementById(id); };
  var renderToken = 0;
  var pageLoads = {};
  var meta = null;
  var shownView = 0; // the view on screen (latent= overrides view=, so prev/next start from here)

  /* ---------- errors ---------- */
  function reportError(msg) {
    var box = el("errors");
    if (!box) { return; }
    var line = document.createElement("div");
    line.textContent = String(msg);
    box.appendChild(line);
    box.hidden = false;
  }
  window.addEventListener("error", function (ev) {
    // resource errors (img/script) do not bubble here; script errors do
    var where = ev.filename ? " (" + ev.filename.split("/").pop() + ":" + ev.lineno + ")" : "";
    var msg = ev.message || "unknown error";
    if (/^Script error\.?$/.test(msg)) { // file:// pages hide other scripts' error details
      msg = "a script failed (the browser hides the details of file:// scripts; the developer console shows them)";
    }
    reportError("error: " + msg + where);
  });
  window.addEventListener("unhandledrejection", function (ev) {
    var r = ev.reason;
    reportError("error: " + (r && r.message ? r.message : String(r)));
  });

  /* ---------- formatting ---------- */
  function fmt(x) {
    if (x === null || x === undefined || (typeof x === "number" && !isFinite(x))) { return "\u2013"; }
    if (x === 0) { return "0"; }
    var a = Math.abs(x);
    if (a < 1e-3 || a >= 1e5) { return x.toExponential(1); }
    return String(Number(x.toPrecision(3)));
  }
  function pct(x) {
    if (x === null || x === undefined || !isFinite(x)) { return "\u2013"; }
    if (x === 0) { return "0%"; }
    var p = x * 100;
    if (p < 0.01) { return "<0.01%"; }
    return (p < 1 ? p.toPrecision(2) : p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
  }
  function h(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) { return; }
        if (k === "text") { node.textContent = v; }
        else if (k === "cls") { node.className = v; }
        else if (k === "style") { node.setAttribute("style", v); }
        else { node.setAttribute(k, v === true ? "" : v); }
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined || c === false) { return; }
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  var SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  /* ---------- state in the hash ---------- */
  function readState() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    var sort = p.get("sort");
    if (SORTS.indexOf(sort) < 0) { sort = "id"; }
    var dir = p.get("dir");
    if (dir !== "asc" && dir !== "desc") { dir = DESC_FIRST[sort] ? "desc" : "asc"; }
    var per = parseInt(p.get("per"), 10);
    if (!(per >= 1 && per <= 500)) { per = DEFAULT_PER; }
    var view = parseInt(p.get("view"), 10);
    if (!(view >= 0)) { view = 0; }
    var latent = p.get("latent");
    latent = latent !== null && /^\s*\d+\s*$/.test(latent) ? parseInt(latent, 10) : null;
    return {
      q: (p.get("q") || "").trim(),
      sort: sort, dir: dir, per: per, view: view, latent: latent,
      dead: p.get("dead") === "hide" ? "hide" : "show"
    };
  }
  function hashOf(st) {
    var p = new URLSearchParams();
    if (st.q) { p.set("q", st.q); }
    p.set("sort", st.sort);
    p.set("dir", st.dir);
    p.set("view", String(st.view));
    p.set("per", String(st.per));
    if (st.latent !== null && st.latent !== undefined) { p.set("latent", String(st.latent)); }
    if (st.dead === "hide") { p.set("dead", "hide"); }
    return "#" + p.toString();
  }
  /** Change the state (dropping latent= unless given) and let hashchange re-render. */
  function go(changes) {
    var st = readState();
    st.latent = null;
    Object.keys(changes).forEach(function (k) { st[k] = changes[k]; });
    var next = hashOf(st);
    if (next === location.hash) { render(); } else { location.hash = next; }
  }
  function latentHref(id) {
    var st = readState();
    st.latent = id;
    return hashOf(st);
  }

  /* ---------- the index (filter, sort, view) ---------- */
  function matches(st) {
    var L = meta.latents;
    var n = meta.sae.d_sae;
    var q = st.q.toLowerCase();
    var asId = /^\d+$/.test(q) ? parseInt(q, 10) : null;
    var out = [];
    for (var i = 0; i < n; i++) {
      if (st.dead === "hide" && L.flag[i] === "dead") { continue; }
      if (q) {
        if (asId !== null) { if (i !== asId) { continue; } }
        else if (String(L.name[i] || "").toLowerCase().indexOf(q) < 0) { continue; }
      }
      out.push(i);
    }
    return out;
  }
  function sortKey(field) {
    var L = meta.latents;
    switch (field) {
      case "freq": return L.freq_image;
      case "freq_token": return L.freq_token;
      case "mean": return L.mean_active;
      case "max": return L.max;
      case "level": return L.level;
      case "name": return L.name;
      default: return null;
    }
  }
  function sortIds(ids, st) {
    var key = sortKey(st.sort);
    if (!key) { return st.dir === "desc" ? ids.slice().reverse() : ids; }
    var sign = st.dir === "desc" ? -1 : 1;
    var missing = function (v) { return v === null || v === undefined || v === "" || (typeof v === "number" && isNaN(v)); };
    return ids.slice().sort(function (a, b) {
      var va = key[a], vb = key[b];
      var ma = missing(va), mb = missing(vb);
      if (ma || mb) { return ma === mb ? a - b : (ma ? 1 : -1); } // missing values last
      var c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
      return c !== 0 ? sign * c : a - b;
    });
  }

  /* ---------- page files ---------- */
  function pageName(n) { return "data/page-" + ("000" + n).slice(-4) + ".js"; }
  function loadPage(n) {
    if (DASH.pages[n]) { return Promise.resolve(DASH.pages[n]); }
    if (pageLoads[n]) { return pageLoads[n]; }
    pageLoads[n] = new Promise(function (resolve, reject) {
      var tag = document.createElement("script");
      tag.src = pageName(n);
      tag.onload = function () {
        if (DASH.pages[n]) { resolve(DASH.pages[n]); return; }
        delete pageLoads[n];
        reject(new Error(pageName(n) + " loaded but did not define page " + n +
          " (corrupt or truncated file: rebuild the dashboard)"));
      };
      tag.onerror = function () {
        delete pageLoads[n];
        reject(new Error("could not load " + pageName(n) +
          " (missing file: rebuild the dashboard with msae dashboard)"));
      };
      document.head.appendChild(tag);
    });
    return pageLoads[n];
  }
  function cardOf(id) {
    var page = DASH.pages[Math.floor(id / meta.page_size)];
    if (!page) { return null; }
    var c = page[id % meta.page_size];
    if (c && c.id === id) { return c; }
    for (var i = 0; i < page.length; i++) { if (page[i].id === id) { return page[i]; } }
    return null;
  }

  /* ---------- sprite thumbnails and heat maps ---------- */
  // viridis, sampled at 9 stops: perceptually uniform and readable for colour-blind viewers
  var VIRIDIS = [
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]
  ];
  function colormap(t) {
    var x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    var i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    var f = x - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function decodeHeat(b64) {
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }
  function heatCanvas(b64) {
    var g = meta.grid;
    var vals = decodeHeat(b64);
    var cv = h("canvas", { cls: "heat", width: g[1], height: g[0], "aria-hidden": "true" });
    var ctx = cv.getContext("2d");
    var img = ctx.createImageData(g[1], g[0]);
    var n = Math.min(vals.length, g[0] * g[1]);
    for (var i = 0; i < n; i++) {
      var t = vals[i] / 255, c = colormap(t);
      img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2];
      img.data[4 * i + 3] = Math.round(255 * 0.8 * Math.sqrt(t)); // faint where the latent is quiet
    }
    ctx.putImageData(img, 0, 0);
    return cv;
  }
  function legend(heatMax) {
    var stops = VIRIDIS.map(function (c, i) {
      return "rgb(" + c.join(",") + ") " + (100 * i / (VIRIDIS.length - 1)).toFixed(0) + "%";
    });
    return h("span", { cls: "legend", title: "heat-map colour scale of this card (patch activation)" }, [
      "0", h("span", { cls: "ramp", style: "background:linear-gradient(to right," + stops.join(",") + ")" }), fmt(heatMax)
    ]);
  }
  function example(ex, px, small) {
    var T = meta.thumb;
    var scale = px / T.size;
    var col = ex.img % T.per_row, row = Math.floor(ex.img / T.per_row);
    var rows = Math.ceil(T.count / T.per_row);
    var pic = h("div", {
      cls: "pic",
      style: "background-image:url(" + T.file + ");background-size:" + (T.per_row * px) + "px " +
        (rows * px) + "px;background-position:-" + (col * T.size * scale) + "px -" + (row * T.size * scale) + "px"
    });
    if (ex.heat && meta.grid) { pic.appendChild(heatCanvas(ex.heat)); }
    var label = ex.cls >= 0 && meta.classes && meta.classes[ex.cls] !== undefined ? meta.classes[ex.cls] : "";
    return h("div", { cls: "ex" + (small ? " small" : ""), title: "image " + ex.img + (label ? " (" + label + ")" : "") + ": " + fmt(ex.v) }, [
      pic,
      h("div", { cls: "val", text: fmt(ex.v) }),
      small ? null : h("div", { cls: "cls", text: label || "\u00a0" })
    ]);
  }

  /* ---------- card sections ---------- */
  function histogram(card, density) {
    var counts = (card.hist && card.hist.counts) || [];
    var W = 500, H = 70, pad = 14;
    var max = Math.max.apply(null, counts.concat([1]));
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img" });
    svg.appendChild(s("title", {}, "histogram of non-zero activations; density " + density));
    var bw = (W - 2) / Math.max(1, counts.length);
    counts.forEach(function (c, i) {
      if (!c) { return; }
      var bh = Math.max(1, (H - pad) * Math.sqrt(c / max));
      svg.appendChild(s("rect", { "class": "bar", x: 1 + i * bw, y: H - pad - bh, width: Math.max(0.5, bw - 1), height: bh }));
    });
    svg.appendChild(s("text", { "class": "axis", x: 1, y: H - 2 }, fmt(card.hist ? card.hist.lo : 0)));
    svg.appendChild(s("text", { "class": "axis", x: W - 1, y: H - 2, "text-anchor": "end" }, fmt(card.hist ? card.hist.hi : 0)));
    return h("div", { cls: "hist" }, [
      h("h3", {}, ["Activation histogram ", h("span", { cls: "sub", text: "(non-zero values, sqrt scale; density " + density + ")" })]),
      svg
    ]);
  }
  function barRows(rows, maxAbs, diverging) {
    var box = h("div", { cls: "bars" + (diverging ? " diverging" : "") });
    rows.forEach(function (r) {
      var w = maxAbs > 0 ? Math.abs(r.v) / maxAbs : 0;
      var track = h("div", { cls: "track" });
      if (diverging) {
        track.appendChild(h("div", { cls: "mid" }));
        track.appendChild(h("div", { cls: "fill " + (r.v >= 0 ? "pos" : "neg"), style: "width:" + (50 * w).toFixed(1) + "%" }));
      } else {
        track.appendChild(h("div", { cls: "fill", style: "width:" + (100 * w).toFixed(1) + "%" }));
      }
      box.appendChild(h("div", { cls: "lab", text: r.label, title: r.label }));
      box.appendChild(track);
      box.appendChild(h("div", { cls: "num", text: r.text }));
    });
    return box;
  }
  function className(i) { return meta.classes && meta.classes[i] !== undefined ? meta.classes[i] : "class " + i; }
  function nearList(title, pairs) {
    var ul = h("ul", { cls: "near" });
    (pairs || []).forEach(function (p) {
      var id = p[0], name = meta.latents.name[id];
      ul.appendChild(h("li", {}, [
        h("a", { href: latentHref(id), "data-latent": id, text: "#" + id + (name ? " " + name : "") }),
        h("span", { cls: "v", text: fmt(p[1]) })
      ]));
    });
    if (!pairs || !pairs.length) { ul.appendChild(h("li", { cls: "muted", text: "none" })); }
    return h("div", {}, [h("h3", { text: title }), ul]);
  }
  function nameNode(i) {
    var L = meta.latents, name = L.name[i];
    if (!name) { return h("span", { cls: "cname invalid", text: "unnamed" }); }
    var valid = L.name_valid[i] !== false;
    return h("span", { cls: "cname" + (valid ? "" : " invalid"), title: valid ? "name passed the validity check" : "name failed the validity check" }, [
      name, L.name_score[i] !== null && L.name_score[i] !== undefined ? h("span", { cls: "score", text: " (" + fmt(L.name_score[i]) + ")" }) : null
    ]);
  }
  function cardHead(i, card, target) {
    var L = meta.latents;
    var head = h("div", { cls: "card-head" }, [
      h("span", { cls: "cid", text: "#" + i }),
      nameNode(i),
      L.flag[i] ? h("span", { cls: "badge " + L.flag[i], text: L.flag[i] }) : null,
      L.level[i] !== null && L.level[i] !== undefined ? h("span", { cls: "badge level", title: "smallest ladder k that selects it", text: "k \u2265 " + L.level[i] }) : null
    ]);
    if (card && meta.grid && card.top && card.top.some(function (e) { return e.heat; })) {
      var btn = h("button", { type: "button", cls: "toggle", text: "raw images" });
      btn.addEventListener("click", function () {
        var c = btn.closest(".card");
        var raw = c.classList.toggle("raw");
        btn.textContent = raw ? "heat overlay" : "raw images";
      });
      head.appendChild(btn);
    }
    return head;
  }
  function statsLine(i) {
    var L = meta.latents;
    var perToken = meta.tokens_per_image > 1;
    return h("div", { cls: "stats" }, [
      h("span", {}, ["density/image ", h("b", { text: pct(L.freq_image[i]) })]),
      perToken ? h("span", {}, ["density/patch ", h("b", { text: pct(L.freq_token[i]) })]) : null,
      h("span", {}, ["max ", h("b", { text: fmt(L.max[i]) })]),
      h("span", {}, ["mean when active ", h("b", { text: fmt(L.mean_active[i]) })])
    ]);
  }
  function buildCard(i, card, err, target) {
    var L = meta.latents;
    var node = h("article", { cls: "card" + (target ? " target" : ""), "data-id": i, id: "latent-" + i });
    node.appendChild(cardHead(i, card, target));
    node.appendChild(statsLine(i));
    if (!card) {
      node.appendChild(h("div", { cls: "card-error", text: err || "card data unavailable" }));
      return node;
    }
    if (L.flag[i] === "dead" || !(card.top && card.top.length)) {
      node.appendChild(h("div", { cls: "dead-msg", text: "dead \u2014 never fired on the " + meta.n_images + " images" }));
      return node;
    }
    var density = meta.tokens_per_image > 1 ? pct(L.freq_token[i]) + " of tokens" : pct(L.freq_image[i]) + " of images";
    node.appendChild(histogram(card, density));

    var topBox = h("div", { cls: "thumbs" });
    card.top.forEach(function (ex) { topBox.appendChild(example(ex, 64, false)); });
    var hasHeat = meta.grid && card.top.some(function (e) { return e.heat; });
    node.appendChild(h("h3", {}, [
      "Top images ", h("span", { cls: "sub", text: "(score: " + (meta.image_score || "image score") + ")" }),
      hasHeat ? legend(card.heat_max) : null
    ]));
    node.appendChild(topBox);

    if (card.intervals && card.intervals.length) {
      node.appendChild(h("h3", {}, ["Graded examples ", h("span", { cls: "sub", text: "(equal-width intervals of (0, max])" })]));
      var ivBox = h("div", { cls: "intervals" });
      card.intervals.forEach(function (iv) {
        var row = h("div", { cls: "thumbs" });
        (iv.examples || []).forEach(function (ex) { row.appendChild(example(ex, 52, true)); });
        if (!iv.examples || !iv.examples.length) { row.appendChild(h("span", { cls: "muted", text: "no examples" })); }
        ivBox.appendChild(h("div", { cls: "interval" }, [
          h("div", { cls: "ititle", text: "interval " + fmt(iv.lo) + "\u2013" + fmt(iv.hi) + ", contains " + pct(iv.contains) }),
          row
        ]));
      });
      node.appendChild(ivBox);
    }

    node.appendChild(h("h3", { text: "Top vocabulary words" }));
    var words = h("div", { cls: "words" });
    (card.words || []).forEach(function (w) {
      words.appendChild(h("span", { cls: "chip" }, [w[0], h("span", { cls: "s", text: fmt(w[1]) })]));
    });
    if (!card.words || !card.words.length) { words.appendChild(h("span", { cls: "muted", text: "no vocabulary scores" })); }
    node.appendChild(words);

    node.appendChild(h("div", { cls: "cols" }, [
      nearList("Nearest by decoder cosine", card.near_decoder),
      nearList("Nearest by co-activation (r)", card.near_coact)
    ]));

    var cols2 = h("div", { cls: "cols" });
    var dist = (card.class_dist || []).map(function (c, k) { return { k: k, c: c }; })
      .filter(function (r) { return r.c > 0; }).sort(function (a, b) { return b.c - a.c; }).slice(0, 8);
    var total = (card.class_dist || []).reduce(function (a, b) { return a + b; }, 0);
    cols2.appendChild(h("div", {}, [
      h("h3", { text: "Classes of the top images" }),
      dist.length ? barRows(dist.map(function (r) { return { label: className(r.k), v: r.c, text: r.c + "/" + total }; }), dist[0].c, false)
        : h("span", { cls: "muted", text: "no labelled images" })
    ]));
    var eff = (card.logit_effect || []).map(function (v, k) { return { k: k, v: v }; });
    var pos = eff.filter(function (r) { return r.v > 0; }).sort(function (a, b) { return b.v - a.v; }).slice(0, 4);
    var neg = eff.filter(function (r) { return r.v < 0; }).sort(function (a, b) { return a.v - b.v; }).slice(0, 4).reverse();
    var shown = pos.concat(neg);
    var maxAbs = shown.reduce(function (m, r) { return Math.max(m, Math.abs(r.v)); }, 0);
    cols2.appendChild(h("div", {}, [
      h("h3", { text: "Zero-shot logit effect" }),
      shown.length ? barRows(shown.map(function (r) { return { label: className(r.k), v: r.v, text: (r.v > 0 ? "+" : "") + fmt(r.v) }; }), maxAbs, true)
        : h("span", { cls: "muted", text: "no effect recorded" })
    ]));
    node.appendChild(cols2);

    if (card.levels && card.levels.length) {
      node.appendChild(h("h3", {}, ["MSAE level survival ", h("span", { cls: "sub", text: "(share of its top images on which ladder k selects it)" })]));
      node.appendChild(barRows(card.levels.map(function (lv) { return { label: "k = " + lv[0], v: lv[1], text: pct(lv[1]) }; }), 1, false));
    }
    return node;
  }

  /* ---------- header and index table ---------- */
  function renderHeader() {
    var S = meta.sae || {};
    document.title = meta.title || "msae dashboard";
    el("title").textContent = meta.title || "msae dashboard";
    var info = el("sae-info");
    info.textContent = "";
    var items = [
      ["architecture", S.architecture], ["hook", S.hook_name], ["d_in", S.d_in], ["d_sae", S.d_sae],
      ["model", S.model_name], ["ladder", S.ladder ? S.ladder.join(", ") : "none"],
      ["k", S.k], ["images", meta.n_images], ["tokens/image", meta.tokens_per_image],
      ["image score", meta.image_score], ["source", S.source], ["created", meta.created]
    ];
    items.forEach(function (it) {
      if (it[1] === null || it[1] === undefined || it[1] === "") { return; }
      info.appendChild(h("div", {}, [h("dt", { text: it[0] }), h("dd", { text: String(it[1]) })]));
    });
  }
  function renderIndex(ids, st) {
    var L = meta.latents;
    var body = el("index").querySelector("tbody");
    body.textContent = "";
    el("index").querySelectorAll("th[data-sort]").forEach(function (th) {
      th.classList.remove("sorted-asc", "sorted-desc");
      th.removeAttribute("aria-sort");
      if (th.getAttribute("data-sort") === st.sort) {
        th.classList.add("sorted-" + st.dir);
        th.setAttribute("aria-sort", st.dir === "asc" ? "ascending" : "descending");
      }
    });
    if (!ids.length) {
      body.appendChild(h("tr", {}, [h("td", { cls: "empty", colspan: 8, text: "no latent matches this filter" })]));
      return;
    }
    ids.forEach(function (i) {
      var tr = h("tr", { "data-id": i, cls: L.flag[i] === "dead" ? "dead" : null }, [
        h("td", { cls: "num", text: String(i) }),
        h("td", {}, [nameNode(i)]),
        h("td", { cls: "num", text: pct(L.freq_image[i]) }),
        h("td", { cls: "num col-token", text: pct(L.freq_token[i]) }),
        h("td", { cls: "num", text: fmt(L.mean_active[i]) }),
        h("td", { cls: "num", text: fmt(L.max[i]) }),
        h("td", { cls: "num col-level", text: L.level[i] === null || L.level[i] === undefined ? "\u2013" : String(L.level[i]) }),
        h("td", {}, [L.flag[i] ? h("span", { cls: "badge " + L.flag[i], text: L.flag[i] }) : null])
      ]);
      tr.addEventListener("click", function () {
        var card = document.getElementById("latent-" + i);
        if (card) { card.scrollIntoView({ block: "start", behavior: "smooth" }); }
      });
      body.appendChild(tr);
    });
  }

  /* ---------- the render loop ---------- */
  function render() {
    var token = ++renderToken;
    document.body.dataset.ready = "0";
    var st = readState();
    var all = sortIds(matches(st), st);
    if (st.latent !== null) {
      if (st.latent >= meta.sae.d_sae) {
        reportError("latent " + st.latent + " does not exist: this SAE has latents 0.." + (meta.sae.d_sae - 1));
      } else if (all.indexOf(st.latent) < 0) {
        st.q = ""; st.dead = "show"; // the filter hides it: clear the filter so that it can be shown
        all = sortIds(matches(st), st);
        try { history.replaceState(null, "", hashOf(st)); } catch (e) { /* keep the old hash */ }
      }
      var pos = all.indexOf(st.latent);
      if (pos >= 0) { st.view = Math.floor(pos / st.per); }
    }
    var nViews = Math.max(1, Math.ceil(all.length / st.per));
    st.view = Math.min(st.view, nViews - 1);
    var ids = all.slice(st.view * st.per, (st.view + 1) * st.per);
    shownView = st.view;

    // controls mirror the state
    var search = el("search");
    if (document.activeElement !== search) { search.value = st.q; }
    el("hide-dead").checked = st.dead === "hide";
    var per = el("per");
    if (!per.querySelector('option[value="' + st.per + '"]')) { per.appendChild(h("option", { value: st.per, text: String(st.per) })); }
    per.value = String(st.per);
    el("pageinfo").textContent = "view " + (st.view + 1) + " of " + nViews;
    el("prev").disabled = st.view <= 0;
    el("next").disabled = st.view >= nViews - 1;
    el("count").textContent = all.length + " latent" + (all.length === 1 ? "" : "s") +
      (all.length !== meta.sae.d_sae ? " of " + meta.sae.d_sae : "");
    renderIndex(ids, st);

    var pages = [];
    ids.forEach(function (i) { var p = Math.floor(i / meta.page_size); if (pages.indexOf(p) < 0) { pages.push(p); } });
    var failed = {};
    return Promise.all(pages.map(function (p) {
      return loadPage(p).catch(function (e) { failed[p] = e.message; reportError(e.message); });
    })).then(function () {
      if (token !== renderToken) { return; } // a newer render started meanwhile
      var box = el("cards");
      box.textContent = "";
      var target = null;
      ids.forEach(function (i) {
        var p = Math.floor(i / meta.page_size);
        var card = failed[p] ? null : cardOf(i);
        var err = failed[p] || (card ? null : "latent " + i + " is missing from " + pageName(p));
        var node = buildCard(i, card, err, i === st.latent);
        if (i === st.latent) { target = node; }
        box.appendChild(node);
      });
      if (target) { target.scrollIntoView({ block: "start" }); }
      document.body.dataset.ready = "1";
    }).catch(function (e) {
      reportError("rendering failed: " + (e && e.message ? e.message : e));
      document.body.dataset.ready = "1";
    });
  }

  function wireControls() {
    var timer = null;
    el("search").addEventListener("input", function () {
      clearTimeout(timer);
      var v = el("search").value;
      timer = setTimeout(function () { go({ q: v.trim(), view: 0 }); }, 200);
    });
    el("hide-dead").addEventListener("change", function () { go({ dead: el("hide-dead").checked ? "hide" : "show", view: 0 }); });
    el("per").addEventListener("change", function () { go({ per: parseInt(el("per").value, 10), view: 0 }); });
    el("prev").addEventListener("click", function () { go({ view: Math.max(0, shownView - 1) }); });
    el("next").addEventListener("click", function () { go({ view: shownView + 1 }); });
    document.addEventListener("keydown", function (ev) {
      var tag = ev.target && ev.target.tagName;
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
      if (ev.key === "ArrowLeft" && !el("prev").disabled) { el("prev").click(); }
      if (ev.key === "ArrowRight" && !el("next").disabled) { el("next").click(); }
    });
    el("jump-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var v = parseInt(el("jump").value, 10);
      if (v >= 0) { var st = readState(); st.latent = v; location.hash = hashOf(st); }
    });
    el("index").querySelectorAll("th[data-sort]").forEach(function (th) {
      th.tabIndex = 0; // sortable by keyboard too
      th.title = "sort by " + th.textContent + " (click again to reverse)";
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); th.click(); }
      });
      th.addEventListener("click", function () {
        var f = th.getAttribute("data-sort"), st = readState();
        var dir = st.sort === f ? (st.dir === "asc" ? "desc" : "asc") : (DESC_FIRST[f] ? "desc" : "asc");
        go({ sort: f, dir: dir, view: 0 });
      });
    });
    window.addEventListener("hashchange", render);
  }

  function start() {
    meta = DASH.meta;
    if (!meta || !meta.latents || !meta.sae) {
      reportError(window.MSAE_META_FAILED
        ? "could not load data/meta.js (missing file: rebuild the dashboard with msae dashboard)"
        : "data/meta.js did not define the dashboard data (corrupt or truncated file: rebuild the dashboard)");
      el("count").textContent = "0 latents";
      document.body.dataset.ready = "1";
      return;
    }
    renderHeader();
    // an embedding hook has one token per image (freq/token = freq/image); a non-MSAE no levels
    if (!(meta.tokens_per_image > 1)) { document.body.classList.add("no-token"); }
    if (!meta.sae.ladder) { document.body.classList.add("no-ladder"); }
    wireControls();
    render();
  }
  start();
})();

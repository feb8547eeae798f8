// The sslsearch page: search by dropped/picked image or by clicking a result; browse duplicate clusters.
// Plain JavaScript, no build step. Every API call carries the bearer token when the server wants one;
// images are fetched with it too (as blobs), so the token never appears in a URL.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var state = { auth: false, dupOffset: 0, dupTotal: 0, dupLimit: 10, urls: [] };

  function setState(value) { document.body.setAttribute("data-state", value); }
  function status(text, isError) {
    var line = $("status");
    line.textContent = text;
    line.className = isError ? "error" : "";
  }
  function headers() {
    var token = $("token").value;
    return token ? { Authorization: "Bearer " + token } : {};
  }
  function api(path, options) {
    options = options || {};
    options.headers = Object.assign(headers(), options.headers || {});
    return fetch(path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) {
          if (response.status === 401) { $("token-label").hidden = false; }
          throw new Error((body && body.error) || ("HTTP " + response.status));
        }
        return body;
      });
    });
  }
  function forgetImages() {
    state.urls.forEach(function (url) { URL.revokeObjectURL(url); });
    state.urls = [];
  }
  function loadImage(img, path) {
    fetch(path, { headers: headers() }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.blob();
    }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      state.urls.push(url);
      img.src = url;
    }).catch(function () { img.alt = "image not available"; img.className = "placeholder"; });
  }
  function indexName() { return encodeURIComponent($("index").value); }
  function k() { return Math.max(1, parseInt($("k").value, 10) || 10); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  // --- search ----------------------------------------------------------------------------------
  function showResults(answer, label) {
    forgetImages();
    var grid = $("results");
    grid.textContent = "";
    var result = answer.results[0];
    if (result.skipped) { status(label + ": not searched (" + result.skipped + ")", true); setState("error"); return; }
    result.neighbors.forEach(function (hit) {
      var figure = el("figure", { "class": "hit", "data-id": String(hit.id), "data-rank": String(hit.rank),
                                  title: "click: search the neighbours of " + (hit.path || ("id " + hit.id)) });
      var img = el("img", { alt: hit.path || ("id " + hit.id) });
      loadImage(img, "indexes/" + indexName() + "/images/" + hit.id + "?size=256");
      var caption = el("figcaption");
      caption.appendChild(el("span", { "class": "score" }, "#" + hit.rank + "  " + hit.score.toFixed(3)));
      caption.appendChild(document.createTextNode("  id " + hit.id));
      caption.appendChild(el("br"));
      caption.appendChild(document.createTextNode(hit.path === null ? "(path unknown)" : hit.path));
      figure.appendChild(img);
      figure.appendChild(caption);
      figure.addEventListener("click", function () { searchId(hit.id, hit.path); });
      grid.appendChild(figure);
    });
    status(label + ": " + result.neighbors.length + " neighbours in " + answer.index, false);
    setState("results");
  }
  function showQuery(src, label) {
    $("query").hidden = false;
    $("query-label").textContent = label;
    $("query-image").src = src;
  }
  function searchFiles(files) {
    if (!files || !files.length) { return; }
    var file = files[0];
    var form = new FormData();
    form.append("files", file, file.name);
    form.append("k", String(k()));
    showQuery(URL.createObjectURL(file), file.name);
    status("searching " + file.name + " …", false);
    setState("loading");
    api("indexes/" + indexName() + "/search/images", { method: "POST", body: form })
      .then(function (answer) { showResults(answer, file.name); })
      .catch(function (error) { status(error.message, true); setState("error"); });
  }
  function searchId(id, path) {
    $("query").hidden = false;
    $("query-label").textContent = "id " + id + (path ? " · " + path : "");
    loadImage($("query-image"), "indexes/" + indexName() + "/images/" + id + "?size=256");
    status("searching id " + id + " …", false);
    setState("loading");
    api("indexes/" + indexName() + "/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ids: [id], k: k() })
    }).then(function (answer) { showResults(answer, "id " + id); })
      .catch(function (error) { status(error.message, true); setState("error"); });
  }

  // --- duplicates ------------------------------------------------------------------------------
  function showDuplicates() {
    setState("loading");
    api("duplicates?offset=" + state.dupOffset + "&limit=" + state.dupLimit).then(function (page) {
      forgetImages();
      state.dupTotal = page.total;
      var pages = Math.max(1, Math.ceil(page.total / state.dupLimit));
      $("dup-label").textContent = "page " + (Math.floor(state.dupOffset / state.dupLimit) + 1) + " of " + pages;
      var s = page.summary;
      $("dup-summary").textContent = page.total + " clusters · " + (s.images || "?") + " images · keep " +
        (s.kept === undefined ? "?" : s.kept) + ", remove " + (s.removed === undefined ? "?" : s.removed);
      var box = $("clusters");
      box.textContent = "";
      page.clusters.forEach(function (cluster) {
        var section = el("section", { "class": "cluster", "data-cluster": String(cluster.cluster_id) });
        section.appendChild(el("h2", {}, "Cluster " + cluster.cluster_id + " · " + cluster.size + " images"));
        var grid = el("div", { "class": "grid" });
        cluster.members.forEach(function (member) {
          var fromIndex = member.source === "index";
          var role = fromIndex ? "index" : (member.keep ? "keep" : "remove");
          var figure = el("figure", { "class": role, "data-id": String(member.id) });
          var img = el("img", { alt: member.path || ("id " + member.id) });
          if (!fromIndex) { loadImage(img, "duplicates/images/" + member.id + "?size=256"); }
          var caption = el("figcaption");
          caption.appendChild(el("span", { "class": "badge " + role }, role === "keep" ? "KEEP" : role));
          var sim = member.match === "keeper" ? " keeper" :
            " " + (member.similarity === null ? "" : member.similarity.toFixed(3) + " ") + member.match;
          caption.appendChild(document.createTextNode(sim));
          caption.appendChild(el("br"));
          caption.appendChild(document.createTextNode(member.path || ("id " + member.id)));
          figure.appendChild(img);
          figure.appendChild(caption);
          grid.appendChild(figure);
        });
        section.appendChild(grid);
        box.appendChild(section);
      });
      setState("duplicates");
    }).catch(function (error) { $("dup-summary").textContent = error.message; setState("error"); });
  }

  // --- wiring ----------------------------------------------------------------------------------
  function switchView(view) {
    $("view-search").hidden = view !== "search";
    $("view-duplicates").hidden = view !== "duplicates";
    Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (tab) {
      tab.classList.toggle("active", tab.getAttribute("data-view") === view);
    });
    if (view === "duplicates") { showDuplicates(); }
  }
  function loadIndexes() {
    return api("indexes").then(function (answer) {
      var select = $("index");
      select.textContent = "";
      answer.indexes.forEach(function (item) {
        var option = el("option", { value: item.name }, item.name + " (" + item.ntotal + " × " + item.dim + ", " +
                                                          item.encoder + ")");
        select.appendChild(option);
      });
      status("ready: drop an image", false);
      setState("ready");
      var wanted = /id=(\d+)/.exec(location.hash);
      if (wanted) { searchId(parseInt(wanted[1], 10)); }
    }).catch(function (error) { status(error.message, true); setState("error"); });
  }

  $("token").value = localStorage.getItem("sslsearch-token") || "";
  $("token").addEventListener("change", function () {
    localStorage.setItem("sslsearch-token", $("token").value);
    loadIndexes();
  });
  $("file").addEventListener("change", function (event) { searchFiles(event.target.files); });
  var drop = $("drop");
  drop.addEventListener("dragover", function (event) { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("over");
    searchFiles(event.dataTransfer.files);
  });
  Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (tab) {
    tab.addEventListener("click", function () { switchView(tab.getAttribute("data-view")); });
  });
  $("dup-prev").addEventListener("click", function () {
    state.dupOffset = Math.max(0, state.dupOffset - state.dupLimit); showDuplicates();
  });
  $("dup-next").addEventListener("click", function () {
    if (state.dupOffset + state.dupLimit < state.dupTotal) { state.dupOffset += state.dupLimit; showDuplicates(); }
  });

  fetch("health").then(function (response) { return response.json(); }).then(function (health) {
    state.auth = health.auth;
    $("token-label").hidden = !health.auth;
    $("tab-duplicates").hidden = !health.duplicates;
    if (/view=duplicates/.test(location.hash) && health.duplicates) { switchView("duplicates"); }
    loadIndexes();
  }).catch(function () { status("the server does not answer /health", true); setState("error"); });
})();

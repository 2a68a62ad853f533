// The live page of kpeek serve: fetches the diagram every few seconds.
// SVG is parsed as XML with DOMParser; status text goes in with textContent.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("config").textContent);
  var input = document.getElementById("pids");
  var status = document.getElementById("status");
  var main = document.getElementById("diagram");
  var parser = new DOMParser();
  var params = new URLSearchParams(location.search);
  var pids = params.get("pids") || config.pids.join(" ");
  input.value = pids;
  var timer = null;
  var updates = 0;

  function refresh() {
    var q = new URLSearchParams({ token: config.token });
    if (pids.trim()) { q.set("pids", pids.trim()); }
    fetch("diagram.svg?" + q.toString(), { cache: "no-store" }).then(function (r) {
      return r.text().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (res) {
      if (!res.ok) { status.textContent = res.body; status.className = "status error"; return; }
      var doc = parser.parseFromString(res.body, "image/svg+xml");
      if (doc.documentElement.nodeName !== "svg") { status.textContent = "bad diagram"; return; }
      main.textContent = "";
      main.appendChild(document.importNode(doc.documentElement, true));
      updates += 1;
      main.setAttribute("data-updates", String(updates));
      status.className = "status";
      status.textContent = "updated " + new Date().toLocaleTimeString();
    }).catch(function (e) {
      status.className = "status error";
      status.textContent = "cannot reach kpeek serve: " + e;
    });
  }

  document.getElementById("choose").addEventListener("submit", function (e) {
    e.preventDefault();
    pids = input.value;
    var q = new URLSearchParams(location.search);
    q.set("pids", pids.trim());
    history.replaceState(null, "", "?" + q.toString());
    refresh();
  });
  refresh();
  timer = setInterval(refresh, Math.max(500, config.interval * 1000));
})();

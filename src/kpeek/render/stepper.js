// Steps through a kpeek trace: back/forward buttons, arrow keys, a slider.
// Untrusted text goes in with textContent; SVG is parsed as XML (scripts in
// an XML document parsed this way never run).
(function () {
  "use strict";
  var steps = JSON.parse(document.getElementById("steps").textContent);
  var current = 0;
  var parser = new DOMParser();
  var el = function (id) { return document.getElementById(id); };
  var slider = el("slider");
  slider.max = String(Math.max(steps.length - 1, 0));

  function span(cls, text) {
    var s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function show(i) {
    if (!steps.length) { el("position").textContent = "no steps recorded"; return; }
    current = Math.max(0, Math.min(steps.length - 1, i));
    var step = steps[current];
    // Numbered as in `kpeek trace` text: step 0 is the program before execve.
    el("position").textContent = "step " + current + " of " + (steps.length - 1);
    slider.value = String(current);
    el("prev").disabled = current === 0;
    el("next").disabled = current === steps.length - 1;
    var sys = el("syscall");
    sys.textContent = "";
    sys.appendChild(span("who", "[" + step.pid + " " + step.comm + "] "));
    sys.appendChild(span("call", step.call));
    if (step.result !== null && step.result !== undefined) {
      sys.appendChild(span(step.failed ? "result failed" : "result", " = " + step.result));
    }
    var list = el("changes");
    list.textContent = "";
    (step.changes || []).forEach(function (c) {
      var li = document.createElement("li");
      li.textContent = c;
      list.appendChild(li);
    });
    var main = el("diagram");
    main.textContent = "";
    var doc = parser.parseFromString(step.svg, "image/svg+xml");
    var root = doc.documentElement;
    if (root && root.nodeName === "svg") {
      main.appendChild(document.importNode(root, true));
    } else {
      main.appendChild(span("error", "this step's diagram could not be shown"));
    }
    document.title = "step " + current + ": " + step.call;
    if (history.replaceState) { history.replaceState(null, "", "#step-" + current); }
  }

  el("prev").addEventListener("click", function () { show(current - 1); });
  el("next").addEventListener("click", function () { show(current + 1); });
  slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
  document.addEventListener("keydown", function (e) {
    if (e.target && e.target.tagName === "INPUT" && e.target !== slider) { return; }
    if (e.key === "ArrowRight" || e.key === "PageDown") { show(current + 1); e.preventDefault(); }
    else if (e.key === "ArrowLeft" || e.key === "PageUp") { show(current - 1); e.preventDefault(); }
    else if (e.key === "Home") { show(0); e.preventDefault(); }
    else if (e.key === "End") { show(steps.length - 1); e.preventDefault(); }
  });
  var m = /^#step-(\d+)$/.exec(location.hash);
  show(m ? parseInt(m[1], 10) : 0);
})();

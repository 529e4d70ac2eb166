// Vellum console: small conveniences. Every page works without this file.
"use strict";
(function () {
  // Verification progress: poll the status while a run is going on, then reload.
  var run = document.getElementById("verify-run");
  if (run) {
    var url = run.getAttribute("data-status-url");
    var bar = document.getElementById("verify-progress");
    var count = document.getElementById("verify-count");
    var poll = function () {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (s) {
          if (bar) { bar.max = Math.max(s.total, 1); bar.value = s.checked; }
          if (count) { count.textContent = s.checked + " of " + s.total + " events checked"; }
          if (s.running) { setTimeout(poll, 1000); } else { window.location.reload(); }
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    setTimeout(poll, 500);
  }
  // Search: typing a custom time selects the "custom range" preset.
  var range = document.getElementById("range");
  ["from", "to"].forEach(function (id) {
    var input = document.getElementById(id);
    if (input && range) {
      input.addEventListener("change", function () { if (input.value) { range.value = "custom"; } });
    }
  });
})();

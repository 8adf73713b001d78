// Clarity dashboard: refresh the server-rendered panels in place and send the action forms
// with fetch(). No build step; the page works without this file (forms post and redirect).
(function () {
  "use strict";
  var panels = document.getElementById("panels");
  var status = document.getElementById("status");
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var every = parseFloat(document.querySelector('meta[name="refresh-seconds"]').content) || 5;
  var previous = {};  // queue -> {t, waiting, failed, processed}
  var timer = null;
  var busy = false;

  function say(text, bad) {
    status.textContent = text;
    status.className = bad ? "bad" : "muted";
  }

  function rates() {
    var now = Date.now();
    panels.querySelectorAll(".card").forEach(function (card) {
      var q = card.dataset.queue;
      var waiting = parseInt(card.dataset.waiting, 10);
      var failed = parseInt(card.dataset.failed, 10);
      var processed = parseInt(card.dataset.processed, 10) || 0;
      var before = previous[q];
      var el = card.querySelector("[data-rate-for]");
      if (before && el && now > before.t) {
        var minutes = (now - before.t) / 60000;
        var dw = (waiting - before.waiting) / minutes;
        var df = (failed - before.failed) / minutes;
        // Workers' processed counters restart with the worker: never show a negative rate.
        var dp = Math.max(0, processed - before.processed) / minutes;
        el.textContent = "processed " + dp.toFixed(1) + "/min · waiting " + (dw >= 0 ? "+" : "") +
          dw.toFixed(1) + "/min · failed " + (df >= 0 ? "+" : "") + df.toFixed(1) + "/min";
      }
      previous[q] = {t: now, waiting: waiting, failed: failed, processed: processed};
    });
  }

  function openDetails() {
    var open = [];
    panels.querySelectorAll("details[open]").forEach(function (d) {
      var row = d.closest("tr");
      if (row && row.id) { open.push(row.id); }
    });
    return open;
  }

  function refresh() {
    if (busy) { return Promise.resolve(); }
    busy = true;
    var keepOpen = openDetails();
    return fetch(panels.dataset.url, {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        panels.innerHTML = html;  // rendered and escaped by the server's Jinja templates
        keepOpen.forEach(function (id) {
          var d = document.getElementById(id);
          if (d) { var det = d.querySelector("details"); if (det) { det.open = true; } }
        });
        rates();
        say("live · " + new Date().toLocaleTimeString());
      })
      .catch(function (err) { say("refresh failed: " + err.message, true); })
      .finally(function () { busy = false; });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains("js-action")) { return; }
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { return; }
    var button = form.querySelector("button");
    if (button) { button.disabled = true; }
    // form.action would be the <input name="action">, not the attribute.
    fetch(form.getAttribute("action"), {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "X-Requested-With": "fetch", "Accept": "application/json"}
    })
      .then(function (r) {
        return r.json().then(function (body) { return {ok: r.ok, body: body}; });
      })
      .then(function (res) {
        if (res.ok) {
          var n = res.body.count !== undefined ? " (" + res.body.count + ")" : "";
          say(res.body.action + " " + res.body.queue + n + ": done");
        } else {
          say((res.body && res.body.message) || "action failed", true);
        }
        return refresh();
      })
      .catch(function (err) { say("action failed: " + err.message, true); })
      .finally(function () { if (button) { button.disabled = false; } });
  });

  rates();
  timer = window.setInterval(refresh, every * 1000);
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { window.clearInterval(timer); timer = null; }
    else if (!timer) { refresh(); timer = window.setInterval(refresh, every * 1000); }
  });
})();

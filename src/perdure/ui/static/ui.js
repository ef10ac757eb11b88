// perdure ui: live updates of the execution page and confirmations. No inline scripts (CSP).
(function () {
  "use strict";

  // Forms with data-confirm ask first (delete, cleanup, cancel).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // The status filter applies at once.
  var filter = document.getElementById("status-filter");
  if (filter) {
    filter.addEventListener("change", function () { filter.form.submit(); });
  }

  var box = document.getElementById("execution");
  if (!box || !window.EventSource) { return; }
  var liveUrl = box.getAttribute("data-live");
  var eventsUrl = box.getAttribute("data-events");
  var source = null;
  var pending = false;
  var busy = false;

  function editing() {
    // Never replace the page under a form the operator is filling in.
    var active = document.activeElement;
    return active && box.contains(active) && /^(TEXTAREA|INPUT|SELECT)$/.test(active.tagName);
  }

  function refresh() {
    if (busy) { pending = true; return; }
    if (editing()) { setTimeout(refresh, 1000); return; }
    busy = true;
    fetch(liveUrl, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null) {
          // Server-rendered and HTML-escaped; scripts in innerHTML never run.
          box.innerHTML = html;
          var indicator = document.getElementById("live-indicator");
          if (indicator && source) { indicator.hidden = false; }
        }
      })
      .finally(function () {
        busy = false;
        if (pending) { pending = false; refresh(); }
      });
  }

  function connect() {
    source = new EventSource(eventsUrl);
    source.onopen = function () {
      var indicator = document.getElementById("live-indicator");
      if (indicator) { indicator.hidden = false; }
    };
    source.onmessage = function (message) {
      refresh();
      try {
        var data = JSON.parse(message.data);
        box.setAttribute("data-last-event", data.kind || "");
      } catch (e) { /* keep going */ }
    };
    source.addEventListener("end", function () {
      source.close();
      refresh();
    });
  }
  // A completed or cancelled execution never changes again: nothing to follow.
  if (box.getAttribute("data-final") !== "yes") { connect(); }
})();

// Antex dashboard: local times, live "in 2 h 13 min" countdowns and copy buttons.
// Everything else works without JavaScript.
(function () {
  "use strict";

  var localFormat = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short",
    hour: "2-digit", minute: "2-digit", timeZoneName: "short"
  });

  function duration(ms) {
    var seconds = Math.max(1, Math.ceil(ms / 1000));
    if (seconds < 60) return seconds + " s";
    var minutes = Math.ceil(seconds / 60);
    if (minutes < 60) return minutes + " min";
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (hours < 24) return minutes ? hours + " h " + minutes + " min" : hours + " h";
    var days = Math.floor(hours / 24);
    hours = hours % 24;
    return hours ? days + " d " + hours + " h" : days + " d";
  }

  function relativeText(at) {
    var left = at - Date.now();
    return left <= 0 ? "now" : "in " + duration(left);
  }

  function localize() {
    document.querySelectorAll("time[data-local]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (isNaN(at)) return;
      el.title = el.textContent;
      el.textContent = localFormat.format(new Date(at));
      if (el.hasAttribute("data-relative")) {
        var rel = document.createElement("span");
        rel.className = "relative";
        rel.setAttribute("data-at", String(at));
        el.after(rel);
      }
    });
  }

  function tick() {
    document.querySelectorAll(".relative[data-at]").forEach(function (el) {
      el.textContent = " (" + relativeText(Number(el.getAttribute("data-at"))) + ")";
    });
  }

  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      button.hidden = false;
      button.setAttribute("aria-label", "Copy " + (button.getAttribute("aria-label") || "to clipboard"));
      button.addEventListener("click", function () {
        var text = source.textContent;
        var done = function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 2000);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { select(source); });
        } else {
          select(source);
        }
      });
    });
  }

  // Without a secure context the clipboard API is missing: select the text for Ctrl+C.
  function select(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("DOMContentLoaded", function () {
    localize();
    tick();
    setInterval(tick, 15000);
    copyButtons();
  });
})();

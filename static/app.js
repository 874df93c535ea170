// Progressive enhancement only: every page works without this file.
// - copy buttons ([data-copy] text or [data-copy-from] element id)
// - auto-refresh of pages that mark a [data-refresh="seconds"] element,
//   paused while the user is typing in a form or has text selected, and
//   and held while a form holds changes not sent yet or the page shows a
//   refused form (a refresh would replace what was typed). Each tick is
//   counted in <html data-refresh-ticks>.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  document.addEventListener("click", function (e) {
    var b = e.target.closest("button.copy");
    if (!b) return;
    var text = b.dataset.copy;
    if (b.dataset.copyFrom) {
      var el = document.getElementById(b.dataset.copyFrom);
      text = el ? el.textContent : "";
    }
    if (navigator.clipboard && text) {
      navigator.clipboard.writeText(text).then(function () {
        var old = b.textContent;
        b.textContent = "Copied";
        setTimeout(function () { b.textContent = old; }, 1200);
      });
    }
  });

  var marker = document.querySelector("[data-refresh]");
  if (!marker) return;
  var seconds = parseInt(marker.dataset.refresh, 10) || 15;
  // What the page's form controls hold; a change from what the page came
  // with (or what the last refresh brought) is an edit not sent yet.
  function values() {
    return JSON.stringify(Array.prototype.map.call(
      document.querySelectorAll("main input, main textarea, main select"),
      function (el) {
        if (el.type === "checkbox" || el.type === "radio") return el.checked;
        if (el.tagName === "SELECT") {
          return Array.prototype.map.call(el.options, function (o) { return o.selected; });
        }
        return el.value;
      }));
  }
  var shown = values();
  function edited() { return values() !== shown; }
  var ticks = 0;
  function ticked() {
    ticks += 1;
    document.documentElement.dataset.refreshTicks = String(ticks);
  }
  function busy() {
    var a = document.activeElement;
    var typing = a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT");
    var selecting = String(window.getSelection()) !== "";
    var open = document.querySelector("details[open]");
    var refused = document.querySelector("main .error[role=alert]");
    return edited() || refused || typing || selecting || open;
  }
  function refresh() {
    if (busy() || document.hidden) return ticked();
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html || busy()) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("main");
        if (fresh) {
          document.querySelector("main").replaceWith(fresh);
          shown = values();
        }
      })
      .catch(function () {})
      .then(ticked);
  }
  setInterval(refresh, seconds * 1000);
})();

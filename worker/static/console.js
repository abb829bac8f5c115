// jobq console: every page works without this file. It only adds live refresh: while the
// "live" box is ticked and the tab is visible, the page's <main> is re-read every 3 seconds,
// except while someone is typing in or has changed a form on the page.
(function () {
  "use strict";
  var box = document.getElementById("live");
  if (!box) return;
  var key = "jobq-live";
  if (window.localStorage && localStorage.getItem(key) === "off") box.checked = false;
  box.addEventListener("change", function () {
    if (window.localStorage) localStorage.setItem(key, box.checked ? "on" : "off");
  });
  var edited = false;
  document.addEventListener("input", function (e) {
    if (e.target && e.target.form) edited = true;
  });
  function busy() {
    var a = document.activeElement;
    return edited || (a && a.form && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName));
  }
  function refresh() {
    if (!box.checked || document.hidden || busy()) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "jobq-live" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) main.replaceWith(fresh);
      })
      .catch(function () {});
  }
  setInterval(refresh, 3000);
})();

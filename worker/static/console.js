// jobq console: every page works without this file. It only adds live refresh: while the
// "live" box is ticked and the tab is visible, the page's <main> is re-read every 3 seconds.
(function () {
  "use strict";
  var box = document.getElementById("live");
  if (!box) return;
  var key = "jobq-live";
  if (window.localStorage && localStorage.getItem(key) === "off") box.checked = false;
  box.addEventListener("change", function () {
    if (window.localStorage) localStorage.setItem(key, box.checked ? "on" : "off");
  });
  function refresh() {
    if (!box.checked || document.hidden) return;
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

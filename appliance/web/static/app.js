// Swaps in the dashboard's live panel every 5 s. Pages work without it (the dashboard then reloads itself).
(function () {
  "use strict";
  var panel = document.getElementById("panel");
  if (!panel || !window.fetch) return;
  var url = panel.getAttribute("data-refresh");
  setInterval(function () {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
      .then(function (html) { if (html !== null) panel.innerHTML = html; })
      .catch(function () {});
  }, 5000);
})();

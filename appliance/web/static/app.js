// Swaps in a page's live part (#panel on the dashboard, #live-panel on the Live page) every 5 s.
// When a refresh fails (no answer, an error status, or a login page instead of the fragment) the
// part is marked stale: #stale shows the time of the last good update and the part gets the class
// "stale" (the health line turns grey/amber) until a refresh works again.
// Pages work without it (they then reload themselves).
(function () {
  "use strict";
  var INTERVAL = 5000;
  var box = document.getElementById("panel") || document.getElementById("live-panel");
  if (!box || !window.fetch) return;
  var url = box.getAttribute("data-refresh");
  var banner = document.getElementById("stale");
  var since = document.getElementById("stale-since");
  var lastGood = new Date();

  function hhmmss(d) {
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function markStale() {
    box.classList.add("stale");
    if (since) since.textContent = hhmmss(lastGood);
    if (banner) banner.hidden = false;
  }

  function markFresh(html) {
    box.innerHTML = html;
    lastGood = new Date();
    box.classList.remove("stale");
    if (banner) banner.hidden = true;
  }

  // A fragment route marks its answer; a login page (after a redirect) or an error page does not.
  function fragmentOf(r) {
    if (!r.ok || r.redirected || r.headers.get("X-Flowtap-Fragment") !== box.id) return null;
    return r.text();
  }

  setInterval(function () {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(fragmentOf)
      .then(function (html) { if (html === null) markStale(); else markFresh(html); })
      .catch(markStale);
  }, INTERVAL);
})();

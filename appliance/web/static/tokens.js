// The tokens page: a Copy button for a new token's secret. Without this script the secret is
// still there to select (it selects whole on a click, see tokens.css).
(function () {
  "use strict";
  var button = document.getElementById("copy-token");
  if (!button) return;
  var secret = document.getElementById(button.getAttribute("data-copies"));
  var result = document.getElementById("copy-result");

  function select() {             // the fallback: the secret selected, for Ctrl-C
    var range = document.createRange();
    range.selectNodeContents(secret);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    result.textContent = "Selected: press Ctrl-C (\u2318-C) to copy.";
  }

  button.hidden = false;
  button.addEventListener("click", function () {
    if (!navigator.clipboard || !window.isSecureContext) { select(); return; }
    navigator.clipboard.writeText(secret.textContent).then(function () {
      result.textContent = "Copied.";
    }, select);
  });
})();

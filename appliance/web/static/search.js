// The search page's time picker and column chooser. The picker writes the time range field in
// ra's syntax (YYYY/MM/DD.HH:MM:SS-YYYY/MM/DD.HH:MM:SS) in the sensor's time zone: from the two
// datetime-local inputs, or from the quick buttons (the last 15 min, 1 h, 24 h of the data: up to
// now, or up to the newest record when that is older than an hour; "all" empties the field).
// On submit the column checkboxes become one fields= list (none when the choice is the default).
// Without this script the text field and the checkboxes work as they are.
(function () {
  "use strict";
  var form = document.getElementById("search-form");
  if (!form) return;
  var field = document.getElementById("search-t");
  var picker = document.getElementById("picker");
  var from = document.getElementById("t-from");
  var to = document.getElementById("t-to");
  var offset = Number(form.getAttribute("data-zone-offset")) || 0;   // seconds east of UTC
  var now = Number(form.getAttribute("data-now")) || Date.now() / 1000;
  var newest = Number(form.getAttribute("data-newest")) || 0;
  var stale = Number(form.getAttribute("data-stale")) || 3600;
  var RA = /^(\d{4})\/(\d\d)\/(\d\d)\.(\d\d):(\d\d)(?::(\d\d))?-(\d{4})\/(\d\d)\/(\d\d)\.(\d\d):(\d\d)(?::(\d\d))?$/;

  function two(n) { return (n < 10 ? "0" : "") + n; }

  // epoch seconds -> [date, time] as the sensor's wall clock
  function wall(epoch) {
    var d = new Date((epoch + offset) * 1000);
    return [d.getUTCFullYear() + "/" + two(d.getUTCMonth() + 1) + "/" + two(d.getUTCDate()),
            two(d.getUTCHours()) + ":" + two(d.getUTCMinutes()) + ":" + two(d.getUTCSeconds())];
  }
  function raTime(epoch) { var w = wall(epoch); return w[0] + "." + w[1]; }
  function localInput(epoch) { var w = wall(epoch); return w[0].replace(/\//g, "-") + "T" + w[1]; }

  // "2024-01-31T10:00" or "2024-01-31T10:00:05" -> "2024/01/31.10:00:00"
  function fromInput(value) {
    var m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d))?/.exec(value);
    return m ? m[1] + "/" + m[2] + "/" + m[3] + "." + m[4] + ":" + m[5] + ":" + (m[6] || "00") : "";
  }

  function fromPickers() {
    var a = fromInput(from.value), b = fromInput(to.value);
    if (a && b) field.value = a + "-" + b;
  }

  function showRange() {         // an absolute range in the field fills the pickers
    var m = RA.exec(field.value.trim());
    if (!m) return;
    from.value = m[1] + "-" + m[2] + "-" + m[3] + "T" + m[4] + ":" + m[5] + ":" + (m[6] || "00");
    to.value = m[7] + "-" + m[8] + "-" + m[9] + "T" + m[10] + ":" + m[11] + ":" + (m[12] || "00");
  }

  function quick(event) {
    var last = event.target.getAttribute("data-last");
    if (last === "all") {
      field.value = "";
      from.value = to.value = "";
      return;
    }
    var end = newest && newest < now - stale ? Math.floor(newest) + 1 : Math.ceil(now);
    field.value = raTime(end - Number(last)) + "-" + raTime(end);
    from.value = localInput(end - Number(last));
    to.value = localInput(end);
  }

  function sameSet(a, b) { return a.slice().sort().join(",") === b.slice().sort().join(","); }

  function compactFields() {
    var boxes = form.querySelectorAll("input[type=checkbox][name=fields]");
    var chosen = [];
    for (var i = 0; i < boxes.length; i++) {
      if (boxes[i].checked) chosen.push(boxes[i].value);
      boxes[i].disabled = true;
    }
    var defaults = (document.getElementById("fields").getAttribute("data-default") || "").split(",");
    if (!chosen.length || sameSet(chosen, defaults)) return;
    var hidden = document.createElement("input");
    hidden.type = "hidden";
    hidden.name = "fields";
    hidden.value = chosen.join(",");
    hidden.className = "compact-fields";
    form.appendChild(hidden);
  }

  function restoreFields() {     // back/forward may show the page as it was submitted
    var boxes = form.querySelectorAll("input[type=checkbox][name=fields]");
    for (var i = 0; i < boxes.length; i++) boxes[i].disabled = false;
    var added = form.querySelectorAll("input.compact-fields");
    for (var j = 0; j < added.length; j++) added[j].parentNode.removeChild(added[j]);
  }

  picker.hidden = false;
  showRange();
  from.addEventListener("change", fromPickers);
  to.addEventListener("change", fromPickers);
  var buttons = picker.querySelectorAll("button[data-last]");
  for (var i = 0; i < buttons.length; i++) buttons[i].addEventListener("click", quick);
  if (newest && newest < now - stale) {
    document.getElementById("quick-end").textContent = "(the newest record is older than an hour: " +
      "the quick ranges end at it, " + raTime(Math.floor(newest) + 1) + ")";
  }
  form.addEventListener("submit", compactFields);
  window.addEventListener("pageshow", restoreFields);
}());

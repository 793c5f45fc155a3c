// Orrery's web UI: live updates and the timeline slider. htmx does the
// fetching and swapping; this file only connects the two.
(function () {
  "use strict";
  // One stream of commits from the log (server-sent events). Each
  // `commit` carries the last committed event index; a live page then
  // refreshes its #main (hx-trigger="orrery-commit from:body"), a page at
  // a past event only moves the slider's end.
  function connect() {
    var es = new EventSource("/ui/events");
    es.addEventListener("commit", function (e) {
      var last = parseInt(e.data, 10);
      if (isNaN(last)) return;
      var slider = document.getElementById("at-slider");
      var input = document.getElementById("at");
      var main = document.getElementById("main");
      var live = main && main.dataset.live === "true";
      if (slider) { slider.max = last; if (live) slider.value = last; }
      if (input) { input.max = last; if (live) input.value = last; }
      var l = document.getElementById("last");
      if (l) l.textContent = last;
      if (live) htmx.trigger(document.body, "orrery-commit");
    });
  }
  document.addEventListener("DOMContentLoaded", connect);
  // The slider drives the number box; letting go of it travels there.
  document.addEventListener("input", function (e) {
    if (e.target && e.target.id === "at-slider") {
      document.getElementById("at").value = e.target.value;
    }
  });
  document.addEventListener("change", function (e) {
    if (e.target && e.target.id === "at-slider") {
      var input = document.getElementById("at");
      input.value = e.target.value;
      input.form.requestSubmit();
    }
  });
})();

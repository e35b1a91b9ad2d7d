// dicomlake UI: light progressive enhancement only; every page works without it.
(function () {
  "use strict";
  // Export jobs: refresh progress until every job is done or failed.
  var jobs = document.querySelectorAll("tr.job");
  var pending = Array.prototype.filter.call(jobs, function (tr) {
    var s = tr.getAttribute("data-status");
    return s === "queued" || s === "running";
  });
  if (pending.length) {
    setTimeout(function () { window.location.reload(); }, 1000);
  }
})();

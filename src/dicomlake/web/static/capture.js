// Capture page: send the chosen worklist item and the file with the CSRF header (a multipart
// body cannot carry the token the server checks), then show what the PACS answered.
(function () {
  "use strict";
  var form = document.getElementById("capture");
  if (!form) { return; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var chosen = form.querySelector("input[name=item]:checked");
    if (!chosen) { return; }
    form.elements.accession.value = chosen.getAttribute("data-accession");
    form.elements.study_uid.value = chosen.getAttribute("data-study");
    var body = new FormData(form);
    body.delete("item");
    var out = document.getElementById("capture-result");
    out.textContent = "sending…";
    fetch("/capture", {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": form.getAttribute("data-csrf") || "" }
    }).then(function (r) { return r.json(); }).then(function (answer) {
      out.textContent = JSON.stringify(answer, null, 2);
    }).catch(function (err) { out.textContent = "failed: " + err; });
  });
})();

// /api/docs: Swagger UI from the installed swagger-ui-py package (served by /static/), no CDN,
// no inline script (the app's CSP allows scripts from 'self' only).
(function () {
  "use strict";
  var el = document.getElementById("swagger-ui");
  if (!el || !window.SwaggerUIBundle) { return; }
  window.ui = window.SwaggerUIBundle({
    url: el.getAttribute("data-spec"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    withCredentials: true,
    requestInterceptor: function (req) {
      var csrf = el.getAttribute("data-csrf");
      if (csrf) { req.headers["X-CSRF-Token"] = csrf; }
      return req;
    }
  });
})();

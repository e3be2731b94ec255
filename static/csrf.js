// Every htmx request carries the dashboard's CSRF token (from <meta name="csrf-token">) as X-CSRF-Token.
document.addEventListener("htmx:configRequest", function (event) {
  var meta = document.querySelector('meta[name="csrf-token"]');
  if (meta && meta.content) event.detail.headers["X-CSRF-Token"] = meta.content;
});

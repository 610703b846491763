// Shared by the status pages (loaded before each page's own script): fetch with the
// session cookie, and when the session has run out (401) go to the login form, which
// brings the operator back to this page. No build step: a plain script, one global.
"use strict";
function api(url, options) {
  return fetch(url, {credentials: "same-origin", ...options}).then((r) => {
    if (r.status !== 401) return r;
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    return new Promise(() => {});  // never settles: the page is leaving, nothing to render
  });
}

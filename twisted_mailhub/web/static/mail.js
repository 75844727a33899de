// New mail appears without a reload: the folder's state is polled, and the
// message list is fetched again when it changed (new or removed messages,
// or one read or marked unread elsewhere). A session that has ended (logged
// out in another tab, or idle too long) is said, with a link to log in.
"use strict";
(function () {
  if (document.body.dataset.page !== "folder") { return; }
  // Emptying Trash or Junk deletes for ever: asked first.
  Array.prototype.forEach.call(document.querySelectorAll("form.empty"), function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.dataset.confirm)) { e.preventDefault(); }
    });
  });
  var folder = document.body.dataset.folder;
  var seen = [document.body.dataset.uidnext, document.body.dataset.count, document.body.dataset.unseen].join(" ");
  var base = "/mail/" + encodeURIComponent(folder);
  function refresh() {
    fetch(location.pathname + location.search, {credentials: "same-origin"})
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["messages", "pager"].forEach(function (id) {
          var fresh = doc.getElementById(id);
          var old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(document.adoptNode(fresh)); }
        });
        var freshFolders = doc.querySelector("nav.folders");
        var oldFolders = document.querySelector("nav.folders");
        if (freshFolders && oldFolders) { oldFolders.replaceWith(document.adoptNode(freshFolders)); }
      });
  }
  function poll() {
    fetch(base + "/state", {credentials: "same-origin"})
      .then(function (r) {
        if (r.redirected && new URL(r.url).pathname === "/login") { return "signed out"; }
        return r.ok ? r.json() : null;
      })
      .then(function (s) {
        if (s === "signed out") { window.mailhubSignedOut("this list is no longer kept up to date."); return false; }
        if (s) {
          var now = [s.uidnext, s.count, s.unseen].join(" ");
          if (now !== seen) { seen = now; refresh(); }
        }
        return true;
      })
      .catch(function () { return true; })
      .then(function (again) { if (again) { setTimeout(poll, 2000); } });
  }
  setTimeout(poll, 2000);
})();

// New mail appears without a reload: the folder's state is polled, and the
// message list is fetched again when it changed.
"use strict";
(function () {
  if (document.body.dataset.page !== "folder") { return; }
  var folder = document.body.dataset.folder;
  var uidnext = document.body.dataset.uidnext;
  var count = document.body.dataset.count;
  var base = "/mail/" + encodeURIComponent(folder);
  function refresh() {
    fetch(location.pathname + location.search, {credentials: "same-origin"})
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["messages"].forEach(function (id) {
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
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (String(s.uidnext) !== uidnext || String(s.count) !== count) {
          uidnext = String(s.uidnext);
          count = String(s.count);
          refresh();
        }
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 2000);
})();

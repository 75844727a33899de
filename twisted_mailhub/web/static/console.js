// The session list: rows added and updated live. Text only via textContent.
"use strict";
(function () {
  var body = document.getElementById("sessions");
  if (!body) { return; }
  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return d.toTimeString().slice(0, 8);
  }
  function row(s) {
    var tr = document.createElement("tr");
    tr.dataset.id = s.id;
    tr.className = s.state;
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.href = "/console/session/" + encodeURIComponent(s.id);
    a.textContent = s.id;
    td.appendChild(a);
    tr.appendChild(td);
    [s.protocol, s.client, s.account || "-", s.tls || "no", clock(s.started),
     s.duration.toFixed(1) + " s", s.state].forEach(function (v) {
      tr.appendChild(window.mailhubCell(v));
    });
    return tr;
  }
  window.mailhubLive("", function (updates) {
    updates.forEach(function (u) {
      if (u.type === "hidden") {
        // (it logged in as another account: not this browser's to see)
        Array.prototype.slice.call(body.rows).forEach(function (r) {
          if (r.dataset.id === u.id) { body.removeChild(r); }
        });
        return;
      }
      if (u.type !== "session") { return; }
      var fresh = row(u.session);
      var old = null;
      Array.prototype.forEach.call(body.rows, function (r) {
        if (r.dataset.id === u.session.id) { old = r; }
      });
      if (old) { body.replaceChild(fresh, old); } else { body.insertBefore(fresh, body.firstChild); }
    });
  });
})();

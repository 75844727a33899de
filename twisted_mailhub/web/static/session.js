// One session: its lines stream in with their explanations.
"use strict";
(function () {
  var body = document.getElementById("lines");
  if (!body) { return; }
  var id = document.body.dataset.session;
  var last = parseInt(document.body.dataset.after || "0", 10);
  var labels = {C: "C:", S: "S:", start: "--", end: "--", tls: "TLS", login: "auth", data: "data"};
  function add(e) {
    if (e.seq <= last) { return; }
    last = e.seq;
    var tr = document.createElement("tr");
    tr.className = "ev " + e.kind;
    tr.dataset.seq = String(e.seq);
    tr.appendChild(window.mailhubCell("+" + e.offset.toFixed(3) + "s", "t"));
    tr.appendChild(window.mailhubCell(labels[e.kind] || e.kind, "k"));
    var line = window.mailhubCell("", "l");
    var code = document.createElement("code");
    code.textContent = e.text;
    line.appendChild(code);
    tr.appendChild(line);
    var meaning = window.mailhubCell("", "m");
    if (e.explain) {
      meaning.appendChild(document.createTextNode(e.explain.text + " ("));
      var a = document.createElement("a");
      a.href = e.explain.url;
      a.rel = "noreferrer";
      a.target = "_blank";
      a.textContent = e.explain.ref;
      meaning.appendChild(a);
      meaning.appendChild(document.createTextNode(")"));
    }
    if (e.link) {
      var stored = document.createElement("a");
      stored.href = e.link.url;
      stored.className = "stored";
      stored.textContent = e.link.text;
      meaning.appendChild(document.createTextNode(" "));
      meaning.appendChild(stored);
    }
    tr.appendChild(meaning);
    body.appendChild(tr);
    tr.scrollIntoView({block: "nearest"});
  }
  function facts(s) {
    var set = function (name, v) { var el = document.getElementById(name); if (el) { el.textContent = v; } };
    set("account", s.account || "-");
    set("tls", s.tls || "no");
    set("state", s.state);
  }
  window.mailhubLive("?session=" + encodeURIComponent(id) + "&after=" + last, function (updates) {
    updates.forEach(function (u) {
      if (u.type === "hidden" && u.id === id) {
        // It logged in as another account: what follows is theirs, and
        // what this page showed of it goes too.
        while (body.rows.length) { body.deleteRow(0); }
        var note = document.createElement("p");
        note.className = "error";
        note.id = "hidden";
        note.setAttribute("role", "alert");
        note.textContent = "This session logged in as another account: it is not yours to watch any more.";
        document.querySelector("main").prepend(note);
        return;
      }
      if (u.type === "event" && u.session === id) { add(u); }
      if (u.type === "session" && u.session.id === id) { facts(u.session); }
    });
  });
})();

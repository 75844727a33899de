// Shared by the console pages: a WebSocket to /console/live that reconnects,
// until the browser session has ended (logged out, or idle too long): then
// the page says so, with a link to log in again.
"use strict";
window.mailhubSignedOut = function (what) {
  if (document.getElementById("signed-out")) { return; }
  var note = document.createElement("p");
  note.className = "error";
  note.id = "signed-out";
  note.setAttribute("role", "alert");
  note.append("Your session has ended (logged out, or idle too long): " + what + " ");
  var link = document.createElement("a");
  link.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  link.textContent = "Log in again";
  note.append(link);
  document.querySelector("main").prepend(note);
};
window.mailhubLive = function (query, onUpdates) {
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + location.host + "/console/live" + query;
  var delay = 500;
  var SIGNED_OUT = 4001;  // (console.py)
  function ended() {
    document.body.classList.remove("live");
    window.mailhubSignedOut("this page no longer shows what happens.");
  }
  function connect() {
    var ws = new WebSocket(url);
    var opened = false;
    ws.onopen = function () { opened = true; delay = 500; document.body.classList.add("live"); };
    ws.onmessage = function (m) { onUpdates(JSON.parse(m.data)); };
    ws.onclose = function (e) {
      document.body.classList.remove("live");
      if (e.code === SIGNED_OUT) { ended(); return; }
      var retry = function () { setTimeout(connect, delay); delay = Math.min(delay * 2, 10000); };
      if (opened) { retry(); return; }
      // Refused before it opened: signed out, or the hub is away.
      fetch("/", {credentials: "same-origin"})
        .then(function (r) {
          if (r.redirected && new URL(r.url).pathname === "/login") { ended(); } else { retry(); }
        })
        .catch(retry);
    };
  }
  connect();
};
window.mailhubCell = function (text, className) {
  var td = document.createElement("td");
  if (className) { td.className = className; }
  td.textContent = text;
  return td;
};

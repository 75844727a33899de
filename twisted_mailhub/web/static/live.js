// Shared by the console pages: a WebSocket to /console/live that reconnects.
"use strict";
window.mailhubLive = function (query, onUpdates) {
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + location.host + "/console/live" + query;
  var delay = 500;
  function connect() {
    var ws = new WebSocket(url);
    ws.onopen = function () { delay = 500; document.body.classList.add("live"); };
    ws.onmessage = function (m) { onUpdates(JSON.parse(m.data)); };
    ws.onclose = function () {
      document.body.classList.remove("live");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
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

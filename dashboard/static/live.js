// Live pages over Server-Sent Events (issue 19). The job page shows the
// worker's previews and progress as they come; the campaign page refreshes
// its numbers and tiles when the stream says they changed. While a stream is
// open the page's htmx polls are skipped; without EventSource, or while the
// stream is down (a network error, an ended session), they run as before.
(function () {
  "use strict";
  var open = 0;

  // Skip the "every Ns" polls while a stream speaks for them; refresh() lets its own requests through.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !open) return;
    if (elt.dataset.liveRefresh) { delete elt.dataset.liveRefresh; return; }
    if ((elt.getAttribute("hx-trigger") || "").indexOf("every") === 0) event.preventDefault();
  });

  var timers = {};
  // Fetch an element's htmx fragment now, at most once a second per element.
  function refresh(id) {
    if (timers[id]) return;
    timers[id] = setTimeout(function () {
      delete timers[id];
      var elt = document.getElementById(id);
      if (!elt || !elt.getAttribute("hx-get") || !window.htmx) return;
      elt.dataset.liveRefresh = "1";
      window.htmx.ajax("GET", elt.getAttribute("hx-get"), {source: elt, target: elt, swap: elt.getAttribute("hx-swap") || "innerHTML",
                                                           headers: {"X-Live-Refresh": "1"}});
    }, 300);
  }

  function stream(onEvents) {
    var source = new EventSource(window.location.pathname.replace(/\/$/, "") + "/events");
    var counted = false;
    function up() { if (!counted) { counted = true; open += 1; } }
    function down() { if (counted) { counted = false; open -= 1; } }
    source.onopen = up;
    source.onerror = down;  // the browser retries; the polls run meanwhile
    Object.keys(onEvents).forEach(function (name) {
      source.addEventListener(name, function (message) { onEvents[name](JSON.parse(message.data)); });
    });
    source.addEventListener("end", function (message) {
      var data = JSON.parse(message.data);
      if (data.reason !== "timeout") { source.close(); down(); }
      if (onEvents.end) onEvents.end(data);
    });
    return source;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "";
    return value < 60 ? " · about " + Math.ceil(value) + " s left" : " · about " + Math.round(value / 60) + " min left";
  }

  function jobPage(box) {
    var image = document.createElement("img");
    image.id = "live-preview-image";
    image.alt = "live preview of the render";
    image.hidden = true;
    var caption = document.createElement("p");
    caption.className = "muted";
    caption.id = "live-step";
    box.appendChild(image);
    box.appendChild(caption);
    function progress(data) {
      if (!data.total) return;
      caption.textContent = "Step " + data.step + " of " + data.total + seconds(data.eta_s);
      var percent = (Math.round(1000 * data.step / data.total) / 10).toFixed(1);
      var bar = document.querySelector("#job-status .bar > span");
      if (!bar) return;
      bar.style.width = percent + "%";
      var after = bar.parentNode.nextSibling;  // the fragment's " 12.5% · 256×256, …" text
      if (after && after.nodeType === 3) after.textContent = after.textContent.replace(/^\s*[\d.]+%/, " " + percent + "%");
    }
    stream({
      progress: progress,
      preview: function (data) {
        image.src = "data:" + data.mime + ";base64," + data.data;
        image.hidden = false;
        progress(data);
      },
      status: function (data) {
        var shown = document.getElementById("job-state");
        if (!shown || shown.textContent.trim() !== data.status) refresh("job-status");
      },
      output: function () { refresh("job-status"); },
      end: function (data) {
        if (data.reason === "timeout") return;
        refresh("job-status");
        box.hidden = true;
      }
    });
  }

  function campaignPage() {
    stream({
      progress: function (data) { if (data.counts) refresh("campaign-progress"); },
      status: function () { refresh("campaign-progress"); },
      output: function () { refresh("gallery"); },
      end: function (data) {
        if (data.reason === "timeout") return;
        refresh("campaign-progress");
        refresh("gallery");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.EventSource) return;
    var box = document.getElementById("live-preview");
    if (box && box.getAttribute("data-job")) jobPage(box);
    else if (document.getElementById("campaign-progress") && document.getElementById("gallery") &&
             document.getElementById("gallery").getAttribute("hx-get")) campaignPage();
  });
})();

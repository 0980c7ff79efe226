// Live pages over Server-Sent Events (issue 19). The job page shows the
// worker's previews and progress as they come; the campaign page refreshes
// its numbers and tiles when the stream says they changed; the image page
// follows the jobs made from the image (a few streams at most). While the
// streams are open the page's htmx polls are skipped; without EventSource, or
// while a stream is down (a network error, an ended session), they run as before.
(function () {
  "use strict";
  var open = 0;
  // Whether the open streams speak for everything the page's polls would fetch.
  var covered = function () { return open > 0; };

  // Skip the "every Ns" polls while a stream speaks for them; refresh() lets its own requests through.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !covered()) return;
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

  // An event stream (this page's own by default); returns a function that closes it.
  function stream(onEvents, url) {
    var source = new EventSource(url || window.location.pathname.replace(/\/$/, "") + "/events");
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
    return function () { source.close(); down(); };
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
      job: function () { refresh("campaign-progress"); refresh("gallery"); },  // placed on a worker, started, ...
      output: function () { refresh("gallery"); },
      end: function (data) {
        if (data.reason === "timeout") return;
        refresh("campaign-progress");
        refresh("gallery");
      }
    });
  }

  // Streams the image page keeps open at once; further unfinished jobs are polled.
  var MAX_STREAMS = 4;

  function imagePage() {
    var closers = {}, previews = {}, steps = {};
    function tile(id) { return document.getElementById("made-" + id); }
    function progress(id, data) {
      var box = tile(id);
      if (!box || !data.total) return;
      steps[id] = data;
      var percent = (Math.round(1000 * data.step / data.total) / 10).toFixed(1);
      var bar = box.querySelector(".bar > span"), step = box.querySelector(".live-step");
      if (bar) bar.style.width = percent + "%";
      if (step) step.textContent = "Step " + data.step + " of " + data.total + seconds(data.eta_s);
      // Steps mean it is rendering, whatever the badge last said (the strip's
      // refresh on the status event may still be on its way).
      var badge = box.querySelector(".badge");
      if (badge && data.step > 0 && badge.textContent !== "running") {
        badge.textContent = "running";
        badge.className = "badge badge-running";
      }
    }
    function preview(id, url) {
      var box = tile(id), image = box && box.querySelector("img.live-preview");
      if (!image) return;
      image.src = url;
      image.hidden = false;
    }
    function follow(id) {
      return stream({
        progress: function (data) { progress(id, data); },
        preview: function (data) {
          previews[id] = "data:" + data.mime + ";base64," + data.data;
          preview(id, previews[id]);
          progress(id, data);
        },
        status: function (data) {
          var box = tile(id);
          if (!box || box.getAttribute("data-status") !== data.status) refresh("made-from");
        },
        output: function () { refresh("made-from"); },
        end: function (data) { if (data.reason !== "timeout") { delete closers[id]; refresh("made-from"); } }
      }, "/jobs/" + id + "/events");
    }
    // Open streams for the strip's unfinished jobs (up to MAX_STREAMS), close the rest; again after each swap.
    function bind() {
      var wanted = {};
      Array.prototype.slice.call(document.querySelectorAll("#made-from [data-live-job]"), 0, MAX_STREAMS).forEach(function (box) {
        var id = box.getAttribute("data-live-job");
        wanted[id] = true;
        if (!closers[id]) closers[id] = follow(id);
        if (previews[id]) preview(id, previews[id]);  // a refreshed strip keeps the latest preview and step
        if (steps[id]) progress(id, steps[id]);
      });
      Object.keys(closers).forEach(function (id) { if (!wanted[id]) { closers[id](); delete closers[id]; } });
    }
    covered = function () {
      var unfinished = document.querySelectorAll("#made-from [data-live-job]").length;
      return open > 0 && unfinished <= MAX_STREAMS && open >= Math.min(unfinished, MAX_STREAMS);
    };
    document.addEventListener("htmx:afterSettle", bind);
    bind();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.EventSource) return;
    var box = document.getElementById("live-preview");
    if (document.getElementById("made-from")) imagePage();
    else if (box && box.getAttribute("data-job")) jobPage(box);
    else if (document.getElementById("campaign-progress") && document.getElementById("gallery") &&
             document.getElementById("gallery").getAttribute("hx-get")) campaignPage();
  });
})();

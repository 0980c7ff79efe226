// Lightbox for campaign galleries and grids: a click on any a[data-lightbox]
// shows its image (data-full) over the page with its caption (data-caption);
// Left/Right step through the page's images, Esc closes, Download saves the
// full image. Without this script each tile is a plain link to the image page.
// Listeners sit on the document, so tiles swapped in by htmx polls work too.
(function () {
  "use strict";

  var current = -1;
  var opener = null;

  function box() { return document.getElementById("lightbox"); }
  function links() { return Array.prototype.slice.call(document.querySelectorAll("a[data-lightbox]")); }

  function show(index) {
    var all = links();
    if (!all.length) { return; }
    current = (index + all.length) % all.length;
    var link = all[current];
    var full = link.getAttribute("data-full");
    document.getElementById("lightbox-image").src = full;
    document.getElementById("lightbox-image").alt = link.getAttribute("data-caption") || "";
    document.getElementById("lightbox-caption").textContent =
      (link.getAttribute("data-caption") || "") + " (" + (current + 1) + " of " + all.length + ")";
    document.getElementById("lightbox-download").href = full;
    document.getElementById("lightbox-open").href = link.getAttribute("href");
  }

  function open(link) {
    var lightbox = box();
    if (!lightbox) { return false; }
    opener = link;
    show(links().indexOf(link));
    lightbox.hidden = false;
    document.getElementById("lightbox-close").focus();
    return true;
  }

  function close() {
    var lightbox = box();
    if (!lightbox || lightbox.hidden) { return; }
    lightbox.hidden = true;
    document.getElementById("lightbox-image").removeAttribute("src");
    current = -1;
    if (opener && document.body.contains(opener)) { opener.focus(); }
  }

  document.addEventListener("click", function (event) {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) { return; }
    var target = event.target instanceof Element ? event.target : null;
    if (!target) { return; }
    var link = target.closest("a[data-lightbox]");
    if (link && open(link)) { event.preventDefault(); return; }
    if (target.closest("#lightbox-prev")) { show(current - 1); }
    else if (target.closest("#lightbox-next")) { show(current + 1); }
    else if (target.closest("#lightbox-close") || target.id === "lightbox") { close(); }
  });

  document.addEventListener("keydown", function (event) {
    var lightbox = box();
    if (!lightbox || lightbox.hidden) { return; }
    if (event.key === "Escape") { close(); event.preventDefault(); }
    else if (event.key === "ArrowLeft") { show(current - 1); event.preventDefault(); }
    else if (event.key === "ArrowRight") { show(current + 1); event.preventDefault(); }
  });
}());

// Create page (issue 19): a check starts from a clean slate (no error from an
// earlier check or submit stays beside a fresh result), and the aspect-ratio
// list offers only frames that suit the families of the chosen models.
(function () {
  "use strict";

  function clearMessages() {
    document.querySelectorAll("#create-form .field-error").forEach(function (node) { node.remove(); });
    var messages = document.getElementById("create-messages");
    if (messages) { messages.replaceChildren(); }
    var box = document.getElementById("check-box");
    if (box) { box.replaceChildren(); }
  }

  function chosenFamilies(models) {
    var families = [];
    Array.prototype.forEach.call(models.selectedOptions, function (option) {
      if (option.dataset.family) { families.push(option.dataset.family); }
    });
    return families;
  }

  // No model chosen means the farm's default model: every registered family stays offered.
  function offerFrames(models, ratios) {
    var families = chosenFamilies(models);
    Array.prototype.forEach.call(ratios.options, function (option) {
      var suits = !families.length || !option.dataset.families ||
        option.dataset.families.split(" ").some(function (family) { return families.indexOf(family) >= 0; });
      option.hidden = !suits;
      option.disabled = !suits;
      if (!suits) { option.selected = false; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("create-form");
    if (!form) { return; }
    form.addEventListener("htmx:beforeRequest", function (event) {
      if (event.detail.elt.id === "check-button") { clearMessages(); }
    });
    var models = document.getElementById("model");
    var ratios = document.getElementById("aspect_ratio");
    if (models && ratios) {
      models.addEventListener("change", function () { offerFrames(models, ratios); });
      offerFrames(models, ratios);
    }
  });
})();

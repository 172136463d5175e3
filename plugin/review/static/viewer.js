// The case page's image viewer: series and slice scrolling, window level/width and presets, the
// heatmap overlay toggle. Frames are PNGs rendered by the service at the window asked for.
(function () {
  "use strict";
  var viewer = document.getElementById("viewer");
  if (!viewer) { return; }
  var caseId = viewer.dataset.case;
  var series = document.getElementById("series");
  var slice = document.getElementById("slice");
  var label = document.getElementById("slice-label");
  var preset = document.getElementById("preset");
  var center = document.getElementById("center");
  var width = document.getElementById("width");
  var frame = document.getElementById("frame");
  var overlay = document.getElementById("overlay");
  var toggle = document.getElementById("overlay-toggle");

  function option() { return series.options[series.selectedIndex]; }

  function fillPresets() {
    var opt = option();
    while (preset.options.length > 1) { preset.remove(1); }
    preset.options[0].textContent = opt.dataset.center ? "header" : "auto";
    (opt.dataset.presets || "").split(";").forEach(function (item) {
      if (!item) { return; }
      var p = item.split(":");
      var o = document.createElement("option");
      o.value = p[1] + ":" + p[2];
      o.textContent = p[0] + " (" + p[1] + "/" + p[2] + ")";
      preset.appendChild(o);
    });
    preset.value = "";
  }

  function onExamined() {
    return series.value === viewer.dataset.examinedSeries && slice.value === viewer.dataset.examinedIndex;
  }

  function update() {
    var n = Number(slice.value);
    label.textContent = (n + 1) + " / " + option().dataset.frames;
    var url = "/review/cases/" + caseId + "/frames/" + encodeURIComponent(series.value) + "/" + n + ".png";
    if (center.value !== "" && width.value !== "" && Number(width.value) > 0) {
      url += "?center=" + encodeURIComponent(center.value) + "&width=" + encodeURIComponent(width.value);
    }
    if (frame.getAttribute("src") !== url) { frame.setAttribute("src", url); }
    if (overlay) { overlay.hidden = !(toggle.checked && onExamined()); }
  }

  series.addEventListener("change", function () {
    var opt = option();
    slice.max = Number(opt.dataset.frames) - 1;
    slice.value = series.value === viewer.dataset.examinedSeries ? viewer.dataset.examinedIndex : Math.floor(Number(opt.dataset.frames) / 2);
    center.value = opt.dataset.center; width.value = opt.dataset.width;
    fillPresets(); update();
  });
  slice.addEventListener("input", update);
  preset.addEventListener("change", function () {
    var opt = option();
    if (preset.value) { var p = preset.value.split(":"); center.value = p[0]; width.value = p[1]; }
    else { center.value = opt.dataset.center; width.value = opt.dataset.width; }
    update();
  });
  center.addEventListener("change", update);
  width.addEventListener("change", update);
  if (toggle) { toggle.addEventListener("change", update); }
  document.getElementById("stage").addEventListener("wheel", function (event) {
    event.preventDefault();
    var n = Number(slice.value) + (event.deltaY > 0 ? 1 : -1);
    if (n >= 0 && n <= Number(slice.max)) { slice.value = n; update(); }
  }, { passive: false });
  fillPresets();
  update();
}());

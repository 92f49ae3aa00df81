// neocloud console: small progressive enhancement. Every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Ask before destructive forms (terminate, drain, ...).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  }
  // A click on the topology map opens the node drawn there: the server turns map
  // coordinates into the node, so the page need not carry 27,500 node names.
  const wrap = document.querySelector(".mapwrap");
  const svg = wrap && wrap.querySelector("svg");
  if (svg) {
    // Zoom: the SVG keeps its viewBox, so clicks still map to the same coordinates.
    const base = { w: Number(svg.getAttribute("width")), h: Number(svg.getAttribute("height")) };
    const bar = document.querySelector(".zoom");
    let scale = 1;
    const apply = () => {
      svg.setAttribute("width", String(Math.round(base.w * scale)));
      svg.setAttribute("height", String(Math.round(base.h * scale)));
    };
    if (bar && base.w > 0) {
      bar.hidden = false;
      document.getElementById("zoom-in").addEventListener("click", () => { scale = Math.min(scale * 1.5, 8); apply(); });
      document.getElementById("zoom-out").addEventListener("click", () => { scale = Math.max(scale / 1.5, 0.25); apply(); });
      document.getElementById("zoom-fit").addEventListener("click", () => { scale = (wrap.clientWidth - 20) / base.w; apply(); });
    }
    svg.addEventListener("click", (e) => {
      const m = svg.getScreenCTM();
      if (!m) return;
      const pt = new DOMPoint(e.clientX, e.clientY).matrixTransform(m.inverse());
      const x = Math.floor(pt.x), y = Math.floor(pt.y);
      if (x < 0 || y < 0) return;
      window.location.href = wrap.dataset.at + "?x=" + x + "&y=" + y;
    });
  }
});

// Berth console: small conveniences only; every page works without this.
"use strict";
document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-copy]");
  if (!b || !navigator.clipboard) return;
  navigator.clipboard.writeText(b.dataset.copy).then(() => {
    const was = b.textContent;
    b.textContent = "copied";
    setTimeout(() => { b.textContent = was; }, 1200);
  });
});
// "/" focuses the search box, as on most code hosts.
document.addEventListener("keydown", (e) => {
  const q = document.getElementById("q");
  if (e.key === "/" && q && document.activeElement !== q && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    q.focus();
  }
});
// The delete button is enabled once the confirmation word is typed (the
// server checks it again).
const confirmInput = document.getElementById("confirm");
if (confirmInput) {
  const button = confirmInput.form.querySelector("button[type=submit]");
  const sync = () => { button.disabled = confirmInput.value.trim() !== confirmInput.dataset.word; };
  confirmInput.addEventListener("input", sync);
  sync();
}

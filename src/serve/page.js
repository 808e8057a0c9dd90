// The demo page's script (served as /page.js: the page's Content-Security-Policy allows
// no inline script).
function user() { return document.getElementById("user").value.trim() || "demo-user"; }
function text(b) { return (b.title || b.book_id) + (b.category ? " · " + b.category : ""); }
async function loadBooks() {
  const r = await fetch("/api/books?k=30");
  const body = await r.json();
  const ul = document.getElementById("books");
  ul.replaceChildren();
  for (const b of body.items) {
    const li = document.createElement("li");
    li.textContent = text(b);
    li.dataset.book = b.book_id;
    li.onclick = async () => {
      await bookrec.track("click", b.book_id, user());
      // the click reaches the recommendations in a few hundred ms: look sooner than the poll
      for (const ms of [100, 200, 300, 450, 650]) setTimeout(loadRecs, ms);
    };
    ul.appendChild(li);
  }
}
function recsUrl(logImpression) {
  return "/api/recommendations/" + encodeURIComponent(user()) + "?k=10" +
    (logImpression ? "" : "&impression=0");
}
async function loadRecs() {
  // the poll does not log an impression (the list may be the one already shown); when the
  // list changes, it is asked for again, logged, and that response is what the page shows
  let body = await (await fetch(recsUrl(false))).json();
  const ul = document.getElementById("recs");
  const sig = b => JSON.stringify((b.items || []).map(i => [i.book_id, i.title, i.category, i.reasons]));
  if (ul.dataset.signature !== sig(body)) body = await (await fetch(recsUrl(true))).json();
  const items = body.items || [];
  // every id, title and reason is rendered as text (no HTML from data: the catalogue and
  // the ids come from outside)
  const signature = sig(body);
  if (ul.dataset.signature !== signature) {
    ul.dataset.signature = signature;
    const requestId = body.request_id;
    ul.replaceChildren(...items.map((i, n) => {
      const li = document.createElement("li");
      li.dataset.book = i.book_id;
      li.dataset.requestId = requestId || "";
      li.dataset.position = String(n + 1);
      // a click on a recommended book says which response and slot it came from
      li.onclick = async () => {
        await bookrec.track("click", i.book_id, user(),
          requestId ? { request_id: requestId, position: n + 1 } : {});
        for (const ms of [100, 200, 300, 450, 650]) setTimeout(loadRecs, ms);
      };
      li.append(document.createTextNode(text(i)));
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = (i.reasons || []).join(", ");
      li.append(why);
      return li;
    }));
  }
  const rt = body.realtime || {};
  const variants = (body.experiments || []).map(e => e.experiment + ": " + e.variant);
  document.getElementById("status").textContent =
    "model " + (body.model_version || "none") + " · realtime " +
    (rt.available ? "fresh " + (rt.age_seconds == null ? "?" : rt.age_seconds.toFixed(1)) + " s" : "unavailable");
  document.getElementById("variant").textContent =
    variants.length ? "experiments · " + variants.join(", ") : "no experiment";
}
loadBooks(); loadRecs();
setInterval(loadRecs, 500);

/* bookrec tracker: queue behaviour events and send them to the collector in batches.
 *
 *   <script src="http://collector:5006/tracker.js" data-endpoint="http://collector:5006"></script>
 *   bookrec.track('view', { book_id: '034545104X' });
 *   bookrec.identify('u1');          // or events carry anonymous_id from localStorage
 *   // a click on a recommended book: the response's request_id and the book's position
 *   // (1 = first) tie it to the impression `bookrec serve` logged for that response
 *   bookrec.track('click', { book_id: b.book_id, request_id: body.request_id, position: 1 });
 *
 * Events are batched (up to 50, or every 2 s) and sent to POST /api/logs as NDJSON with
 * navigator.sendBeacon (text/plain, so no CORS preflight), falling back to fetch keepalive.
 * Every event gets an event_id here, so a retried batch is accepted once. client_ts is when
 * the event happened and sent_at when the batch left, which lets the collector correct the
 * device's clock skew. The queue is flushed when the page is hidden or unloaded.
 */
(function (w) {
  'use strict';
  var script = document.currentScript;
  var endpoint = (script && script.getAttribute('data-endpoint')) ||
    (script ? new URL(script.src, location.href).origin : '');
  var MAX_BATCH = 50, FLUSH_MS = 2000, MAX_QUEUE = 1000;
  var queue = [], timer = null, userId = null;

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    return 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === 'x' ? r : (r & 0x3 | 0x8)).toString(16);
    });
  }
  function stored(key, make) {
    try {
      var v = w.localStorage.getItem(key);
      if (!v) { v = make(); w.localStorage.setItem(key, v); }
      return v;
    } catch (e) { return make(); }
  }
  var anonymousId = stored('bookrec_anonymous_id', uuid);
  var sessionId = (function () {
    try {
      var v = w.sessionStorage.getItem('bookrec_session_id');
      if (!v) { v = uuid(); w.sessionStorage.setItem('bookrec_session_id', v); }
      return v;
    } catch (e) { return uuid(); }
  })();

  function send(batch) {
    var now = new Date().toISOString();
    var body = batch.map(function (e) { e.sent_at = now; return JSON.stringify(e); }).join('\n');
    var url = endpoint + '/api/logs';
    var blob = new Blob([body], { type: 'text/plain' });
    if (navigator.sendBeacon && navigator.sendBeacon(url, blob)) return;
    if (w.fetch) {
      w.fetch(url, { method: 'POST', body: body, keepalive: true,
        headers: { 'Content-Type': 'text/plain' } }).catch(function () {
        // put the batch back (same event_ids: the collector accepts them once)
        queue = batch.concat(queue).slice(0, MAX_QUEUE);
      });
    }
  }
  function flush() {
    if (timer) { clearTimeout(timer); timer = null; }
    while (queue.length) send(queue.splice(0, MAX_BATCH));
  }
  function track(eventType, fields) {
    var e = { event_id: uuid(), event_type: eventType, client_ts: new Date().toISOString(),
      session_id: sessionId, page: location.href, referrer: document.referrer || undefined,
      user_agent: navigator.userAgent };
    if (userId) e.user_id = userId; else e.anonymous_id = anonymousId;
    for (var k in (fields || {})) if (Object.prototype.hasOwnProperty.call(fields, k)) e[k] = fields[k];
    queue.push(e);
    if (queue.length > MAX_QUEUE) queue.shift();
    if (queue.length >= MAX_BATCH) flush();
    else if (!timer) timer = setTimeout(flush, FLUSH_MS);
    return e.event_id;
  }
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'hidden') flush();
  });
  w.addEventListener('pagehide', flush);
  w.bookrec = { track: track, flush: flush, identify: function (id) { userId = String(id); },
    anonymousId: anonymousId, sessionId: sessionId };
})(window);

// bookrec tracker: posts behaviour events to the collector (POST /api/log).
//   bookrec.track("click", "BOOK_ID", "USER_ID")
//   a click on a recommended book says which response and slot showed it:
//   bookrec.track("click", "BOOK_ID", "USER_ID", {request_id: body.request_id, position: 1})
(function () {
  var collect = __COLLECT_URL__;
  window.bookrec = {
    collect: collect,
    track: function (eventType, bookId, userId, extra) {
      var ev = Object.assign({
        event_type: eventType,
        user_id: userId,
        book_id: bookId,
        client_ts: new Date().toISOString(),
        page: location.pathname
      }, extra || {});
      return fetch(collect + "/api/log", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(ev),
        keepalive: true
      });
    }
  };
})();

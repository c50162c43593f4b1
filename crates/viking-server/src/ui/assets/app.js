// The dashboard's live feed. The fleet's events come from the server as
// server-sent events (/ui/feed), from the revision the page shows on; each
// one is added to the feed, and the page's own content (#live) is fetched
// again and swapped in: the page follows the fleet without a reload.
// Plain JavaScript, no library; everything it writes is text, not markup.
"use strict";
(function () {
  var body = document.body;
  var feed = document.getElementById("feed");
  var state = document.getElementById("feed-state");
  if (!feed || !window.EventSource) return;
  // From now: the feed tells each change against the fleet as it is (a
  // move reads as a move); what changed between the page and the feed's
  // start is picked up by the refresh when the feed opens.
  var params = new URLSearchParams();
  if (body.dataset.job) params.set("job", body.dataset.job);
  var source = new EventSource("/ui/feed?" + params.toString());
  var pending = null;
  // One refresh at a time: one asked for while another is on its way
  // follows it, so an older page never replaces a newer one.
  var inFlight = false;
  var again = false;

  function schedule(ms) {
    if (inFlight) {
      again = true;
    } else if (!pending) {
      pending = setTimeout(refresh, ms);
    }
  }

  function text(tag, value, cls) {
    var e = document.createElement(tag);
    e.textContent = value;
    if (cls) e.className = cls;
    return e;
  }

  function item(ev) {
    var li = document.createElement("li");
    li.dataset.rev = ev.rev;
    var when = new Date(ev.time).toISOString().replace(/\.\d+Z$/, "Z");
    li.append(text("time", when), " ", text("span", ev.kind, "kind"), " ",
      text("b", ev.action), " ");
    if (ev.job) {
      var a = text("a", ev.job);
      a.href = "/ui/jobs/" + encodeURIComponent(ev.job);
      li.append(a);
      if (ev.host) li.append(" on " + ev.host);
    } else {
      li.append(ev.host || "-");
    }
    Object.keys(ev.detail || {}).forEach(function (k) {
      li.append(" ", text("span", k + "=" + ev.detail[k], "detail"));
    });
    return li;
  }

  function refresh() {
    pending = null;
    var live = document.getElementById("live");
    // Not under someone typing into a filter.
    var active = document.activeElement;
    if (live && active && live.contains(active) && /^(INPUT|SELECT)$/.test(active.tagName)) {
      pending = setTimeout(refresh, 1000);
      return;
    }
    // The header: the server skips the feed's first lines (we have them).
    inFlight = true;
    var retry = false;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Viking-Refresh": "1" } })
      .then(function (r) {
        if (!r.ok) throw new Error("status " + r.status);
        return r.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var now = document.getElementById("live");
        if (fresh && now) {
          now.replaceChildren.apply(now, Array.prototype.slice.call(fresh.childNodes));
          body.dataset.refreshed = String(Number(body.dataset.refreshed || "0") + 1);
        }
      })
      .catch(function () {
        retry = true;
      })
      .then(function () {
        inFlight = false;
        if (retry || again) {
          again = false;
          schedule(retry ? 2000 : 300);
        }
      });
  }

  source.onopen = function () {
    state.textContent = "live";
    state.className = "state live";
    schedule(0);
  };
  source.onerror = function () {
    state.textContent = "reconnecting";
    state.className = "state";
  };
  source.addEventListener("fleet", function (m) {
    var ev = JSON.parse(m.data);
    feed.insertBefore(item(ev), feed.firstChild);
    while (feed.children.length > 200) feed.removeChild(feed.lastChild);
    body.dataset.rev = ev.rev;
    schedule(300);
  });
})();

// GitHub star leaders dashboard: renders the global top 10 that the server
// pushes over Server-Sent Events (/events), reconnecting when the stream drops.
"use strict";

(function () {
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 15000;
  // The server sends at least a ping every 15 s: silence this long means a dead stream.
  const STALL_MS = 40000;
  // Archive replays carry old event times: measure ages against the stream's newest event then.
  const REPLAY_GAP_MS = 6 * 3600 * 1000;
  const EVENT_KINDS = {
    ForkEvent: { label: "fork", css: "badge-fork" },
    PullRequestEvent: { label: "PR", css: "badge-pr" },
  };
  const numbers = new Intl.NumberFormat("en-US");

  const state = {
    source: null,
    retryMs: RECONNECT_MIN_MS,
    retryTimer: null,
    lastMessageAt: 0,
    streamed: false, // a snapshot came over SSE: the initial fetch is stale then
    leadersJson: null,
    previous: new Map(), // repo -> {rank, stars, events}
    rendered: false,
    lastUpdateMs: null,
    clockMs: null,
  };

  const byId = (id) => document.getElementById(id);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, value);
    }
    for (const child of children || []) {
      node.append(child);
    }
    return node;
  }

  function parseTime(text) {
    const ms = text ? Date.parse(text) : NaN;
    return Number.isNaN(ms) ? null : ms;
  }

  function ago(ms, nowMs) {
    const seconds = Math.max(0, Math.round((nowMs - ms) / 1000));
    if (seconds < 5) return "just now";
    if (seconds < 60) return seconds + "s ago";
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + "m ago";
    const hours = Math.round(minutes / 60);
    if (hours < 48) return hours + "h ago";
    return Math.round(hours / 24) + "d ago";
  }

  // The "now" that event ages are measured against (see REPLAY_GAP_MS).
  function eventClock(leaders) {
    let newest = null;
    for (const leader of leaders) {
      for (const event of leader.recent_events || []) {
        const ms = parseTime(event.created_at);
        if (ms !== null && (newest === null || ms > newest)) newest = ms;
      }
    }
    return newest !== null && Date.now() - newest > REPLAY_GAP_MS ? newest : null;
  }

  function repoLink(repo) {
    const match = /^([A-Za-z0-9_.-]+)\/([A-Za-z0-9_.-]+)$/.exec(repo);
    if (!match) return el("span", { class: "name" }, [repo]);
    const href =
      "https://github.com/" + encodeURIComponent(match[1]) + "/" + encodeURIComponent(match[2]);
    return el("a", { href: href, target: "_blank", rel: "noopener" }, [
      el("span", { class: "owner" }, [match[1] + "/"]),
      el("span", { class: "name" }, [match[2]]),
    ]);
  }

  function badge(event) {
    const kind = EVENT_KINDS[event.type] || {
      label: String(event.type || "event").replace(/Event$/, ""),
      css: "badge-other",
    };
    const parts = [el("span", { class: "kind" }, [kind.label])];
    if (event.actor) parts.push(el("span", { class: "actor" }, [event.actor]));
    const ms = parseTime(event.created_at);
    if (ms !== null) parts.push(el("span", { class: "ago", "data-ms": String(ms) }, [""]));
    const title = [event.type, event.actor && "by " + event.actor, event.created_at]
      .filter(Boolean)
      .join(" ");
    const url = typeof event.url === "string" && event.url.startsWith("https://github.com/");
    const attrs = { class: "badge " + kind.css, title: title };
    if (url) Object.assign(attrs, { href: event.url, target: "_blank", rel: "noopener" });
    return el(url ? "a" : "span", attrs, parts);
  }

  function movement(leader, before) {
    if (!state.rendered) return null;
    if (!before) return el("span", { class: "move move-new", title: "new in the top 10" }, ["new"]);
    if (before.rank > leader.rank) {
      return el("span", { class: "move move-up" }, ["\u25B2" + (before.rank - leader.rank)]);
    }
    if (before.rank < leader.rank) {
      return el("span", { class: "move move-down" }, ["\u25BC" + (leader.rank - before.rank)]);
    }
    return null;
  }

  function row(leader, before) {
    const events = leader.recent_events || [];
    const eventsKey = JSON.stringify(events);
    const changed =
      !before ||
      before.rank !== leader.rank ||
      before.stars !== leader.stars ||
      before.events !== eventsKey;
    const rankCell = el("td", { class: "rank" }, [String(leader.rank)]);
    const move = movement(leader, before);
    if (move) rankCell.append(move);
    const starsCell = el("td", { class: "stars", "data-stars": String(leader.stars) }, []);
    if (state.rendered && before && leader.stars > before.stars) {
      starsCell.append(el("span", { class: "delta" }, ["+" + (leader.stars - before.stars)]));
    }
    starsCell.append(el("span", { class: "count" }, [numbers.format(leader.stars)]));
    const eventsCell = el("td", { class: "events" }, [
      events.length
        ? el("div", { class: "badges" }, events.slice().reverse().map(badge))
        : el("span", { class: "no-events" }, ["\u2014"]),
    ]);
    const tr = el("tr", { class: "leader", "data-repo": leader.repo }, [
      rankCell,
      el("td", { class: "repo" }, [repoLink(leader.repo)]),
      starsCell,
      eventsCell,
    ]);
    if (changed && state.rendered) tr.classList.add("changed");
    return { tr: tr, memo: { rank: leader.rank, stars: leader.stars, events: eventsKey } };
  }

  function renderLeaders(leaders) {
    const json = JSON.stringify(leaders);
    if (json === state.leadersJson) return;
    state.leadersJson = json;
    state.clockMs = eventClock(leaders);
    const body = byId("leaders-body");
    const next = new Map();
    const rows = leaders.map((leader) => {
      const made = row(leader, state.previous.get(leader.repo));
      next.set(leader.repo, made.memo);
      return made.tr;
    });
    if (!rows.length) {
      rows.push(
        el("tr", { class: "empty" }, [
          el("td", { colspan: "4" }, ["Waiting for the first leaderboard\u2026"]),
        ]),
      );
    }
    body.replaceChildren(...rows);
    state.previous = next;
    state.rendered = leaders.length > 0;
  }

  function renderStats(snapshot) {
    byId("messages").textContent = numbers.format(snapshot.messages_consumed || 0);
    byId("bad-messages").textContent = numbers.format(snapshot.bad_messages || 0);
    const kafka = byId("kafka-status");
    kafka.textContent = snapshot.status || "\u2013";
    kafka.title = (snapshot.brokers || "") + " " + (snapshot.status || "");
    if (snapshot.topic) byId("topic").textContent = snapshot.topic;
    state.lastUpdateMs = snapshot.last_update_ms || null;
    const counts = Object.entries(snapshot.updates_per_partition || {});
    byId("partitions").textContent = counts.length
      ? counts.map(([partition, n]) => partition + ": " + numbers.format(n)).join(", ")
      : "none yet";
  }

  function tick() {
    const now = Date.now();
    const lastUpdate = byId("last-update");
    lastUpdate.textContent = state.lastUpdateMs ? ago(state.lastUpdateMs, now) : "never";
    lastUpdate.title = state.lastUpdateMs ? new Date(state.lastUpdateMs).toISOString() : "";
    const clock = state.clockMs === null ? now : state.clockMs;
    for (const span of document.querySelectorAll(".badge .ago")) {
      span.textContent = ago(Number(span.dataset.ms), clock);
    }
  }

  function render(snapshot) {
    renderLeaders(snapshot.leaders || []);
    renderStats(snapshot);
    tick();
  }

  function setConnection(name, text) {
    const node = byId("connection");
    node.className = "status status-" + name;
    node.textContent = text || name;
  }

  function scheduleReconnect() {
    if (state.retryTimer !== null) return;
    setConnection("reconnecting", "reconnecting in " + Math.round(state.retryMs / 1000) + "s");
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      connect();
    }, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, RECONNECT_MAX_MS);
  }

  function connect() {
    if (state.source) state.source.close();
    const source = new EventSource("events");
    state.source = source;
    state.lastMessageAt = Date.now();
    source.addEventListener("open", () => {
      state.retryMs = RECONNECT_MIN_MS;
      setConnection("live");
    });
    source.addEventListener("leaders", (message) => {
      state.lastMessageAt = Date.now();
      state.streamed = true;
      setConnection("live");
      render(JSON.parse(message.data));
    });
    source.addEventListener("ping", () => {
      state.lastMessageAt = Date.now();
    });
    source.addEventListener("error", () => {
      if (state.source !== source) return;
      source.close();
      state.source = null;
      scheduleReconnect();
    });
  }

  function watchdog() {
    if (state.source && Date.now() - state.lastMessageAt > STALL_MS) {
      state.source.close();
      state.source = null;
      scheduleReconnect();
    }
  }

  fetch("api/leaders", { cache: "no-store" })
    .then((response) => (response.ok ? response.json() : null))
    .then((snapshot) => snapshot && !state.streamed && render(snapshot))
    .catch(() => setConnection("offline", "offline"));
  connect();
  setInterval(tick, 1000);
  setInterval(watchdog, 5000);
})();

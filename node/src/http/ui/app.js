// aof-cluster status page. Plain JavaScript, no dependencies, no inline script
// (Content-Security-Policy: default-src 'self').
//
// The token entered at sign-in stays in sessionStorage and goes only into the
// Authorization header of calls to this node's /v1/* API. Data is rendered with
// textContent only (never innerHTML), so nothing from an event can run as script.
"use strict";

(function () {
  const TOKEN_KEY = "aof.status.token";
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 10000;
  const STALE_AFTER_MS = 5000;
  // A feed silent this long is dropped and opened again (a snapshot's reads are
  // bounded on the node well below this).
  const REOPEN_AFTER_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    role: null,
    lastSnap: null, // last snapshot with leader data
    lastOkAt: 0, // local time (ms) of lastSnap
    lastMsgAt: 0, // local time (ms) of the last message of the feed
    feed: null, // AbortController of the live feed
    feedGen: 0,
    nextAfter: null,
    searchQuery: null,
    purgeArmed: null,
    armed: null, // the queue-control button waiting for its confirming click
    detail: null, // event id shown in the detail pane
    stats: { snapshots: 0, connects: 0 },
  };

  // ---- helpers ----------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "onclick") e.addEventListener("click", v);
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else e[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fill(tbody, rows, cols, emptyText) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colSpan: cols }, emptyText))]));
  }

  function ago(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d";
  }

  function since(atMs) {
    return atMs ? ago(Date.now() - atMs) + " ago" : "–";
  }

  function statusClass(s) {
    return { completed: "ok", queued: "warn", failed: "bad", dead: "bad", ready: "warn", leased: "warn", delayed: "warn" }[s] || "";
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function banner(text) {
    $("banner").textContent = text || "";
    show("banner", !!text);
  }

  let flashTimer = null;
  function flash(text, isError) {
    const f = $("flash");
    f.textContent = text;
    f.className = "flash" + (isError ? " error" : "");
    f.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { f.hidden = true; }, isError ? 15000 : 6000);
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token, Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      return { status: 0, body: { error: "network", message: "the node did not answer (" + e.message + "); is it running?" } };
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (resp.status === 401) signOut("The node no longer accepts this token: " + ((data && data.message) || "401"));
    return { status: resp.status, body: data };
  }

  function errText(r) {
    const msg = r.body && r.body.message ? r.body.message : "HTTP " + r.status;
    return r.status ? r.status + ": " + msg : msg;
  }

  // Two clicks for a change: the first arms `button` (its text says what the second
  // does) for 5 s; returns true on the confirming click.
  function confirmed(key, button, idle, armedText) {
    if (state.armed && state.armed.key === key) {
      disarm();
      return true;
    }
    disarm();
    button.textContent = armedText;
    state.armed = { key, button, idle };
    setTimeout(() => { if (state.armed && state.armed.key === key) disarm(); }, 5000);
    return false;
  }

  function disarm() {
    if (state.armed) state.armed.button.textContent = state.armed.idle;
    state.armed = null;
  }

  // A button running `action` on its confirming click.
  function confirmButton(attrs, idle, armedText, key, action) {
    const b = el("button", Object.assign({ type: "button" }, attrs), idle);
    b.addEventListener("click", () => { if (confirmed(key, b, idle, armedText)) action(); });
    return b;
  }

  // The message for a refused change.
  function refused(what, r) {
    if (r.status === 403) flash("Refused (403): " + what + " needs an admin token; this one is " + (state.role || "not admin") + ". " + errText(r), true);
    else flash("Could not " + what + " (" + errText(r) + ")", true);
  }

  // ---- sign-in ----------------------------------------------------------

  async function signIn(token) {
    state.token = token;
    const r = await api("GET", "/v1/cluster?consistency=stale");
    if (r.status === 401) return loginError("This token is not accepted by the node (401). Check spec.auth.tokens.");
    if (r.status === 403) return loginError("This token cannot read the API (403): use a read or admin token, not a worker token.");
    if (r.status === 0) return loginError(r.body.message);
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-error").textContent = "";
    show("login", false);
    show("app", true);
    show("logout", true);
    startFeed();
    loadTriggers();
    loadLimits();
  }

  function loginError(text) {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = text;
    show("login", true);
    show("app", false);
  }

  function signOut(why) {
    stopFeed();
    state.token = "";
    state.role = null;
    state.lastSnap = null;
    sessionStorage.removeItem(TOKEN_KEY);
    document.body.classList.remove("is-admin");
    disarm();
    state.detail = null;
    $("limits").tBodies[0].replaceChildren();
    show("limits-form", false);
    show("app", false);
    show("logout", false);
    show("login", true);
    $("whoami").textContent = "";
    $("token").value = "";
    $("login-error").textContent = why || "";
    banner("");
    setLive("off", "offline");
    // Nothing of the previous session stays on screen.
    $("flash").hidden = true;
    $("event-detail").replaceChildren();
    $("trigger-detail").textContent = "";
    $("results").tBodies[0].replaceChildren();
    show("more", false);
  }

  // ---- live feed (GET /v1/watch, text/event-stream read with fetch) ------

  function stopFeed() {
    state.feedGen++;
    if (state.feed) state.feed.abort();
    state.feed = null;
  }

  function startFeed() {
    stopFeed();
    const gen = state.feedGen;
    let delay = RETRY_MIN_MS;
    (async () => {
      while (gen === state.feedGen && state.token) {
        const ok = await readFeed(gen);
        if (gen !== state.feedGen) return;
        setLive("off", "reconnecting");
        delay = ok ? RETRY_MIN_MS : Math.min(delay * 2, RETRY_MAX_MS);
        await new Promise((res) => setTimeout(res, delay));
      }
    })();
  }

  // One connection; resolves true if it delivered at least one snapshot.
  async function readFeed(gen) {
    const ctl = new AbortController();
    state.feed = ctl;
    state.stats.connects++;
    let resp;
    try {
      resp = await fetch("/v1/watch", {
        headers: { Authorization: "Bearer " + state.token, Accept: "text/event-stream" },
        cache: "no-store",
        signal: ctl.signal,
      });
    } catch (e) {
      if (gen === state.feedGen) noteTrouble("Cannot reach this node for live updates (" + e.message + ").");
      return false;
    }
    if (resp.status === 401) {
      signOut("The node no longer accepts this token (401).");
      return false;
    }
    if (!resp.ok) {
      let msg = "HTTP " + resp.status;
      try { msg = (await resp.json()).message || msg; } catch (_) {}
      noteTrouble("Live updates refused (" + resp.status + "): " + msg);
      return false;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let got = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || gen !== state.feedGen) break;
        buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of frame.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (event === "snapshot" && data.length) {
            got = true;
            onSnapshot(JSON.parse(data.join("\n")));
          }
        }
      }
    } catch (e) {
      if (gen === state.feedGen && e.name !== "AbortError") noteTrouble("Live updates interrupted (" + e.message + ").");
    }
    return got;
  }

  function noteTrouble(text) {
    const age = state.lastOkAt ? " Showing data from " + since(state.lastOkAt) + "." : "";
    banner(text + age);
  }

  function setLive(kind, text) {
    const b = $("live");
    b.className = "badge " + kind;
    b.textContent = text;
  }

  function onSnapshot(s) {
    state.lastMsgAt = Date.now();
    state.stats.snapshots++;
    if (s.role && s.role !== state.role) {
      state.role = s.role;
      document.body.classList.toggle("is-admin", s.role === "admin");
      $("whoami").textContent = "token role: " + s.role;
      show("limits-form", s.role === "admin");
      loadLimits(); // with or without the admin buttons
    }
    $("node-label").textContent = "node " + s.node_id;
    if (s.error) {
      setLive("stale", "no leader");
      const age = state.lastOkAt ? " Showing the last data, from " + since(state.lastOkAt) + "." : "";
      banner("Node " + s.node_id + " cannot reach a leader: " + s.error.replace(/[.\s]*$/, ".") + age);
      renderCluster(state.lastSnap ? state.lastSnap.cluster : null, s.local, true);
      return;
    }
    banner("");
    setLive("on", "live");
    state.lastSnap = s;
    state.lastOkAt = Date.now();
    renderCluster(s.cluster, s.local, false);
    renderQueue(s.queue || []);
    renderDlq(s.dlq || []);
    renderRecent(s.events || []);
  }

  // Age label, and a warning when the feed went quiet.
  setInterval(() => {
    if (!state.token) return;
    $("age").textContent = state.lastOkAt ? "updated " + since(state.lastOkAt) : "";
    const quiet = state.lastMsgAt ? Date.now() - state.lastMsgAt : 0;
    if (quiet > STALE_AFTER_MS && ["live", "stalled"].includes($("live").textContent)) {
      setLive("stale", "stalled");
      noteTrouble("No live update for " + ago(quiet) + ".");
    }
    if (quiet > REOPEN_AFTER_MS && state.feed) {
      state.lastMsgAt = Date.now();
      state.feed.abort();
    }
  }, 1000);

  // ---- rendering --------------------------------------------------------

  function renderCluster(c, local, stale) {
    const facts = [];
    const fact = (k, v) => facts.push(el("span", {}, k + ": ", el("b", {}, v === null || v === undefined ? "–" : String(v))));
    if (c) {
      fact("leader", c.leader_id);
      fact("term", c.term);
      fact("commit index", c.commit_index);
      fact("applied (leader)", c.last_applied);
      fact("snapshot index", c.snapshot_index);
    }
    if (local) {
      fact("this node", local.node_id);
      fact("applied here", local.last_applied);
      if (c) fact("behind leader", Math.max(0, c.commit_index - local.last_applied));
      if (stale) fact("this node's leader", local.leader_id === null ? "none" : local.leader_id);
    }
    $("cluster-summary").replaceChildren(...facts);
    const src = c || local;
    if (!src) return;
    const leaderRow = src.members.find((m) => m.is_leader);
    const top = leaderRow ? leaderRow.matched_index : null;
    const rows = src.members.map((m) => {
      const lag = top !== null && top !== undefined && m.matched_index !== null && m.matched_index !== undefined ? Math.max(0, top - m.matched_index) : null;
      let health = "unknown", cls = "muted";
      if (stale) { health = "unknown (no leader)"; cls = "bad"; }
      else if (lag === null) { health = "not replicating"; cls = "bad"; }
      else if (lag <= 100) { health = "ok"; cls = "ok"; }
      else { health = "lagging"; cls = "warn"; }
      return el("tr", { "data-member": m.id },
        el("td", {}, m.id),
        el("td", {}, m.role),
        el("td", { class: m.is_leader ? "ok" : "" }, m.is_leader ? "leader" : ""),
        el("td", {}, m.matched_index === null || m.matched_index === undefined ? "–" : m.matched_index),
        el("td", {}, lag === null ? "–" : lag),
        el("td", { class: cls }, health),
        el("td", {}, m.api_addr));
    });
    fill($("members").tBodies[0], rows, 7, "no members");
  }

  function renderQueue(items) {
    const rows = items.map((d) => el("tr", {},
      el("td", {}, d.target_kind + "/" + d.target),
      el("td", {}, d.priority),
      el("td", {}, d.ready),
      el("td", {}, d.delayed),
      el("td", {}, d.leased),
      el("td", { class: d.dead ? "bad" : "" }, d.dead),
      el("td", {}, d.oldest_ready_age_ms === null ? "–" : ago(d.oldest_ready_age_ms))));
    fill($("depths").tBodies[0], rows, 7, "no jobs queued");
  }

  function renderDlq(items) {
    $("dlq-count").textContent = "(" + items.length + (items.length >= 100 ? "+" : "") + ")";
    const admin = state.role === "admin";
    const actions = [];
    if (admin && items.length) {
      actions.push(el("button", { type: "button", id: "redrive-all", onclick: () => redrive(null) }, "Redrive all"));
      actions.push(" ");
      const armed = state.purgeArmed === "all";
      actions.push(el("button", { type: "button", id: "purge-all", class: "danger", onclick: () => purge(null) }, armed ? "Confirm purge all" : "Purge all"));
    }
    $("dlq-actions").replaceChildren(...actions);
    const rows = items.map((j) => {
      const buttons = [];
      if (admin) {
        buttons.push(el("button", { type: "button", class: "redrive", "data-job": j.job_id, onclick: () => redrive(j.job_id) }, "Redrive"));
        buttons.push(" ");
        const armed = state.purgeArmed === j.job_id;
        buttons.push(el("button", { type: "button", class: "purge danger", "data-job": j.job_id, onclick: () => purge(j.job_id) }, armed ? "Confirm purge" : "Purge"));
      }
      return el("tr", { "data-job": j.job_id, "data-delivery": j.delivery_id },
        el("td", {}, j.job_id),
        el("td", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); showDelivery(j.delivery_id); } }, j.delivery_id)),
        el("td", {}, j.target.kind + "/" + j.target.name),
        el("td", {}, j.trigger || "–"),
        el("td", {}, j.attempts),
        el("td", { class: "error" }, j.last_error || ""),
        el("td", {}, since(j.dead_since_ms)),
        el("td", {}, buttons));
    });
    fill($("dlq").tBodies[0], rows, 8, "empty");
  }

  function eventRow(e) {
    const jobs = (e.jobs || []).map((j) => j.state).join(", ");
    return el("tr", { class: "clickable", "data-delivery": e.delivery_id, "data-event": e.event_id, onclick: () => showEvent(e.event_id) },
      el("td", {}, e.event_id),
      el("td", {}, e.delivery_id),
      el("td", {}, e.event + (e.action ? "." + e.action : "")),
      el("td", {}, e.repo || "–"),
      el("td", { class: statusClass(e.status) }, e.status),
      el("td", {}, e.trigger || "–"),
      el("td", {}, jobs || "–"),
      el("td", {}, since(e.received_ms)));
  }

  function renderRecent(items) {
    fill($("recent").tBodies[0], items.map(eventRow), 8, "no events yet");
  }

  // ---- actions ----------------------------------------------------------

  async function redrive(jobId) {
    const r = await api("POST", "/v1/dlq/redrive", jobId ? { job_id: jobId } : { all: true });
    if (r.status === 200) flash("Redriven: " + (r.body.jobs || []).length + " job(s) " + (jobId ? jobId : "") + " back to the queue.");
    else if (r.status === 403) flash("Refused (403): redrive needs an admin token; this one is " + (state.role || "not admin") + ". " + errText(r), true);
    else flash("Redrive failed (" + errText(r) + ")", true);
    return r.status;
  }

  async function purge(jobId) {
    const key = jobId || "all";
    if (state.purgeArmed !== key) {
      // Two clicks: the first arms the button for 5 s.
      state.purgeArmed = key;
      if (state.lastSnap) renderDlq(state.lastSnap.dlq || []);
      setTimeout(() => { if (state.purgeArmed === key) { state.purgeArmed = null; if (state.lastSnap) renderDlq(state.lastSnap.dlq || []); } }, 5000);
      return 0;
    }
    state.purgeArmed = null;
    const r = await api("POST", "/v1/dlq/purge", jobId ? { job_id: jobId } : { all: true });
    if (r.status === 200) flash("Purged: " + (r.body.jobs || []).length + " job(s).");
    else if (r.status === 403) flash("Refused (403): purge needs an admin token; this one is " + (state.role || "not admin") + ". " + errText(r), true);
    else flash("Purge failed (" + errText(r) + ")", true);
    return r.status;
  }

  // ---- queue controls (admin): cancel a job, re-run an event, target limits --

  async function cancelJob(jobId, reason) {
    const r = await api("POST", "/v1/jobs/" + encodeURIComponent(jobId) + "/cancel", { reason: reason || "cancelled on the status page" });
    if (r.status === 200) {
      flash("Cancelled job " + jobId + " (was " + r.body.was + ")" + (r.body.was === "leased" ? "; its worker's next heartbeat or completion is refused." : "."));
      refreshDetail();
    } else refused("cancel job " + jobId, r);
    return r.status;
  }

  async function rerunEvent(eventId) {
    const r = await api("POST", "/v1/events/" + encodeURIComponent(eventId) + "/rerun", {});
    if (r.status === 200) {
      flash("Re-running event " + eventId + ": new job(s) " + (r.body.jobs || []).join(", ") + ".");
      refreshDetail();
    } else refused("re-run event " + eventId, r);
    return r.status;
  }

  // max_in_flight 0 and no ttl remove the target's limits.
  async function setLimits(target, maxInFlight, ttl) {
    const body = { max_in_flight: maxInFlight || 0 };
    if (ttl) body.ttl = ttl;
    const r = await api("PUT", "/v1/targets/" + encodeURIComponent(target) + "/limits", body);
    if (r.status === 200) {
      const l = r.body;
      flash(l.max_in_flight || l.ttl
        ? "Limits of " + target + ": at most " + (l.max_in_flight || "any number of") + " job(s) in flight, pending ttl " + (l.ttl || "none") + "."
        : "Limits of " + target + " removed.");
      loadLimits();
    } else refused("set the limits of " + target, r);
    return r.status;
  }

  async function loadLimits() {
    if (!state.token) return;
    const r = await api("GET", "/v1/queue/limits");
    const tbody = $("limits").tBodies[0];
    if (r.status !== 200) {
      fill(tbody, [], 5, "cannot read the limits (" + errText(r) + ")");
      return;
    }
    const admin = state.role === "admin";
    const rows = (r.body.items || []).map((l) => el("tr", { "data-target": l.target },
      el("td", {}, l.target),
      el("td", {}, l.max_in_flight || "none"),
      el("td", {}, l.ttl || "none"),
      el("td", {}, l.leased),
      el("td", {}, admin ? confirmButton({ class: "clear-limits danger", "data-target": l.target }, "Clear", "Confirm clear",
        "clear:" + l.target, () => setLimits(l.target, 0, "")) : null)));
    fill(tbody, rows, 5, "no limits: every target unlimited");
  }

  function submitLimits(e) {
    e.preventDefault();
    const target = $("limit-target").value.trim();
    const max = $("limit-max").value.trim();
    const ttl = $("limit-ttl").value.trim();
    if (!target) return;
    if (max && !/^\d+$/.test(max)) {
      flash("Max in flight: a whole number (0: no limit), not " + JSON.stringify(max) + ".", true);
      return;
    }
    const n = max ? Number(max) : 0;
    const what = n || ttl ? "Confirm: " + target + " at most " + (n || "any number") + " in flight, ttl " + (ttl || "none") : "Confirm: remove the limits of " + target;
    if (confirmed("limits:" + target + ":" + n + ":" + ttl, $("limit-set"), "Set limits", what)) setLimits(target, n, ttl);
  }

  function refreshDetail() {
    if (state.detail !== null) showEvent(state.detail);
  }

  function renderEvent(v) {
    const box = $("event-detail");
    state.detail = v.event_id;
    const admin = state.role === "admin";
    const live = ["ready", "delayed", "leased"];
    const facts = el("div", { class: "facts" });
    const fact = (k, x) => facts.append(el("span", {}, k + ": ", el("b", {}, x === null || x === undefined ? "–" : String(x))));
    fact("event", v.event_id);
    fact("delivery", v.delivery_id);
    fact("type", v.event + (v.action ? "." + v.action : ""));
    fact("repository", v.repo);
    fact("sender", v.sender);
    fact("status", v.status);
    fact("trigger", v.trigger);
    fact("command", v.command);
    fact("received", since(v.received_ms));
    fact("by node", v.received_by);
    fact("finished", v.finished_ms ? since(v.finished_ms) : null);
    fact("payload bytes", v.payload_bytes);
    const ctx = Object.entries(v.context || {});
    const ctxTable = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "context key"), el("th", {}, "value"))),
      el("tbody", {}, ctx.map(([k, x]) => el("tr", {}, el("td", {}, k), el("td", {}, typeof x === "string" ? x : JSON.stringify(x))))));
    const jobs = (v.jobs || []).map((j) => el("div", { class: "job", "data-job": j.job_id },
      el("div", { class: "facts" },
        el("span", {}, "job: ", el("b", {}, j.job_id)),
        el("span", {}, "target: ", el("b", {}, j.target.kind + "/" + j.target.name)),
        el("span", {}, "state: ", el("b", { class: statusClass(j.state) }, j.state)),
        el("span", {}, "priority: ", el("b", {}, j.priority)),
        el("span", {}, "attempts: ", el("b", {}, j.attempts))),
      admin && live.includes(j.state)
        ? el("div", { class: "actions" }, confirmButton({ class: "cancel-job danger", "data-job": j.job_id }, "Cancel job",
          "Confirm cancel" + (j.state === "leased" ? " (its worker is stopped)" : ""), "cancel:" + j.job_id, () => cancelJob(j.job_id)))
        : null,
      j.last_error ? el("div", { class: "error" }, "last error: " + j.last_error) : null,
      j.result !== null && j.result !== undefined && j.result !== "" ? el("pre", {}, "result: " + (typeof j.result === "string" ? j.result : JSON.stringify(j.result, null, 2))) : null,
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "state"), el("th", {}, "at"), el("th", {}, "log seq"), el("th", {}, "note"))),
        el("tbody", {}, (j.history || []).map((h) => el("tr", {}, el("td", {}, h.state), el("td", {}, new Date(h.at_ms).toISOString()), el("td", {}, h.index), el("td", {}, h.note || "")))))));
    const actions = admin
      ? el("div", { class: "actions" }, confirmButton({ id: "rerun-event", "data-event": v.event_id }, "Re-run event",
        "Confirm re-run (new jobs, new fencing tokens)", "rerun:" + v.event_id, () => rerunEvent(v.event_id)))
      : null;
    box.replaceChildren(el("h3", {}, "Event " + v.event_id), facts, actions, ctx.length ? ctxTable : null, jobs.length ? el("h3", {}, "Jobs") : null, ...jobs);
  }

  async function showEvent(id) {
    const r = await api("GET", "/v1/events/" + encodeURIComponent(id));
    if (r.status === 200) renderEvent(r.body);
    else flash("Event " + id + ": " + errText(r), true);
  }

  async function showDelivery(id) {
    const r = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
    if (r.status === 200) {
      renderEvent(r.body);
      return r.body;
    }
    flash("Delivery " + id + ": " + errText(r), true);
    return null;
  }

  async function search(more) {
    const delivery = $("q-delivery").value.trim();
    const tbody = $("results").tBodies[0];
    if (delivery && !more) {
      const v = await showDelivery(delivery);
      fill(tbody, v ? [eventRow(v)] : [], 8, "no such delivery");
      show("more", false);
      return;
    }
    if (!more) {
      const q = new URLSearchParams({ limit: "50" });
      for (const [k, id] of [["repo", "q-repo"], ["event", "q-event"], ["status", "q-status"]]) {
        const x = $(id).value.trim();
        if (x) q.set(k, x);
      }
      state.searchQuery = q;
      tbody.replaceChildren();
    } else if (state.nextAfter !== null) {
      state.searchQuery.set("after", String(state.nextAfter));
    }
    const r = await api("GET", "/v1/events?" + state.searchQuery.toString());
    if (r.status !== 200) {
      flash("Search failed (" + errText(r) + ")", true);
      return;
    }
    const rows = r.body.items.map(eventRow);
    if (!more && !rows.length) fill(tbody, [], 8, "no matching events (oldest first; use More to continue)");
    else tbody.append(...rows);
    state.nextAfter = r.body.next_after;
    show("more", r.body.next_after !== null && r.body.next_after !== undefined);
  }

  async function loadTriggers() {
    const r = await api("GET", "/v1/triggers");
    if (r.status !== 200) {
      fill($("trigger-list").tBodies[0], [], 4, "cannot list triggers (" + errText(r) + ")");
      return;
    }
    const rows = (r.body.items || []).map((t) => {
      const cfg = (t.trigger && t.trigger.spec && t.trigger.spec.config) || {};
      const evs = (cfg.github_events || []).join(", ");
      return el("tr", { class: "clickable", "data-trigger": t.name, onclick: () => showTrigger(t.name) },
        el("td", {}, t.name), el("td", {}, t.revision), el("td", {}, evs || "–"), el("td", {}, since(t.updated_ms)));
    });
    fill($("trigger-list").tBodies[0], rows, 4, "no triggers");
  }

  async function showTrigger(name) {
    const r = await api("GET", "/v1/triggers/" + encodeURIComponent(name));
    $("trigger-detail").textContent = r.status === 200 ? JSON.stringify(r.body, null, 2) : "trigger " + name + ": " + errText(r);
  }

  // ---- wiring -----------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const t = $("token").value.trim();
      if (t) signIn(t);
    });
    $("logout").addEventListener("click", () => signOut(""));
    $("search").addEventListener("submit", (e) => { e.preventDefault(); search(false); });
    $("more").addEventListener("click", () => search(true));
    $("triggers-refresh").addEventListener("click", loadTriggers);
    $("limits-refresh").addEventListener("click", loadLimits);
    $("limits-form").addEventListener("submit", submitLimits);
    if (state.token) signIn(state.token);
  });

  // For tests and the browser console: the actions the buttons take.
  window.aofStatus = { redrive, purge, cancelJob, rerunEvent, setLimits, loadLimits, showEvent, showDelivery, state };
})();

// SimpleBank web client: plain JavaScript over the gateway's REST API (bearer token).
// Everything shown comes from the public API; nothing here is trusted by the server.
"use strict";
(() => {
  const TOKEN_KEY = "simplebank.token";
  const POLL_MS = 300;
  const ORDER_WAIT_MS = 60000;
  const READ_SIDE_WAIT_MS = 20000;
  const TERMINAL = new Set(["FILLED", "FAILED"]);
  const STEPS = ["PENDING", "RESERVED", "PLACED", "FEE_CHARGED", "FILLED"];
  // The last state an order reached before the step that failed (its failed_step).
  const FAILED_AT = { reserve: 0, place: 1, charge: 2, settle: 3 };
  const LABELS = {
    PENDING: "Pending", RESERVED: "Reserved", PLACED: "Placed", FEE_CHARGED: "Fee charged",
    FILLED: "Filled", COMPENSATING: "Compensating", FAILED: "Failed",
  };

  const $ = (id) => document.getElementById(id);
  const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  const usd = (cents) => (cents === null || cents === undefined ? "—" : money.format(cents / 100));
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
  /** The time alone for today, the date and time otherwise. */
  const whenShort = (iso) => {
    if (!iso) return "";
    const at = new Date(iso);
    return at.toDateString() === new Date().toDateString() ? at.toLocaleTimeString() : at.toLocaleString();
  };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** An element with attributes and children; text always goes in as text, never as HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  class ApiError extends Error {
    constructor(status, problem) {
      let message = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
      if (problem && Array.isArray(problem.errors) && problem.errors.length) {
        const fields = problem.errors.map((e) => `${[].concat(e.loc || []).join(".")}: ${e.msg}`);
        message = `${message}: ${fields.join("; ")}`;
      }
      super(message);
      this.status = status;
      this.problem = problem;
    }
  }

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    me: null,
    instruments: new Map(),
    balances: null,
    portfolio: null,
    orders: [],
    notifications: [],
  };

  /** A random uuid (crypto.randomUUID needs a secure context; getRandomValues does not). */
  function newKey() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  async function api(method, path, body, idempotencyKey) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { detail: text.slice(0, 200) };
    }
    if (!response.ok) {
      if (response.status === 401 && state.token) signOut("Your session has ended: please log in again.");
      throw new ApiError(response.status, data);
    }
    return data;
  }

  // -- messages ---------------------------------------------------------------------
  let flashTimer = null;
  function flash(message, kind = "error") {
    const box = $("flash");
    box.textContent = message;
    box.className = `flash ${kind}`;
    box.hidden = false;
    clearTimeout(flashTimer);
    if (kind === "ok") flashTimer = setTimeout(() => { box.hidden = true; }, 6000);
  }
  function clearFlash() { $("flash").hidden = true; }

  /** Run a form's action with its submit button disabled; errors become a message. */
  function onSubmit(form, action) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        await action(new FormData(form));
      } catch (error) {
        flash(error.message || String(error));
      } finally {
        button.disabled = false;
      }
    });
  }

  // -- session ------------------------------------------------------------------------
  function showView() {
    const inside = Boolean(state.token);
    $("auth-view").hidden = inside;
    $("bank-view").hidden = !inside;
    $("who").hidden = !inside;
  }

  async function signIn(email, password) {
    const answer = await api("POST", "/login", { email, password });
    state.token = answer.access_token;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    showView();
    await loadAll();
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    Object.assign(state, { me: null, balances: null, portfolio: null, orders: [], notifications: [] });
    $("tracker").hidden = true;
    showView();
    if (message) flash(message);
  }

  function selectTab(which) {
    const login = which === "login";
    $("tab-login").setAttribute("aria-selected", String(login));
    $("tab-signup").setAttribute("aria-selected", String(!login));
    $("login-form").hidden = !login;
    $("signup-form").hidden = login;
  }

  // -- loading ------------------------------------------------------------------------
  async function loadAll() {
    const [me, instruments] = await Promise.all([api("GET", "/me"), api("GET", "/instruments")]);
    state.me = me;
    $("who-name").textContent = `${me.name} · ${me.email}`;
    state.instruments = new Map(instruments.instruments.map((i) => [i.symbol, i]));
    renderInstruments();
    await Promise.all([loadBalances(), loadPortfolio(), loadOrders(), loadNotifications()]);
  }
  async function loadBalances() { state.balances = await api("GET", "/balances"); renderSummary(); renderPortfolio(); }
  async function loadPortfolio() { state.portfolio = await api("GET", "/portfolio"); renderSummary(); renderPortfolio(); }
  async function loadOrders() { state.orders = (await api("GET", "/orders?limit=20")).orders; renderOrders(); }
  async function loadNotifications() {
    state.notifications = (await api("GET", "/notifications?limit=20")).notifications;
    renderNotifications();
  }

  /** The polling pattern: ask for the portfolio until its version is newer than `before`. */
  async function portfolioNewerThan(before) {
    const giveUp = Date.now() + READ_SIDE_WAIT_MS;
    while (state.token) {
      await loadPortfolio();
      const p = state.portfolio;
      if ((p.version > before && p.pending_orders === 0) || Date.now() > giveUp) return;
      await sleep(POLL_MS);
    }
  }

  // -- rendering ----------------------------------------------------------------------
  function renderSummary() {
    const b = state.balances;
    const p = state.portfolio;
    $("cash-available").textContent = b ? usd(b.cash.available_cents) : "—";
    $("cash-reserved").textContent = b ? usd(b.cash.reserved_cents) : "—";
    $("invested").textContent = p ? usd(p.positions_value_cents) : "—";
    $("total-value").textContent = p ? usd(p.total_value_cents) : "—";
  }

  function renderPortfolio() {
    const p = state.portfolio;
    const body = $("portfolio").tBodies[0];
    const reserved = new Map(((state.balances && state.balances.positions) || []).map((x) => [x.symbol, x.reserved]));
    const rows = p ? p.positions.filter((x) => x.quantity > 0) : [];
    body.replaceChildren(...rows.map((x) => {
      const name = state.instruments.has(x.symbol) ? state.instruments.get(x.symbol).name : "";
      const gain = x.gain_cents;
      return h("tr", { "data-symbol": x.symbol },
        h("td", { class: "symbol" }, x.symbol, h("span", { class: "symbol-name" }, name)),
        h("td", { class: "num quantity" }, x.quantity),
        h("td", { class: "num" }, reserved.get(x.symbol) || 0),
        h("td", { class: "num" }, usd(Math.round(x.cost_basis_cents / x.quantity))),
        h("td", { class: "num" }, usd(x.price_cents)),
        h("td", { class: "num" }, usd(x.market_value_cents)),
        h("td", { class: `num ${gain > 0 ? "gain" : gain < 0 ? "loss" : ""}` },
          gain === null ? "—" : `${gain > 0 ? "+" : ""}${usd(gain)}`));
    }));
    $("portfolio-empty").hidden = rows.length > 0;
    const v = $("portfolio-version");
    if (!p) v.textContent = "";
    else if (!p.prices_available) v.textContent = `version ${p.version} · prices unavailable`;
    else v.textContent = `version ${p.version}${p.prices_as_of ? ` · prices of ${when(p.prices_as_of)}` : ""}`;
  }

  function badge(orderState) {
    const kind = orderState === "FILLED" ? "filled" : orderState === "FAILED" ? "failed"
      : orderState === "COMPENSATING" ? "compensating working" : "working";
    return h("span", { class: `badge ${kind}`, "data-state": orderState }, LABELS[orderState] || orderState);
  }

  function orderDetail(o) {
    if (o.state === "FAILED") {
      const undone = o.compensations && o.compensations.length ? ` (undone: ${o.compensations.join(", ")})` : "";
      return `${o.failure_reason || "failed"}${o.failed_step ? ` at ${o.failed_step}` : ""}${undone}`;
    }
    if (o.state === "FILLED") return `${o.side === "buy" ? "paid" : "received"} ${usd(o.gross_cents)}`;
    return "in progress…";
  }

  function renderOrders() {
    const body = $("orders").tBodies[0];
    body.replaceChildren(...state.orders.map((o) => h("tr", { "data-order-id": o.order_id, "data-state": o.state },
      h("td", { title: when(o.created_at) }, whenShort(o.created_at)),
      h("td", { class: `side-${o.side}` }, o.side === "buy" ? "Buy" : "Sell"),
      h("td", { class: "symbol" }, o.symbol),
      h("td", { class: "num" }, o.quantity),
      h("td", {}, badge(o.state)),
      h("td", { class: "num" }, usd(o.price_cents)),
      h("td", { class: "num" }, usd(o.fee_cents)),
      h("td", { class: "detail" }, orderDetail(o)))));
    $("orders-empty").hidden = state.orders.length > 0;
  }

  function renderTracker(o) {
    const box = $("tracker");
    let reached = STEPS.indexOf(o.state);
    const failing = o.state === "FAILED" || o.state === "COMPENSATING";
    if (failing) reached = FAILED_AT[o.failed_step] ?? 0;
    // A failed order shows the states it reached, then how it ended.
    const steps = STEPS.slice(0, failing ? reached + 1 : STEPS.length).map((s, i) => {
      let cls = i < reached || (failing && i === reached) ? "done" : i === reached ? "current" : "";
      if (s === "FILLED" && o.state === "FILLED") cls = "current filled";
      return h("li", { class: cls }, LABELS[s]);
    });
    if (failing) steps.push(h("li", { class: "current failed" }, LABELS[o.state]));
    box.replaceChildren(
      h("div", { class: "tracker-title" },
        `${o.side === "buy" ? "Buy" : "Sell"} ${o.quantity} ${o.symbol}`, badge(o.state),
        h("span", { class: "muted small" }, `order version ${o.version}`)),
      h("ol", { class: "steps" }, ...steps));
    box.dataset.state = o.state;
    box.hidden = false;
  }

  function renderNotifications() {
    const list = $("notifications");
    list.replaceChildren(...state.notifications.map((n) => h("li", { class: n.kind },
      n.message, h("span", { class: "when" }, whenShort(n.created_at)))));
    $("notifications-empty").hidden = state.notifications.length > 0;
  }

  function renderInstruments() {
    const select = $("symbol");
    const chosen = select.value;
    select.replaceChildren(...[...state.instruments.values()].map((i) =>
      h("option", { value: i.symbol }, `${i.symbol} — ${i.name} (${usd(i.price_cents)})`)));
    if (state.instruments.has(chosen)) select.value = chosen;
    renderEstimate();
  }

  function renderEstimate() {
    const form = $("trade-form");
    const instrument = state.instruments.get(form.symbol.value);
    const quantity = Number.parseInt(form.quantity.value, 10);
    const side = form.side.value;
    $("estimate").textContent = instrument && quantity > 0
      ? `About ${usd(instrument.price_cents * quantity)} at ${usd(instrument.price_cents)} a share, plus the fee; `
        + (side === "buy" ? "the cash is reserved until the order ends." : "the shares are reserved until the order ends.")
      : "";
  }

  function upsertOrder(o) {
    const i = state.orders.findIndex((x) => x.order_id === o.order_id);
    if (i >= 0) state.orders[i] = o;
    else state.orders.unshift(o);
    renderOrders();
  }

  // -- actions ------------------------------------------------------------------------
  /** Follow an order until FILLED or FAILED, then wait for the read side to catch up. */
  async function watch(order, portfolioBefore) {
    let o = order;
    renderTracker(o);
    const giveUp = Date.now() + ORDER_WAIT_MS;
    while (!TERMINAL.has(o.state) && Date.now() < giveUp && state.token) {
      await sleep(POLL_MS);
      const fresh = await api("GET", `/orders/${o.order_id}`);
      if (fresh.version >= o.version) o = fresh;
      upsertOrder(o);
      renderTracker(o);
    }
    if (!state.token) return;
    if (!TERMINAL.has(o.state)) {
      flash(`The order is still ${LABELS[o.state] || o.state}; refresh to follow it.`);
      return;
    }
    if (o.state === "FILLED") {
      flash(`${o.side === "buy" ? "Bought" : "Sold"} ${o.quantity} ${o.symbol} at ${usd(o.price_cents)} (fee ${usd(o.fee_cents)}).`, "ok");
    } else {
      flash(`The order failed: ${orderDetail(o)}. Nothing was charged.`);
    }
    await portfolioNewerThan(portfolioBefore);
    await Promise.all([loadBalances(), loadNotifications()]);
  }

  function wire() {
    $("tab-login").addEventListener("click", () => selectTab("login"));
    $("tab-signup").addEventListener("click", () => selectTab("signup"));
    $("logout").addEventListener("click", () => { clearFlash(); signOut(); });
    $("refresh").addEventListener("click", () => loadAll().catch((e) => flash(e.message)));

    onSubmit($("login-form"), async (data) => {
      clearFlash();
      await signIn(String(data.get("email")), String(data.get("password")));
    });
    onSubmit($("signup-form"), async (data) => {
      clearFlash();
      const email = String(data.get("email"));
      const password = String(data.get("password"));
      await api("POST", "/signup", { name: String(data.get("name")), email, password });
      await signIn(email, password);
      flash(`Welcome, ${state.me.name}! Deposit some cash to start investing.`, "ok");
    });
    onSubmit($("deposit-form"), async (data) => {
      clearFlash();
      const amountCents = Math.round(Number.parseFloat(String(data.get("amount"))) * 100);
      if (!(amountCents > 0)) throw new Error("Enter an amount above zero.");
      const before = state.portfolio ? state.portfolio.version : 0;
      state.balances = await api("POST", "/deposits", { amount_cents: amountCents }, newKey());
      renderSummary();
      $("deposit-form").reset();
      flash(`Deposited ${usd(amountCents)}.`, "ok");
      await portfolioNewerThan(before);
      await loadNotifications();
    });
    onSubmit($("trade-form"), async (data) => {
      clearFlash();
      const body = {
        side: String(data.get("side")),
        symbol: String(data.get("symbol")),
        quantity: Number.parseInt(String(data.get("quantity")), 10),
      };
      const before = state.portfolio ? state.portfolio.version : 0;
      const order = await api("POST", "/orders", body, newKey());
      upsertOrder(order);
      await loadBalances();
      await watch(order, before);
    });
    const trade = $("trade-form");
    trade.addEventListener("input", renderEstimate);
    trade.addEventListener("change", (event) => {
      // Switching to Sell offers a symbol the customer holds.
      if (event.target.name === "side" && trade.side.value === "sell" && state.portfolio) {
        const held = state.portfolio.positions.filter((x) => x.quantity > 0).map((x) => x.symbol);
        if (held.length && !held.includes(trade.symbol.value)) trade.symbol.value = held[0];
      }
      renderEstimate();
    });
  }

  async function start() {
    wire();
    showView();
    if (state.token) {
      try {
        await loadAll();
      } catch (error) {
        flash(error.message);
      }
    }
  }

  start();
})();

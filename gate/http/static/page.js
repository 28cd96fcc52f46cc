// The waiting page's script: the page works without it (a form and a refresh); with it,
// the join and the polling happen in place through fairgate.js, the live region
// announces position and ETA, and an admitted customer is sent on by location.assign.
import { Fairgate, FairgateError, SteadyEta, jittered } from "./fairgate.js";

const main = document.getElementById("fairgate");
const T = JSON.parse(document.getElementById("fg-text").textContent);
const data = main.dataset;
const $ = (id) => document.getElementById(id);
const number = (n) => Number(n).toLocaleString(data.lang === "ko" ? "ko-KR" : "en-US");
const format = (key, values) =>
  T[key].replace(/\{(\w+)\}/g, (_, name) => (name in values ? values[name] : ""));

// The same rounding as the server's eta_text: seconds below a minute (up to the next
// 5 s), whole minutes above, always rounded up.
function etaText(seconds) {
  if (seconds == null) return T.eta_unknown;
  if (seconds < 60) return format("eta_s", { n: Math.max(5, 5 * Math.ceil(seconds / 5)) });
  const minutes = Math.ceil(seconds / 60);
  return minutes === 1 ? T.eta_m1 : format("eta_m", { n: number(minutes) });
}

const eta = new SteadyEta();

function setLead(key) {
  $("fg-lead").textContent = T[key];
}

function setLive(text) {
  const live = $("fg-live");
  if (live.textContent !== text) live.textContent = text;
}

let ticking = null;
function show(state) {
  if (state === "prequeue" && ticking == null) ticking = setInterval(countdown, 1000);
  document.body.className = "fg-state-" + state;
  main.dataset.state = state;
  $("fg-wait-card").hidden = !(state === "waiting" || state === "paused");
  const open = $("fg-open-card");
  if (open) open.hidden = state !== "prequeue";
  const form = $("fg-join-form");
  if (form) form.hidden = state !== "join";
}

function showReceipt(answer) {
  if (!answer.seq || $("fg-seq")) return;
  const list = document.createElement("ul");
  const seq = document.createElement("li");
  seq.id = "fg-seq";
  seq.textContent = format("receipt_seq", { seq: number(answer.seq) });
  list.append(seq);
  if (answer.receipt && answer.receipt.t) {
    const joined = document.createElement("li");
    joined.id = "fg-joined";
    const when = new Date(answer.receipt.t / 1000);
    joined.textContent = format("receipt_time", {
      time: when.toLocaleString(data.lang === "ko" ? "ko-KR" : "en-GB", { timeZone: "Asia/Seoul" }) + " KST",
    });
    list.append(joined);
  }
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = "/q/" + encodeURIComponent(data.campaign) + "/receipt/" + answer.seq;
  link.textContent = T.receipt_verify;
  item.append(link);
  list.append(item);
  const section = document.createElement("section");
  section.className = "fg-receipt";
  const title = document.createElement("h2");
  title.textContent = T.receipt;
  section.append(title, list);
  main.append(section);
}

function render(answer) {
  let state = answer.state;
  if (state === "waiting" && answer.paused) state = "paused";
  if (state === "admitted") {
    show("admitted");
    setLead("lead_admitted");
    setLive(T.lead_admitted);
    return;
  }
  if (["waiting", "paused", "prequeue", "soldout", "closed", "busy", "expired", "claimed"].includes(state)) {
    show(state);
    setLead("lead_" + state);
  }
  if (state === "waiting" || state === "paused") {
    const position = answer.position;
    $("fg-position").textContent = format("position_value", { n: number(position) });
    $("fg-ahead").textContent = format("ahead", { n: number(Math.max(0, position - 1)) });
    if (answer.seq > 0) {
      const progress = $("fg-progress");
      const percent = Math.round((100 * Math.max(0, answer.seq - position)) / answer.seq);
      progress.value = Math.max(Number(progress.value) || 0, percent);
      progress.textContent = progress.value + "%";
    }
    const line = state === "paused" ? T.eta_paused : etaText(eta.update(answer.eta_s));
    $("fg-eta").textContent = line;
    setLive(format("live_waiting", { n: number(position), eta: line }));
  } else if (state === "prequeue") {
    countdown();
  } else if (state === "busy" || state === "soldout" || state === "closed") {
    setLive(T["lead_" + state]);
  }
  showReceipt(answer);
}

// The gate's clock (Redis time when the page was made) minus this device's: the
// countdown goes by the gate's clock, whatever the device's says.
const clockOffsetMs = data.now ? Number(data.now) - Date.now() : 0;

function countdown() {
  if (!data.opensAt) return;
  const left = (Date.parse(data.opensAt) - (Date.now() + clockOffsetMs)) / 1000;
  const total = Math.max(0, Math.ceil(left));
  const minutes = Math.floor(total / 60);
  const time = minutes
    ? format("duration", { m: number(minutes), s: total % 60 })
    : format("duration_s", { s: total });
  const text = format("opens_in", { time });
  const field = $("fg-countdown");
  if (field) field.textContent = text;
  // the live region speaks once a minute, not every second
  if (total % 60 === 0 || !$("fg-live").textContent) setLive(format("live_prequeue", { when: text }));
}

const client = new Fairgate(data.campaign);

async function wait(ticket) {
  try {
    const answer = await client.waitForPass({
      ticket,
      onUpdate: render,
      onTicket: (t) => (main.dataset.ticket = t),
    });
    if (answer.state === "admitted") {
      render(answer);
      location.assign(data.target || "/");
    } else {
      render(answer);
    }
  } catch (error) {
    if (error instanceof FairgateError && (error.code === "revoked" || error.code === "blocked")) {
      show("blocked");
      setLead("lead_blocked");
      setLive(T.lead_blocked);
      return;
    }
    // Anything else: the page without its script says it best (a refused join as the
    // form's own answer, a refused ticket by a reload).
    if (!ticket && form) form.submit();
    else location.reload();
  }
}

const form = $("fg-join-form");
if (form) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    $("fg-join").disabled = true;
    wait(null);
  });
}
if (data.state === "prequeue") show("prequeue");
// The server's busy page (the gate could not answer): try again by itself, as its
// no-script refresh does, by the page's own address (never re-sending a form).
if (data.state === "busy") {
  const again = $("fg-retry");
  setTimeout(
    () => location.assign(again ? again.href : location.href),
    jittered(1000 * (Number(data.refresh) || 2), 0.2),
  );
}
if (data.ticket && ["waiting", "paused", "prequeue", "soldout", "busy"].includes(data.state)) {
  wait(data.ticket);
}

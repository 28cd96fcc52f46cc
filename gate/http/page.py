"""The waiting-room page: plain HTML and a little script, nothing to install.

It joins (the proxy adds the customer header), keeps the ticket in sessionStorage (and
the new one a status answer may carry, after the pre-queue shuffle), polls status at the
interval the gate asks for, and shows an honest position and ETA.
"""

from __future__ import annotations

import html
import json

from gate.campaign import CampaignSpec

_PAGE = """<!doctype html>
<html lang="ko"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>대기실 · Waiting room · {title}</title>
<style>
body{{font-family:system-ui,"Noto Sans KR","NanumGothic",sans-serif;max-width:36rem;
margin:3rem auto;padding:0 1rem;color:#1d2433}}
h1{{font-size:1.4rem}} .big{{font-size:2.6rem;font-weight:700;margin:.2rem 0}}
.card{{border:1px solid #d5dae3;border-radius:12px;padding:1.2rem 1.4rem;margin:1rem 0}}
.muted{{color:#5b6475;font-size:.95rem}} button{{font-size:1.05rem;padding:.6rem 1.4rem}}
</style></head>
<body>
<h1>{title}</h1>
<p class="muted">순서대로 입장합니다. 이 창을 닫지 마세요. — You will be let in in order of arrival.
Keep this page open; refreshing does not lose your place.</p>
<div class="card" id="card">
  <div class="muted" id="label">대기 순번 · Your position</div>
  <div class="big" id="position">–</div>
  <div id="eta" class="muted"></div>
  <div id="message" role="status" aria-live="polite"></div>
</div>
<button id="join">대기열 참여 · Join the queue</button>
<script>
const campaign = {campaign_json};
const base = "/q/" + encodeURIComponent(campaign);
const store = "fairgate:" + campaign;
const $ = (id) => document.getElementById(id);
function show(state, body) {{
  const pos = $("position"), eta = $("eta"), msg = $("message");
  if (state === "waiting" || state === "prequeue") {{
    // in a shuffled pre-queue there is no position until the shuffle at opening
    pos.textContent = body.position == null ? "–" : body.position.toLocaleString();
    eta.textContent = body.eta_s == null ? "" :
      "예상 대기 · about " + Math.max(1, Math.round(body.eta_s / 60)) + " min";
    msg.textContent = state === "prequeue" ? "오픈 전 대기 · waiting for the opening" : "";
  }} else if (state === "admitted") {{
    pos.textContent = "✓"; eta.textContent = "";
    msg.textContent = "입장하세요 · It is your turn.";
  }} else {{
    pos.textContent = "–"; eta.textContent = "";
    msg.textContent = {{soldout: "매진 · Sold out", closed: "마감 · The campaign is closed",
      expired: "입장 시간이 지났습니다 · Your turn has expired"}}[state] || state;
  }}
}}
async function poll() {{
  const ticket = sessionStorage.getItem(store);
  if (!ticket) return;
  let wait = 2000;
  try {{
    const r = await fetch(base + "/status?ticket=" + encodeURIComponent(ticket),
                          {{credentials: "same-origin"}});
    const body = await r.json();
    if (r.ok) {{
      // after the pre-queue shuffle the gate hands out a ticket that carries the seq
      if (body.ticket) sessionStorage.setItem(store, body.ticket);
      show(body.state, body); wait = body.poll_after_ms;
    }}
    else if (r.status === 503) {{
      $("message").textContent = "잠시 후 다시 확인합니다 · Reconnecting; your place is kept.";
      wait = 1000 * (parseInt(r.headers.get("Retry-After") || "2", 10));
    }} else {{ $("message").textContent = body.error.message; wait = null; }}
  }} catch (e) {{ wait = 3000; }}
  if (wait) setTimeout(poll, wait);
}}
$("join").addEventListener("click", async () => {{
  const r = await fetch(base + "/join", {{method: "POST", credentials: "same-origin"}});
  const body = await r.json();
  if (!r.ok) {{ $("message").textContent = body.error.message; return; }}
  sessionStorage.setItem(store, body.ticket);
  $("join").hidden = true;
  show(body.state, body); poll();
}});
if (sessionStorage.getItem(store)) {{ $("join").hidden = true; poll(); }}
</script>
</body></html>
"""


def waiting_room_page(campaign: str, spec: CampaignSpec) -> str:
    return _PAGE.format(title=html.escape(campaign), campaign_json=json.dumps(campaign))

// fairgate.js: the waiting room's JSON flow for browsers and banks' own apps.
// Dependency-free ES module: join, poll the status with jitter, hand back the pass.
// The waiting page (page.js) uses it as is; an app imports it the same way:
//
//   import { Fairgate } from "/q/_static/fairgate.js";
//   const gate = new Fairgate("deposit-5pct");
//   const admitted = await gate.waitForPass({ onUpdate: (answer) => show(answer) });
//   // admitted.pass goes in the X-Gate-Pass header of the claim (or rides in the
//   // HttpOnly fg_pass cookie the gate has set in a browser).
//
// The answers are those of GET /openapi.json. A 503 means the gate cannot reach its
// state right now: the place is kept, and the client asks again after Retry-After.

/** A refused request: `status` (0 when the network failed), `code`, `retryAfter` (s). */
export class FairgateError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = "FairgateError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** Worth asking again: the gate is busy or the network failed; the place is kept. */
  get transient() {
    return this.status === 0 || this.status === 503 || this.status === 502 || this.status === 504;
  }
}

/** `ms` spread by ±`spread` (a fraction), so that clients do not poll in lock-step. */
export function jittered(ms, spread = 0.1, random = Math.random) {
  return Math.max(0, Math.round(ms * (1 - spread + 2 * spread * random())));
}

/**
 * An ETA that does not jump: while the admission rate holds it only counts down, however
 * the measured rate wobbles between polls; it goes up again only when the gate's
 * estimate is clearly longer (more than 25% and 10 s: the rate really fell).
 */
export class SteadyEta {
  constructor(now = () => performance.now()) {
    this.now = now;
    this.shown = null;
    this.at = 0;
  }

  /** The seconds to show for the gate's `eta_s` (null: unknown). */
  update(seconds) {
    const now = this.now();
    if (seconds == null) {
      this.shown = null;
    } else if (this.shown == null) {
      this.shown = seconds;
    } else {
      const expected = Math.max(1, this.shown - (now - this.at) / 1000);
      const jumped = seconds > expected * 1.25 + 10;
      this.shown = seconds <= expected || jumped ? seconds : expected;
    }
    this.at = now;
    return this.shown;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(signal.reason || new Error("aborted"));
      return;
    }
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(timer);
          reject(signal.reason || new Error("aborted"));
        },
        { once: true },
      );
    }
  });
}

export class Fairgate {
  /**
   * @param {string} campaign  the campaign id
   * @param {object} [options]
   * @param {string} [options.base]  where the gate answers ("" = this site)
   * @param {object} [options.headers]  sent with every request (e.g. Authorization)
   * @param {Function} [options.fetch]  a fetch implementation (tests, other runtimes)
   * @param {Function} [options.random]  the jitter's source, Math.random by default
   */
  constructor(campaign, options = {}) {
    this.campaign = campaign;
    this.base = (options.base || "") + "/q/" + encodeURIComponent(campaign);
    this.headers = options.headers || {};
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.random = options.random || Math.random;
    this.maxBackoffMs = 15000;
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json", ...this.headers };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await this.fetch(this.base + path, init);
    } catch (error) {
      throw new FairgateError(0, "network", String(error && error.message ? error.message : error));
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (!response.ok) {
      const retry = parseInt(response.headers.get("Retry-After") || "", 10);
      const error = (answer && answer.error) || {};
      throw new FairgateError(
        response.status,
        error.code || "http_" + response.status,
        error.message || response.statusText,
        Number.isFinite(retry) ? retry : null,
      );
    }
    return answer;
  }

  /** Join the queue: a new ticket, or the one this customer already holds. */
  join() {
    return this.request("POST", "/join");
  }

  /** Where a ticket stands; `pass` once admitted. */
  status(ticket) {
    return this.request("GET", "/status?ticket=" + encodeURIComponent(ticket));
  }

  /**
   * Poll until admitted (the answer with `pass`) or a final state (`poll_after_ms` null:
   * closed, expired, claimed). Joins first when no ticket is given. `onUpdate` sees every
   * answer, and `{state: "busy", retryAfter}` while the gate cannot answer; `onTicket`
   * sees each ticket to keep (the pre-queue shuffle hands out a new one).
   */
  async waitForPass({ ticket = null, onUpdate = () => {}, onTicket = () => {}, signal } = {}) {
    let backoffMs = 1000;
    let answer = null;
    while (!ticket) {
      try {
        answer = await this.join();
        ticket = answer.ticket;
        onTicket(ticket);
        onUpdate(answer);
      } catch (error) {
        backoffMs = await this.waitOutBusy(error, backoffMs, onUpdate, signal);
      }
    }
    for (;;) {
      if (answer && answer.state === "admitted" && answer.pass) return answer;
      if (answer && answer.state !== "admitted" && answer.poll_after_ms == null) return answer;
      if (answer && answer.state !== "admitted") {
        await sleep(jittered(answer.poll_after_ms, 0.1, this.random), signal);
      }
      try {
        answer = await this.status(ticket);
        backoffMs = 1000;
        if (answer.ticket && answer.ticket !== ticket) {
          ticket = answer.ticket;
          onTicket(ticket);
        }
        onUpdate(answer);
      } catch (error) {
        backoffMs = await this.waitOutBusy(error, backoffMs, onUpdate, signal);
        answer = null;
      }
    }
  }

  /**
   * A failed request in `waitForPass`: a transient one (the place is kept) is shown as
   * busy and waited out; the next backoff is returned. Anything else is thrown.
   */
  async waitOutBusy(error, backoffMs, onUpdate, signal) {
    if (!(error instanceof FairgateError) || !error.transient) throw error;
    onUpdate({ state: "busy", retryAfter: error.retryAfter });
    await sleep(this.busyWait(error, backoffMs), signal);
    return Math.min(backoffMs * 2, this.maxBackoffMs);
  }

  busyWait(error, backoffMs) {
    const asked = error.retryAfter != null ? error.retryAfter * 1000 : backoffMs;
    return jittered(Math.min(asked, this.maxBackoffMs), 0.25, this.random);
  }
}

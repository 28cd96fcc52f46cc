// fairgate: the pass checked at the edge, for nginx with njs 0.7.9 or later (Debian's
// libnginx-mod-http-js). The pass is verified here, as /gate/auth would (gate/tokens.py
// and gate/http/checks.py), with no call to the gate per request:
//   - `<payload>.<mac>` in canonical unpadded base64url; the payload a msgpack list
//     [kind, kid, campaign, seq, digest, exp(, not_before)]; HMAC-SHA256 under the key
//     named by kid (the edge key file, `gate keys edge`, preloaded as fairgate_edge_keys);
//   - a pass (kind "p"), not expired, not before its not_before (by the gate's clock:
//     Redis time, as the revocation list carries it), for this location's campaign,
//     of the customer the bank's login named (the keyed digest of campaign + id), the
//     campaign not closed, the seq not revoked;
//   - the revocation list (GET /gate/revoked on the gate, through the internal location
//     /_fairgate_revoked) is kept in a file of $fairgate_edge_dir shared by the workers,
//     fetched again by one request once it is REFRESH_MS old; older than the gate's own
//     stale limit (stale_after_ms) it proves nothing and every pass is refused (401, to
//     the waiting page, which says busy), as /gate/auth refuses with a stale cache.
// The door (gate/arrivals.py): a pass's first use is the customer's arrival at the core,
// metered by the gate; so the first request with a pass goes to /gate/auth once
// (/_fairgate_auth), and on 200 the customer gets the cookie fg_arrived, a MAC of the
// pass under its own key; a request that shows it is checked here alone.
// Two entry points (fairgate-edge.conf): `verdict` (js_set, in the request itself: most
// requests end there) and `check` (js_content under auth_request: the list due for a
// refresh, or a first use; it may wait for the gate). `check` answers 200 with
// X-Gate-Campaign, X-Gate-Seq, X-Gate-Customer (and X-Fairgate-Arrived on a first use)
// for auth_request_set; 401 (no identity or pass, a bad, expired or early pass, no fresh
// list, the door says wait); 403 (another campaign or customer, closed, revoked); 500
// when the gate cannot be asked (the busy page). Written for njs 0.7.9: no classes, no
// destructuring, no shared dictionary (a file instead), no periodic task.

import crypto from 'crypto';
import fs from 'fs';

const PASS_KIND = 'p';
const MAX_TOKEN_CHARS = 512;
const MAX_CUSTOMER_ID = 256;
const MAX_INT = 9007199254740991; // 2^53 - 1: beyond it the gate issues nothing
const REFRESH_MS = 250; // a list this old is fetched again (revocations within ~1 s)
const LOCK_MS = 2000; // a refresh lock older than this was left by a stopped worker
const ARRIVED_COOKIE = 'fg_arrived'; // r.variables.cookie_fg_arrived
const ARRIVED_LABEL = 'fairgate-arrived\u0000';

function Refusal(status, code) {
    this.status = status;
    this.code = code;
}

function refuse(status, code) {
    throw new Refusal(status, code);
}

// -- the token -------------------------------------------------------------------------

// The bytes of canonical unpadded base64url, else null (gate/base64url.py).
function b64urlDecode(text) {
    // Decoding skips what is not of the alphabet; encoding back gives `text` only when it
    // was canonical base64url (no padding, no stray character, unused bits zero).
    const data = Buffer.from(text, 'base64url');
    return data.toString('base64url') === text ? data : null;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

// The msgpack list of a token's payload: every field a string, an integer or bytes,
// else null (what Python's msgpack and gate/tokens.py refuse, this refuses too). One flat
// loop with the Buffer's own integer reads: njs 0.7 runs this file's code anew for each
// request, where a closure made per call or a loop over bytes costs microseconds.
function unpack(data) {
    const end = data.length;
    if (end === 0) {
        return null;
    }
    const head = data[0];
    let pos = 1;
    let count;
    if (head >= 0x90 && head <= 0x9f) {
        count = head - 0x90;
    } else if (head === 0xdc && end >= 3) {
        count = data.readUInt16BE(1);
        pos = 3;
    } else if (head === 0xdd && end >= 5) {
        count = data.readUInt32BE(1);
        pos = 5;
    } else {
        return null;
    }
    if (count !== 6 && count !== 7) {
        return null;
    }
    const fields = [];
    for (let k = 0; k < count; k++) {
        if (pos >= end) {
            return null;
        }
        const b = data[pos++];
        if (b <= 0x7f) {
            fields.push(b);
            continue;
        }
        if (b >= 0xe0) {
            fields.push(b - 256);
            continue;
        }
        let size; // bytes that follow: an integer's, or a string's or bin's
        let kind; // 'u' unsigned, 's' signed, 't' text, 'b' bin
        if (b >= 0xa0 && b <= 0xbf) {
            kind = 't';
            size = b - 0xa0;
        } else if (b >= 0xcc && b <= 0xcf) {
            kind = 'u';
            size = 1 << (b - 0xcc);
        } else if (b >= 0xd0 && b <= 0xd3) {
            kind = 's';
            size = 1 << (b - 0xd0);
        } else if ((b >= 0xd9 && b <= 0xdb) || (b >= 0xc4 && b <= 0xc6)) {
            kind = b >= 0xd9 ? 't' : 'b';
            const width = 1 << (b - (b >= 0xd9 ? 0xd9 : 0xc4));
            if (pos + width > end) {
                return null;
            }
            size = width === 1 ? data[pos] : width === 2 ? data.readUInt16BE(pos) : data.readUInt32BE(pos);
            pos += width;
        } else {
            return null; // nil, bool, float, array, map, ext: no field of a token
        }
        if (pos + size > end) {
            return null;
        }
        if (kind === 't') {
            if (size > 128) {
                return null;
            }
            // ASCII (as many characters as bytes, none of them a replacement) is read as
            // it is; anything else by the strict decoder, which refuses what msgpack does.
            let text = data.toString('utf8', pos, pos + size);
            if (text.length !== size || text.indexOf('\ufffd') >= 0) {
                try {
                    text = UTF8.decode(data.slice(pos, pos + size));
                } catch (e) {
                    return null;
                }
            }
            fields.push(text);
        } else if (kind === 'b') {
            if (size > 64) {
                return null;
            }
            fields.push({ bin: data.slice(pos, pos + size) });
        } else if (size === 8) {
            // beyond 2^53 the sum is inexact, and isInt refuses it all the same
            const high = kind === 'u' ? data.readUInt32BE(pos) : data.readInt32BE(pos);
            fields.push(high * 4294967296 + data.readUInt32BE(pos + 4));
        } else {
            fields.push(kind === 'u' ? data.readUIntBE(pos, size) : data.readIntBE(pos, size));
        }
        pos += size;
    }
    return pos === end ? fields : null;
}

const isInt = (v) => typeof v === 'number' && Math.abs(v) <= MAX_INT;
const isText = (v) => typeof v === 'string';
const isBin = (v) => v !== null && typeof v === 'object' && v.bin !== undefined;

function hmac(key, parts) {
    const h = crypto.createHmac('sha256', key);
    for (let i = 0; i < parts.length; i++) {
        h.update(parts[i]);
    }
    return h.digest();
}

function sameBytes(a, b) {
    if (a.length !== b.length) {
        return false;
    }
    let diff = 0;
    for (let i = 0; i < a.length; i++) {
        diff |= a[i] ^ b[i];
    }
    return diff === 0;
}

// The keys as bytes, decoded once when nginx loads this file (every request's VM is a
// copy of that one).
function decodeKeys(section) {
    const keys = {};
    const given = fairgate_edge_keys[section];
    for (const kid in given) {
        keys[kid] = Buffer.from(given[kid], 'base64url');
    }
    return keys;
}
const KEYS = { pass_keys: decodeKeys('pass_keys'), digest_keys: decodeKeys('digest_keys') };

function keyOf(section, kid) {
    const keys = KEYS[section];
    if (typeof kid !== 'string' || !Object.prototype.hasOwnProperty.call(keys, kid)) {
        return null;
    }
    return keys[kid];
}

// The pass's fields when its shape and MAC are good, else a 401 bad_pass.
function verify(text) {
    const parts = text.split('.');
    if (!text || text.length > MAX_TOKEN_CHARS || parts.length !== 2) {
        refuse(401, 'bad_pass');
    }
    const payload = b64urlDecode(parts[0]);
    const mac = b64urlDecode(parts[1]);
    if (payload === null || mac === null) {
        refuse(401, 'bad_pass');
    }
    const fields = unpack(payload);
    if (fields === null) {
        refuse(401, 'bad_pass');
    }
    const kind = fields[0];
    const kid = fields[1];
    const campaign = fields[2];
    const seq = fields[3];
    const digest = fields[4];
    const exp = fields[5];
    const notBefore = fields.length === 7 ? fields[6] : 0;
    if (!isInt(notBefore) || notBefore < 0 || (fields.length === 7 && !(kind === PASS_KIND && notBefore > 0))) {
        refuse(401, 'bad_pass');
    }
    if (!(isText(kind) && isText(kid) && isText(campaign) && isInt(seq) && isBin(digest) && isInt(exp))) {
        refuse(401, 'bad_pass');
    }
    const key = keyOf('pass_keys', kid);
    if (key === null || !sameBytes(hmac(key, [payload]), mac)) {
        refuse(401, 'bad_pass');
    }
    if (kind !== PASS_KIND || seq < 1 || digest.bin.length !== 16) {
        refuse(401, 'bad_pass');
    }
    return { kid, key, campaign, seq, digest: digest.bin, exp, notBefore };
}

// -- the revocation list ---------------------------------------------------------------

// The gate's answer (`name value` lines), as kept in the file: a JSON object, which every
// request reads back with the native JSON.parse.
function parseList(text, campaign, fetched) {
    const lines = text.split('\n');
    if (lines[0] !== 'fairgate-revoked 1') {
        return null;
    }
    const found = {};
    for (let i = 1; i < lines.length; i++) {
        const space = lines[i].indexOf(' ');
        if (space > 0) {
            found[lines[i].slice(0, space)] = lines[i].slice(space + 1);
        }
    }
    const list = {
        campaign: found.campaign,
        state: found.state,
        digest_key: found.digest_key,
        time_ms: Number(found.time_ms),
        stale_after_ms: Number(found.stale_after_ms),
        fetched_ms: fetched,
        revoked: ` ${found.revoked} `,
    };
    if (list.campaign !== campaign || !list.state || !list.digest_key || found.revoked === undefined
        || !(list.time_ms > 0) || !(list.stale_after_ms > 0)) {
        return null;
    }
    return list;
}

function readList(path, campaign) {
    try {
        const list = JSON.parse(fs.readFileSync(path));
        return list.campaign === campaign ? list : null;
    } catch (e) {
        return null; // none yet
    }
}

function takeLock(lock, now) {
    for (let tries = 0; tries < 2; tries++) {
        try {
            fs.writeFileSync(lock, String(now), { flag: 'wx' });
            return true;
        } catch (e) {
            let since = 0;
            try {
                since = Number(fs.readFileSync(lock, 'utf8'));
            } catch (gone) {
                continue;
            }
            if (!(now - since > LOCK_MS)) {
                return false;
            }
            try {
                fs.unlinkSync(lock);
            } catch (gone) {
                // another worker took it away first
            }
        }
    }
    return false;
}

async function fetchList(r, path, campaign) {
    const started = Date.now();
    let reply;
    try {
        reply = await r.subrequest('/_fairgate_revoked');
    } catch (e) {
        r.error(`fairgate edge: revocation list: ${e}`);
        return null;
    }
    if (reply.status !== 200) {
        r.warn(`fairgate edge: revocation list: the gate answered ${reply.status}`);
        return null;
    }
    // The gate's clock as of the middle of the round trip.
    const list = parseList(reply.responseText, campaign, Math.round((started + Date.now()) / 2));
    if (list === null) {
        r.error('fairgate edge: revocation list: not a list for this campaign');
        return null;
    }
    try {
        const tmp = `${path}.${process.pid}`;
        fs.writeFileSync(tmp, JSON.stringify(list));
        fs.renameSync(tmp, path);
    } catch (e) {
        r.error(`fairgate edge: cannot keep the revocation list in ${path}: ${e}`);
    }
    return list;
}

// The campaign's list, refreshed when due; null when none is fresh enough to use.
function listPath(r, campaign) {
    return `${r.variables.fairgate_edge_dir || '/run/fairgate-edge'}/${campaign}.revoked`;
}

async function currentList(r, campaign) {
    const path = listPath(r, campaign);
    const now = Date.now();
    let list = readList(path, campaign);
    const usable = (l) => l !== null && Date.now() - l.fetched_ms <= l.stale_after_ms;
    if (list === null || now - list.fetched_ms > REFRESH_MS) {
        const lock = `${path}.lock`;
        if (takeLock(lock, now)) {
            try {
                list = (await fetchList(r, path, campaign)) || list;
            } finally {
                try {
                    fs.unlinkSync(lock);
                } catch (e) {
                    // taken away as stale: the list was written all the same
                }
            }
        } else if (!usable(list)) {
            // Another worker is refreshing, and what is here is too old to use.
            list = (await fetchList(r, path, campaign)) || list;
        }
    }
    return usable(list) ? list : null;
}

// -- the check -------------------------------------------------------------------------

function customerOf(r) {
    const customer = (r.variables.fairgate_customer || '').trim();
    if (!customer) {
        refuse(401, 'no_identity');
    }
    if (customer.length > MAX_CUSTOMER_ID || /[\u0000-\u001f\u007f-\u009f]/.test(customer)) {
        refuse(401, 'bad_customer');
    }
    return customer;
}

function arrivalStamp(pass, text) {
    return hmac(pass.key, [ARRIVED_LABEL, text]).slice(0, 16).toString('base64url');
}

function passText(r) {
    const text = r.variables.http_x_gate_pass || r.variables.cookie_fg_pass || '';
    if (!text) {
        refuse(401, 'no_pass');
    }
    return text;
}

// What /gate/auth checks after the signature, in its order, against the list (null when
// none is fresh enough): a Refusal, or nothing when the pass is good.
function judge(r, campaign, customer, pass, list) {
    // Expiry and not_before by the gate's clock (Redis time), as the list measured it.
    const now = list !== null ? Date.now() + (list.time_ms - list.fetched_ms) : Date.now();
    if (pass.exp * 1000 <= now) {
        refuse(401, 'pass_expired');
    }
    if (pass.notBefore > now * 1000) {
        refuse(401, 'pass_not_yet');
    }
    if (pass.campaign !== campaign) {
        refuse(403, 'wrong_campaign');
    }
    if (list === null) {
        refuse(401, 'unavailable'); // fail closed: nothing proves the pass not revoked
    }
    const digestKey = keyOf('digest_keys', list.digest_key);
    if (digestKey === null) {
        r.error(`fairgate edge: digest key ${list.digest_key} is not in the edge key file`);
        refuse(401, 'unavailable');
    }
    if (!sameBytes(hmac(digestKey, [campaign, '\u0000', customer]).slice(0, 16), pass.digest)) {
        refuse(403, 'wrong_customer');
    }
    if (list.state === 'closed') {
        refuse(403, 'campaign_closed');
    }
    if (list.revoked.indexOf(` ${pass.seq} `) >= 0) {
        refuse(403, 'revoked');
    }
}

// js_set $fairgate_edge_verdict: the check with no wait, in the request itself (no
// subrequest): "200" (and $fairgate_edge_seq, $fairgate_edge_digest set), "401" or "403"
// (and $fairgate_edge_code set), or "ask" when only `check` can tell (the list is due for
// a refresh, or the pass's first use). The js_var variables spare nginx a regular
// expression per variable to take them out of one string.
function verdict(r) {
    try {
        const campaign = r.variables.fairgate_campaign;
        const customer = customerOf(r);
        const text = passText(r);
        const pass = verify(text);
        const list = readList(listPath(r, campaign), campaign);
        if (list === null || Date.now() - list.fetched_ms > REFRESH_MS) {
            return 'ask';
        }
        judge(r, campaign, customer, pass, list);
        if (r.variables.cookie_fg_arrived !== arrivalStamp(pass, text)) {
            return 'ask';
        }
        r.variables.fairgate_edge_seq = String(pass.seq);
        r.variables.fairgate_edge_digest = pass.digest.toString('hex');
        return '200';
    } catch (e) {
        if (e instanceof Refusal) {
            r.variables.fairgate_edge_code = e.code;
            return String(e.status);
        }
        r.error(`fairgate edge: ${e}`);
        return 'ask';
    }
}

// The auth_request of @fairgate_edge_ask: the same check, which may wait for the list and
// for the gate's door.
async function decide(r) {
    const campaign = r.variables.fairgate_campaign;
    const customer = customerOf(r);
    const text = passText(r);
    const pass = verify(text);
    const list = await currentList(r, campaign);
    judge(r, campaign, customer, pass, list);
    r.headersOut['X-Gate-Campaign'] = campaign;
    r.headersOut['X-Gate-Seq'] = String(pass.seq);
    r.headersOut['X-Gate-Customer'] = pass.digest.toString('hex');
    const stamp = arrivalStamp(pass, text);
    if (r.variables[`cookie_${ARRIVED_COOKIE}`] === stamp) {
        return 200;
    }
    // The first use: the gate's door meters it (and checks the pass once more).
    const door = await r.subrequest('/_fairgate_auth');
    if (door.status === 200) {
        r.headersOut['X-Fairgate-Arrived'] = stamp;
        return 200;
    }
    if (door.status === 401 || door.status === 403) {
        refuse(door.status, 'door');
    }
    refuse(500, 'gate_unreachable');
}

async function check(r) {
    let status;
    try {
        status = await decide(r);
    } catch (e) {
        if (!(e instanceof Refusal)) {
            r.error(`fairgate edge: ${e}`);
            r.return(500);
            return;
        }
        status = e.status;
        r.headersOut['X-Fairgate-Refused'] = e.code;
    }
    r.return(status);
}

export default { check, verdict };

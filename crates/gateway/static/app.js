'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const TOKEN_KEY = 'seatrush.token';
const LOG_LIMIT = 100;
const EVENTS = ['final', 'promoted', 'promotion_skipped', 'draw'];

const el = {};
for (const id of ['signin-section', 'signin', 'token', 'dev', 'student-id', 'dev-signin', 'signin-submit',
  'signin-error', 'account', 'whoami', 'signout', 'live', 'app', 'notice', 'courses-heading', 'courses',
  'as-of', 'log', 'course-template']) {
  el[id.replace(/-(\w)/g, (_, ch) => ch.toUpperCase())] = document.getElementById(id);
}

let config = { dev_issuer: false, rules: false };
// Every async task keeps the session it started under and stops once that is no longer the
// current one, so nothing of a signed-out student leaks into the next sign-in.
let session = null;
const courses = new Map(); // course_id -> { view, row, status, holds, req }
const byRid = new Map();   // request_id -> a request this page sent
const early = new Map();   // request_id -> [answer, kind]: events that beat their POST's response
const logged = new Set();
let rowCount = 0;

class SignedOut extends Error {}

async function api(path, { method = 'GET', body, headers = {}, signal, token } = {}) {
  const s = session;
  const h = { Accept: 'application/json', ...headers, Authorization: `Bearer ${token || s?.token}` };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers: h, signal, body: body && JSON.stringify(body) });
  if (res.status === 401 && !token && s && s === session) {
    signOut('Your sign-in is no longer valid. Please sign in again.');
    throw new SignedOut();
  }
  return res;
}

async function problem(res) {
  const p = await res.json().catch(() => ({}));
  return p.detail || p.title || `HTTP ${res.status}`;
}

// The gateway sends whole seconds; anything else falls back to one.
const retryAfter = (res) => Math.min(Math.max(Number.parseInt(res.headers.get('Retry-After'), 10) || 1, 1), 60);

function when(t) {
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

const REASONS = {
  full: 'the course and its waitlist are full',
  already_enrolled: 'you already hold a seat',
  already_waitlisted: 'you are already on the waitlist',
  already_queued: 'you are already in the draw',
  not_enrolled: 'you hold no seat here',
  unknown_student: 'unknown student',
  unknown_course: 'unknown course',
};

function reasonText(a) {
  switch (a.reason) {
    case 'not_open': return a.opens_at ? `registration opens ${when(a.opens_at)}` : 'registration is not open yet';
    case 'closed': return a.closes_at ? `registration closed ${when(a.closes_at)}` : 'registration is closed';
    case 'credit_limit': return `credit limit: ${a.credits_held ?? '?'} of ${a.credits_allowed ?? '?'} credits held`
      + (a.credits_asked != null ? `; this course adds ${a.credits_asked}` : '');
    case 'time_conflict': return a.conflicts_with ? `time conflict with ${a.conflicts_with}` : 'time conflict';
    case 'hold': return a.holds?.length ? `hold on your record: ${a.holds.join(', ')}` : 'hold on your record';
    case 'not_your_turn': return a.registration_opens_at
      ? `not your turn yet: you may register from ${when(a.registration_opens_at)}` : 'not your turn yet';
    case 'invalid': return a.detail || 'the request was invalid';
    default: return REASONS[a.reason] || (a.reason ? a.reason.replaceAll('_', ' ') : a.detail || 'no reason given');
  }
}

// [data-state, text]: what an answer says about the student's place in its course.
function statusOf(a) {
  const provisional = a.stage !== 'final';
  switch (a.outcome) {
    case 'enrolled': return provisional ? ['provisional', 'provisionally yours'] : ['confirmed', 'confirmed'];
    case 'waitlisted': return ['waitlisted', 'waitlisted'
      + (a.waitlist_position != null ? `, position ${a.waitlist_position}` : '') + (provisional ? ' (provisional)' : '')];
    case 'promoted': return ['promoted', 'promoted: the seat is yours'];
    case 'dropped': return ['dropped', 'dropped'];
    case 'rejected': return ['rejected', `rejected: ${reasonText(a)}`];
    case 'queued': return ['pending', a.draw_at ? `in the draw, drawn ${when(a.draw_at)}` : 'in the draw'];
    default: return null;
  }
}

function sentence(a, kind) {
  const c = a.course_id;
  if (kind === 'promoted') return `${c}: you were promoted from the waitlist; the seat is yours`;
  if (kind === 'promotion_skipped') return `${c}: a freed seat passed you by (${reasonText(a)}); you keep your place`;
  if (a.action === 'release') return `${c}: dropped, to complete your swap`;
  const said = statusOf(a)?.[1] || a.outcome;
  let text = kind === 'draw' && a.draw_position != null ? `${c}: drawn number ${a.draw_position}, ${said}` : `${c}: ${said}`;
  if (a.action === 'swap' && a.drop_course_id) text += ` (swap for ${a.drop_course_id})`;
  if (a.replayed) text += ' (answered earlier)';
  if (a.revised) text += ' (revised)';
  return text;
}

function addLog(text) {
  const [li, time, now] = [document.createElement('li'), document.createElement('time'), new Date()];
  Object.assign(time, { dateTime: now.toISOString(), textContent: now.toLocaleTimeString() });
  li.append(time, ' ', text);
  el.log.prepend(li);
  while (el.log.children.length > LOG_LIMIT) el.log.lastElementChild.remove();
}

function entry(id) {
  if (!courses.has(id)) courses.set(id, { view: null, row: null, status: { state: 'none', text: 'none' }, holds: false, req: null });
  return courses.get(id);
}

const held = () => [...courses].filter(([, c]) => c.holds).map(([id]) => id);
const busy = (c) => c.req?.stage === 'pending' && !c.req.stalled;

function buildRow(id) {
  const row = el.courseTemplate.content.firstElementChild.cloneNode(true);
  const n = ++rowCount;
  const [swap, form, select] = ['.swap', '.swap-form', '.swap-from'].map((s) => $(s, row));
  row.dataset.course = id;
  $('.course-name', row).textContent = id;
  const labels = { '.enroll': `Enroll in ${id}`, '.drop': `Drop ${id}`, '.swap': `Swap into ${id}`,
    '.swap-confirm': `Confirm swap into ${id}`, '.swap-cancel': `Cancel swap into ${id}` };
  for (const [sel, label] of Object.entries(labels)) $(sel, row).setAttribute('aria-label', label);
  form.id = `swap-${n}`;
  form.setAttribute('aria-label', `Swap into ${id}`);
  swap.setAttribute('aria-controls', form.id);
  select.id = `swap-from-${n}`;
  $('.swap-label', row).htmlFor = select.id;

  $('.enroll', row).addEventListener('click', () => act(id, 'enroll'));
  $('.drop', row).addEventListener('click', () => act(id, 'drop'));
  swap.addEventListener('click', () => openSwap(row, form.hidden));
  $('.swap-cancel', row).addEventListener('click', () => { openSwap(row, false); swap.focus(); });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!select.value) return;
    openSwap(row, false);
    swap.focus();
    act(id, 'swap', select.value);
  });
  return row;
}

function openSwap(row, open) {
  $('.swap-form', row).hidden = !open;
  $('.swap', row).setAttribute('aria-expanded', String(open));
  if (open) $('.swap-from', row).focus();
}

function paintCourse(row, v) {
  const full = v.seats_left === 0;
  $('.seats-left', row).textContent = full
    ? `Full${v.waiting ? ` · ${v.waiting} waiting` : ''}` : `${v.seats_left} of ${v.seats} seats left`;
  row.classList.toggle('full', full);
  const listNote = v.waitlist === 0 ? ' · no waitlist' : v.waiting >= v.waitlist ? ' · waitlist full' : '';
  $('.waitlist', row).textContent = `${v.waiting} waiting${listNote}`;
  const meta = [];
  // Credits count only under the registrar's rules (the credit cap); elsewhere a "0 credits"
  // on every course would be noise.
  if (v.credits != null && (config.rules || v.credits > 0)) {
    meta.push(`${v.credits} credit${v.credits === 1 ? '' : 's'}`);
  }
  if (v.meetings) meta.push(v.meetings.split(';').map((m) => m.trim()).join(', '));
  $('.meta', row).textContent = meta.map((m) => ` · ${m}`).join('');
  const now = Date.now();
  const bits = [];
  if (v.opens_at) bits.push(`${Date.parse(v.opens_at) > now ? 'Opens' : 'Opened'} ${when(v.opens_at)}`);
  if (v.closes_at) bits.push(`${Date.parse(v.closes_at) > now ? 'Closes' : 'Closed'} ${when(v.closes_at)}`);
  if (v.opening === 'draw') {
    bits.push('Seats drawn by lot at opening');
    if (v.entries_open_at) bits.push(`entries from ${when(v.entries_open_at)}`);
    if (v.draw_commitment) bits.push(`seed commitment ${v.draw_commitment}`);
  }
  const win = $('.window', row);
  win.textContent = bits.join(' · ');
  win.hidden = bits.length === 0;
}

function paint(id, c) {
  const row = c.row;
  if (!row) return;
  if (c.view) paintCourse(row, c.view);
  const status = $('.my-status', row);
  if (status.textContent !== c.status.text) status.textContent = c.status.text;
  status.dataset.state = c.status.state;
  const isBusy = busy(c);
  row.setAttribute('aria-busy', String(isBusy));
  for (const b of row.querySelectorAll('button')) b.disabled = isBusy;
  // A swap gives up a seat held elsewhere for this one, so it needs such a seat. It matters only
  // under the registrar's rules (a credit cap, time conflicts); without them enrolling, then
  // dropping, does the same, and the gateway says so in its configuration.
  const others = held().filter((h) => h !== id);
  const canSwap = config.rules && others.length > 0 && !c.holds;
  $('.swap', row).hidden = !canSwap;
  if (!canSwap) openSwap(row, false);
  const select = $('.swap-from', row);
  if ([...select.options].map((o) => o.value).join('\n') !== others.join('\n')) {
    const keep = select.value;
    select.replaceChildren(...others.map((h) => new Option(h, h)));
    if (others.includes(keep)) select.value = keep;
  }
}

const paintAll = () => courses.forEach((c, id) => paint(id, c));

function render(list) {
  const seen = new Set();
  let prev = null;
  for (const view of list.courses) {
    const c = entry(view.course_id);
    seen.add(view.course_id);
    c.view = view;
    c.row ||= buildRow(view.course_id);
    // Moving a row that is already in place would take focus away from its buttons.
    const want = prev ? prev.nextElementSibling : el.courses.firstElementChild;
    if (c.row !== want) el.courses.insertBefore(c.row, want);
    prev = c.row;
  }
  for (const [id, c] of courses) {
    if (!seen.has(id) && c.row) { c.row.remove(); c.row = null; }
  }
  el.asOf.textContent = list.as_of ? `Seats as of ${new Date(list.as_of).toLocaleTimeString()}` : '';
  paintAll();
}

let loading = false;
let loadAgain = false;
async function loadCourses() {
  const s = session;
  if (!s) return;
  if (loading) { loadAgain = true; return; }
  loading = true;
  try {
    const res = await api('/v1/courses');
    if (s !== session) return;
    if (res.ok) render(await res.json());
    else if (res.status !== 503) el.notice.textContent = `Could not read the courses: ${await problem(res)}`;
  } catch {
    // The next tick tries again; the connection indicator already tells the student.
  } finally {
    loading = false;
    if (loadAgain) { loadAgain = false; loadCourses(); }
  }
}

let refreshTimer = 0;
const refreshSoon = () => { clearTimeout(refreshTimer); refreshTimer = setTimeout(loadCourses, 150); };

function apply(c, a) {
  const st = statusOf(a);
  if (!st) return;
  c.status = { state: st[0], text: st[1] };
  if (a.outcome === 'enrolled' || a.outcome === 'promoted' || a.reason === 'already_enrolled') c.holds = true;
  else if (a.outcome === 'dropped' || a.outcome === 'waitlisted' || a.reason === 'not_enrolled') c.holds = false;
}

function onAnswer(a, kind) {
  if (!a?.course_id || !session) return;
  const c = entry(a.course_id);
  const req = byRid.get(a.request_id);
  const aboutWaitlist = kind === 'promoted' || kind === 'promotion_skipped';
  // The request this event answers may still be on its way back from the POST.
  if (!req && !aboutWaitlist && c.req && !c.req.rid) {
    early.set(a.request_id, [a, kind]);
    return;
  }
  const final = a.stage === 'final';
  // A request's final answer always wins over a provisional one that arrives late.
  if (req?.stage === 'final' && !final) return;
  if (req) req.stage = final ? 'final' : 'provisional';

  const dedup = [aboutWaitlist ? kind : 'answer', a.request_id, a.stage, a.outcome, a.reason, a.revised, a.promoted_by];
  if (!logged.has(dedup.join('|'))) { logged.add(dedup.join('|')); addLog(sentence(a, kind)); }

  if (kind === 'promoted') apply(c, a);
  else if (kind !== 'promotion_skipped') {
    const latest = c.req?.rid === a.request_id;
    // Finals of requests made elsewhere (another tab, a swap's release) count once this page
    // has nothing of its own under way for the course.
    const settled = !c.req || c.req.stage === 'final' || c.req.stalled;
    if (latest || (!req && final && settled)) apply(c, a);
    if (latest && final && a.action === 'swap' && a.outcome === 'enrolled' && a.drop_course_id) {
      const old = entry(a.drop_course_id);
      if (!busy(old)) { old.status = { state: 'dropped', text: 'dropped' }; old.holds = false; }
    }
  }
  paintAll();
  refreshSoon();
}

function bind(req, rid) {
  req.rid = rid;
  byRid.set(rid, req);
  for (const [id, [a, kind]] of early) {
    if (a.course_id === req.course || id === rid) { early.delete(id); onAnswer(a, kind); }
  }
}

async function submit(body, key, s) {
  const id = body.course_id;
  let failures = 0;
  for (let busyTries = 0; busyTries < 20;) {
    if (s !== session) throw new SignedOut();
    let res;
    try {
      res = await api('/v1/requests', { method: 'POST', body, headers: { 'Idempotency-Key': key } });
    } catch (e) {
      if (e instanceof SignedOut || ++failures > 3) throw e;
      // The same key again: a request the gateway already took is answered, not taken twice.
      addLog(`${id}: network trouble, trying again`);
      await sleep(500 * 2 ** (failures - 1));
      continue;
    }
    if (res.status === 429 || res.status === 503) {
      const secs = retryAfter(res);
      addLog(`${id}: busy, retrying in ${secs} s`);
      busyTries += 1;
      await sleep(secs * 1000);
      continue;
    }
    if (res.status === 409) return null; // an earlier try with this key is under way: follow it
    if (!res.ok) throw new Error(await problem(res));
    return res.json();
  }
  throw new Error('the gateway stayed busy; please try again later');
}

async function act(id, action, drop) {
  const [s, c] = [session, entry(id)];
  if (!s || busy(c)) return;
  const req = { key: crypto.randomUUID(), rid: null, course: id, stage: 'pending', stalled: false };
  const before = c.status;
  Object.assign(c, { req, status: { state: 'pending', text: 'pending' } });
  paintAll();
  const body = action === 'swap' ? { action, course_id: id, drop_course_id: drop } : { action, course_id: id };
  let view;
  try {
    view = await submit(body, req.key, s);
  } catch (e) {
    if (s !== session || e instanceof SignedOut) return;
    if (c.req === req) { c.req = null; c.status = before; }
    addLog(`${id}: not sent: ${e.message}`);
    paintAll();
    return;
  }
  if (s !== session) return;
  if (view) {
    bind(req, view.request_id);
    if (view.answer) onAnswer(view.answer, 'post');
  }
  paintAll();
  if (req.stage !== 'final') poll(req, s);
}

// The event stream normally brings the final answer; polling covers a stream that is down.
async function poll(req, s) {
  const until = Date.now() + 30000;
  while (s === session && req.stage !== 'final' && Date.now() < until) {
    await sleep(1000);
    if (s !== session || req.stage === 'final') break;
    try {
      const res = await api(`/v1/requests/${encodeURIComponent(req.key)}`);
      if (!res.ok) continue;
      const view = await res.json();
      if (s !== session) break;
      if (!req.rid) bind(req, view.request_id);
      if (view.answer) onAnswer(view.answer, 'poll');
    } catch (e) {
      if (e instanceof SignedOut) break;
    }
  }
  if (s === session && req.stage === 'pending') {
    req.stalled = true;
    addLog(`${req.course}: no answer yet; it will appear here when it comes`);
    paintAll();
  }
}

function setLive(on) {
  el.live.textContent = on ? 'live' : 'reconnecting…';
  el.live.dataset.on = String(on);
}

// Read with fetch, not EventSource, which cannot send the Authorization header.
async function stream(s) {
  let delay = 500;
  while (s === session) {
    let wait = 0;
    try {
      const headers = { Accept: 'text/event-stream' };
      if (s.lastEventId) headers['Last-Event-ID'] = s.lastEventId;
      const res = await api('/v1/events', { headers, signal: s.abort.signal });
      if (res.ok && res.body) {
        setLive(true);
        delay = 500;
        refreshSoon();
        await readEvents(res.body, s);
      } else if (res.status === 429 || res.status === 503) {
        wait = retryAfter(res) * 1000;
      }
    } catch (e) {
      if (e instanceof SignedOut || s !== session) return;
    }
    if (s !== session) return;
    setLive(false);
    await sleep(Math.max(wait, delay * (0.8 + Math.random() * 0.4)));
    delay = Math.min(delay * 2, 5000);
  }
}

async function readEvents(body, s) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let [buf, data, type, id] = ['', [], '', null];
  for (;;) {
    const { value, done } = await reader.read();
    if (done || s !== session) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (id !== null) s.lastEventId = id;
        if (data.length) dispatch(type || 'message', data.join('\n'));
        [data, type] = [[], ''];
      } else if (!line.startsWith(':')) { // a colon first is a comment: the keep-alives
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') data.push(val);
        else if (field === 'event') type = val;
        else if (field === 'id' && !val.includes('\0')) id = val;
      }
    }
  }
}

function dispatch(type, data) {
  let answer = null;
  try { answer = JSON.parse(data); } catch { return; } // an unreadable event changes nothing shown
  if (EVENTS.includes(type)) onAnswer(answer, type);
}

async function signIn(token) {
  const res = await api('/v1/me', { token });
  if (!res.ok) throw new Error(res.status === 401 ? 'That access token was not accepted.' : await problem(res));
  const me = await res.json();
  sessionStorage.setItem(TOKEN_KEY, token);
  const s = { token, student: me.student_id, abort: new AbortController(), lastEventId: null, timer: 0 };
  session = s;
  el.whoami.textContent = `Signed in as ${me.student_id}`;
  el.signinError.textContent = el.notice.textContent = el.token.value = '';
  el.signinSection.hidden = true;
  el.account.hidden = el.app.hidden = false;
  setLive(false);
  for (const id of me.enrolled || []) Object.assign(entry(id), { status: { state: 'confirmed', text: 'confirmed' }, holds: true });
  for (const w of me.waitlisted || []) {
    entry(w.course_id).status = { state: 'waitlisted', text: `waitlisted, position ${w.position}` };
  }
  stream(s);
  await loadCourses();
  s.timer = setInterval(loadCourses, 2000);
  el.coursesHeading.focus();
}

function signOut(message = '') {
  session?.abort.abort();
  clearInterval(session?.timer);
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const m of [courses, byRid, early, logged]) m.clear();
  el.courses.replaceChildren();
  el.log.replaceChildren();
  el.asOf.textContent = '';
  setLive(false);
  el.app.hidden = el.account.hidden = true;
  el.signinSection.hidden = false;
  el.signinError.textContent = message;
  (config.dev_issuer ? el.studentId : el.token).focus();
}

el.signin.addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = el.token.value.trim().replace(/^Bearer\s+/i, '');
  const sub = el.studentId.value.trim();
  // Enter in the student id field submits with the form's first button, so an empty token
  // with a student id given also means the development issuer.
  const dev = config.dev_issuer && (e.submitter === el.devSignin || (!token && sub));
  el.signinError.textContent = '';
  el.signinSubmit.disabled = el.devSignin.disabled = true;
  try {
    let t = token;
    if (dev) {
      if (!sub) throw new Error('Enter a student id.');
      const res = await fetch('/v1/dev/token', { method: 'POST',
        headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub }) });
      if (!res.ok) throw new Error(await problem(res));
      t = (await res.json()).token;
    } else if (!t) {
      throw new Error('Paste an access token.');
    }
    await signIn(t);
  } catch (err) {
    el.signinError.textContent = err.message || 'Could not sign in.';
  } finally {
    el.signinSubmit.disabled = el.devSignin.disabled = false;
  }
});

el.signout.addEventListener('click', () => signOut('You are signed out.'));

async function init() {
  try {
    const res = await fetch('/v1/config', { headers: { Accept: 'application/json' } });
    if (res.ok) config = { ...config, ...(await res.json()) };
  } catch {
    // Without the configuration the page still takes a pasted token.
  }
  el.dev.hidden = !config.dev_issuer;
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) return;
  try {
    await signIn(saved);
  } catch {
    sessionStorage.removeItem(TOKEN_KEY);
    el.signinError.textContent = 'Your earlier sign-in has expired. Please sign in again.';
  }
}

init();

// Clusterra console: the few things the browser must do itself. One module, no dependencies,
// no inline script (the Content-Security-Policy forbids it). Each part starts only on pages
// that carry its data attribute.

// Every stream this page opened: closed when the page is left, so a page kept in the
// back/forward cache does not hold connections (the browser allows six per host, and an open
// stream holds one); a page restored from that cache reloads to follow again.
const sources = [];
const open = (url) => {
  const es = new EventSource(url);
  sources.push(es);
  return es;
};
window.addEventListener('pagehide', () => { for (const es of sources) es.close(); });
window.addEventListener('pageshow', (e) => { if (e.persisted) location.reload(); });

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? '';

// Times in the browser's zone.
function localTimes(root = document) {
  for (const t of root.querySelectorAll('time[datetime]')) {
    const d = new Date(t.getAttribute('datetime'));
    if (!Number.isNaN(d.getTime())) {
      t.title = t.getAttribute('datetime');
      t.textContent = d.toLocaleString();
    }
  }
}

// Selects that submit their form when changed (the cluster picker, filters).
for (const s of document.querySelectorAll('select[data-autosubmit]')) {
  s.addEventListener('change', () => s.form.submit());
}

// The log panel: follows the logs SSE route; EventSource resumes with Last-Event-ID after a
// drop. Text is appended once per animation frame, and the panel keeps about its last MAX_LINES
// lines (trimmed when it holds a fifth more, so the trimming costs little per line), so a job
// printing a thousand lines a second leaves the page responsive.
const MAX_LINES = 5000;
function logPanel(pre) {
  const status = document.getElementById('log-status');
  const follow = document.getElementById('log-follow');
  let pending = '';
  let lines = 0;
  let scheduled = false;
  let decoder = new TextDecoder();
  const flush = () => {
    scheduled = false;
    if (!pending) return;
    pre.append(document.createTextNode(pending));
    lines += (pending.match(/\n/g) || []).length;
    pending = '';
    if (lines > MAX_LINES * 1.2) {
      const kept = pre.textContent.split('\n');
      const keep = kept.slice(kept.length - MAX_LINES - 1).join('\n');
      const from = pre.scrollHeight - pre.scrollTop;
      pre.textContent = keep;
      lines = MAX_LINES;
      if (!follow?.checked) pre.scrollTop = Math.max(0, pre.scrollHeight - from);
    }
    if (follow?.checked) pre.scrollTop = pre.scrollHeight;
  };
  const push = (text) => {
    pending += text;
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  };
  const es = open(pre.dataset.logPanel);
  es.addEventListener('open', () => { status.textContent = 'live'; });
  es.addEventListener('error', () => {
    status.textContent = es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting…';
  });
  es.addEventListener('log', (m) => {
    const d = JSON.parse(m.data);
    if (d.text !== undefined) push(decoder.decode() + d.text);
    else if (d.base64 !== undefined) {
      const bytes = Uint8Array.from(atob(d.base64), (c) => c.charCodeAt(0));
      push(decoder.decode(bytes, { stream: true }));
    }
  });
  es.addEventListener('reset', () => {
    pending = '';
    lines = 0;
    decoder = new TextDecoder();
    pre.textContent = '';
  });
  es.addEventListener('end', (m) => {
    const d = JSON.parse(m.data);
    push(decoder.decode());
    flush();
    es.close();
    status.textContent = `ended: ${d.state}` + (d.exit_code !== null && d.exit_code !== undefined ? ` (exit ${d.exit_code})` : '');
    refreshFacts();
  });
}

// A job page's facts (state, node, times, cost) are rendered by the server: when the job's
// state changes, the page fetches itself again and takes the new facts from it (and drops the
// cancel form once the job has ended).
async function refreshFacts() {
  const facts = document.querySelector('dl.facts');
  if (!facts) return;
  try {
    const res = await fetch(location.href, { headers: { accept: 'text/html' } });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
    const fresh = doc.querySelector('dl.facts');
    if (fresh) {
      facts.replaceWith(document.importNode(fresh, true));
      localTimes(document.querySelector('dl.facts'));
    }
    if (!doc.getElementById('cancel')) document.getElementById('cancel')?.remove();
  } catch (e) {
    const note = document.getElementById('facts-note');
    if (note) note.textContent = 'Could not refresh the facts; reload the page.';
  }
}

// Job state badges follow the cluster's feed.
function setBadge(cell, state) {
  const badge = cell.querySelector('.state');
  if (!badge) return;
  badge.textContent = state;
  badge.className = `state state-${state.toLowerCase()}`;
}

function liveJobs(el) {
  const cluster = el.dataset.liveJobs;
  const es = open(`/v1/clusters/${encodeURIComponent(cluster)}/events/stream?type=JobStateChanged,JobSubmitted`);
  es.addEventListener('open', () => { el.textContent = 'States update live.'; });
  es.addEventListener('error', () => { el.textContent = 'Reconnecting to live updates…'; });
  es.addEventListener('message', (m) => {
    const e = JSON.parse(m.data);
    const row = document.querySelector(`tr[data-job-id="${e.job_id}"]`);
    if (e.type === 'JobStateChanged' && row && e.data?.to) setBadge(row.querySelector('.state-cell'), e.data.to);
    // A user's list holds their own jobs only (admins: everyone's).
    const mine = el.dataset.admin === 'true' || e.owner === el.dataset.me;
    if (e.type === 'JobSubmitted' && !row && mine) el.textContent = `New job ${e.job_id} submitted: reload to see it.`;
  });
}

function liveJob(el) {
  const es = open(`/v1/clusters/${encodeURIComponent(el.dataset.cluster)}/events/stream?type=JobStateChanged&job_id=${encodeURIComponent(el.dataset.liveJob)}`);
  es.addEventListener('message', (m) => {
    const e = JSON.parse(m.data);
    const cell = document.getElementById('job-state');
    if (cell && e.data?.to) setBadge(cell, e.data.to);
    refreshFacts();
  });
}

// The activity feed: new entries on top, the list capped.
function feed(ol) {
  const status = document.getElementById('feed-status');
  const url = new URL(ol.dataset.feed, location.href);
  url.searchParams.set('after', ol.dataset.after || '0');
  const es = open(url);
  es.addEventListener('open', () => { status.textContent = 'Live.'; });
  es.addEventListener('error', () => { status.textContent = 'Reconnecting…'; });
  es.addEventListener('message', (m) => {
    const e = JSON.parse(m.data);
    if (ol.querySelector(`li[data-position="${e.position}"]`)) return;
    const li = document.createElement('li');
    li.dataset.position = e.position;
    const t = document.createElement('time');
    t.setAttribute('datetime', e.time);
    t.textContent = e.time;
    const type = document.createElement('span');
    type.className = 'type';
    type.textContent = e.type;
    const summary = document.createElement('span');
    summary.textContent = e.summary;
    li.append(t, ' ', type, ' ', summary);
    if (e.actor) {
      const by = document.createElement('span');
      by.className = 'muted';
      by.textContent = `by ${e.actor}`;
      li.append(' ', by);
    }
    ol.prepend(li);
    localTimes(li);
    while (ol.children.length > 500) ol.lastElementChild.remove();
  });
}

// Upload: ask the console for a presigned PUT, then send the file straight to the object store
// with a progress bar.
function upload(form) {
  const file = form.querySelector('input[type=file]');
  const path = form.querySelector('input[name=path]');
  const bar = form.querySelector('progress');
  const status = form.querySelector('[aria-live]');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    let target = path.value.trim() || f.name;
    if (target.endsWith('/')) target += f.name;
    status.textContent = 'Preparing…';
    let signed;
    try {
      const res = await fetch(`/files/presign?cluster=${encodeURIComponent(form.dataset.cluster)}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-csrf-token': csrf() },
        body: JSON.stringify({ location: form.dataset.location, path: target, method: 'PUT', size: f.size, content_type: f.type || 'application/octet-stream' }),
      });
      const body = (res.headers.get('content-type') || '').includes('json') ? await res.json() : null;
      if (!res.ok || !body) {
        status.textContent = body?.error?.message ?? (res.redirected ? 'Your session ended: sign in again.' : `Refused (${res.status}); reload the page and try again.`);
        return;
      }
      signed = body;
    } catch (e) {
      status.textContent = `Could not reach the server (${e}); try again.`;
      return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', signed.url);
    for (const [k, v] of Object.entries(signed.headers || {})) xhr.setRequestHeader(k, v);
    bar.hidden = false;
    xhr.upload.addEventListener('progress', (p) => {
      if (p.lengthComputable) bar.value = Math.round((p.loaded / p.total) * 100);
    });
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        bar.value = 100;
        status.textContent = `Uploaded ${signed.key}`;
        location.reload();
      } else status.textContent = `The store refused the upload (${xhr.status}).`;
    });
    xhr.addEventListener('error', () => { status.textContent = 'The upload failed: network error. Try again.'; });
    xhr.send(f);
  });
}

// Ask AI: the question goes to the console, which passes the API's SSE reply through as it is
// written; the reply grows in place, and each proposal becomes a card with Confirm (sending the
// digest it shows) and Reject. Everything shown comes from the server's text, set as text.
function ask(form) {
  const chat = document.getElementById('chat');
  const text = form.querySelector('textarea');
  const send = form.querySelector('button[type=submit]');
  const status = form.querySelector('[aria-live]');
  const token = form.querySelector('input[name=csrf]').value;
  const bubble = (role, words) => {
    const div = document.createElement('div');
    div.className = `msg ${role}`;
    const who = document.createElement('p');
    who.className = 'who';
    who.textContent = role === 'user' ? 'You' : 'Ask AI';
    const p = document.createElement('p');
    p.className = 'text';
    p.textContent = words;
    div.append(who, p);
    chat.append(div);
    return p;
  };
  const decision = (pid, what, fields, label, cls) => {
    const f = document.createElement('form');
    f.method = 'post';
    const q = new URLSearchParams(new URL(form.action, location.href).search);
    f.action = `/ask/proposals/${encodeURIComponent(pid)}/${what}?${q}`;
    for (const [k, v] of Object.entries({ csrf: token, ...fields })) {
      const i = document.createElement('input');
      i.type = 'hidden'; i.name = k; i.value = v;
      f.append(i);
    }
    if (what === 'reject') {
      const l = document.createElement('label');
      l.textContent = 'Why not (optional) ';
      const i = document.createElement('input');
      i.type = 'text'; i.name = 'reason'; i.maxLength = 500;
      l.append(i);
      f.append(l);
    }
    const b = document.createElement('button');
    b.type = 'submit'; b.textContent = label;
    if (cls) b.className = cls;
    f.append(b);
    return f;
  };
  const card = (p) => {
    const a = document.createElement('article');
    a.className = 'card proposal';
    a.dataset.proposal = p.proposal_id;
    a.setAttribute('aria-label', `Proposal ${p.tool}`);
    const h = document.createElement('h3');
    h.textContent = `${p.tool} `;
    const s = document.createElement('span');
    s.className = 'badge'; s.textContent = 'pending';
    h.append(s);
    a.append(h);
    if (p.preview?.what_changes) {
      const w = document.createElement('p');
      const strong = document.createElement('strong');
      strong.textContent = p.preview.what_changes;
      w.append(strong);
      a.append(w);
    }
    for (const j of p.preview?.jobs ?? []) {
      const li = document.createElement('p');
      li.textContent = `job ${j.job_id} ${j.name ?? ''} of ${j.owner ?? ''}, ${j.state ?? ''}, $${j.cost_so_far_usd ?? '0'} so far`;
      a.append(li);
    }
    const d = document.createElement('details');
    const sm = document.createElement('summary');
    sm.textContent = 'Exactly what runs';
    const pre = document.createElement('pre');
    pre.textContent = JSON.stringify(p.arguments, null, 2);
    d.append(sm, pre);
    const actions = document.createElement('div');
    actions.className = 'actions';
    actions.append(decision(p.proposal_id, 'confirm', { digest: p.digest }, 'Confirm', 'danger'),
      decision(p.proposal_id, 'reject', {}, 'Reject'));
    a.append(d, actions);
    chat.append(a);
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const question = text.value.trim();
    if (!question) return;
    bubble('user', question);
    const reply = bubble('assistant', '');
    send.disabled = true;
    status.textContent = 'Thinking…';
    let res;
    try {
      res = await fetch(form.action, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'text/event-stream' },
        body: new URLSearchParams({ csrf: token, text: question }),
      });
    } catch (e) {
      status.textContent = `Could not reach the server (${e}); try again.`;
      send.disabled = false;
      return;
    }
    if (!res.ok || !(res.headers.get('content-type') || '').startsWith('text/event-stream')) {
      let body = null;
      try {
        if ((res.headers.get('content-type') || '').includes('json')) body = await res.json();
      } catch { body = null; }
      status.textContent = body?.error?.message ?? `Refused (${res.status}); reload the page and try again.`;
      send.disabled = false;
      return;
    }
    const cid = res.headers.get('x-conversation-id');
    if (cid && !new URL(form.action, location.href).searchParams.get('conversation')) {
      const u = new URL(form.action, location.href);
      u.searchParams.set('conversation', cid);
      form.action = u.pathname + u.search;
      const page = new URL(location.href);
      page.searchParams.set('conversation', cid);
      history.replaceState(null, '', page.pathname + page.search);
    }
    text.value = '';
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        status.textContent = `The connection dropped (${e}); the answer goes on at the server: reload to see it.`;
        break;
      }
      const { value, done } = chunk;
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = 'message';
        let data = '';
        for (const line of frame.split('\n')) {
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (!data) continue;
        let d;
        try { d = JSON.parse(data); } catch { continue; }
        if (event === 'delta') reply.textContent += d.text;
        else if (event === 'tool_call') status.textContent = `${d.tool}: ${d.ok ? 'looked up' : (d.error ?? 'refused')}`;
        else if (event === 'proposal') card(d);
        else if (event === 'error') status.textContent = `The assistant failed: ${d.message}`;
        else if (event === 'done') status.textContent = d.proposals?.length ? 'Review the proposal: nothing runs until you confirm it.' : '';
      }
    }
    send.disabled = false;
    text.focus();
  });
}
for (const el of document.querySelectorAll('form[data-ask]')) ask(el);

// The submit page: the estimate beside the form follows what it holds (half a second after the
// last change). Without script the "Estimate cost and start" button asks for the same page.
function liveEstimate(box) {
  const button = document.querySelector('button[formaction^="/jobs/estimate"]');
  const form = button?.form;
  if (!form) return;
  let timer = null;
  let asked = 0;
  const say = (text) => {
    const p = document.createElement('p');
    p.className = 'help';
    p.textContent = text;
    box.replaceChildren(p);
  };
  const refresh = async () => {
    const mine = ++asked;
    const body = new URLSearchParams(new FormData(form));
    try {
      const res = await fetch(button.getAttribute('formaction'), {
        method: 'POST',
        body,
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      });
      const page = new DOMParser().parseFromString(await res.text(), 'text/html');
      if (mine !== asked) return; // a later change asked again
      const fresh = page.querySelector('[data-estimate]');
      if (fresh && fresh.children.length) {
        box.replaceChildren(...fresh.childNodes);
        localTimes(box);
        return;
      }
      const problem = page.querySelector('.error[role="alert"] p');
      say(problem
        ? 'No estimate yet: ' + problem.textContent.trim()
        : 'No estimate: the server did not answer with one (reload the page if you were signed out).');
    } catch (e) {
      if (mine === asked) say('No estimate: the server could not be reached. Change a field to try again.');
    }
  };
  form.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 500);
  });
  refresh();
}
for (const el of document.querySelectorAll('[data-estimate]')) liveEstimate(el);

localTimes();
for (const el of document.querySelectorAll('form[data-upload]')) upload(el);
// Streams open after the load event: a stream opened before it keeps the page "loading" (the
// browser's spinner, and WebDriver's wait for the page) as long as it stays open.
function streams() {
  for (const el of document.querySelectorAll('[data-log-panel]')) logPanel(el);
  for (const el of document.querySelectorAll('[data-live-jobs]')) liveJobs(el);
  for (const el of document.querySelectorAll('[data-live-job]')) liveJob(el);
  for (const el of document.querySelectorAll('[data-feed]')) feed(el);
}
if (document.readyState === 'complete') streams();
else window.addEventListener('load', () => setTimeout(streams, 0));

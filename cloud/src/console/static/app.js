// Ferry web console: shared helpers. Everything the pages show and change
// goes through the JSON API with the console's session cookie; requests
// that change state carry the session's CSRF token. Text reaches the page
// only through textContent and attributes, never as HTML.
'use strict';

const Ferry = (() => {
  const pages = {};
  let clockSkewMs = 0;
  // Set when the page goes away (logout, navigation): the event stream's
  // end and refused requests then are expected, not a reason to redirect.
  let leaving = false;
  let stream = null;
  window.addEventListener('pagehide', () => { leaving = true; });

  const meta = (name) => {
    const tag = document.querySelector(`meta[name="${name}"]`);
    return tag ? tag.content : '';
  };

  /** A refusal or failure of the API, from its problem document. */
  class Problem extends Error {
    constructor(status, body) {
      const title = (body && body.title) || `HTTP ${status}`;
      const detail = (body && body.detail) || '';
      super(detail ? `${title}: ${detail}` : title);
      this.status = status;
      this.title = title;
      this.detail = detail;
      this.type = ((body && body.type) || '').replace('urn:ferry:problem:', '');
      this.retryAfter = body && body.retry_after;
    }
  }

  // Reads started by a change event (within a moment of it) are the page's
  // own doing, not the user's: they say so, and do not keep the session
  // from ending after 30 idle minutes.
  let automaticUntil = 0;

  /** Calls the API; resolves to the parsed JSON (or null), rejects with a Problem. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (method === 'GET' && Date.now() < automaticUntil) headers['X-Ferry-Background'] = '1';
    if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = meta('csrf-token');
    const init = { method, headers, credentials: 'same-origin' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Problem(0, { title: 'The cloud cannot be reached', detail: String(error.message || error) });
    }
    const date = Date.parse(response.headers.get('Date') || '');
    if (!Number.isNaN(date)) clockSkewMs = date - Date.now();
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (response.status === 401 && document.body.dataset.page !== 'login') {
      toLogin(true);
    }
    if (!response.ok) throw new Problem(response.status, data);
    return data;
  }

  function toLogin(expired) {
    if (leaving) return;
    leaving = true;
    const next = encodeURIComponent(location.pathname + location.search);
    location.assign(`/login?next=${next}${expired ? '&expired=1' : ''}`);
  }

  /** The server's time now, as far as the last answer told. */
  const now = () => Date.now() + clockSkewMs;

  /** Makes an element: el('td', {class: 'x'}, 'text', child, ...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));

  /** Shows a problem in a `.problem` box (or hides the box with null). */
  function showProblem(box, error) {
    if (!box) return;
    box.replaceChildren();
    if (!error) {
      box.hidden = true;
      return;
    }
    const title = error.title || 'Something went wrong';
    box.append(el('strong', { text: `${title}.` }));
    const detail = error.detail || (error.title ? '' : String(error.message || error));
    if (detail) {
      const sentence = detail.charAt(0).toUpperCase() + detail.slice(1);
      box.append(' ', el('span', { text: sentence.endsWith('.') ? sentence : `${sentence}.` }));
    }
    if (error.retryAfter) box.append(' ', el('span', { text: `Try again in ${error.retryAfter} s.` }));
    box.hidden = false;
  }

  function notice(text, kind) {
    const box = $('#notice');
    if (!box) return;
    box.className = `notice ${kind || ''}`;
    box.textContent = text;
    box.hidden = !text;
  }

  /** Runs a form's submit handler with its button disabled and problems shown. */
  function onSubmit(form, handler) {
    if (!form) return;
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const box = $('.problem', form);
      const buttons = $$('button[type=submit]', form);
      buttons.forEach((b) => { b.disabled = true; });
      showProblem(box, null);
      try {
        await handler(new FormData(form), form);
      } catch (error) {
        showProblem(box, error);
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    });
  }

  /** A button that runs `action`, showing a refusal in `box`. */
  function actionButton(label, action, box, kind) {
    const button = el('button', { type: 'button', class: kind || '', text: label });
    button.addEventListener('click', async () => {
      button.disabled = true;
      showProblem(box, null);
      try {
        await action();
      } catch (error) {
        showProblem(box, error);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  const pad = (n) => String(n).padStart(2, '0');

  function time(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '–';
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${pad(m)} min`;
    if (m) return `${m} min ${pad(s % 60)} s`;
    return `${s} s`;
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = Number(n || 0);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
  }

  function ago(ms) {
    if (!ms) return 'never';
    return `${duration((now() - ms) / 1000)} ago`;
  }

  const may = (right) => (document.body.dataset.may || '').split(' ').includes(right);

  /** The cloud's address and certificate pin, for commands. */
  function cloudArgs() {
    const pin = meta('ferry-pin');
    return `--cloud ${location.origin}${pin ? ` --pin ${pin}` : ''}`;
  }

  async function copy(text, button) {
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch (_) {
      // Without clipboard access, select the text for the user to copy.
      const target = button && button.previousElementSibling;
      if (target) {
        const range = document.createRange();
        range.selectNodeContents(target);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
      }
    }
    if (button) {
      const label = button.textContent;
      button.textContent = ok ? 'Copied' : 'Selected';
      setTimeout(() => { button.textContent = label; }, 1500);
    }
  }

  /** Copy buttons name the element whose text they copy (`data-copy`). */
  document.addEventListener('click', (event) => {
    const button = event.target.closest && event.target.closest('button.copy');
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (source) copy(source.textContent, button);
  });

  function commandBox(id, text) {
    return el('div', { class: 'command' },
      el('code', { id, text }),
      el('button', { type: 'button', class: 'copy', dataset: { copy: id }, text: 'Copy' }));
  }

  /**
   * Live updates: server-sent events name what changed; `handler` gets
   * {kind, id}, or null when the page should read everything again.
   */
  function live(handler) {
    const badge = $('#live');
    const source = new EventSource('/api/v1/events');
    stream = source;
    const set = (text, cls) => {
      if (!badge) return;
      badge.textContent = text;
      badge.className = `live ${cls}`;
    };
    const automatic = (change) => {
      automaticUntil = Date.now() + 1000;
      handler(change);
    };
    source.addEventListener('open', () => {
      set('live', 'on');
      automatic(null);
    });
    source.addEventListener('change', (event) => {
      let change = null;
      try {
        change = JSON.parse(event.data);
      } catch (_) {
        change = null;
      }
      automatic(change);
    });
    source.addEventListener('resync', () => automatic(null));
    source.addEventListener('error', async () => {
      if (leaving) return;
      set('reconnecting…', 'off');
      // A stream refused outright (the session ended) does not come back.
      if (source.readyState === EventSource.CLOSED) {
        try {
          await api('GET', '/api/v1/auth/session');
          setTimeout(() => live(handler), 3000);
        } catch (_) {
          // api() has sent the visitor to the login page on a 401.
        }
      }
    });
    return source;
  }

  /** Calls `fn` at most once per `ms`, after the last call. */
  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  const stateLabels = {
    prepared: 'prepared',
    waiting_for_approval: 'waiting for approval',
    active: 'active',
    ended: 'ended',
    expired: 'expired',
  };

  function endReason(reason) {
    if (!reason) return '';
    switch (reason.by) {
      case 'user': return `ended by ${reason.name}`;
      case 'customer': return reason.session_only ? 'ended by the customer at the gateway' : 'ended by the customer (switch off)';
      case 'denied': return 'approval denied by the customer';
      case 'user_disabled': return `user ${reason.name} was disabled`;
      case 'approval_timeout': return 'no approval in time';
      case 'duration': return 'maximum duration reached';
      default: return reason.by;
    }
  }

  function stateBadge(session) {
    const label = stateLabels[session.state] || session.state;
    const text = session.end_reason ? `${label}: ${endReason(session.end_reason)}` : label;
    return el('span', { class: `badge state-${session.state}`, text, dataset: { state: session.state } });
  }

  const isLive = (session) => session.state === 'active' || session.state === 'waiting_for_approval';

  async function logout() {
    leaving = true;
    if (stream) stream.close();
    try {
      await api('DELETE', '/api/v1/auth/session');
    } catch (_) {
      // Gone already: the login page is where to go either way.
    }
    location.assign('/login');
  }

  document.addEventListener('DOMContentLoaded', () => {
    const button = $('#logout');
    if (button) button.addEventListener('click', logout);
    const page = pages[document.body.dataset.page];
    const badge = $('#live');
    if (badge && !(page && page.live)) badge.hidden = true;
    if (page) page.run();
  });

  return {
    pages, api, Problem, el, $, $$, showProblem, notice, onSubmit, actionButton, time, duration, bytes, ago,
    may, cloudArgs, copy, commandBox, live, debounce, stateBadge, endReason, isLive, now, meta,
  };
})();

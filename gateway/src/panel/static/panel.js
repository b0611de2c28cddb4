// The panel's own script. The pages work without it; with it, the switch
// and the sessions on the main page follow the gateway as it changes (the
// server renders the part and sends it as a server-sent event), and the
// time left counts down.
(() => {
  'use strict';

  // The gateway's clock, not this screen's, says how much time is left.
  let offset = 0;

  function readClock() {
    const root = document.querySelector('.live-root[data-now]');
    if (root) offset = Number(root.dataset.now) - Date.now();
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
    return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
  }

  function tick() {
    const now = Date.now() + offset;
    for (const span of document.querySelectorAll('.countdown[data-expires]')) {
      span.textContent = duration(Number(span.dataset.expires) - now);
    }
  }

  function follow(live) {
    const status = document.getElementById('live-status');
    const say = (text) => { if (status) status.textContent = text; };
    let failures = 0;
    const source = new EventSource('/events');
    source.addEventListener('open', () => {
      failures = 0;
      say('live');
    });
    source.addEventListener('live', (event) => {
      live.innerHTML = event.data;
      readClock();
      tick();
      say('live');
    });
    source.addEventListener('ended', () => {
      source.close();
      location.assign('/login?expired=1');
    });
    source.addEventListener('error', () => {
      failures += 1;
      say('reconnecting…');
      // The daemon restarted or the session ended: the page itself tells.
      if (failures >= 5) location.reload();
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    readClock();
    tick();
    setInterval(tick, 1000);
    const live = document.getElementById('live');
    if (live && window.EventSource) follow(live);
    // A form posts once: a second tap on a slow screen must not post again.
    document.addEventListener('submit', (event) => {
      const form = event.target;
      if (form.dataset.sent) {
        event.preventDefault();
        return;
      }
      form.dataset.sent = 'yes';
      for (const button of form.querySelectorAll('button')) button.classList.add('busy');
    });
  });
})();

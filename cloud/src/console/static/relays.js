// Relays (Administrators): health, capacity and allocations, live; and
// registering a relay, whose token is shown once.
(() => {
  const { api, el, $, onSubmit, time, ago, bytes, showProblem, debounce, meta } = Ferry;

  function row(relay) {
    const h = relay.health || {};
    const load = h.capacity ? Math.round((100 * h.bindings) / h.capacity) : 0;
    return el('tr', { dataset: { relay: relay.name } },
      el('td', {}, el('strong', { text: relay.name }), el('div', { class: 'muted', text: `#${relay.id}` })),
      el('td', {}, el('span', { class: `badge ${h.online ? 'good' : 'off'}`, text: h.online ? 'online' : 'offline' })),
      el('td', { text: h.software_version || '–' }),
      el('td', { text: h.udp || '–' }),
      el('td', { text: h.websocket_url || '–' }),
      el('td', {}, `${h.bindings || 0}`, h.capacity
        ? el('progress', { max: h.capacity, value: h.bindings || 0, title: `${load}% of capacity` })
        : null),
      el('td', { text: h.capacity || '–' }),
      el('td', { text: `${bytes(h.forwarded_bytes)} (${h.forwarded_packets || 0} packets)` }),
      el('td', { text: h.drops || 0 }),
      el('td', { text: h.online ? 'now' : ago(h.seen_ms), title: time(h.seen_ms) }));
  }

  Ferry.pages.relays = {
    live: true,
    run() {
      const problem = $('#relays-problem');
      const body = $('#relays tbody');
      const refresh = debounce(async () => {
        try {
          const relays = await api('GET', '/api/v1/relays');
          body.replaceChildren(...relays.map(row));
          $('#relays-empty').hidden = relays.length > 0;
        } catch (error) {
          showProblem(problem, error);
        }
      }, 150);
      onSubmit($('#register-relay'), async (data, form) => {
        const created = await api('POST', '/api/v1/relays', { name: data.get('name').trim() });
        form.reset();
        const pin = meta('ferry-pin');
        const ws = location.origin.replace(/^http/, 'ws');
        $('#relay-name').textContent = created.relay.name;
        $('#relay-token-value').textContent = created.token;
        $('#relay-command').textContent = `ferry-relay --cloud-url ${ws}/api/v1/control/relay${pin ? ` --cloud-pin ${pin}` : ''} --cloud-relay-id ${created.relay.id} --cloud-token-file /etc/ferry/relay-token`;
        $('#relay-token').hidden = false;
        refresh();
      });
      refresh();
      Ferry.live((change) => {
        if (!change || change.kind === 'relay') refresh();
      });
    },
  };
})();

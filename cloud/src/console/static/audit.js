// The audit log: the API's filters, page by page, the chain check with its
// result, and the export as JSON Lines.
(() => {
  const { api, el, $, onSubmit, actionButton, time, showProblem } = Ferry;

  /** The filters as a query string (without paging). */
  function filters(form) {
    const data = new FormData(form);
    const query = new URLSearchParams();
    const from = data.get('from');
    const to = data.get('to');
    if (from) query.set('from_ms', String(new Date(from).getTime()));
    if (to) query.set('to_ms', String(new Date(to).getTime()));
    for (const name of ['actor', 'action', 'session', 'gateway', 'allowed']) {
      const value = (data.get(name) || '').trim();
      if (value) query.set(name, value);
    }
    return query;
  }

  function row(entry) {
    return el('tr', { class: entry.allowed ? '' : 'refused' },
      el('td', { text: entry.seq }),
      el('td', { text: time(entry.time_ms) }),
      el('td', { text: entry.actor }),
      el('td', {}, el('code', { text: entry.action })),
      el('td', { text: entry.allowed ? 'allowed' : 'refused' }),
      el('td', { text: entry.source || '' }),
      el('td', { text: entry.session || '' }),
      el('td', { text: entry.gateway || '' }),
      el('td', { class: 'detail', text: entry.detail || '' }));
  }

  Ferry.pages.audit = {
    run() {
      const form = $('#audit-filter');
      const body = $('#audit tbody');
      const more = $('#more');
      let next = null;
      let query = new URLSearchParams();
      const load = async (append) => {
        const page = new URLSearchParams(query);
        page.set('limit', '100');
        if (append && next !== null) page.set('after', String(next));
        const result = await api('GET', `/api/v1/audit?${page}`);
        const rows = result.entries.map(row);
        if (append) body.append(...rows);
        else body.replaceChildren(...rows);
        next = result.next;
        more.hidden = next === null;
        $('#audit-empty').hidden = body.children.length > 0 || next !== null;
      };
      const exportLink = () => {
        $('#export').href = `/api/v1/audit/export${query.toString() ? `?${query}` : ''}`;
      };
      onSubmit(form, async () => {
        query = filters(form);
        exportLink();
        await load(false);
      });
      more.addEventListener('click', () => load(true).catch((e) => showProblem($('.problem', form), e)));
      const result = $('#verify-result');
      $('#verify').replaceWith(Object.assign(actionButton('Verify the chain', async () => {
        result.hidden = true;
        const report = await api('GET', '/api/v1/audit/verify');
        result.className = `notice ${report.intact ? 'ok' : 'bad'}`;
        result.textContent = report.intact
          ? `The chain is intact: ${report.entries} entries checked${report.anchor_seq ? ` (after entry ${report.anchor_seq}, removed by retention)` : ''}.`
          : `The chain is broken at entry ${report.broken_seq}: ${report.reason}.`;
        result.hidden = false;
      }, $('.problem', form), 'quiet'), { id: 'verify' }));
      exportLink();
      load(false).catch((e) => showProblem($('.problem', form), e));
    },
  };
})();

// Gateways: their live state (connection, switch, software, last seen)
// and targets; Administrators add them and get the enrolment command.
(() => {
  const { api, el, $, $$, onSubmit, actionButton, time, ago, showProblem, may, cloudArgs, debounce } = Ferry;

  function targetRow() {
    const remove = el('button', { type: 'button', class: 'quiet', text: 'Remove' });
    const tr = el('tr', {},
      el('td', {}, el('input', { name: 't-name', required: true, maxlength: 64, placeholder: 'plc', 'aria-label': 'Target name' })),
      el('td', {}, el('input', { name: 't-address', required: true, placeholder: '192.168.10.5', 'aria-label': 'Target address' })),
      el('td', {}, el('select', { name: 't-protocol', 'aria-label': 'Protocol' },
        ['tcp', 'udp', 'icmp', 'any'].map((p) => el('option', { value: p }, p)))),
      el('td', {}, el('input', { name: 't-ports', placeholder: '502', 'aria-label': 'Ports' })),
      el('td', {}, remove));
    remove.addEventListener('click', () => tr.remove());
    return tr;
  }

  /** "502, 8000-8010" -> [{first: 502, last: 502}, {first: 8000, last: 8010}] */
  function ports(text, target) {
    const list = [];
    for (const part of text.split(/[\s,]+/).filter(Boolean)) {
      const match = /^(\d+)(?:-(\d+))?$/.exec(part);
      if (!match) throw new Ferry.Problem(400, { title: 'Invalid ports', detail: `target ${target}: "${part}" is not a port or a range like 8000-8010` });
      list.push({ first: Number(match[1]), last: Number(match[2] || match[1]) });
    }
    return list;
  }

  function targetsText(gateway) {
    return gateway.targets.map((t) => {
      const p = t.ports.map((r) => (r.first === r.last ? r.first : `${r.first}-${r.last}`)).join(',');
      return `${t.name} ${t.address} ${t.protocol}${p ? `:${p}` : ''}`;
    });
  }

  function showEnrolment(name, enrolment) {
    $('#enrol-name').textContent = name;
    $('#enrol-expires').textContent = Ferry.duration((enrolment.expires_ms - Ferry.now()) / 1000);
    $('#enrol-command').textContent = `ferry-gateway enroll ${cloudArgs()} --token ${enrolment.token}`;
    $('#enrolment').hidden = false;
    $('#enrolment').scrollIntoView({ block: 'nearest' });
  }

  function row(g, problem) {
    const seen = g.last_seen || {};
    const cells = [
      el('td', {}, el('strong', { text: g.name }), el('div', { class: 'muted', text: `#${g.id}` })),
      el('td', { text: g.site }),
      el('td', {}, el('span', { class: `badge ${seen.online ? 'good' : 'off'}`, text: seen.online ? 'online' : 'offline' })),
      el('td', {}, seen.online || seen.seen_ms
        ? el('span', { class: `badge ${seen.switch_on ? 'good' : 'warn'}`, text: seen.switch_on ? 'on' : 'off' })
        : '–'),
      el('td', { text: seen.software_version || '–' }),
      el('td', { text: seen.online ? 'now' : ago(seen.seen_ms), title: time(seen.seen_ms) }),
      el('td', {}, el('ul', { class: 'plain' }, targetsText(g).map((t) => el('li', { text: t })))),
    ];
    if (may('add_gateway')) {
      cells.push(el('td', { class: 'actions' }, g.identity_key
        ? el('span', { class: 'muted', text: 'enrolled' })
        : null,
      actionButton(g.identity_key ? 'Re-enrol' : 'New enrolment token', async () => {
        const enrolment = await api('POST', `/api/v1/gateways/${g.id}/enrolment-token`);
        showEnrolment(g.name, enrolment);
      }, problem, 'quiet')));
    }
    return el('tr', { dataset: { gateway: g.name } }, cells);
  }

  Ferry.pages.gateways = {
    live: true,
    run() {
      const problem = $('#gateways-problem');
      const body = $('#gateways tbody');
      const refresh = debounce(async () => {
        try {
          const gateways = await api('GET', '/api/v1/gateways');
          body.replaceChildren(...gateways.map((g) => row(g, problem)));
          $('#gateways-empty').hidden = gateways.length > 0;
        } catch (error) {
          showProblem(problem, error);
        }
      }, 150);
      const form = $('#add-gateway');
      if (form) {
        const rows = $('#target-rows');
        rows.append(targetRow());
        $('#add-target').addEventListener('click', () => rows.append(targetRow()));
        onSubmit(form, async (data) => {
          const targets = $$('tr', rows).map((tr) => {
            const name = $('[name=t-name]', tr).value.trim();
            return {
              name,
              address: $('[name=t-address]', tr).value.trim(),
              protocol: $('[name=t-protocol]', tr).value,
              ports: ports($('[name=t-ports]', tr).value, name),
            };
          });
          const created = await api('POST', '/api/v1/gateways', {
            name: data.get('name').trim(), site: data.get('site').trim(), targets,
          });
          form.reset();
          rows.replaceChildren(targetRow());
          showEnrolment(created.gateway.name, created.enrolment);
          refresh();
        });
      }
      refresh();
      Ferry.live((change) => {
        if (!change || change.kind === 'gateway') refresh();
      });
    },
  };
})();

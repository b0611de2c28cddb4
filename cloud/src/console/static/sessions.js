// Sessions: the list (all of them for admins, the ones released to a
// technician for a remoteConnect User), preparing one, starting and ending,
// and the technician's hand-off to the client.
(() => {
  const { api, el, $, $$, onSubmit, actionButton, showProblem, may, cloudArgs, debounce, stateBadge, isLive, duration } = Ferry;

  const me = () => Number(document.body.dataset.userId);

  /** Seconds left, or null; for a waiting session, of the approval window. */
  function secondsLeft(session) {
    if (!isLive(session) || !session.expires_ms) return null;
    return (session.expires_ms - Ferry.now()) / 1000;
  }

  function leftCell(session) {
    const td = el('td', { class: 'left' });
    if (secondsLeft(session) !== null) {
      td.dataset.expires = session.expires_ms;
      td.dataset.waiting = session.state === 'waiting_for_approval' ? '1' : '';
    }
    tick(td);
    return td;
  }

  function tick(td) {
    if (!td.dataset.expires) {
      td.textContent = '–';
      return;
    }
    const left = duration((Number(td.dataset.expires) - Ferry.now()) / 1000);
    td.textContent = td.dataset.waiting ? `approval within ${left}` : left;
  }

  /** What a caller may do with a session, as the API decides it. */
  function rightsOn(session) {
    const own = session.released_to.includes(me());
    return {
      own,
      start: !isLive(session) && (own || may('start_others')),
      end: isLive(session) && (own || may('end_others')),
    };
  }

  async function act(session, verb, refresh) {
    try {
      await api('POST', `/api/v1/sessions/${session.id}/${verb}`);
    } catch (error) {
      error.title = `${verb === 'start' ? 'Cannot start' : 'Cannot end'} “${session.name}”: ${error.title}`;
      throw error;
    } finally {
      refresh();
    }
  }

  function row(session, names, problem, refresh) {
    const rights = rightsOn(session);
    const actions = el('td', { class: 'actions' });
    if (rights.start) actions.append(actionButton('Start', () => act(session, 'start', refresh), problem));
    if (rights.end) actions.append(actionButton('End', () => act(session, 'end', refresh), problem, 'danger'));
    actions.append(el('a', { class: 'button quiet', href: `/sessions/${session.id}`, text: 'Details' }));
    const nameCell = el('td', {}, el('a', { href: `/sessions/${session.id}` }, el('strong', { text: session.name })),
      el('div', { class: 'muted', text: `#${session.id}${session.approval_required ? ' · approval required' : ''}` }));
    if (rights.own && session.state === 'active') {
      nameCell.append(Ferry.commandBox(`connect-${session.id}`, `ferry connect ${session.id}`));
    }
    const released = session.released_to.map((id) => (id === me() ? 'you' : names.users.get(id) || `#${id}`));
    return el('tr', { dataset: { session: session.name, state: session.state } },
      nameCell,
      el('td', { text: names.gateways.get(session.gateway_id) || `#${session.gateway_id}` }),
      el('td', { text: session.targets.join(', ') }),
      el('td', { text: released.join(', ') || '–' }),
      el('td', {}, stateBadge(session)),
      leftCell(session),
      actions);
  }

  function prepareForm(names, gateways, users, refresh) {
    const form = $('#prepare');
    if (!form) return;
    const select = $('select[name=gateway]', form);
    const targets = $('#prepare-targets');
    const fill = () => {
      const chosen = select.value;
      select.replaceChildren(el('option', { value: '' }, 'Choose…'),
        ...gateways.map((g) => el('option', { value: g.id, selected: String(g.id) === chosen },
          `${g.name} (${g.site})${g.last_seen.online ? '' : ' · offline'}`)));
      const gateway = gateways.find((g) => String(g.id) === select.value);
      const checked = new Set($$('input:checked', targets).map((i) => i.value));
      targets.replaceChildren(...(gateway
        ? gateway.targets.map((t) => el('label', { class: 'check' },
          el('input', { type: 'checkbox', name: 'target', value: t.name, checked: checked.has(t.name) }), ` ${t.name} (${t.address})`))
        : [el('span', { class: 'muted', text: 'Choose a gateway first.' })]));
    };
    select.onchange = fill;
    fill();
    const userBox = $('#prepare-users');
    const picked = new Set($$('input:checked', userBox).map((i) => i.value));
    userBox.replaceChildren(...(users.length
      ? users.map((u) => el('label', { class: 'check' },
        el('input', { type: 'checkbox', name: 'user', value: u.id, checked: picked.has(String(u.id)) }), ` ${u.name}`))
      : [el('span', { class: 'muted', text: 'No users.' })]));
    if (!form.dataset.bound) {
      form.dataset.bound = '1';
      onSubmit(form, async (data) => {
        await api('POST', '/api/v1/sessions', {
          name: data.get('name').trim(),
          gateway_id: Number(data.get('gateway')),
          targets: data.getAll('target'),
          released_to: data.getAll('user').map(Number),
          max_duration_s: Number(data.get('duration')),
          approval_required: data.get('approval') === 'on',
        });
        form.reset();
        fill();
        Ferry.notice('Session prepared.', 'ok');
        refresh();
      });
    }
  }

  Ferry.pages.sessions = {
    live: true,
    run() {
      const problem = $('#sessions-problem');
      const body = $('#sessions tbody');
      const login = $('#login-command');
      if (login) login.textContent = `ferry login ${cloudArgs()} --user ${document.body.dataset.user}`;
      const names = { gateways: new Map(), users: new Map() };
      let gateways = [];
      let users = [];
      const loadNames = async () => {
        if (may('view_gateways')) {
          gateways = await api('GET', '/api/v1/gateways');
          names.gateways = new Map(gateways.map((g) => [g.id, g.name]));
        }
        if (may('create_session')) {
          users = await api('GET', '/api/v1/users/releasable');
          names.users = new Map(users.map((u) => [u.id, u.name]));
        }
      };
      let wantAll = false;
      const load = debounce(async () => {
        const all = wantAll;
        wantAll = false;
        try {
          if (all) {
            await loadNames();
            prepareForm(names, gateways, users, () => refresh(false));
          }
          const sessions = await api('GET', '/api/v1/sessions');
          // Newest first by creation time: replicas hand out ids in blocks,
          // so an id says which replica made a session, not when.
          sessions.sort((a, b) => b.created_ms - a.created_ms || b.id - a.id);
          body.replaceChildren(...sessions.map((s) => row(s, names, problem, () => refresh(false))));
          $('#sessions-empty').hidden = sessions.length > 0;
        } catch (error) {
          showProblem(problem, error);
        }
      }, 150);
      // Names (gateways, users) only when something other than a session changed.
      const refresh = (all) => {
        wantAll = wantAll || all;
        load();
      };
      refresh(true);
      Ferry.live((change) => refresh(!change || change.kind !== 'session'));
      setInterval(() => $$('td.left', body).forEach(tick), 1000);
    },
  };

  Ferry.sessionRights = rightsOn;
  Ferry.secondsLeft = secondsLeft;
})();

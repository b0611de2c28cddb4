// One session: its state as it changes, the actions the caller may take,
// the technician's hand-off, and the peers with their path and traffic.
(() => {
  const { api, el, $, showProblem, actionButton, time, bytes, duration, stateBadge, isLive, cloudArgs, debounce, endReason } = Ferry;

  const pathLabels = { direct: 'direct', relay: 'relay (UDP)', websocket: 'relay (WebSocket)' };

  function facts(session, gatewayName) {
    const list = [
      ['Gateway', gatewayName || `#${session.gateway_id}`],
      ['Targets', session.targets.join(', ') || '–'],
      ['Maximum duration', duration(session.max_duration_s)],
      ['Customer approval', session.approval_required ? 'required for each start' : 'not required'],
      ['Prepared', `${time(session.created_ms)} by ${session.created_by}`],
    ];
    if (session.started_ms) list.push(['Started', `${time(session.started_ms)} by ${session.started_by || '?'}`]);
    if (isLive(session) && session.expires_ms) {
      const label = session.state === 'waiting_for_approval' ? 'Approval window ends' : 'Time left';
      list.push([label, el('span', { id: 'time-left', dataset: { expires: session.expires_ms } })]);
    }
    if (session.ended_ms) list.push(['Ended', `${time(session.ended_ms)}: ${endReason(session.end_reason)}`]);
    list.push(['Traffic', `${bytes(session.bytes_rx)} received · ${bytes(session.bytes_tx)} sent`]);
    return list.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]);
  }

  function tick() {
    const span = $('#time-left');
    if (span) span.textContent = duration((Number(span.dataset.expires) - Ferry.now()) / 1000);
  }

  function peerRow(config) {
    const peer = config.peer;
    const path = peer && peer.connected
      ? (peer.path ? pathLabels[peer.path] || peer.path : 'unknown')
      : (peer ? 'disconnected' : 'not connected yet');
    const offered = config.relay ? 'relay offered' : 'no relay offered';
    return el('tr', { dataset: { peer: config.user } },
      el('td', { text: config.user }),
      el('td', { text: config.tunnel_address }),
      el('td', {}, el('span', { class: `badge ${peer && peer.connected ? 'good' : 'off'}`, text: path }),
        el('div', { class: 'muted', text: offered })),
      el('td', { text: (peer && peer.endpoint) || '–' }),
      el('td', { text: time(config.issued_ms) }),
      el('td', { text: time(config.expires_ms) }));
  }

  Ferry.pages.session = {
    live: true,
    run() {
      const id = Number($('#session').dataset.id);
      const problem = $('#session-problem');
      let gatewayName = null;
      const refresh = debounce(async () => {
        try {
          const session = await api('GET', `/api/v1/sessions/${id}`);
          if (gatewayName === null && Ferry.may('view_gateways')) {
            gatewayName = (await api('GET', `/api/v1/gateways/${session.gateway_id}`)).name;
          }
          document.title = `${session.name} · Ferry`;
          $('#session-name').textContent = session.name;
          $('#session-state').replaceWith(Object.assign(stateBadge(session), { id: 'session-state' }));
          $('#session-facts').replaceChildren(...facts(session, gatewayName));
          tick();
          const rights = Ferry.sessionRights(session);
          const actions = $('#session-actions');
          actions.replaceChildren();
          const act = (verb) => async () => {
            try {
              await api('POST', `/api/v1/sessions/${id}/${verb}`);
            } catch (error) {
              error.title = `${verb === 'start' ? 'Cannot start' : 'Cannot end'}: ${error.title}`;
              throw error;
            } finally {
              refresh();
            }
          };
          if (rights.start) actions.append(actionButton('Start', act('start'), problem));
          if (rights.end) actions.append(actionButton('End now', act('end'), problem, 'danger'));
          const handoff = rights.own && session.state === 'active';
          $('#handoff').hidden = !handoff;
          if (handoff) {
            $('#connect-command').textContent = `ferry connect ${session.id}`;
            $('#session-login-command').textContent = `ferry login ${cloudArgs()} --user ${document.body.dataset.user}`;
          }
          $('#peers tbody').replaceChildren(...session.configs.map(peerRow));
          $('#peers-empty').hidden = session.configs.length > 0;
        } catch (error) {
          showProblem(problem, error);
        }
      }, 150);
      refresh();
      Ferry.live((change) => {
        if (!change || (change.kind === 'session' && change.id === id)) refresh();
      });
      setInterval(tick, 1000);
    },
  };
})();

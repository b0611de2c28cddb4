// Users (Administrators): add, change role, disable or enable, lift a
// lockout, reset the password to a one-time one.
(() => {
  const { api, el, $, onSubmit, actionButton, time, showProblem } = Ferry;

  const roles = [
    ['administrator', 'Administrator'],
    ['remote_connect_administrator', 'remoteConnect Administrator'],
    ['remote_connect_user', 'remoteConnect User'],
  ];

  function showOneTime(name, secret) {
    $('#one-time-user').textContent = name;
    $('#one-time-password').textContent = secret;
    $('#one-time').hidden = false;
    $('#one-time').scrollIntoView({ block: 'nearest' });
  }

  function stateOf(user) {
    const parts = [];
    if (user.disabled) parts.push('disabled');
    if (user.locked_until_ms && user.locked_until_ms > Ferry.now()) parts.push(`locked until ${time(user.locked_until_ms)}`);
    if (user.must_change_password) parts.push('one-time password');
    return parts.length ? parts.join(', ') : 'active';
  }

  function row(user, problem, refresh) {
    const self = String(user.id) === document.body.dataset.userId;
    const change = (body) => async () => {
      await api('PATCH', `/api/v1/users/${user.id}`, body);
      await refresh();
    };
    const role = el('select', { 'aria-label': `Role of ${user.name}`, disabled: self },
      roles.map(([value, label]) => el('option', { value, selected: value === user.role }, label)));
    role.addEventListener('change', async () => {
      showProblem(problem, null);
      try {
        await change({ role: role.value })();
      } catch (error) {
        showProblem(problem, error);
        role.value = user.role;
      }
    });
    const actions = el('td', { class: 'actions' });
    if (!self) {
      actions.append(user.disabled
        ? actionButton('Enable', change({ disabled: false }), problem, 'quiet')
        : actionButton('Disable', change({ disabled: true }), problem, 'danger'));
      actions.append(actionButton('Reset password', async () => {
        const reset = await api('POST', `/api/v1/users/${user.id}/password`);
        showOneTime(reset.user.name, reset.one_time_password);
        await refresh();
      }, problem, 'quiet'));
    }
    if (user.locked_until_ms && user.locked_until_ms > Ferry.now()) {
      actions.append(actionButton('Unlock', change({ unlock: true }), problem, 'quiet'));
    }
    return el('tr', { dataset: { user: user.name } },
      el('td', {}, el('strong', { text: user.name }), self ? el('span', { class: 'muted', text: ' (you)' }) : null),
      el('td', {}, role),
      el('td', { class: user.disabled ? 'bad' : '', text: stateOf(user) }),
      el('td', { text: user.totp_enabled ? 'on' : 'off' }),
      el('td', { text: time(user.created_ms) }),
      actions);
  }

  Ferry.pages.users = {
    run() {
      const problem = $('#users-problem');
      const body = $('#users tbody');
      const refresh = async () => {
        try {
          const users = await api('GET', '/api/v1/users');
          body.replaceChildren(...users.map((u) => row(u, problem, refresh)));
        } catch (error) {
          showProblem(problem, error);
        }
      };
      onSubmit($('#create-user'), async (data, form) => {
        const created = await api('POST', '/api/v1/users', { name: data.get('name').trim(), role: data.get('role') });
        form.reset();
        showOneTime(created.user.name, created.one_time_password);
        await refresh();
      });
      refresh();
    },
  };
})();

// Your account: the password (also the first-login change of a one-time
// password) and the TOTP second factor with its QR code.
(() => {
  const { api, $, onSubmit, notice } = Ferry;

  function passwordForm(after) {
    onSubmit($('#password-form'), async (data, form) => {
      if (data.get('new') !== data.get('again')) {
        throw new Ferry.Problem(400, { title: 'Passwords differ', detail: 'the new password and its repetition are not the same' });
      }
      await api('POST', '/api/v1/me/password', { current_password: data.get('current'), new_password: data.get('new') });
      form.reset();
      after();
    });
  }

  Ferry.pages.password = {
    run() {
      // The cloud answered with a new session cookie; the next page has its token.
      passwordForm(() => location.assign('/'));
    },
  };

  async function showTotp() {
    const me = await api('GET', '/api/v1/me');
    $('#totp-state').textContent = me.totp_enabled
      ? 'Two-factor login is on: logging in asks for a code from your app.'
      : 'Two-factor login is off.';
    $('#totp-on').hidden = !me.totp_enabled;
    $('#totp-off').hidden = me.totp_enabled;
    $('#totp-enrol').hidden = true;
  }

  Ferry.pages.account = {
    run() {
      passwordForm(() => {
        // A new session replaced this one: reload for its CSRF token.
        location.assign('/account?changed=1');
      });
      if (new URLSearchParams(location.search).get('changed')) notice('Your password was changed.', 'ok');
      $('#totp-start').addEventListener('click', async () => {
        try {
          const enrolment = await api('POST', '/api/v1/me/totp');
          $('#totp-secret').textContent = enrolment.secret;
          $('#totp-qr').src = `/api/v1/me/totp/qr?t=${Date.now()}`;
          $('#totp-off').hidden = true;
          $('#totp-enrol').hidden = false;
          $('input[name=code]', $('#totp-confirm')).focus();
        } catch (error) {
          notice(error.message, 'bad');
        }
      });
      onSubmit($('#totp-confirm'), async (data, form) => {
        await api('POST', '/api/v1/me/totp/confirm', { code: data.get('code').replace(/\s/g, '') });
        form.reset();
        notice('Two-factor login is on.', 'ok');
        await showTotp();
      });
      onSubmit($('#totp-disable'), async (data, form) => {
        await api('POST', '/api/v1/me/totp/disable', { code: data.get('code').replace(/\s/g, '') });
        form.reset();
        notice('Two-factor login is off.', 'ok');
        await showTotp();
      });
      showTotp().catch((error) => notice(error.message, 'bad'));
    },
  };
})();

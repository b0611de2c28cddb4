// The login page: name and password, then the TOTP code if the account
// has one. The same login check as the API's; the answer is a session cookie.
(() => {
  const { api, $, onSubmit } = Ferry;

  Ferry.pages.login = {
    run() {
      const form = $('#login');
      const params = new URLSearchParams(location.search);
      const note = $('#login-note');
      if (params.get('expired')) {
        note.textContent = 'Your session ended. Please log in again.';
        note.hidden = false;
      }
      onSubmit(form, async (data) => {
        const body = { name: data.get('name'), password: data.get('password') };
        const code = (data.get('totp') || '').replace(/\s/g, '');
        if (!$('#totp-field').hidden && code) body.totp = code;
        try {
          const session = await api('POST', '/api/v1/auth/session', body);
          const next = params.get('next') || '/';
          const safe = next.startsWith('/') && !next.startsWith('//') && !next.includes('\\');
          location.assign(session.user.must_change_password ? '/password' : (safe ? next : '/'));
        } catch (error) {
          if (error.type === 'totp-required') {
            $('#totp-field').hidden = false;
            $('input[name=totp]', form).required = true;
            $('input[name=totp]', form).focus();
            error.detail = 'enter the current code from your authenticator app';
          }
          throw error;
        }
      });
    },
  };
})();

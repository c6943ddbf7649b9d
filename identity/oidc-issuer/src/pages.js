// Minimal self-contained HTML (no external fonts or scripts: tests and CI have no internet).
// Element ids are a contract with the browser e2e tests: #username, #password, #login, #error,
// #logout-yes, #logout-no.
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

const layout = (title, body) => `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>
body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;padding:48px 16px}
main{max-width:340px;margin:0 auto;background:#fff;padding:24px 28px;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.2)}
h1{font-size:1.3em;font-weight:500;margin-top:0}
label{display:block;margin-top:12px;font-size:.9em}
input{width:100%;box-sizing:border-box;padding:8px;margin-top:4px;font-size:1em}
button{margin-top:18px;width:100%;padding:10px;font-size:1em;cursor:pointer}
.error{color:#b00020;margin:8px 0}
.muted{color:#666;font-size:.85em}
</style>
</head>
<body><main>${body}</main></body>
</html>`;

export function loginPage({
  action, realmName, clientName, username = '', error,
}) {
  return layout(`Sign in to ${realmName}`, `
<h1>Sign in to ${esc(realmName)}</h1>
<p class="muted">to continue to ${esc(clientName)}</p>
${error ? `<p id="error" class="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="${esc(action)}" autocomplete="off">
  <label for="username">Username or email</label>
  <input id="username" name="username" type="text" value="${esc(username)}" autofocus required>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button id="login" name="login" type="submit">Sign in</button>
</form>`);
}

export function logoutPage({ form, host, autoSubmit }) {
  // With a valid id_token_hint Keycloak logs out without asking; mirror that by submitting the
  // confirmation form immediately.
  const script = autoSubmit
    ? '<script>document.getElementById("logout-yes").click();</script>'
    : '';
  return layout('Sign out', `
<h1>Do you want to sign out of ${esc(host)}?</h1>
${form}
<button id="logout-yes" autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>
${script}`);
}

export function loggedOutPage({ clientName }) {
  return layout('Signed out', `
<h1 id="signed-out">Signed out</h1>
<p>You have signed out${clientName ? ` of ${esc(clientName)}` : ''}.</p>`);
}

export function errorPage(out) {
  return layout('Error', `
<h1>Something went wrong</h1>
${Object.entries(out).map(([k, v]) => `<p><strong>${esc(k)}</strong>: <span id="${esc(k)}">${esc(v)}</span></p>`).join('\n')}`);
}

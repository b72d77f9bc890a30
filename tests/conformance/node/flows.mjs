// Drives Bastion's authorization server with openid-client, a certified relying-party library nobody on the
// team wrote. Reads one JSON job from argv[2], prints one JSON result line per step. A step that throws is
// reported with the library's error code and message, and the run goes on, so the test sees every outcome.
import * as client from 'openid-client';

const job = JSON.parse(process.argv[2]);
const insecure = job.issuer.startsWith('http://') ? { execute: [client.allowInsecureRequests] } : {};

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + '\n');
}

async function step(name, fn) {
  try {
    const value = await fn();
    report(name, { ok: true, ...value });
    return value;
  } catch (err) {
    report(name, { ok: false, error: err.code ?? err.name, message: String(err.message), oauth: err.error ?? null });
    return null;
  }
}

// Calls the protected API with a token, as a resource client would.
async function callApi(name, token) {
  const answer = await fetch(job.api_url, { headers: { authorization: `Bearer ${token}` } });
  report(name, { ok: answer.status === 200, status: answer.status });
}

function tokenFields(tokens) {
  return {
    access_token: tokens.access_token, refresh_token: tokens.refresh_token ?? null,
    token_type: tokens.token_type, expires_in: tokens.expiresIn ? tokens.expiresIn() : null, scope: tokens.scope ?? null,
  };
}

const confidential = await client.discovery(new URL(job.issuer), job.confidential.client_id,
  job.confidential.client_secret, client.ClientSecretBasic(job.confidential.client_secret),
  { ...insecure, algorithm: 'oauth2' });
report('discovery', {
  ok: true, issuer: confidential.serverMetadata().issuer,
  token_endpoint: confidential.serverMetadata().token_endpoint,
});

const cc = await step('client_credentials', async () =>
  tokenFields(await client.clientCredentialsGrant(confidential, { scope: job.confidential.scope })));

if (cc) {
  await callApi('api_client_credentials', cc.access_token);
  await step('introspect_active', async () => ({ ...(await client.tokenIntrospection(confidential, cc.access_token)) }));
  await step('revoke_access', async () => { await client.tokenRevocation(confidential, cc.access_token); return {}; });
  await step('introspect_revoked', async () => ({ ...(await client.tokenIntrospection(confidential, cc.access_token)) }));
}

// Authorization code + PKCE (S256) for a public client, playing the user agent with the test sign-in headers.
const pub = await client.discovery(new URL(job.issuer), job.public.client_id, undefined, client.None(),
  { ...insecure, algorithm: 'oauth2' });
const verifier = client.randomPKCECodeVerifier();
const challenge = await client.calculatePKCECodeChallenge(verifier);
const state = client.randomState();
const authUrl = client.buildAuthorizationUrl(pub, {
  redirect_uri: job.public.redirect_uri, scope: job.public.scope, code_challenge: challenge,
  code_challenge_method: 'S256', state,
});
const answer = await fetch(authUrl, { redirect: 'manual', headers: job.user_headers });
const location = answer.headers.get('location');
report('authorize', { ok: answer.status === 302 || answer.status === 303, status: answer.status, location });

let codeTokens = null;
if (location) {
  codeTokens = await step('authorization_code', async () =>
    tokenFields(await client.authorizationCodeGrant(pub, new URL(location), { pkceCodeVerifier: verifier, expectedState: state })));
  if (codeTokens) await callApi('api_authorization_code', codeTokens.access_token);
  await step('code_replay', async () =>
    tokenFields(await client.authorizationCodeGrant(pub, new URL(location), { pkceCodeVerifier: verifier, expectedState: state })));
}

// A fresh code flow, then refresh rotation and reuse detection.
const verifier2 = client.randomPKCECodeVerifier();
const state2 = client.randomState();
const authUrl2 = client.buildAuthorizationUrl(pub, {
  redirect_uri: job.public.redirect_uri, scope: job.public.scope,
  code_challenge: await client.calculatePKCECodeChallenge(verifier2), code_challenge_method: 'S256', state: state2,
});
const answer2 = await fetch(authUrl2, { redirect: 'manual', headers: job.user_headers });
const location2 = answer2.headers.get('location');
const fresh = location2 ? await step('authorization_code_2', async () =>
  tokenFields(await client.authorizationCodeGrant(pub, new URL(location2), { pkceCodeVerifier: verifier2, expectedState: state2 })))
  : null;
if (fresh && fresh.refresh_token) {
  const rotated = await step('refresh', async () => tokenFields(await client.refreshTokenGrant(pub, fresh.refresh_token)));
  if (rotated) await callApi('api_refreshed', rotated.access_token);
  await step('refresh_reuse', async () => tokenFields(await client.refreshTokenGrant(pub, fresh.refresh_token)));
  if (rotated) {
    await step('refresh_after_reuse', async () => tokenFields(await client.refreshTokenGrant(pub, rotated.refresh_token)));
  }
}

// A wrong PKCE verifier must fail.
const verifier3 = client.randomPKCECodeVerifier();
const state3 = client.randomState();
const authUrl3 = client.buildAuthorizationUrl(pub, {
  redirect_uri: job.public.redirect_uri, scope: job.public.scope,
  code_challenge: await client.calculatePKCECodeChallenge(verifier3), code_challenge_method: 'S256', state: state3,
});
const answer3 = await fetch(authUrl3, { redirect: 'manual', headers: job.user_headers });
const location3 = answer3.headers.get('location');
if (location3) {
  await step('wrong_verifier', async () =>
    tokenFields(await client.authorizationCodeGrant(pub, new URL(location3), { pkceCodeVerifier: client.randomPKCECodeVerifier(), expectedState: state3 })));
}

// A real OpenID Connect provider for Shanzhi's tests: panva's oidc-provider (an OpenID
// Certified implementation), configured from a JSON file the test writes:
//   {"port": N, "clients": [...], "jwks": {"keys": [...private JWKs...]}, "accounts": "path.json"}
// Accounts are read again at every login, so a test can rename a user at the provider.
// Logging in uses the library's development interactions: a plain form (any login name is an
// account id) and a consent form. Prints "ready <issuer>" once listening.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;

function account(id) {
  let known = {};
  try { known = JSON.parse(readFileSync(config.accounts, 'utf8')); } catch { /* none yet */ }
  const claims = { preferred_username: id, ...(known[id] || {}) };
  return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
}

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: config.jwks,
  findAccount: async (ctx, id) => account(id),
  claims: { openid: ['sub'], profile: ['preferred_username', 'name', 'groups'], email: ['email'] },
  cookies: { keys: ['shanzhi-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});
provider.listen(config.port, '127.0.0.1', () => console.log(`ready ${issuer}`));

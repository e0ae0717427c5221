// Stand-in for @azure/identity in the client recipe tests: mints from pgward's development
// issuer (recipes/bin/mint) instead of Entra.
'use strict';
const { execFile } = require('node:child_process');
const path = require('node:path');

const MINT = path.join(__dirname, '..', '..', '..', 'bin', 'mint');

class DefaultAzureCredential {
  async getToken(scope) {
    if (typeof scope !== 'string') throw new Error(`expected one scope, got ${scope}`);
    const token = await new Promise((resolve, reject) =>
      execFile(MINT, [scope, 'node'], (err, stdout, stderr) =>
        err ? reject(new Error(`mint: ${stderr}`)) : resolve(stdout.trim())));
    return { token, expiresOnTimestamp: Date.now() + 3000 * 1000 };
  }
}

module.exports = { DefaultAzureCredential, ManagedIdentityCredential: DefaultAzureCredential };

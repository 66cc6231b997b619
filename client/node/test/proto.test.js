'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

// The package ships its own copy of the API; it must never drift from the repository's.
test('the bundled proto is byte-identical to the repository proto', () => {
  const bundled = fs.readFileSync(path.join(__dirname, '../proto/tokenvend/v1/tokenvend.proto'));
  const canonical = fs.readFileSync(path.join(__dirname, '../../../proto/tokenvend/v1/tokenvend.proto'));
  assert.ok(bundled.equals(canonical), 'client/node/proto differs from proto/: copy it again');
});

test('the bundled proto loads, well-known imports included', () => {
  const { loadProto } = require('../src');
  const v1 = loadProto();
  assert.equal(typeof v1.TokenService, 'function');
  assert.deepEqual(Object.keys(v1.TokenService.service).sort(), [
    'CreateConnectLink', 'GetToken', 'ListConnections', 'ListProfiles', 'PutConnection',
    'RevokeConnection', 'WatchToken',
  ]);
});

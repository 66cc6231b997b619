'use strict';

// What the published package promises beyond its code: metadata, and declarations that
// type-check where axios is not installed (install-test.sh proves that with tsc).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));

test('index.d.ts does not refer to axios types', () => {
  const dts = fs.readFileSync(path.join(root, 'index.d.ts'), 'utf8');
  assert.doesNotMatch(dts, /from\s+['"]axios['"]|import\(\s*['"]axios['"]\s*\)|reference\s+types=["']axios["']/);
});

test('axios is an optional peer, never a dependency', () => {
  assert.equal(pkg.dependencies.axios, undefined);
  assert.ok(pkg.peerDependencies.axios);
  assert.equal(pkg.peerDependenciesMeta.axios.optional, true);
});

test('package.json has what a registry page and npm audit need', () => {
  assert.equal(pkg.name, '@tokenvend/client');
  assert.equal(pkg.license, 'Apache-2.0');
  assert.match(pkg.repository.url, /github\.com\/tokenvend\/tokenvend/);
  assert.equal(pkg.repository.directory, 'client/node');
  assert.ok(pkg.homepage && pkg.bugs.url && pkg.description);
  for (const k of ['oauth2', 'token', 'grpc', 'tokenvend']) assert.ok(pkg.keywords.includes(k), k);
  for (const f of ['src/', 'proto/', 'index.d.ts', 'README.md', 'LICENSE']) assert.ok(pkg.files.includes(f), f);
  assert.equal(pkg.exports['.'].types, './index.d.ts');
  assert.ok(pkg.engines.node);
});

// A person at a real browser, for tokenvend's end-to-end tests (tests/e2e/browser.rs):
// Debian's Chromium, headless, driven by playwright-core. See README.md for the protocol.
//
// stdin: one JSON command a line; stdout: one JSON answer a line, in order, after a first
// `{"ready":...}` line. Everything else goes to stderr. Chromium is started once and
// closed when stdin closes (the test ended, however it ended) or on SIGTERM/SIGINT.
//
// Environment:
//   TOKENVEND_CHROMIUM     the browser (default /usr/bin/chromium).
//   TOKENVEND_SCREENSHOTS  a directory; `screenshot` commands write PNGs there, and do
//                          nothing when it is unset.

import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

console.log = console.info = console.debug = (...args) => console.error(...args);

function log(...args) {
  process.stderr.write(`[browser] ${args.join(' ')}\n`);
}

// Long enough for a debug build on a busy 2-core machine, short enough that a page that
// never comes fails the test rather than hanging it.
const TIMEOUT_MS = 20_000;

const browser = await chromium.launch({
  executablePath: process.env.TOKENVEND_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Tests run as root in CI, where Chromium's sandbox cannot start.
  args: ['--no-sandbox'],
});
// One window for the whole test, so cookies (a provider's login session, tokenvend's
// admin session) carry from one command to the next, as in a person's browser. Scripts
// are off: the admin page and every flow must work without JavaScript.
const context = await browser.newContext({
  viewport: { width: 1200, height: 800 },
  javaScriptEnabled: false,
});
context.setDefaultTimeout(TIMEOUT_MS);
const page = await context.newPage();

// The URLs the main frame asked for since the last answer, each redirect included (a
// redirect is a new request; `framenavigated` sees only where the chain ended).
let history = [];
page.on('request', (request) => {
  if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
    history.push(request.url());
  }
});
page.on('console', (message) => log(`console.${message.type()}: ${message.text()}`));

// What the test looks at after each step: where the page is, its HTML, and the hooks of
// the admin page contract (docs/admin.md), read from the DOM.
async function snapshot(status) {
  const hooks = await page.evaluate(() => {
    const text = (element) => element?.textContent.trim().replace(/\s+/g, ' ') ?? null;
    const states = (attribute) => Object.fromEntries(
      [...document.querySelectorAll(`tr[${attribute}]`)].map((row) => [
        row.getAttribute(attribute),
        text(row.querySelector('td.state')),
      ]),
    );
    return {
      profiles: states('data-profile'),
      subjects: states('data-subject'),
      notice: text(document.querySelector('#notice')),
      connected: text(document.querySelector('#connected')),
      forms: [...document.querySelectorAll('form')].map((form) => form.getAttribute('action')),
      text: document.body ? document.body.innerText : '',
    };
  });
  const answer = {
    url: page.url(),
    status: status ?? null,
    title: await page.title(),
    history,
    html: await page.content(),
    ...hooks,
  };
  history = [];
  return answer;
}

// Resolves once the main frame is at a URL starting with `prefix` and has loaded.
async function arrive(prefix) {
  if (prefix) {
    await page.waitForURL((url) => url.href.startsWith(prefix), { waitUntil: 'load' });
  } else {
    await page.waitForLoadState('load');
  }
}

// Clicks and waits for the page it leads to. The response status is that of the last
// document the click led to, which `goto` reports and a click does not.
async function clickThrough(selector, until) {
  let status = null;
  const onResponse = (response) => {
    if (response.frame() === page.mainFrame() && response.request().isNavigationRequest()) {
      status = response.status();
    }
  };
  page.on('response', onResponse);
  try {
    await page.locator(selector).click();
    await arrive(until);
  } finally {
    page.off('response', onResponse);
  }
  return snapshot(status);
}

const commands = {
  // Opens a URL as a person typing it in: {url, until?}.
  async open({ url, until }) {
    const response = await page.goto(url, { waitUntil: 'load' });
    await arrive(until);
    return snapshot(response?.status());
  },
  // Fills the provider's login form and submits it: {username, password, until?}.
  async sign_in({ username, password, until }) {
    await page.locator('#username').fill(username);
    await page.locator('#password').fill(password);
    return clickThrough('#sign-in', until);
  },
  // Types into a field: {selector, value}.
  async fill({ selector, value }) {
    await page.locator(selector).fill(value);
    return {};
  },
  // Clicks what `selector` names (a button, a link): {selector, until?}.
  async click({ selector, until }) {
    return clickThrough(selector, until);
  },
  // A form post from this browser's cookies, not a page: {url, form}. Redirects are not
  // followed, so the answer says where the server would send the browser.
  async post({ url, form }) {
    const response = await context.request.post(url, { form, maxRedirects: 0 });
    return {
      url,
      status: response.status(),
      location: response.headers().location ?? null,
      html: await response.text(),
    };
  },
  // The page as it is now.
  async look() {
    return snapshot();
  },
  // A PNG of the whole page in TOKENVEND_SCREENSHOTS: {name}.
  async screenshot({ name }) {
    const dir = process.env.TOKENVEND_SCREENSHOTS;
    if (!dir) return { saved: null };
    mkdirSync(dir, { recursive: true });
    const path = join(dir, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    return { saved: path };
  },
  // Forgets every cookie: a new visitor.
  async forget() {
    await context.clearCookies();
    return {};
  },
};

let closing;
function shutdown(reason) {
  closing ??= (async () => {
    log(`closing (${reason})`);
    await browser.close().catch((err) => log('close failed:', err?.message ?? err));
    process.exit(0);
  })();
  return closing;
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

process.stdout.write(`${JSON.stringify({ ready: true, version: browser.version() })}\n`);

// Commands run one at a time, in order; a failed one answers with the error and the page
// as it was, so the test can say where the flow went wrong.
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const command = JSON.parse(line);
    const run = commands[command.do];
    if (!run) throw new Error(`unknown command ${JSON.stringify(command.do)}`);
    answer = { ok: true, ...(await run(command)) };
  } catch (err) {
    log('command failed:', err?.stack ?? err);
    answer = { ok: false, error: String(err?.message ?? err) };
    try {
      Object.assign(answer, await snapshot());
    } catch (snapshotErr) {
      answer.snapshot_error = String(snapshotErr?.message ?? snapshotErr);
    }
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await shutdown('stdin closed');

// Drives the system Chromium for tests/browser.rs: one browser session per run.
//
// Input (JSON on stdin):
//   { "home":      HOME of the browser (its NSS db, $HOME/.pki/nssdb, holds the trusted CA
//                  and the device certificates),
//     "profile":   user data dir (cookies persist across runs that share it),
//     "args":      extra Chromium flags (e.g. --host-resolver-rules=...),
//     "timeout_ms": per step,
//     "steps":     [ { "op": ..., ... }, ... ] }
// Output (JSON on stdout, exit 0 whenever it could be written):
//   { "ok": true, "results": [one per step] }
//   { "ok": false, "step": index, "error": "...", "results": [those before it],
//     "console": [page console lines] }
//
// Steps (the result of each is described beside it):
//   goto      {url}                 → {status, url, headers, body}  (any status, no throw)
//   text      {selector}            → the element's innerText
//   click     {selector}            → null
//   fill      {selector, value}     → null
//   wait_for  {selector}            → null
//   download  {selector, save_as}   → {path, suggested_filename}: clicks, saves the file
//   eval      {js}                  → the value of the expression (promises awaited)
//   fetch     {url, method?, body?, headers?} → {status, headers, body}  (from the page)
//   websocket {url, send}           → {opened, echo, error, close_code}: opens, sends one
//                                     message, waits for the first message back
//   cookies   {urls?}               → the context's cookies
//   add_cookies {cookies}           → null: Playwright cookie objects (name, value, url | domain+path, ...)
//   screenshot {path}               → null
import { chromium } from 'playwright-core';

const input = JSON.parse(await readStdin());
const timeout = input.timeout_ms ?? 15000;
const results = [];
const consoleLines = [];

let context;
let out;
let index = -1;
try {
  context = await chromium.launchPersistentContext(input.profile, {
    executablePath: input.executable ?? '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    acceptDownloads: true,
    args: ['--disable-features=LocalNetworkAccessChecks', ...(input.args ?? [])],
    env: { ...process.env, HOME: input.home },
    timeout,
  });
  context.setDefaultTimeout(timeout);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  for (const [i, step] of (input.steps ?? []).entries()) {
    index = i;
    results.push(await run(page, step));
  }
  out = { ok: true, results };
} catch (e) {
  out = { ok: false, step: index, error: String(e?.stack ?? e), results, console: consoleLines };
} finally {
  if (context) await context.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + '\n');

async function run(page, step) {
  switch (step.op) {
    case 'goto': {
      const response = await page.goto(step.url);
      if (!response) throw new Error(`no response for ${step.url}`);
      return {
        status: response.status(),
        url: response.url(),
        headers: await response.allHeaders(),
        body: await response.text(),
      };
    }
    case 'text':
      return await page.locator(step.selector).innerText();
    case 'click':
      await page.locator(step.selector).click();
      return null;
    case 'fill':
      await page.locator(step.selector).fill(step.value);
      return null;
    case 'wait_for':
      await page.locator(step.selector).waitFor();
      return null;
    case 'download': {
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        page.locator(step.selector).click(),
      ]);
      const failure = await download.failure();
      if (failure) throw new Error(`download failed: ${failure}`);
      await download.saveAs(step.save_as);
      return { path: step.save_as, suggested_filename: download.suggestedFilename() };
    }
    case 'eval':
      return await page.evaluate(step.js);
    case 'fetch':
      return await page.evaluate(async ({ url, method, body, headers }) => {
        const r = await fetch(url, { method: method ?? 'GET', body, headers, credentials: 'include' });
        return { status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() };
      }, step);
    case 'websocket':
      return await page.evaluate(
        ({ url, send, timeout }) =>
          new Promise((resolve) => {
            const result = { opened: false, echo: null, error: null, close_code: null };
            const done = () => {
              clearTimeout(timer);
              try { ws.close(); } catch {}
              resolve(result);
            };
            const timer = setTimeout(() => { result.error = 'timed out'; done(); }, timeout);
            const ws = new WebSocket(url);
            ws.onopen = () => { result.opened = true; ws.send(send); };
            ws.onmessage = (m) => { result.echo = String(m.data); done(); };
            ws.onerror = () => { result.error = result.error ?? 'error event'; };
            ws.onclose = (c) => { result.close_code = c.code; done(); };
          }),
        { url: step.url, send: step.send ?? 'ping', timeout: Math.max(1000, timeout - 1000) },
      );
    case 'cookies':
      return await page.context().cookies(step.urls);
    case 'add_cookies':
      await page.context().addCookies(step.cookies);
      return null;
    case 'screenshot':
      await page.screenshot({ path: step.path, fullPage: true });
      return null;
    default:
      throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

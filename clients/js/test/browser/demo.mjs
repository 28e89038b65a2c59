// Drives the demo page (clients/demo/index.html) in Debian's Chromium for a test that talks to it in JSON lines.
//
//   node clients/js/test/browser/demo.mjs http://127.0.0.1:8080/demo/
//
// Prints {"kind":"ready","session":"<id>"} once the page shows its session and the state `open`, then reads one
// command per line on stdin:
//   {"cmd":"wait","events":N,"timeoutMs":T}  -> {"kind":"seen"|"timeout","seqs":[...],"gaps":[...],"node":..,"state":..}
//   {"cmd":"screenshot","path":"..."}        -> {"kind":"saved","path":"..."}   (full page, PNG)
//   {"cmd":"reload"}                         -> {"kind":"reloaded", ...as "seen"} once the page is open again
// and closes the browser and exits 0 at the end of stdin. Console errors of the page, page errors and failed
// requests are printed as {"kind":"console","text":...}; a failure of the driver itself as {"kind":"error",...}
// with exit 1.
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

const CHROMIUM = process.env.CES_CHROMIUM ?? "/usr/bin/chromium";
const READY_WITHIN_MS = 30_000;

const emit = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

const url = process.argv[2];
if (!url) {
  emit({ kind: "error", text: "usage: demo.mjs <page url>" });
  process.exit(2);
}

let browser;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--no-first-run",
    ],
  });
  // Wide enough for the page's two-column layout; the screenshot is the full page's height.
  const page = await browser.newPage({ viewport: { width: 1120, height: 760 } });
  page.on("console", (m) => {
    if (m.type() === "error") emit({ kind: "console", text: m.text() });
  });
  page.on("pageerror", (e) => emit({ kind: "console", text: `page error: ${e.message}` }));
  page.on("requestfailed", (r) => {
    // A socket to an edge that was just killed fails by design; anything else is worth seeing.
    emit({ kind: "console", text: `request failed: ${r.url()} ${r.failure()?.errorText ?? ""}` });
  });

  await page.goto(url);
  const session = await page.waitForFunction(
    () => {
      const state = document.querySelector('[data-testid="state"]')?.textContent.trim();
      const id = document.querySelector('[data-testid="session"]')?.textContent.trim();
      return state === "open" && /^[A-Za-z0-9_.:-]+$/.test(id ?? "") ? id : null;
    },
    null,
    { timeout: READY_WITHIN_MS },
  );
  emit({ kind: "ready", session: await session.jsonValue() });

  // What the page shows: event seqs and gaps in the page's order, the node and the state.
  const seen = () =>
    page.evaluate(() => ({
      seqs: [...document.querySelectorAll('[data-testid="event"]')].map((e) => Number(e.dataset.seq)),
      gaps: [...document.querySelectorAll('[data-testid="gap"]')].map((g) => ({
        from: Number(g.dataset.from),
        to: g.dataset.to === "" ? null : Number(g.dataset.to),
      })),
      node: document.querySelector('[data-testid="node"]')?.textContent.trim() ?? null,
      state: document.querySelector('[data-testid="state"]')?.textContent.trim() ?? null,
    }));

  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === "wait") {
      const timeout = command.timeoutMs ?? 30_000;
      let kind = "seen";
      try {
        await page.waitForFunction(
          (n) => document.querySelectorAll('[data-testid="event"]').length >= n,
          command.events,
          { timeout },
        );
      } catch (e) {
        if (e.name !== "TimeoutError") throw e;
        kind = "timeout";
      }
      emit({ kind, ...(await seen()) });
    } else if (command.cmd === "reload") {
      await page.reload();
      await page.waitForFunction(
        () => document.querySelector('[data-testid="state"]')?.textContent.trim() === "open",
        null,
        { timeout: 30_000 },
      );
      emit({ kind: "reloaded", ...(await seen()) });
    } else if (command.cmd === "screenshot") {
      await page.screenshot({ path: command.path, fullPage: true });
      emit({ kind: "saved", path: command.path });
    } else {
      emit({ kind: "error", text: `unknown command: ${line}` });
    }
  }
  await browser.close();
  process.exit(0);
} catch (e) {
  emit({ kind: "error", text: String(e?.stack ?? e) });
  await browser?.close().catch(() => {});
  process.exit(1);
}

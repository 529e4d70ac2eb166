// End-to-end test of the Vellum web console in headless Chromium, driven by
// tests/console_browser.rs, which starts a seeded server and passes:
//   VELLUM_BASE_URL, VELLUM_ADMIN_KEY, VELLUM_ORG_KEY (a reader bound to org-a),
//   VELLUM_EVENT_XSS (an event whose outcomeDescription is <script>alert(1)</script>),
//   VELLUM_ALERT_ID (an open break-glass alert of org-a, by dr-ana; another, of org-b by
//   dr-ben, stays open),
//   VELLUM_SCREENSHOT_DIR (with VELLUM_CONSOLE_SCREENSHOTS=1: where the PNGs go).
// Exits 0 when every flow passed; otherwise prints the failure and exits 1.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("VELLUM_BASE_URL");
const adminKey = env("VELLUM_ADMIN_KEY");
const orgKey = env("VELLUM_ORG_KEY");
const xssEvent = env("VELLUM_EVENT_XSS");
const alertId = env("VELLUM_ALERT_ID");
const shots = process.env.VELLUM_CONSOLE_SCREENSHOTS === "1";
const shotDir = process.env.VELLUM_SCREENSHOT_DIR || "screenshots";
if (shots) mkdirSync(shotDir, { recursive: true });

const check = (cond, what) => {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
};

const browser = await chromium.launch({
  executablePath: process.env.VELLUM_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

// Dialogs (an alert() would mean injected script ran) and console errors (a CSP violation is
// reported there) are collected on every page.
const dialogs = [];
const consoleErrors = [];
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 }, acceptDownloads: true });
  const page = await context.newPage();
  lastPage = page;
  page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  return page;
}
async function shot(page, name) {
  if (shots) await page.screenshot({ path: join(shotDir, `${name}.png`), fullPage: false });
}
async function signIn(page, key) {
  await page.goto(`${base}/`);
  check(page.url().endsWith("/console/signin"), "the console starts at the sign-in page");
  await page.getByLabel("API key").fill(key);
  await Promise.all([page.waitForURL("**/console/dashboard"), page.getByRole("button", { name: "Sign in" }).click()]);
}

let failed = false;
let lastPage = null;
try {
  const page = await newPage();
  await page.goto(`${base}/console/signin`);
  await shot(page, "signin");
  await signIn(page, adminKey);
  check(await page.getByRole("heading", { name: "Dashboard" }).isVisible(), "signed in: the dashboard shows");

  // Verification from the dashboard, with progress, until it reports.
  await page.getByRole("button", { name: "Run verification now" }).click();
  await page.locator("#last-verify", { hasText: "Passed" }).waitFor({ timeout: 60_000 });
  check(true, "a verification run from the dashboard passed");
  await page.goto(`${base}/console/dashboard`);
  await shot(page, "dashboard");

  // Search with filters.
  await page.goto(`${base}/console/search`);
  await page.getByLabel("Time range").selectOption("all");
  await page.getByLabel("Action", { exact: true }).fill("patient.*");
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL(/action=patient/);
  const rows = page.locator("table.data tbody tr");
  check((await rows.count()) >= 1, "the search finds the patient event");
  check((await rows.first().innerText()).includes("patient.record.read"), "the row shows its action");
  await page.getByLabel("Time range").selectOption("all");
  await page.getByLabel("Action", { exact: true }).fill("");
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForLoadState();
  await shot(page, "search");

  // Open an event: the server verified it.
  await page.getByLabel("Action", { exact: true }).fill("patient.*");
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL(/action=patient/);
  await Promise.all([page.waitForURL(/\/console\/events\//), rows.first().getByRole("link").click()]);
  const badge = await page.locator("#verify-badge").innerText();
  check(badge.includes("Verified"), `the event shows a verified badge (${badge.trim()})`);
  await shot(page, "event");

  // The event with a script in its text: shown as text, never run.
  await page.goto(`${base}/console/events/${xssEvent}`);
  const cell = page.locator("td.value", { hasText: "<script>alert(1)</script>" });
  check(await cell.isVisible(), "the <script> text is visible as text");
  await page.waitForTimeout(500);
  check(dialogs.length === 0, `no dialog fired (${dialogs.join(", ")})`);

  // A report download.
  await page.goto(`${base}/console/reports`);
  await page.getByLabel("Regulation").selectOption("HIPAA");
  await page.getByLabel("From (UTC date, inclusive)").fill("2020-01-01");
  await shot(page, "reports");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Generate and download" }).click(),
  ]);
  const file = await download.path();
  const head = readFileSync(file).subarray(0, 5).toString("latin1");
  check(head === "%PDF-", `the report download is a PDF (${download.suggestedFilename()})`);

  // Admin pages render.
  await page.goto(`${base}/console/keys`);
  check(await page.getByRole("heading", { name: "API keys" }).isVisible(), "the keys page shows");
  await shot(page, "keys");
  await page.goto(`${base}/console/retention`);
  check(await page.getByRole("heading", { name: "Legal holds", exact: true }).isVisible(), "the retention page shows");
  await shot(page, "retention");
  // Alerts: the dashboard tile leads to the open ones; one is acknowledged with a note.
  await page.goto(`${base}/console/dashboard`);
  const tile = page.locator("#open-alerts");
  check(Number((await tile.locator(".num").innerText()).replace("+", "")) >= 2, "the dashboard counts the open alerts");
  await Promise.all([page.waitForURL(/\/console\/alerts\?status=open/), tile.getByRole("link").click()]);
  check(await page.getByRole("heading", { name: "Security alerts" }).isVisible(), "the alerts page shows");
  const row = page.locator(`#alert-${alertId}`);
  check((await row.innerText()).includes("dr-ana"), "the alert names its principal");
  await row.getByText("Acknowledge…").click();
  await row.getByLabel("Note (optional)").fill("Called the ward: an unconscious patient, access justified.");
  await Promise.all([
    page.waitForURL(/done=acknowledged/),
    row.getByRole("button", { name: "Acknowledge", exact: true }).click(),
  ]);
  check((await page.locator("#alerts-notice").innerText()).includes("acknowledged"), "the page says the alert was acknowledged");
  check((await page.locator(`#alert-${alertId}`).count()) === 0, "it left the open alerts");
  await page.getByLabel("Status").selectOption("all");
  await page.getByRole("button", { name: "Show alerts" }).click();
  await page.waitForURL(/status=all/);
  const acked = await page.locator(`#alert-${alertId}`).innerText();
  check(acked.includes("acknowledged") && acked.includes("Called the ward"), "an alert was acknowledged from the alerts page");
  await shot(page, "alerts");

  // An organization-bound key sees its organization only.
  const orgPage = await newPage();
  await signIn(orgPage, orgKey);
  await orgPage.goto(`${base}/console/search?range=all`);
  const text = await orgPage.locator("main").innerText();
  check(text.includes("patient.record.read"), "the org-bound key sees org-a's event");
  check(!text.includes("billing.invoice.read"), "the org-bound key does not see org-b's event");
  check(!(await orgPage.getByRole("navigation", { name: "Main" }).innerText()).includes("API keys"), "a reader has no admin pages");
  await orgPage.goto(`${base}/console/alerts`);
  const orgAlerts = await orgPage.locator("main").innerText();
  check(orgAlerts.includes("dr-ana"), "the org-bound key sees org-a's alert");
  check(!orgAlerts.includes("dr-ben"), "the org-bound key does not see org-b's alert");
  check((await orgPage.getByText("Acknowledge…").count()) === 0, "a reader is offered no acknowledgement");

  const cspErrors = consoleErrors.filter((e) => /Content Security Policy|Refused to/i.test(e));
  check(cspErrors.length === 0, `no CSP violation on any page (${cspErrors.join(" | ")})`);
  check(dialogs.length === 0, "no dialog fired on any page");
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
  if (consoleErrors.length) console.error(`browser console errors: ${consoleErrors.slice(0, 5).join(" | ")}`);
  if (lastPage) console.error(`last page ${lastPage.url()}: ${(await lastPage.locator("body").innerText().catch(() => "")).slice(0, 2000)}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

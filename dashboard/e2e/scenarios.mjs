// Browser scenarios of gn2pg-dashboard, run by dashboard/tests/browser.rs:
//   node scenarios.mjs <scenario>
// with DASH_URL, READER, OPERATOR, ADMIN (role names; passwords <kind>-pw), FIXTURE_URL,
// SCREENSHOTS and CHROMIUM in the environment. Each run starts a fresh headless Chromium
// (Debian's, no download) with its own profile, and prints "scenario <name>: ok" on success.
import { chromium } from "playwright-core";
import { join } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL_ = env("DASH_URL");
const SHOTS = env("SCREENSHOTS");
const STEP_TIMEOUT = 15000;

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page, login, password, kind) {
  await page.goto(`${URL_}/sign-in`);
  if (kind) await page.check(`input[name=kind][value=${kind}]`);
  await page.fill("#login", login);
  await page.fill("#password", password);
  await Promise.all([page.waitForLoadState("load"), page.click("#sign-in")]);
}

async function expectSignedIn(page, who) {
  await page.waitForSelector("#who", { timeout: STEP_TIMEOUT });
  const text = await page.textContent("#who");
  check(text.includes(who), `signed in as ${who}, header says ${text}`);
}

const scenarios = {
  // A reader sees every flow, no Harvest button, and the server refuses a forged POST.
  async reader(page, context) {
    await signIn(page, env("READER"), "reader-pw");
    await expectSignedIn(page, env("READER"));
    check(page.url().endsWith("/flows"), `lands on the flows, not ${page.url()}`);
    const rows = await page.$$eval("#flows-table tbody tr[data-source]", (trs) => trs.map((t) => t.dataset.source));
    check(rows.includes("pne") && rows.includes("down"), `both sources listed: ${rows}`);
    check((await page.textContent("#flows-table")).includes("Parc national des Écrins"), "organism shown");
    check((await page.textContent("#flows-table")).includes("1234"), "national organism id shown");
    check((await page.$("#nav-admin")) === null, "no admin link for a reader");
    await shot(page, "reader-flows");
    // Filters.
    await page.selectOption("select[name=health]", "never_run");
    await Promise.all([page.waitForLoadState("load"), page.click("#flows-filter button")]);
    check((await page.$$("#flows-table tbody tr[data-source]")).length === 2, "both never ran");
    await page.goto(`${URL_}/flows?q=Association`);
    const filtered = await page.$$eval("#flows-table tbody tr[data-source]", (trs) => trs.map((t) => t.dataset.source));
    check(filtered.length === 1 && filtered[0] === "down", `organism filter: ${filtered}`);

    await page.goto(`${URL_}/sources/pne`);
    check((await page.$("#harvest-form")) === null, "no Harvest now form");
    check(!(await page.textContent("body")).includes("Harvest now"), "no Harvest now text");
    check((await page.$("#schedule-form")) === null, "no schedule form");
    // Forged requests: with this session's own CSRF token, and without one.
    const csrf = await page.getAttribute("form.who input[name=csrf]", "value");
    const forged = await context.request.post(`${URL_}/sources/pne/harvest`, {
      form: { csrf, mode: "full" },
      maxRedirects: 0,
    });
    check(forged.status() === 403, `forged harvest POST answered ${forged.status()}`);
    check((await forged.text()).includes("gn2pg_operator"), "the refusal says which role is needed");
    const noToken = await context.request.post(`${URL_}/sources/pne/harvest`, { form: { mode: "full" }, maxRedirects: 0 });
    check(noToken.status() === 403, `POST without CSRF token answered ${noToken.status()}`);
    const admin = await context.request.post(`${URL_}/admin/sources`, {
      form: { csrf, name: "evil", url: "http://127.0.0.1:9/x", export_id: "1", auth: "public" },
      maxRedirects: 0,
    });
    check(admin.status() === 403, `forged admin POST answered ${admin.status()}`);
    const adminPage = await page.goto(`${URL_}/admin/sources`);
    check(adminPage.status() === 403, "the admin page is refused to a reader");
  },

  // An operator clicks Harvest now and watches the run progress to success without reloading.
  async operator(page) {
    await signIn(page, env("OPERATOR"), "operator-pw");
    await expectSignedIn(page, env("OPERATOR"));
    await page.goto(`${URL_}/sources/pne`);
    check((await page.$("#schedule-form")) === null, "operators do not edit schedules");
    await Promise.all([page.waitForLoadState("load"), page.click("#harvest-full")]);
    check((await page.textContent("#flash")).includes("started"), "the page says the run started");
    // Watch the live panel: running with rows growing, then success; bounded.
    const seen = [];
    let sawRunningRows = false;
    let shotTaken = false;
    const deadline = Date.now() + 90000;
    while (Date.now() < deadline) {
      const status = (await page.textContent("#run-status")).trim();
      const rows = (await page.textContent("#run-rows")).trim();
      if (seen[seen.length - 1] !== status) seen.push(status);
      if (status === "running" && rows !== "0" && rows !== "") {
        sawRunningRows = true;
        if (!shotTaken) {
          check(!(await page.$eval("#run-progress", (p) => p.hidden)), "the progress bar shows while running");
          check(!(await page.$eval("#cancel-form", (f) => f.hidden)), "Cancel shows while running");
          await shot(page, "operator-source-running");
          shotTaken = true;
        }
      }
      if (status === "success") break;
      check(!["failed", "cancelled", "abandoned"].includes(status), `the run ended ${status}`);
      await page.waitForTimeout(250);
    }
    check(seen.includes("running") && sawRunningRows, `saw the run in progress: ${seen}`);
    check(seen[seen.length - 1] === "success", `reached success: ${seen}`);
    // The page reloads once to show the run in the history and the chart.
    await page.waitForEvent("load", { timeout: STEP_TIMEOUT });
    await page.waitForSelector("#runs-table tbody tr", { timeout: STEP_TIMEOUT });
    await page.waitForFunction(() => document.querySelector("#charts svg rect") !== null, null, { timeout: STEP_TIMEOUT });
    check((await page.textContent("#runs-table")).includes("success"), "the history lists the run");
    check((await page.textContent("#local-rows")).replace(/\D/g, "") === "6000", "6000 local rows");
    check((await page.$$("#metadata tbody tr")).length === 13, "3 CA and 10 JDD received are listed");
    await shot(page, "operator-source-done");
    await page.goto(`${URL_}/flows`);
    check((await page.textContent("tr[data-source=pne]")).includes("success"), "the flows show the run");
    await shot(page, "operator-flows");
  },

  // A failing source shows its alert; an operator acknowledges it.
  async failing(page) {
    await signIn(page, env("OPERATOR"), "operator-pw");
    await page.goto(`${URL_}/flows?health=failing`);
    const rows = await page.$$eval("#flows-table tbody tr[data-source]", (trs) => trs.map((t) => t.dataset.source));
    check(rows.length === 1 && rows[0] === "down", `only the failing source: ${rows}`);
    check((await page.textContent("#flows-table")).includes("1 open"), "its open alert is counted");
    await shot(page, "failing-flows");
    await page.click("#flows-table a.badge.bad");
    await page.waitForSelector("article.alert[data-source=down]", { timeout: STEP_TIMEOUT });
    const text = await page.textContent("article.alert[data-source=down]");
    check(text.includes("failed") && text.includes("cannot connect"), `the alert says why: ${text}`);
    check(text.includes("no webhook"), "the webhook outcome is shown");
    await page.fill("article.alert[data-source=down] input[name=note]", "partner server down, called them");
    await Promise.all([page.waitForLoadState("load"), page.click("article.alert[data-source=down] .ack-form button")]);
    check((await page.textContent("#flash")).includes("acknowledged"), "acknowledged");
    const ack = await page.textContent("article.alert[data-source=down] .ack");
    check(ack.includes(env("OPERATOR")) && ack.includes("called them"), `who and why: ${ack}`);
    await shot(page, "failing-alert");
  },

  // A source whose rows were all rejected (their uuids belong to another source) shows it on
  // the flows, links to the rejected rows, and its alert of kind rejected.
  async rejected(page) {
    await signIn(page, env("READER"), "reader-pw");
    const row = "#flows-table tr[data-source=copy]";
    const text = await page.textContent(row);
    check(text.includes("success"), `the run succeeded: ${text}`);
    check(/2\D?000 rows rejected/.test(text), `the rejections are shown: ${text}`);
    check(text.includes("1 open") && text.includes("rejected"), `its alert is counted with its kind: ${text}`);
    check(!(await page.textContent("#flows-table tr[data-source=pne]")).includes("rejected"), "pne rejected nothing");
    await shot(page, "rejected-flows");
    await Promise.all([page.waitForLoadState("load"), page.click(`${row} .rejected-line a`)]);
    check(/\/sources\/copy\/runs\/\d+$/.test(page.url()), `the link opens the run: ${page.url()}`);
    check((await page.textContent("#rejected")).replace(/\D/g, "") === "2000", "the run's rejected count");
    const first = await page.textContent("#rejected-rows article.rejected");
    check(first.includes("already belongs to source pne"), `each rejected row says why: ${first}`);
    await page.goto(`${URL_}/alerts?source=copy`);
    const alert = await page.textContent("article.alert[data-source=copy]");
    check(alert.includes("rejected 2000 of the 2000 rows received"), `the alert says how many: ${alert}`);
    check((await page.$("article.alert[data-source=copy] h2 .badge.warn")) !== null, "its kind is a warning badge");
    await shot(page, "rejected-alert");
  },

  // An admin adds a source: Test connection with a wrong password says so; then it saves.
  async admin(page) {
    await signIn(page, env("ADMIN"), "admin-pw");
    await page.click("#nav-admin");
    await page.click("#add-source");
    await page.fill("#f-name", "partner");
    await page.fill("#f-url", env("FIXTURE_URL"));
    await page.fill("#f-export", "1");
    await page.selectOption("#f-auth", "login");
    await page.fill("#f-login", "harvester");
    await page.fill("#f-password", "not-the-password");
    await page.fill("#f-organism", "Association des naturalistes");
    await page.fill("#f-organism-id", "98765");
    await page.click("#test-connection");
    await page.waitForSelector("#report", { timeout: STEP_TIMEOUT });
    const report = await page.textContent("#report");
    check(report.includes("Test failed"), `the test failed: ${report}`);
    check((await page.textContent("#r-authenticated")).trim() === "no", "not authenticated");
    check((await page.textContent("#r-reachable")).trim() === "yes", "reachable");
    check(/login refused/i.test(report) && report.includes("401"), `the reason: ${report}`);
    check(!report.includes("not-the-password"), "the password is not echoed");
    check((await page.inputValue("#f-password")) === "not-the-password", "the form kept what was typed");
    await shot(page, "admin-test-wrong-password");
    await page.fill("#f-password", "secret");
    await page.click("#test-connection");
    await page.waitForFunction(() => document.querySelector("#report.ok") !== null, null, { timeout: STEP_TIMEOUT });
    const ok = await page.textContent("#report");
    check(ok.includes("2.16.4") && (await page.textContent("#r-rows")).trim() === "2000", `the source answered: ${ok}`);
    await Promise.all([page.waitForLoadState("load"), page.click("#save")]);
    check((await page.textContent("#flash")).includes("partner"), "saved");
    check((await page.textContent("#sources-table")).includes("98765"), "listed with its national id");
    // Editing never shows a credential back; an empty password keeps the stored one.
    await page.goto(`${URL_}/admin/sources/partner/edit`);
    check((await page.inputValue("#f-password")) === "", "the password field is empty");
    check((await page.getAttribute("#f-password", "placeholder")).includes("set"), "it says a password is set");
    check(!(await page.content()).includes("secret"), "the stored password is nowhere in the page");
    await page.fill("#f-options", '{"page_size": 500}');
    await page.click("#test-connection");
    await page.waitForFunction(() => document.querySelector("#report.ok") !== null, null, { timeout: STEP_TIMEOUT });
    await Promise.all([page.waitForLoadState("load"), page.click("#save")]);
    check((await page.textContent("#flash")).includes("saved"), "edit saved");
    // Schedule it from its page (the job runs as this admin's role).
    await page.goto(`${URL_}/sources/partner`);
    await page.fill("#schedule-form input[name=schedule]", "0 3 * * 1");
    await page.selectOption("#schedule-form select[name=mode]", "full");
    await Promise.all([page.waitForLoadState("load"), page.click("#schedule-form button")]);
    check((await page.textContent("#flash")).includes("Schedule saved"), "schedule saved");
    const sched = await page.textContent("#schedule");
    check(sched.includes("0 3 * * 1") && sched.includes("full") && sched.includes("next run"), `schedule shown: ${sched}`);
  },

  // Source text with markup is displayed as text, never run.
  async xss(page) {
    await signIn(page, env("READER"), "reader-pw");
    for (const path of ["/flows", "/alerts?state=all", "/sources/xss"]) {
      await page.goto(`${URL_}${path}`);
      const body = await page.textContent("body");
      check(body.includes("<script>window.__xss = 1</script>"), `${path} shows the error as text`);
      check((await page.evaluate(() => window.__xss)) === undefined, `${path}: nothing ran`);
      const injected = await page.$$eval("script", (s) => s.filter((x) => x.textContent.includes("__xss")).length);
      check(injected === 0, `${path}: no script element was created`);
      check((await page.$$("img[src=x]")).length === 0, `${path}: no img element was created`);
    }
    check((await page.textContent("#organism")).includes("<b>Bold</b> & co"), "organism markup shown as text");
    await shot(page, "xss-source");
    // The run's rejected rows, 20 per page, each with its item as received.
    await page.click("#runs-table tbody tr a");
    await page.waitForSelector("#rejected-rows article.rejected");
    check((await page.$$("#rejected-rows article.rejected")).length === 20, "20 rejected rows on the first page");
    const first = await page.textContent("#rejected-rows article.rejected");
    check(first.includes('"<b>x</b>"') && first.includes("<script>window.__xss = 3</script>"), `item and error as text: ${first}`);
    await page.click("#more-errors");
    await page.waitForSelector("#rejected-rows article.rejected");
    check((await page.$$("#rejected-rows article.rejected")).length === 5, "the next page has the last 5");
    check((await page.evaluate(() => window.__xss)) === undefined, "nothing ran on the run page");
  },

  // A wrong password is refused, then throttled per account (3) and per address (4).
  async signin(page, context, browser) {
    await signIn(page, env("READER"), "wrong");
    check((await page.textContent("#error")).includes("wrong login or password"), "wrong password refused");
    await signIn(page, env("READER"), "wrong-again");
    await signIn(page, env("READER"), "wrong-a-third-time");
    await signIn(page, env("READER"), "reader-pw");
    const err = await page.textContent("#error");
    check(err.includes("too many failed sign-ins for this account"), `throttled per account: ${err}`);
    check((await page.$("#who")) === null, "not signed in, even with the right password");
    await shot(page, "signin-throttled");
    // Another account still signs in from here.
    await signIn(page, env("OPERATOR"), "operator-pw");
    await expectSignedIn(page, env("OPERATOR"));
    // Per address: the dashboard trusts 127.0.0.1 as a proxy, so X-Forwarded-For is the client.
    const far = await browser.newContext({ extraHTTPHeaders: { "X-Forwarded-For": "203.0.113.50" } });
    const p2 = await far.newPage();
    for (const who of ["nobody1", "nobody2", "nobody3", "nobody4"]) await signIn(p2, who, "x");
    await signIn(p2, env("ADMIN"), "admin-pw");
    const err2 = await p2.textContent("#error");
    check(err2.includes("too many failed sign-ins for your address"), `throttled per address: ${err2}`);
    const near = await browser.newContext({ extraHTTPHeaders: { "X-Forwarded-For": "203.0.113.51" } });
    const p3 = await near.newPage();
    await signIn(p3, env("ADMIN"), "admin-pw");
    await expectSignedIn(p3, env("ADMIN"));
  },

  // GeoNature accounts sign in with their UsersHub password, as their mapped gn2pg role.
  async geonature(page, context, browser) {
    await signIn(page, "jdupont", "gn-secret", "geonature");
    await expectSignedIn(page, "jdupont (GeoNature)");
    check((await page.textContent("#who")).includes("operator"), "mapped to gn2pg_operator");
    await page.goto(`${URL_}/sources/pne`);
    check((await page.$("#harvest-form")) !== null, "an operator sees Harvest now");
    check((await page.$("#nav-admin")) === null, "but no admin page");
    await shot(page, "geonature-source");
    for (const [login, pw, expected] of [
      ["jdupont", "wrong", "wrong login or password"],
      ["mmartin", "gn-other", "wrong login or password"], // not mapped: no access
      ["old", "gn-old", "disabled"],
    ]) {
      const ctx = await browser.newContext();
      const p = await ctx.newPage();
      await signIn(p, login, pw, "geonature");
      const err = await p.textContent("#error");
      check(err.includes(expected), `${login}: ${err}`);
      await ctx.close();
    }
    // A PostgreSQL role name is not a GeoNature account.
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    await signIn(p, env("ADMIN"), "admin-pw", "geonature");
    check((await p.textContent("#error")).includes("wrong login or password"), "no GeoNature account of that name");
  },

  // Cookies and headers; signing out ends the session.
  async session(page, context) {
    const res = await page.goto(`${URL_}/flows`);
    check(page.url().includes("/sign-in?next=/flows"), `signed-out visit goes to sign-in: ${page.url()}`);
    const h = res.headers();
    check(h["x-frame-options"] === "DENY", "X-Frame-Options");
    check(h["content-security-policy"].includes("frame-ancestors 'none'"), "frame-ancestors");
    check(h["content-security-policy"].includes("script-src 'self'"), "no inline scripts");
    console.log("csp " + h["content-security-policy"]);
    await signIn(page, env("ADMIN"), "admin-pw");
    check(page.url().endsWith("/flows"), "back to where it was going");
    const cookie = (await context.cookies()).find((c) => c.name === "gn2pg_session");
    check(cookie && cookie.httpOnly && cookie.sameSite === "Strict" && !cookie.secure, `cookie flags: ${JSON.stringify(cookie)}`);
    check(cookie.value.length === 64, "a 256-bit random id");
    // Behind a TLS proxy (trusted, X-Forwarded-Proto: https) the cookie is Secure.
    const viaProxy = await context.request.post(`${URL_}/sign-in`, {
      headers: { "X-Forwarded-Proto": "https" },
      form: { login: "x", password: "y", csrf: "z" },
    });
    check((viaProxy.headers()["set-cookie"] || "").includes("Secure"), "Secure cookies over TLS");
    // Cross-site POSTs are refused before anything else.
    const cross = await context.request.post(`${URL_}/sign-out`, { headers: { Origin: "http://evil.example" }, form: {} });
    check(cross.status() === 403, `cross-site POST answered ${cross.status()}`);
    await Promise.all([page.waitForLoadState("load"), page.click("form.who button")]);
    check(page.url().includes("/sign-in"), "signed out");
    await page.goto(`${URL_}/alerts`);
    check(page.url().includes("/sign-in"), "the old session no longer works");
  },
};

async function main() {
  const name = process.argv[2];
  const run = scenarios[name];
  if (!run) throw new Error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
  // headless: true adds --headless; Playwright gives each launch a fresh temporary profile
  // (--user-data-dir) and removes it on close.
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT);
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    try {
      await run(page, context, browser);
    } catch (e) {
      await shot(page, `${name}-failure`).catch(() => {});
      console.error(`page at failure: ${page.url()}\n${(await page.textContent("body").catch(() => "")).slice(0, 3000)}`);
      throw e;
    }
    check(errors.length === 0, `no script error in the page: ${errors}`);
    console.log(`scenario ${name}: ok`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`scenario ${process.argv[2]}: FAILED: ${e.stack || e}`);
  process.exit(1);
});

// The web app in a real browser against a running gateway that serves it:
//   PARLEY_URL=http://127.0.0.1:3000 SCREENSHOTS=/tmp/shots node --test web/e2e/chat.test.mjs
// Two users sign up, chat in a DM (typing, Seen, unread badges, edit, delete, reload), one goes
// offline and comes back to every message in order without a reload, and screenshots are taken
// at desktop and phone sizes. Waits poll with bounded timeouts; nothing relies on a fixed sleep.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = (process.env.PARLEY_URL ?? "http://127.0.0.1:3000").replace(/\/$/, "");
const SHOTS = process.env.SCREENSHOTS ?? join(tmpdir(), "parley-web-screenshots");
const WAIT = 15_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const run = randomBytes(4).toString("hex");
const user = (name) => ({
  username: `${name}_${run}`,
  displayName: `${name[0].toUpperCase()}${name.slice(1)} ${run}`,
  email: `${name}_${run}@example.test`,
  password: `pw-${name}-${run}-secret`,
});
const alice = user("alice");
const bob = user("bob");
const carol = user("carol");

/** Polls `check` until it returns without throwing (or returns something other than false). */
async function eventually(check, message, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const r = await check();
      if (r !== false) return r;
      last = new Error("condition was false");
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms: ${message}\n  last: ${last?.message}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const post = (path, body, headers = {}) =>
  fetch(`${BASE}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);
const connectionState = (page) => byTestId(page, "connection-state").getAttribute("data-state");
const messageTexts = (page) => page.locator('[data-testid="message-list"] [data-testid="message-content"]').allTextContents();
const listItem = (page, title) =>
  page.locator('[data-testid="conversation-item"]', { has: page.locator(`[data-testid="conversation-title"]:text-is("${title}")`) });

async function waitOnline(page) {
  await eventually(async () => assert.equal(await connectionState(page), "online"), "connection online");
}

async function signUp(page, u) {
  await page.goto(BASE);
  await byTestId(page, "auth-switch").click();
  await byTestId(page, "auth-username").fill(u.username);
  await byTestId(page, "auth-display-name").fill(u.displayName);
  await byTestId(page, "auth-email").fill(u.email);
  await byTestId(page, "auth-password").fill(u.password);
  await byTestId(page, "auth-submit").click();
  await waitOnline(page);
  await eventually(async () => assert.equal(await byTestId(page, "me").textContent(), u.displayName), "own name shown");
}

async function send(page, text) {
  const composer = byTestId(page, "composer");
  await composer.fill(text);
  await composer.press("Enter");
}

async function waitSent(page, text) {
  await eventually(async () => {
    const msg = page.locator('[data-testid="message"]', { has: page.locator(`[data-testid="message-content"]:text-is("${text}")`) });
    assert.equal(await msg.count(), 1, `one "${text}"`);
    assert.equal(await msg.getAttribute("data-status"), "sent");
  }, `"${text}" sent`);
}

async function badge(page, title) {
  const b = listItem(page, title).locator('[data-testid="unread-badge"]');
  return (await b.count()) === 0 ? null : (await b.textContent()).trim();
}

/** The tests are steps of one story: after a failed step, the later ones are skipped. */
let failed = false;
function step(name, options, fn) {
  test(name, options, async (t) => {
    if (failed) return t.skip("an earlier step failed");
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      throw e;
    }
  });
}

const pageErrors = [];
let browser;
let ctxA;
let ctxB;
let pageA;
let pageB;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  ctxA = await browser.newContext({ viewport: DESKTOP });
  ctxB = await browser.newContext({ viewport: DESKTOP });
  pageA = await ctxA.newPage();
  pageB = await ctxB.newPage();
  for (const [who, page] of [["A", pageA], ["B", pageB]]) {
    page.on("pageerror", (e) => {
      pageErrors.push(`${who}: ${e.message}`);
      console.error(`[${who} pageerror]`, e.message);
    });
  }
  // Carol only needs to exist, to be added to a group.
  const r = await post("/api/auth/register", carol);
  assert.equal(r.status, 201, `register carol: ${r.status}`);
});

after(async () => {
  assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
  await browser?.close();
});

step("two users sign up, open a DM by search, chat with typing and Seen", { timeout: 120_000 }, async () => {
  await signUp(pageA, alice);
  await signUp(pageB, bob);

  // Alice finds Bob by name and opens the DM.
  await byTestId(pageA, "new-chat").click();
  await byTestId(pageA, "user-search").fill(bob.displayName.slice(0, 7));
  const result = pageA.locator(`[data-testid="user-result"][data-username="${bob.username}"]`);
  await result.waitFor({ timeout: WAIT });
  await result.click();
  await eventually(
    async () => assert.equal(await byTestId(pageA, "conversation-header-title").textContent(), bob.displayName),
    "DM with Bob open",
  );
  await send(pageA, "Hi Bob!");
  await waitSent(pageA, "Hi Bob!");

  // Bob, on the list, gets the conversation with one unread message; opening it clears the badge.
  const dmForBob = pageB.locator('[data-testid="conversation-item"]').first();
  await eventually(async () => assert.equal(await pageB.locator('[data-testid="conversation-item"]').count(), 1), "Bob has the DM");
  await eventually(async () => {
    assert.equal((await dmForBob.locator('[data-testid="unread-badge"]').textContent())?.trim(), "1");
    assert.match(await dmForBob.locator('[data-testid="conversation-preview"]').textContent(), /Hi Bob!/);
  }, "Bob's badge shows 1");
  await dmForBob.click();
  await eventually(async () => assert.deepEqual(await messageTexts(pageB), ["Hi Bob!"]), "Bob sees the message");
  await eventually(async () => assert.equal(await dmForBob.locator('[data-testid="unread-badge"]').count(), 0), "badge cleared");

  // Alice's message is seen once Bob has read it.
  await eventually(async () => assert.equal(await byTestId(pageA, "seen").count(), 1), "Alice sees Seen");

  // Each sees the other typing.
  await byTestId(pageB, "composer").fill("I am typ");
  await eventually(async () => assert.match(await byTestId(pageA, "typing-indicator").textContent(), /is typing/), "Alice sees Bob typing");
  await byTestId(pageB, "composer").fill("");
  await eventually(async () => assert.equal(await byTestId(pageA, "typing-indicator").textContent(), ""), "Bob's typing clears");
  await byTestId(pageA, "composer").fill("Alice typ");
  await eventually(async () => assert.match(await byTestId(pageB, "typing-indicator").textContent(), /is typing/), "Bob sees Alice typing");
  await byTestId(pageA, "composer").fill("");

  // Bob answers with two lines (Shift+Enter), Alice gets them; Seen moves to Bob's side.
  const composerB = byTestId(pageB, "composer");
  await composerB.fill("");
  await composerB.pressSequentially("Hello");
  await composerB.press("Shift+Enter");
  await composerB.pressSequentially("Alice");
  await composerB.press("Enter");
  await eventually(async () => assert.deepEqual(await messageTexts(pageA), ["Hi Bob!", "Hello\nAlice"]), "Alice gets the reply");
  await eventually(async () => assert.equal(await byTestId(pageB, "seen").count(), 1), "Bob sees Seen");
  // Each has one "Seen", under their own last message.
  assert.equal(await byTestId(pageA, "seen").count(), 1);
});

step("unread badge counts while elsewhere and clears on open; groups; edit, delete, reload", { timeout: 120_000 }, async () => {
  // Bob makes a group with Alice, then adds Carol: he is now looking at the group.
  await byTestId(pageB, "new-group").click();
  const groupTitle = `Team ${run}`;
  await byTestId(pageB, "group-title").fill(groupTitle);
  await byTestId(pageB, "user-search").fill(alice.username);
  await pageB.locator(`[data-testid="user-result"][data-username="${alice.username}"]`).click();
  await byTestId(pageB, "create-group").click();
  await eventually(
    async () => assert.equal(await byTestId(pageB, "conversation-header-title").textContent(), groupTitle),
    "group open for Bob",
  );
  await byTestId(pageB, "add-member").click();
  await byTestId(pageB, "user-search").fill(carol.username);
  await pageB.locator(`[data-testid="user-result"][data-username="${carol.username}"]`).click();
  await eventually(async () => assert.equal(await byTestId(pageB, "conversation-subtitle").textContent(), "3 members"), "Carol added");
  await send(pageB, "Welcome to the team");
  await waitSent(pageB, "Welcome to the team");
  await eventually(async () => assert.equal(await badge(pageA, groupTitle), "1"), "Alice has the group, one unread");

  // Alice writes three messages in the DM while Bob looks at the group.
  for (const text of ["one", "two", "three"]) {
    await send(pageA, text);
    await waitSent(pageA, text);
  }
  await eventually(async () => assert.equal(await badge(pageB, alice.displayName), "3"), "Bob's DM badge shows 3");
  await listItem(pageB, alice.displayName).click();
  await eventually(
    async () => assert.deepEqual(await messageTexts(pageB), ["Hi Bob!", "Hello\nAlice", "one", "two", "three"]),
    "Bob sees all three",
  );
  await eventually(async () => assert.equal(await badge(pageB, alice.displayName), null), "Bob's DM badge cleared");

  // Alice edits "two" and deletes "one"; Bob sees both.
  const own = (text) =>
    pageA.locator('[data-testid="message"]', { has: pageA.locator(`[data-testid="message-content"]:text-is("${text}")`) });
  await own("two").hover();
  await own("two").locator('[data-testid="edit-message"]').click();
  await byTestId(pageA, "edit-input").fill("two (better)");
  await byTestId(pageA, "edit-input").press("Enter");
  pageA.once("dialog", (d) => void d.accept());
  await own("one").hover();
  await own("one").locator('[data-testid="delete-message"]').click();
  const afterEdits = ["Hi Bob!", "Hello\nAlice", "Message deleted", "two (better)", "three"];
  await eventually(async () => assert.deepEqual(await messageTexts(pageB), afterEdits), "Bob sees the edit and delete");
  await eventually(async () => assert.deepEqual(await messageTexts(pageA), afterEdits), "Alice sees them too");
  assert.equal(await pageB.locator('[data-testid="edited"]').count(), 1);

  // A reload keeps everything: the open conversation, its messages, Seen.
  await pageA.reload();
  await waitOnline(pageA);
  await eventually(async () => assert.deepEqual(await messageTexts(pageA), afterEdits), "Alice's messages after reload");
  await eventually(async () => assert.equal(await byTestId(pageA, "seen").count(), 1), "Seen after reload");
  await pageB.reload();
  await waitOnline(pageB);
  await eventually(async () => assert.deepEqual(await messageTexts(pageB), afterEdits), "Bob's messages after reload");
  await eventually(async () => assert.equal(await badge(pageB, alice.displayName), null), "no badge after reload");
});

step("offline for a while: missed messages arrive in order without a reload", { timeout: 120_000 }, async () => {
  // Record every connection state Bob's page shows.
  await pageB.evaluate(() => {
    const el = document.querySelector('[data-testid="connection-state"]');
    window.__states = [el.dataset.state];
    new MutationObserver(() => {
      const s = el.dataset.state;
      if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
    }).observe(el, { attributes: true, attributeFilter: ["data-state"] });
  });
  const before = await messageTexts(pageB);

  await ctxB.setOffline(true);
  await eventually(async () => assert.equal(await connectionState(pageB), "reconnecting"), "Bob reconnecting");
  const missed = ["while", "you", "were", "away", "five"].map((w) => `${w} ${run}`);
  for (const text of missed) {
    await send(pageA, text);
    await waitSent(pageA, text);
  }
  // Bob writes meanwhile: pending, then failed when no answer comes (10 s), then retried with
  // the same clientMsgId.
  const note = `back soon ${run}`;
  await send(pageB, note);
  const noteB = pageB.locator('[data-testid="message"]', { has: pageB.locator(`[data-testid="message-content"]:text-is("${note}")`) });
  await eventually(async () => assert.equal(await noteB.getAttribute("data-status"), "pending"), "Bob's message pending");
  await eventually(async () => assert.equal(await noteB.getAttribute("data-status"), "failed"), "Bob's message failed", 20_000);
  const clientMsgId = await noteB.getAttribute("data-client-msg-id");
  await noteB.locator('[data-testid="retry"]').click();
  await eventually(async () => assert.equal(await noteB.getAttribute("data-status"), "pending"), "retry pending");
  assert.equal(await noteB.getAttribute("data-client-msg-id"), clientMsgId, "a retry keeps the clientMsgId");
  // Still offline: nothing new has arrived.
  assert.deepEqual(await messageTexts(pageB), [...before, note]);
  await ctxB.setOffline(false);

  await waitOnline(pageB);
  await eventually(async () => {
    assert.deepEqual(await messageTexts(pageB), [...before, ...missed, note]);
    assert.equal(await noteB.getAttribute("data-status"), "sent");
  }, "Bob has all, in order, and his own sent");
  await eventually(async () => assert.deepEqual((await messageTexts(pageA)).slice(-6), [...missed, note]), "Alice gets Bob's once");
  const states = await pageB.evaluate(() => window.__states);
  const r = states.indexOf("reconnecting");
  assert.ok(r >= 0 && states.indexOf("online", r) > r, `states went reconnecting → online: ${states}`);
  // Bob read them on return: Alice sees Seen on her last message.
  await eventually(async () => assert.equal(await byTestId(pageA, "seen").count(), 1), "Alice sees Seen after Bob is back");
});

step("a long history loads older pages on scroll, in order", { timeout: 120_000 }, async () => {
  // Carol (over HTTP) opens a DM with Alice and writes 120 messages.
  const login = await (await post("/api/auth/login", { username: carol.username, password: carol.password })).json();
  const auth = { authorization: `Bearer ${login.token}` };
  const found = await (await fetch(`${BASE}/api/users?query=${alice.username}`, { headers: auth })).json();
  const aliceId = found.users.find((u) => u.username === alice.username).id;
  const open = await (await post("/api/conversations", { participantIds: [aliceId] }, auth)).json();
  const conversationId = open.conversation.id;
  const total = 120;
  for (let i = 1; i <= total; i++) {
    const r = await post(`/api/conversations/${conversationId}/messages`, { content: `m${i}`, clientMsgId: `hist-${run}-${i}` }, auth);
    assert.equal(r.status, 202);
  }
  const dm = pageA.locator(`[data-testid="conversation-item"][data-conversation-id="${conversationId}"]`);
  await eventually(async () => {
    assert.match(await dm.locator('[data-testid="conversation-preview"]').textContent(), /m120$/);
    // Shown as "99+"; the exact count is in its label.
    assert.equal(await dm.locator('[data-testid="unread-badge"]').getAttribute("aria-label"), `${total} unread`);
  }, "Alice has Carol's DM with 120 unread");
  // Alice never searched for Carol: the app names her by looking her id up.
  await eventually(
    async () => assert.match(await dm.textContent(), new RegExp(carol.displayName)),
    "Carol is named in Alice's list",
  );
  // A fresh page holds none of them (they came live to this one), so history comes in pages.
  await pageA.reload();
  await waitOnline(pageA);
  await dm.click();
  await eventually(async () => assert.equal((await messageTexts(pageA)).at(-1), `m${total}`), "newest shown");
  const first = await messageTexts(pageA);
  assert.ok(first.length < total, `a first page only (${first.length})`);
  // Scroll up until the first message is there.
  await eventually(async () => {
    await byTestId(pageA, "message-list").evaluate((el) => el.scrollTo(0, 0));
    assert.equal((await messageTexts(pageA))[0], "m1");
  }, "older pages load on scroll");
  assert.deepEqual(await messageTexts(pageA), Array.from({ length: total }, (_, i) => `m${i + 1}`));
  await eventually(async () => assert.equal(await dm.locator('[data-testid="unread-badge"]').count(), 0), "read");
  await listItem(pageA, bob.displayName).click();
});

step("the session ends: a clear message, then sign in again", { timeout: 60_000 }, async () => {
  // Signing out elsewhere (here: the logout route with Bob's cookie) ends Bob's session.
  await pageB.evaluate(() => fetch("/api/auth/logout", { method: "POST", credentials: "include" }));
  await eventually(async () => assert.equal(await connectionState(pageB), "expired"), "session expired state");
  await byTestId(pageB, "session-expired").getByRole("button", { name: "Sign in again" }).click();
  await byTestId(pageB, "auth-notice").waitFor({ timeout: WAIT });
  await byTestId(pageB, "auth-username").fill(bob.username);
  await byTestId(pageB, "auth-password").fill(bob.password);
  await byTestId(pageB, "auth-submit").click();
  await waitOnline(pageB);
  await eventually(async () => assert.ok((await badge(pageB, alice.displayName)) === null), "Bob's list is back");
  await eventually(async () => assert.equal(await pageB.locator('[data-testid="conversation-item"]').count(), 2), "both conversations");
});

step("screenshots at desktop and phone sizes", { timeout: 60_000 }, async () => {
  // Desktop: both panes; the conversation open.
  await pageA.setViewportSize(DESKTOP);
  await byTestId(pageA, "conversation-view").waitFor({ timeout: WAIT });
  await pageA.screenshot({ path: join(SHOTS, "desktop-conversation.png") });
  // Desktop list: nothing open.
  await pageA.goto(`${BASE}/`);
  await waitOnline(pageA);
  await byTestId(pageA, "conversation-list").waitFor({ timeout: WAIT });
  await pageA.screenshot({ path: join(SHOTS, "desktop-list.png") });

  // Phone: one pane at a time, with a back button.
  await pageA.setViewportSize(PHONE);
  await byTestId(pageA, "conversation-list").waitFor({ timeout: WAIT });
  await pageA.screenshot({ path: join(SHOTS, "phone-list.png") });
  await listItem(pageA, bob.displayName).click();
  await byTestId(pageA, "conversation-view").waitFor({ timeout: WAIT });
  assert.equal(await byTestId(pageA, "conversation-list").isVisible(), false, "list hidden on a phone");
  await eventually(async () => assert.ok((await messageTexts(pageA)).length > 0), "messages shown");
  await pageA.screenshot({ path: join(SHOTS, "phone-conversation.png") });
  await byTestId(pageA, "back").click();
  await byTestId(pageA, "conversation-list").waitFor({ timeout: WAIT });
  assert.equal(await byTestId(pageA, "conversation-view").count(), 0, "back to the list");

  // Signing out goes back to the sign-in form.
  await byTestId(pageA, "sign-out").click();
  await byTestId(pageA, "auth-form").waitFor({ timeout: WAIT });
  assert.equal(await pageA.evaluate(() => fetch("/api/auth/token").then((r) => r.status)), 401);
});

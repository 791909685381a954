/**
 * The demo page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core),
 * served by the edges of a real local cluster with SWITCHBOARD_DEMO=true. Needs the server side
 * of CLIENT-CONTRACT.md: `/` and `/demo/*` on the edge, `/demo/config.json`, presence events and
 * the demo agent. Screenshots go to test-artifacts/.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Cluster, type Edge, PACKAGE_ROOT, startCluster, tu } from '../support/cluster.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts');
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

let cluster: Cluster;
let context: BrowserContext;
let profile: string;
const pages: Page[] = [];

beforeAll(async () => {
  if (!existsSync(join(PACKAGE_ROOT, 'dist', 'demo', 'index.html'))) throw new Error('dist/demo is missing: run `npm run build` first');
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  cluster = await startCluster({ demo: true });
  profile = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, timeout: tu(60_000) });
});

afterAll(async () => {
  await context?.close();
  await cluster?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

afterEach(async (ctx) => {
  const name = ctx.task.name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60);
  for (const [i, p] of pages.entries()) {
    if (!p.isClosed()) await p.screenshot({ path: join(ARTIFACTS, `${name}-${i}.png`), fullPage: true }).catch(() => undefined);
  }
  for (const p of pages.splice(0)) await p.close().catch(() => undefined);
});

async function edges(): Promise<[Edge, Edge]> {
  const [a, b] = await cluster.revive(); // a test before may have killed one
  if (a === undefined || b === undefined) throw new Error('the cluster has fewer than two edges');
  return [a, b];
}

/** Opens the demo page served by `edge` for `user` in `session`, and waits until it is connected. */
async function open(edge: Edge, session: string, user: string): Promise<Page> {
  const page = await context.newPage();
  pages.push(page);
  const logs: string[] = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  const res = await page.goto(`${edge.http}/?session=${session}&user=${user}`, { timeout: tu(15_000) });
  if (res === null || !res.ok()) throw new Error(`GET / on ${edge.http} answered ${res?.status()}: ${await res?.text()}`);
  await status(page, 'connected', tu(15_000)).catch((e: unknown) => { throw new Error(`${String(e)}\npage log:\n${logs.join('\n')}`); });
  return page;
}

/** Waits until `fn(arg)` is true in the page; on timeout, says what was awaited and shows the page's state. */
async function until<A>(page: Page, what: string, fn: (arg: A) => boolean, arg: A, timeoutMs: number): Promise<void> {
  try {
    await page.waitForFunction(fn as (a: unknown) => boolean, arg as unknown, { timeout: timeoutMs, polling: 50 });
  } catch {
    const state = await page.evaluate(() => ({
      status: document.querySelector('[data-testid=connection-status]')?.textContent,
      messages: [...document.querySelectorAll('[data-testid=message]')].map((m) => `${(m as HTMLElement).dataset.offset}:${(m as HTMLElement).dataset.user}:${m.textContent}`),
      presence: [...document.querySelectorAll('[data-testid=presence-user]')].map((m) => (m as HTMLElement).dataset.user),
      agent: document.querySelector('[data-testid=agent-status]')?.textContent,
    })).catch((e: unknown) => String(e));
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; page state: ${JSON.stringify(state)}`);
  }
}

const status = (page: Page, want: string, timeoutMs = tu(15_000)): Promise<void> =>
  until(page, `connection-status "${want}"`, (w) => document.querySelector('[data-testid=connection-status]')?.textContent === w, want, timeoutMs);

const presence = (page: Page, users: string[], timeoutMs = tu(15_000)): Promise<void> =>
  until(page, `presence [${users.join(', ')}]`, (want) => {
    const got = [...document.querySelectorAll('[data-testid=presence-list] [data-testid=presence-user]')].map((e) => (e as HTMLElement).dataset.user).sort();
    return JSON.stringify(got) === JSON.stringify([...want].sort());
  }, users, timeoutMs);

const messageCount = (page: Page, n: number, timeoutMs = tu(15_000)): Promise<void> =>
  until(page, `${n} messages`, (k) => document.querySelectorAll('[data-testid=message-list] [data-testid=message]').length >= k, n, timeoutMs);

interface Shown { offset: number; user: string; role: string; complete: string; text: string }

function shown(page: Page): Promise<Shown[]> {
  return page.$$eval('[data-testid=message-list] [data-testid=message]', (els) => els.map((e) => {
    const d = (e as HTMLElement).dataset;
    return { offset: Number(d.offset), user: d.user ?? '', role: d.role ?? '', complete: d.complete ?? '', text: e.querySelector('.text')?.textContent ?? e.textContent ?? '' };
  }));
}

async function say(page: Page, text: string): Promise<void> {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('send-button').click();
}

function expectOncePerOffsetInOrder(list: Shown[]): void {
  const offsets = list.map((m) => m.offset);
  for (let i = 1; i < offsets.length; i++) {
    if (!((offsets[i] as number) > (offsets[i - 1] as number))) throw new Error(`message offsets not strictly increasing: ${offsets.join(',')}`);
  }
}

const sid = (): string => `web-${randomUUID().slice(0, 8)}`;

describe('the demo page in Chromium', () => {
  it('two pages on different edges exchange messages, see typing and each other present', async () => {
    const [e0, e1] = await edges();
    const session = sid();
    const alice = await open(e0, session, 'alice');
    const bob = await open(e1, session, 'bob');
    await presence(alice, ['alice', 'bob']);
    await presence(bob, ['alice', 'bob']);

    await alice.getByTestId('message-input').fill('typing...');
    await until(bob, 'alice typing', () => (document.querySelector('[data-testid=typing-indicator]')?.textContent ?? '').includes('alice'), null, tu(10_000));
    await say(alice, 'hello bob');
    await say(bob, 'hi alice');
    await messageCount(alice, 2);
    await messageCount(bob, 2);
    const atAlice = await shown(alice);
    const atBob = await shown(bob);
    expect(atBob).toEqual(atAlice);
    expect(atAlice.map((m) => [m.user, m.role, m.text])).toEqual([['alice', 'user', 'hello bob'], ['bob', 'user', 'hi alice']]);
    expectOncePerOffsetInOrder(atAlice);
  });

  it('a streamed agent reply arrives complete and in order in both pages', async () => {
    const [e0, e1] = await edges();
    const session = sid();
    const alice = await open(e0, session, 'alice');
    const bob = await open(e1, session, 'bob');
    // Record every text the assistant message shows while it streams, and every agent status.
    for (const p of [alice, bob]) {
      await p.evaluate(() => {
        const w = window as unknown as { seen: string[]; statuses: string[] };
        w.seen = [];
        w.statuses = [];
        new MutationObserver(() => {
          const m = document.querySelector('[data-testid=message][data-role=assistant] .text');
          const t = m?.textContent ?? '';
          if (t !== '' && w.seen[w.seen.length - 1] !== t) w.seen.push(t);
          const s = document.querySelector('[data-testid=agent-status]')?.textContent ?? '';
          if (w.statuses[w.statuses.length - 1] !== s) w.statuses.push(s);
        }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
      });
    }
    await say(alice, '@agent what is the weather');
    const reply = 'You said: what is the weather. This reply was streamed word by word.';
    for (const p of [alice, bob]) {
      await until(p, 'the complete assistant reply', () => document.querySelector('[data-testid=message][data-role=assistant][data-complete=true]') !== null, null, tu(20_000));
      await until(p, 'agent idle', () => document.querySelector('[data-testid=agent-status]')?.textContent === 'idle', null, tu(10_000));
      const list = await shown(p);
      const assistant = list.filter((m) => m.role === 'assistant');
      expect(assistant).toHaveLength(1);
      expect(assistant[0]?.complete).toBe('true');
      expect(assistant[0]?.text.trim()).toBe(reply);
      expect(list.filter((m) => m.role === 'user')).toMatchObject([{ user: 'alice', text: '@agent what is the weather' }]);
      const { seen, statuses } = await p.evaluate(() => {
        const w = window as unknown as { seen: string[]; statuses: string[] };
        return { seen: w.seen, statuses: w.statuses };
      });
      expect(seen.length, 'the reply grew in several steps').toBeGreaterThan(2);
      for (const t of seen) expect(reply.startsWith(t.trimEnd()), `"${t}" is a prefix of the reply`).toBe(true);
      expect(statuses).toContain('streaming');
    }
  });

  it('a page whose edge is killed reconnects to the other edge and shows every message exactly once', async () => {
    const [e0, e1] = await edges();
    const session = sid();
    const alice = await open(e0, session, 'alice');
    const bob = await open(e1, session, 'bob');
    for (let i = 0; i < 5; i++) await say(bob, `before ${i}`);
    await messageCount(alice, 5);

    process.kill(e0.pid, 'SIGKILL');
    for (let i = 0; i < 5; i++) await say(bob, `during ${i}`); // while alice's page is cut off
    await until(alice, 'a connection to the other edge', (url) => {
      const el = document.querySelector('[data-testid=connection-status]') as HTMLElement | null;
      return el?.textContent === 'connected' && (el.dataset.url ?? '').startsWith(url);
    }, e1.url, tu(20_000));
    await say(alice, 'back');
    await messageCount(alice, 11, tu(20_000));
    await messageCount(bob, 11, tu(20_000));
    await new Promise((r) => setTimeout(r, 500)); // a late duplicate would show up here
    const atAlice = await shown(alice);
    expect(atAlice.map((m) => m.text)).toEqual([...[0, 1, 2, 3, 4].map((i) => `before ${i}`), ...[0, 1, 2, 3, 4].map((i) => `during ${i}`), 'back']);
    expectOncePerOffsetInOrder(atAlice);
    expect(await shown(bob)).toEqual(atAlice);
  });

  it('presence drops a user whose page is closed', async () => {
    const [e0, e1] = await edges();
    const session = sid();
    const alice = await open(e0, session, 'alice');
    const bob = await open(e1, session, 'bob');
    await presence(alice, ['alice', 'bob']);
    await bob.close();
    await presence(alice, ['alice'], tu(20_000));
  });
});

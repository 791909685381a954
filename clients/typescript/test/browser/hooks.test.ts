/**
 * The React hooks in headless Chromium against a real cluster (no demo mode needed): a small
 * harness page (bundled here with esbuild, served from 127.0.0.1) renders the hooks' state.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChatMessage } from '../../src/state.js';
import { type Cluster, PACKAGE_ROOT, publish, startCluster, tu } from '../support/cluster.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts');

let cluster: Cluster;
let context: BrowserContext;
let profile: string;
let server: Server;
let origin: string;

interface HookState {
  status: string;
  messages: ChatMessage[];
  typing: string[];
  presence: string[];
  sessionAgent: { status: string; progress?: number };
  agent: { status: string; currentTask?: string; progress?: number; connectionStatus: string };
}

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const bundle = await build({
    entryPoints: [join(PACKAGE_ROOT, 'test', 'browser', 'harness', 'hooks-harness.tsx')], bundle: true, write: false,
    format: 'esm', platform: 'browser', jsx: 'automatic', define: { 'process.env.NODE_ENV': '"development"' }, logLevel: 'warning',
  });
  const js = bundle.outputFiles[0]?.text ?? '';
  server = createServer((req, res) => {
    if (req.url?.startsWith('/harness.js')) {
      res.setHeader('content-type', 'text/javascript');
      res.end(js);
      return;
    }
    res.setHeader('content-type', 'text/html');
    res.end('<!doctype html><div id="root"></div><script type="module" src="/harness.js"></script>');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const addr = server.address();
  origin = `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`;
  cluster = await startCluster();
  profile = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, timeout: tu(60_000) });
});

afterAll(async () => {
  await context?.close();
  await cluster?.stop();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function harness(session: string, user: string, edgeIndex: number): Promise<Page> {
  const edges = cluster.edges.map((e) => e.url);
  const first = edges.splice(edgeIndex, 1);
  const chatUrls = [...first, ...edges].map((u) => `${u}/api/ws/chat/${session}`);
  const config = { session, user, token: cluster.token(user), chatUrls, agentUrl: `${first[0]}/api/ws/agent-status/${user}` };
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${origin}/#${encodeURIComponent(JSON.stringify(config))}`, { timeout: tu(15_000) });
  await until(page, 'both hooks connected', (s) => s.status === 'connected' && s.agent.connectionStatus === 'connected', tu(15_000))
    .catch((e: unknown) => { throw new Error(`${String(e)}; page errors: ${errors.join('; ')}`); });
  return page;
}

async function state(page: Page): Promise<HookState> {
  return JSON.parse((await page.textContent('#state')) ?? '{}') as HookState;
}

async function until(page: Page, what: string, check: (s: HookState) => boolean, timeoutMs: number): Promise<HookState> {
  const deadline = Date.now() + timeoutMs;
  let last: HookState | undefined;
  while (Date.now() < deadline) {
    last = await state(page).catch(() => undefined);
    if (last !== undefined && check(last)) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; hook state: ${JSON.stringify(last)}`);
}

describe('React hooks in Chromium', () => {
  it('useChatMessages: messages across edges, typing, a streamed reply and agent status; useAgentStatus: tasks', async () => {
    const session = `hooks-${randomUUID().slice(0, 8)}`;
    const alice = await harness(session, 'alice', 0);
    const bob = await harness(session, 'bob', 1);

    await alice.evaluate(() => window.harness?.typing(true));
    await until(bob, 'alice typing', (s) => s.typing.includes('alice'), tu(10_000));
    await alice.evaluate(() => window.harness?.send('hello bob'));
    await until(bob, "alice's message", (s) => s.messages.some((m) => m.content === 'hello bob'), tu(10_000));
    const atBob = await until(bob, 'typing cleared by the message', (s) => s.typing.length === 0, tu(10_000));
    expect(atBob.messages[0]).toMatchObject({ userId: 'alice', role: 'user', content: 'hello bob', complete: true });

    // A streamed reply and agent status, published by a backend through the HTTP API.
    const pub = cluster.token('agent-runtime', { scope: 'publish' });
    const http = cluster.edges[0]?.http ?? '';
    const channel = `session:${session}`;
    await publish(http, pub, { channel, type: 'agent_status_update', payload: { user_id: 'agent', status: 'streaming', progress: 50 } });
    const words = ['Here ', 'is ', 'a ', 'streamed ', 'reply.'];
    for (const [index, content] of words.entries()) {
      await publish(http, pub, { channel, type: 'chat_message_chunk', payload: { message_id: 'r1', index, content, role: 'assistant' } });
    }
    await until(alice, 'all chunks', (s) => s.messages.some((m) => m.id === 'r1' && m.content === words.join('')), tu(10_000));
    const streaming = await state(alice);
    expect(streaming.messages.find((m) => m.id === 'r1')).toMatchObject({ role: 'assistant', complete: false });
    expect(streaming.sessionAgent).toMatchObject({ status: 'streaming', progress: 50 });
    await publish(http, pub, { channel, type: 'chat_message_complete', payload: { message_id: 'r1', content: words.join(''), role: 'assistant' } });
    for (const p of [alice, bob]) {
      const s = await until(p, 'the complete reply', (x) => x.messages.some((m) => m.id === 'r1' && m.complete), tu(10_000));
      expect(s.messages.map((m) => m.content)).toEqual(['hello bob', 'Here is a streamed reply.']);
    }

    await publish(http, pub, { channel: 'agent_status:alice', type: 'agent_task_start', payload: { task: 'find flights' } });
    await publish(http, pub, { channel: 'agent_status:alice', type: 'agent_task_progress', payload: { progress: 40 } });
    const s = await until(alice, 'the agent task at 40%', (x) => x.agent.progress === 40, tu(10_000));
    expect(s.agent).toMatchObject({ status: 'working', currentTask: 'find flights', progress: 40 });
    await alice.screenshot({ path: join(ARTIFACTS, 'hooks-alice.png') });
  });
});

/**
 * The client against a real local cluster (redis-server, history, 2 routers, 2 edges as
 * processes), reached only through the public WebSocket and HTTP API.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { WebSocketClient, type WebSocketClientOptions } from '../../src/client.js';
import { ConnectionStatus, type WebSocketEvent } from '../../src/wire.js';
import { type Cluster, publish, startCluster, tu, waitFor } from '../support/cluster.js';

let cluster: Cluster;
const clients: WebSocketClient[] = [];

beforeAll(async () => {
  cluster = await startCluster();
});

afterAll(async () => {
  await cluster?.stop();
});

afterEach(() => {
  for (const c of clients.splice(0)) c.destroy();
});

const sid = (): string => `ts-${randomUUID().slice(0, 8)}`;
const chatUrl = (base: string, session: string): string => `${base}/api/ws/chat/${session}`;

function client(user: string, session: string, urls: string[], extra: Partial<WebSocketClientOptions> = {}): WebSocketClient {
  const c = new WebSocketClient({
    url: urls.map((u) => chatUrl(u, session)), token: () => cluster.token(user), sessionId: session, WebSocket,
    reconnectDelay: 50, maxReconnectDelay: 500, connectionTimeout: tu(5000), heartbeatInterval: 2000, ...extra,
  });
  clients.push(c);
  return c;
}

function collect(c: WebSocketClient, type = 'chat_message'): WebSocketEvent[] {
  const got: WebSocketEvent[] = [];
  c.on(type, (e: WebSocketEvent) => got.push(e));
  return got;
}

/** Both edges alive (a test before may have killed one): restarts dead ones on their ports. */
async function bothEdges(): Promise<[string, string]> {
  await cluster.revive();
  const [a, b] = cluster.edges;
  if (a === undefined || b === undefined) throw new Error('the cluster has fewer than two edges');
  return [a.url, b.url];
}

function expectExactlyOnceInOrder(events: WebSocketEvent[], n: number): void {
  const offsets = events.map((e) => e.offset ?? -1);
  for (let i = 1; i < offsets.length; i++) {
    if (!((offsets[i] as number) > (offsets[i - 1] as number))) throw new Error(`offsets not strictly increasing at ${i}: ${offsets.slice(Math.max(0, i - 3), i + 3).join(',')}`);
  }
  expect(events.map((e) => (e.payload as { n: number }).n)).toEqual([...Array(n).keys()]);
}

describe('the client against a real cluster', () => {
  it('connects, authenticates, sends and receives across two edges', async () => {
    const [a, b] = await bothEdges();
    const session = sid();
    const alice = client('alice', session, [a]);
    const bob = client('bob', session, [b]);
    const atAlice = collect(alice);
    const atBob = collect(bob);
    await Promise.all([alice.connect(), bob.connect()]);
    expect(alice.getStats()).toMatchObject({ userId: 'alice', sessionId: session, status: 'connected' });

    const id = alice.sendChatMessage('hello from alice');
    bob.sendChatMessage('hello from bob');
    await waitFor(() => atAlice.length === 2 && atBob.length === 2, tu(10_000), () => `both messages at both (alice ${atAlice.length}, bob ${atBob.length})`);
    expect(atBob.map((e) => e.payload.content)).toEqual(atAlice.map((e) => e.payload.content));
    expect(atBob.map((e) => e.offset)).toEqual(atAlice.map((e) => e.offset));
    const fromAlice = atBob.find((e) => e.id === id);
    expect(fromAlice).toMatchObject({ user_id: 'alice', channel: `session:${session}`, payload: { content: 'hello from alice' } });
    expect(alice.getStats().unacknowledgedMessages).toBe(0);

    alice.sendHeartbeat();
    await waitFor(() => alice.getPerformanceMetrics().latencyMs !== undefined, tu(5000), 'a heartbeat round trip');
    const m = alice.getPerformanceMetrics();
    expect(m.messagesSent).toBeGreaterThanOrEqual(2);
    expect(m.bytesReceived).toBeGreaterThan(0);
  });

  it('receives every published message exactly once, in order, while the edge serving it is killed', async () => {
    const [a, b] = await bothEdges();
    const victim = cluster.edges[0];
    const publisherEdge = cluster.edges[1];
    if (victim === undefined || publisherEdge === undefined) throw new Error('two edges needed');
    const session = sid();
    const c = client('reader', session, [a, b]);
    const got = collect(c);
    const reconnects: string[] = [];
    c.on('reconnecting', (r) => reconnects.push(r.url));
    await c.connect();
    expect(c.getStats().url).toBe(chatUrl(a, session));

    const token = cluster.token('publisher', { scope: 'publish' });
    const N = 300;
    for (let n = 0; n < N; n++) {
      if (n === 100) process.kill(victim.pid, 'SIGKILL');
      await publish(publisherEdge.http, token, { channel: `session:${session}`, type: 'chat_message', payload: { content: `m${n}`, n }, id: `${session}-${n}` });
    }
    await waitFor(() => got.length >= N, tu(30_000), () => `${N} messages (got ${got.length}, status ${c.getState()})`);
    await new Promise((r) => setTimeout(r, 300)); // a late duplicate would show up here
    expectExactlyOnceInOrder(got, N);
    expect(reconnects[0]).toBe(chatUrl(b, session));
    expect(c.getStats().url).toBe(chatUrl(b, session));
    expect(c.getStats().connects).toBeGreaterThanOrEqual(2);
  });

  it('stores messages sent while disconnected once, in order, after reconnecting elsewhere', async () => {
    const [a, b] = await bothEdges();
    const victim = cluster.edges[0];
    if (victim === undefined) throw new Error('two edges needed');
    const session = sid();
    const writer = client('writer', session, [a, b]);
    const observer = client('observer', session, [b]);
    const seen = collect(observer);
    await Promise.all([writer.connect(), observer.connect()]);

    const before = [0, 1, 2].map((n) => writer.sendChatMessage(`w${n}`));
    await waitFor(() => seen.length === 3, tu(10_000), 'the first three messages');
    const queued: string[] = [];
    let queuedWhile = '';
    writer.on('disconnect', () => {
      if (queued.length > 0) return;
      queuedWhile = writer.getState();
      queued.push(...[5, 6, 7, 8, 9, 10, 11].map((n) => writer.sendChatMessage(`w${n}`)));
      expect(writer.getPerformanceMetrics().queuedMessages).toBe(7);
    });
    // Sent just before the edge dies: maybe stored, maybe not; resent after the reconnect either way.
    const racing = [3, 4].map((n) => writer.sendChatMessage(`w${n}`));
    process.kill(victim.pid, 'SIGKILL');
    await waitFor(() => queued.length === 7, tu(10_000), 'the writer to notice the dead edge');
    expect(queuedWhile).toBe('reconnecting');
    await waitFor(() => seen.length >= 12, tu(20_000), () => `twelve messages at the observer (got ${seen.length})`);
    await new Promise((r) => setTimeout(r, 300));
    expect(seen.map((e) => e.payload.content)).toEqual([...Array(12).keys()].map((n) => `w${n}`));
    expect(seen.map((e) => e.id)).toEqual([...before, ...racing, ...queued]);

    const history = await fetch(`${cluster.edges[cluster.edges.length - 1]?.http}/api/v1/channels/session:${session}/history?limit=100`, {
      headers: { authorization: `Bearer ${cluster.token('observer', { scope: 'publish' })}` },
      signal: AbortSignal.timeout(tu(10_000)),
    }).then((r) => r.json() as Promise<{ events: WebSocketEvent[] }>);
    const stored = history.events.filter((e) => e.type === 'chat_message').map((e) => e.id);
    expect(stored).toEqual([...before, ...racing, ...queued]);
  });

  it('does not reconnect after 4001 (a bad token)', async () => {
    const [a, b] = await bothEdges();
    const session = sid();
    const c = new WebSocketClient({ url: [chatUrl(a, session), chatUrl(b, session)], token: 'not-a-jwt', sessionId: session, WebSocket, reconnectDelay: 10 });
    clients.push(c);
    const disconnects: { code: number; willReconnect: boolean }[] = [];
    c.on('disconnect', (d) => disconnects.push(d));
    const reconnecting: unknown[] = [];
    c.on('reconnecting', (r) => reconnecting.push(r));
    await expect(c.connect()).rejects.toThrow(/4001/);
    await new Promise((r) => setTimeout(r, 500));
    expect(disconnects).toEqual([{ code: 4001, reason: expect.any(String) as string, willReconnect: false }]);
    expect(reconnecting).toEqual([]);
    expect(c.getState()).toBe(ConnectionStatus.ERROR);
  });
});

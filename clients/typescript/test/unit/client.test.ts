import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { WebSocketClient, type WebSocketClientOptions } from '../../src/client.js';
import { ConnectionStatus, type WebSocketEvent } from '../../src/wire.js';
import { FakeEdge } from '../support/fake-edge.js';
import { tu, waitFor } from '../support/cluster.js';

const edges: FakeEdge[] = [];
const clients: WebSocketClient[] = [];

async function edge(opts?: Parameters<typeof FakeEdge.start>[0]): Promise<FakeEdge> {
  const e = await FakeEdge.start(opts);
  edges.push(e);
  return e;
}

function client(opts: Partial<WebSocketClientOptions> & Pick<WebSocketClientOptions, 'url'>): WebSocketClient {
  const c = new WebSocketClient({
    token: 't1', sessionId: 's1', WebSocket, reconnectDelay: 5, maxReconnectDelay: 20, heartbeatInterval: 0, ...opts,
  });
  clients.push(c);
  return c;
}

/** A port with nothing listening: connecting fails at once. */
async function deadUrl(): Promise<string> {
  const e = await FakeEdge.start();
  const url = e.url;
  await e.close();
  return url;
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  for (const e of edges.splice(0)) await e.close();
});

const T = tu(5000);

describe('WebSocketClient state machine', () => {
  it('goes connecting → authenticating → connected, and reconnecting → connected after a 1012', async () => {
    const e = await edge();
    const c = client({ url: e.url, channels: ['user:u1'] });
    const statuses: string[] = [];
    c.on('status', (s) => statuses.push(s));
    await c.connect();
    expect(statuses).toEqual(['connecting', 'authenticating', 'connected']);
    expect(e.last.auth).toEqual({ token: 't1', session_id: 's1', channels: ['user:u1'] });
    expect(c.getStats()).toMatchObject({ connectionId: 'c1', userId: 'u1', sessionId: 's1', connects: 1 });

    e.last.socket.close(1012);
    await waitFor(() => e.conns.length === 2 && c.getState() === ConnectionStatus.CONNECTED, T, 'the reconnect');
    expect(statuses).toEqual(['connecting', 'authenticating', 'connected', 'reconnecting', 'authenticating', 'connected']);
    expect(c.getStats().lastCloseCode).toBe(1012);
  });

  it('sends recover with the last {offset, epoch} per channel, and reports channels not recovered', async () => {
    const e = await edge({
      authReply: (_auth, n) => n === 1 ? { success: true, user_id: 'u1' } : {
        success: true, user_id: 'u1',
        recovered: { 'session:s1': { recovered: true, offset: 3, epoch: 'E' }, 'user:u1': { recovered: false, reason: 'trimmed' } },
      },
    });
    const c = client({ url: e.url });
    const failures: unknown[] = [];
    c.on('recovery_failed', (f) => failures.push(...f));
    await c.connect();
    e.event(e.last, 'chat_message', { content: 'a' }, { channel: 'session:s1', offset: 2, epoch: 'E' });
    e.event(e.last, 'chat_message', { content: 'b' }, { channel: 'session:s1', offset: 3, epoch: 'E' });
    e.event(e.last, 'notification', { text: 'n' }, { channel: 'user:u1', offset: 9, epoch: 'F' });
    e.event(e.last, 'user_typing', { user_id: 'x' }, { channel: 'session:s1' });
    await waitFor(() => c.getPerformanceMetrics().messagesReceived === 4, T, 'four events');
    e.last.socket.close(1011);
    await waitFor(() => e.conns.length === 2 && c.isConnected(), T, 'the reconnect');
    expect(e.last.auth.recover).toEqual({ 'session:s1': { offset: 3, epoch: 'E' }, 'user:u1': { offset: 9, epoch: 'F' } });
    expect(failures).toEqual([{ channel: 'user:u1', reason: 'trimmed' }]);
    expect(c.getPositions()).toEqual({ 'session:s1': { offset: 3, epoch: 'E' } });
  });

  it('drops duplicate offsets per channel', async () => {
    const e = await edge();
    const c = client({ url: e.url });
    const got: number[] = [];
    c.on('chat_message', (ev: WebSocketEvent) => got.push(ev.offset ?? -1));
    await c.connect();
    for (const offset of [1, 2, 2, 3, 1, 4]) e.event(e.last, 'chat_message', { content: 'x' }, { channel: 'session:s1', offset, epoch: 'E' });
    await waitFor(() => c.getPerformanceMetrics().messagesReceived === 6, T, 'six events');
    expect(got).toEqual([1, 2, 3, 4]);
    expect(c.getPerformanceMetrics().duplicatesDropped).toBe(2);
  });

  it('rotates through the URL list on failures', async () => {
    const dead = await deadUrl();
    const e = await edge();
    const c = client({ url: [dead, e.url] });
    const tried: string[] = [];
    c.on('reconnecting', (r) => tried.push(r.url));
    await c.connect();
    expect(tried).toEqual([e.url]);
    expect(c.getStats().url).toBe(e.url);
  });

  it('measures heartbeat round trips, and drops a connection whose heartbeat goes unanswered', async () => {
    const e = await edge();
    const c = client({ url: e.url, heartbeatInterval: 30 });
    await c.connect();
    await waitFor(() => c.getPerformanceMetrics().latencyMs !== undefined, T, 'a heartbeat reply');
    expect(c.getPerformanceMetrics().latencyMs).toBeGreaterThanOrEqual(0);

    const silent = await edge({ heartbeats: false });
    const c2 = client({ url: silent.url, heartbeatInterval: 30 });
    await c2.connect();
    await waitFor(() => silent.conns.length >= 2, T, 'a reconnect after an unanswered heartbeat');
  });
});

describe('close codes', () => {
  it('do not reconnect after 4001 with a fixed token: connect() rejects, status is error', async () => {
    const e = await edge({ authReply: () => ({ close: 4001 }) });
    const c = client({ url: e.url });
    await expect(c.connect()).rejects.toThrow(/4001/);
    expect(c.getState()).toBe(ConnectionStatus.ERROR);
    await new Promise((r) => setTimeout(r, 100));
    expect(e.conns.length).toBe(1);
  });

  it('after 4001/4003 reconnect only when the token function returns a different token', async () => {
    const same = await edge({ authReply: () => ({ close: 4003 }) });
    let calls = 0;
    const c1 = client({ url: same.url, token: () => { calls++; return 'same'; } });
    await expect(c1.connect()).rejects.toThrow(/4003/);
    expect(same.conns.length).toBe(1);
    expect(calls).toBe(2); // before the connect, and to decide after the close

    const fresh = await edge({ authReply: (auth) => auth.token === 'expired' ? { close: 4001 } : { success: true, user_id: 'u' } });
    const tokens = ['expired', 'renewed'];
    const c2 = client({ url: fresh.url, token: async () => tokens.shift() ?? 'renewed' });
    await c2.connect();
    expect(fresh.conns.map((x) => x.auth.token)).toEqual(['expired', 'renewed']);
  });

  it('reconnect after 4008, 4029, 1013 and 1006; stop after a server 1000', async () => {
    const e = await edge();
    const c = client({ url: e.url });
    await c.connect();
    for (const [i, code] of [4008, 4029, 1013].entries()) {
      e.last.socket.close(code);
      await waitFor(() => e.conns.length === i + 2 && c.isConnected(), T, `a reconnect after ${code}`);
    }
    e.last.socket.terminate(); // 1006
    await waitFor(() => e.conns.length === 5 && c.isConnected(), T, 'a reconnect after 1006');
    e.last.socket.close(1000);
    await waitFor(() => c.getState() === ConnectionStatus.DISCONNECTED, T, 'disconnected');
    await new Promise((r) => setTimeout(r, 100));
    expect(e.conns.length).toBe(5);
  });

  it('give up after reconnectAttempts failures in a row', async () => {
    const dead = await deadUrl();
    const c = client({ url: dead, reconnectAttempts: 3 });
    const attempts: number[] = [];
    c.on('reconnecting', (r) => attempts.push(r.attempt));
    await expect(c.connect()).rejects.toThrow();
    expect(attempts).toEqual([1, 2, 3]);
    expect(c.getState()).toBe(ConnectionStatus.ERROR);
  });
});

describe('sending', () => {
  it('queues sends while disconnected (bounded, oldest rejected) and flushes them in order', async () => {
    const e = await edge();
    const c = client({ url: e.url, maxQueuedMessages: 3 });
    const rejected: string[] = [];
    c.on('send_rejected', (r) => rejected.push(String(r.frame.payload.content)));
    const ids = ['m1', 'm2', 'm3', 'm4', 'm5'].map((m) => c.sendChatMessage(m));
    expect(new Set(ids).size).toBe(5);
    expect(c.getPerformanceMetrics().queuedMessages).toBe(3);
    expect(rejected).toEqual(['m1', 'm2']);
    await c.connect();
    await waitFor(() => e.last.frames.length === 3, T, 'three flushed frames');
    expect(e.last.frames.map((f) => (f.payload as { content: string }).content)).toEqual(['m3', 'm4', 'm5']);
    expect(e.last.frames.map((f) => (f.payload as { id: string }).id)).toEqual(ids.slice(2));
  });

  it('sends a chat message again (same id) after a reconnect when it was not seen on the channel', async () => {
    const e = await edge();
    const c = client({ url: e.url });
    await c.connect();
    const acked = c.sendChatMessage('acked');
    const lost = c.sendChatMessage('lost');
    await waitFor(() => e.last.frames.length === 2, T, 'two frames');
    e.event(e.last, 'chat_message', { content: 'acked' }, { id: acked, channel: 'session:s1', offset: 1, epoch: 'E' });
    await waitFor(() => c.getStats().unacknowledgedMessages === 1, T, 'the echo');
    e.last.socket.close(1012);
    await waitFor(() => e.conns.length === 2 && e.last.frames.length === 1, T, 'the resend');
    expect(e.last.frames[0]).toMatchObject({ type: 'chat_message', payload: { id: lost, content: 'lost' } });
  });

  it('batches sends into {type: "batch", payload: {messages}} by time and by size', async () => {
    const e = await edge();
    const c = client({ url: e.url, batchMessages: true, batchTimeout: 20, maxBatchSize: 3 });
    await c.connect();
    for (const n of [1, 2, 3, 4, 5]) c.send('chat_typing_start', { n });
    await waitFor(() => e.last.frames.length === 2, T, 'two batch frames');
    expect(e.last.frames.map((f) => f.type)).toEqual(['batch', 'batch']);
    expect(e.allFrames().map((f) => (f.payload as { n: number }).n)).toEqual([1, 2, 3, 4, 5]);
    expect(c.getPerformanceMetrics()).toMatchObject({ batchesSent: 2, messagesSent: 5 });
    c.setBatchingEnabled(false);
    c.send('chat_typing_stop', { n: 6 });
    await waitFor(() => e.last.frames.length === 3, T, 'an unbatched frame');
    expect(e.last.frames[2]).toMatchObject({ type: 'chat_typing_stop', payload: { n: 6 } });
  });

  it('subscribeToChannels sends subscribe and remembers the channels for reconnects', async () => {
    const e = await edge();
    const c = client({ url: e.url, channels: ['user:u1'] });
    await c.connect();
    c.subscribeToChannels(['agent_status:u1'], ['user:u1']);
    await waitFor(() => e.last.frames.length === 1, T, 'the subscribe frame');
    expect(e.last.frames[0]).toMatchObject({ type: 'subscribe', payload: { channels: ['agent_status:u1'], unsubscribe_channels: ['user:u1'] } });
    e.last.socket.close(1012);
    await waitFor(() => e.conns.length === 2, T, 'the reconnect');
    expect(e.last.auth.channels).toEqual(['agent_status:u1']);
  });
});

describe('destroy', () => {
  // Fake timers count exactly the timers alive; sockets still do real I/O on 127.0.0.1.
  afterEach(() => { vi.useRealTimers(); });
  const fakeTimers = (): void => { vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] }); };
  const until = (check: () => boolean, what: string): Promise<void> =>
    vi.waitFor(() => { if (!check()) throw new Error(`waiting for ${what}`); }, { timeout: T, interval: 10 });

  it('leaves no timer, socket or listener behind when connected', async () => {
    const e = await edge();
    fakeTimers();
    const c = client({ url: e.url, heartbeatInterval: 60_000, batchMessages: true, batchTimeout: 60_000 });
    c.on('message', () => undefined);
    c.on('status', () => undefined);
    await c.connect();
    c.send('chat_typing_start', {}); // a pending batch timer, besides the heartbeat timer
    expect(vi.getTimerCount()).toBe(2);
    c.destroy();
    expect(c.listenerCount()).toBe(0);
    expect(c.getState()).toBe(ConnectionStatus.DISCONNECTED);
    await until(() => e.last.socket.readyState === WebSocket.CLOSED, 'the socket to close');
    await until(() => vi.getTimerCount() === 0, 'no timer left'); // ws's own close timer ends with the socket
    expect(() => c.send('x')).toThrow(/destroyed/);
  });

  it('leaves no timer behind while waiting to reconnect', async () => {
    const e = await edge();
    fakeTimers();
    const c = client({ url: e.url, reconnectDelay: 60_000, maxReconnectDelay: 60_000, random: () => 0.99 });
    await c.connect();
    e.last.socket.close(1012);
    await until(() => c.getState() === ConnectionStatus.RECONNECTING, 'reconnecting');
    expect(vi.getTimerCount()).toBe(1);
    c.destroy();
    expect(vi.getTimerCount()).toBe(0);
    expect(e.conns.length).toBe(1);
  });
});

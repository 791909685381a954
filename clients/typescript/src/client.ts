/**
 * WebSocketClient: one logical connection to a Switchboard session, kept alive across edges.
 *
 * - Connect: open a socket to the current URL, send the auth frame (with `recover` positions
 *   after the first connect), wait for `{success: true}` within `connectionTimeout`.
 * - Close: the close-code table (close-codes.ts) decides. 1000, 4001 and 4003 stop the client,
 *   except that 4001/4003 reconnect when the token function returns a token other than the one
 *   that failed. Everything else reconnects with full-jitter backoff, to the next URL in the list.
 * - Exactly once: events with an offset at or below the channel's last one are dropped.
 * - Sends while disconnected wait in a bounded queue (oldest rejected first, reported) and go out
 *   in order after the next auth. Chat messages carry a client id; those sent but not yet seen
 *   back on the channel are sent again after a reconnect, and the server stores an id once.
 */
import { backoffDelay } from './backoff.js';
import { CloseCode, isAuthFailure, reasonOf, shouldReconnect } from './close-codes.js';
import { Emitter } from './emitter.js';
import { PositionTracker, type RecoveryFailure } from './positions.js';
import { BoundedQueue } from './queue.js';
import {
  type AuthReply,
  type ChatAttachment,
  type ClientFrame,
  ConnectionStatus,
  isObject,
  newId,
  nowIso,
  type Payload,
  type RecoveryResult,
  type WebSocketEvent,
  WebSocketEventType,
} from './wire.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- DOM and `ws` sockets type their handlers differently */
/** What the client needs of a WebSocket: the browser's, or `ws`'s in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
/* eslint-enable @typescript-eslint/no-explicit-any */

export type TokenSource = string | (() => string | Promise<string>);

export interface WebSocketClientOptions {
  /** An edge URL, or a list of edge URLs tried in turn (the next one after each failure). */
  url: string | readonly string[];
  /** A token, or a function that returns a fresh one (sync or Promise) before each connect. */
  token: TokenSource;
  sessionId?: string;
  /** Extra channels to subscribe to in the auth frame. */
  channels?: readonly string[];
  /** Reconnect attempts in a row before giving up (default: unlimited). */
  reconnectAttempts?: number;
  /** Backoff base in ms (default 500); the cap doubles per attempt up to `maxReconnectDelay`. */
  reconnectDelay?: number;
  /** Backoff cap in ms (default 10000). */
  maxReconnectDelay?: number;
  /** Heartbeat period in ms (default 20000; 0 turns heartbeats off). A heartbeat unanswered by
   * the next one drops the connection (it is half-open) and reconnects. */
  heartbeatInterval?: number;
  /** Time in ms for open + auth (default 10000). */
  connectionTimeout?: number;
  batchMessages?: boolean;
  /** How long a batch collects messages, in ms (default 10). */
  batchTimeout?: number;
  /** Messages per batch frame (default 50). */
  maxBatchSize?: number;
  /** Bound of the send queue while disconnected (default 1000). */
  maxQueuedMessages?: number;
  /** Send `recover` positions after a reconnect (default true). */
  recover?: boolean;
  debug?: boolean;
  /** The WebSocket implementation where there is no global one (Node: `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Random source for backoff jitter, in [0, 1) (tests). */
  random?: () => number;
}

export interface DisconnectInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export interface ReconnectingInfo {
  attempt: number;
  delayMs: number;
  url: string;
}

export interface RecoveryReport {
  channels: Record<string, RecoveryResult>;
  failed: RecoveryFailure[];
}

export interface SendRejected {
  frame: ClientFrame;
  reason: 'queue_full' | 'destroyed';
}

/** Events of the client itself, besides the server's event types. */
export interface ClientEventMap {
  connect: AuthReply;
  disconnect: DisconnectInfo;
  reconnecting: ReconnectingInfo;
  reconnect: AuthReply;
  status: ConnectionStatus;
  error: Error;
  message: WebSocketEvent;
  recovered: RecoveryReport;
  recovery_failed: RecoveryFailure[];
  send_rejected: SendRejected;
}

export type ClientEventName = keyof ClientEventMap;
export type ListenerFor<K extends string> = K extends ClientEventName
  ? (data: ClientEventMap[K]) => void
  : (event: WebSocketEvent) => void;

export interface ConnectionStats {
  status: ConnectionStatus;
  url: string;
  connectionId?: string;
  userId?: string;
  sessionId?: string;
  connects: number;
  reconnectAttempt: number;
  lastCloseCode?: number;
  queuedMessages: number;
  unacknowledgedMessages: number;
  channels: string[];
}

export interface PerformanceMetrics {
  messagesSent: number;
  messagesReceived: number;
  bytesSent: number;
  bytesReceived: number;
  /** Messages both ways per second over the last 10 s. */
  messagesPerSecond: number;
  queuedMessages: number;
  /** Round-trip time of the last heartbeat → connection_heartbeat, in ms. */
  latencyMs?: number;
  averageLatencyMs?: number;
  duplicatesDropped: number;
  batchesSent: number;
}

type Timer = ReturnType<typeof setTimeout>;

const OPEN = 1;
const RATE_WINDOW_S = 10;

function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

/** Counts messages per whole second over a sliding window. */
class RateMeter {
  private readonly buckets = new Map<number, number>();

  add(n = 1): void {
    const sec = Math.floor(Date.now() / 1000);
    this.buckets.set(sec, (this.buckets.get(sec) ?? 0) + n);
    for (const k of this.buckets.keys()) if (k <= sec - RATE_WINDOW_S) this.buckets.delete(k);
  }

  perSecond(): number {
    const since = Math.floor(Date.now() / 1000) - RATE_WINDOW_S;
    let n = 0;
    for (const [k, v] of this.buckets) if (k > since) n += v;
    return n / RATE_WINDOW_S;
  }
}

export class WebSocketClient {
  private readonly opts: Required<Omit<WebSocketClientOptions, 'sessionId' | 'WebSocket' | 'channels' | 'url'>>;
  private readonly urls: string[];
  private readonly WS: WebSocketConstructor;
  private readonly emitter = new Emitter();
  private readonly positions = new PositionTracker();
  private readonly queue: BoundedQueue<ClientFrame>;
  /** Chat messages sent on a socket but not yet seen on a channel, by id (resent on reconnect). */
  private readonly unacked = new Map<string, ClientFrame>();
  private readonly channels: Set<string>;
  private readonly sessionId: string | undefined;

  private status = ConnectionStatus.DISCONNECTED;
  private ws: WebSocketLike | null = null;
  private generation = 0;
  private urlIndex = 0;
  private attempt = 0;
  private connects = 0;
  private stopped = true;
  private destroyed = false;
  private lastToken: string | undefined;
  private nextToken: string | undefined;
  private authReply: AuthReply | undefined;
  private lastCloseCode: number | undefined;

  private connectTimer: Timer | undefined;
  private reconnectTimer: Timer | undefined;
  private heartbeatTimer: Timer | undefined;
  private batchTimer: Timer | undefined;
  private batch: ClientFrame[] = [];
  private batching: boolean;
  private heartbeatSentAt: number | undefined;

  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  private readonly metrics = {
    messagesSent: 0, messagesReceived: 0, bytesSent: 0, bytesReceived: 0,
    duplicatesDropped: 0, batchesSent: 0, latencyMs: undefined as number | undefined,
    latencySum: 0, latencyCount: 0,
  };
  private readonly rate = new RateMeter();

  constructor(options: WebSocketClientOptions) {
    const urls = typeof options.url === 'string' ? [options.url] : [...options.url];
    if (urls.length === 0) throw new TypeError('WebSocketClient needs at least one url');
    this.urls = urls;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) throw new TypeError('no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package)');
    this.WS = WS;
    this.sessionId = options.sessionId;
    this.channels = new Set(options.channels ?? []);
    this.opts = {
      token: options.token,
      reconnectAttempts: options.reconnectAttempts ?? Infinity,
      reconnectDelay: options.reconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 10_000,
      heartbeatInterval: options.heartbeatInterval ?? 20_000,
      connectionTimeout: options.connectionTimeout ?? 10_000,
      batchMessages: options.batchMessages ?? false,
      batchTimeout: options.batchTimeout ?? 10,
      maxBatchSize: options.maxBatchSize ?? 50,
      maxQueuedMessages: options.maxQueuedMessages ?? 1000,
      recover: options.recover ?? true,
      debug: options.debug ?? false,
      random: options.random ?? Math.random,
    };
    this.batching = this.opts.batchMessages;
    this.queue = new BoundedQueue(this.opts.maxQueuedMessages);
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  /** Connects (and keeps reconnecting as the close codes allow). Resolves once authenticated;
   * rejects when the client stops for good before that (terminal close, disconnect, destroy). */
  connect(): Promise<void> {
    if (this.destroyed) return Promise.reject(new Error('client destroyed'));
    const p = new Promise<void>((resolve, reject) => {
      if (this.status === ConnectionStatus.CONNECTED) resolve();
      else this.waiters.push({ resolve, reject });
    });
    p.catch(() => undefined); // a caller that ignores the promise gets no unhandled rejection
    if (this.stopped) {
      this.stopped = false;
      this.attempt = 0;
      this.setStatus(ConnectionStatus.CONNECTING);
      void this.open();
    }
    return p;
  }

  /** Closes with 1000 and stops reconnecting. Queued sends stay for a later connect(). */
  disconnect(): void {
    this.stopped = true;
    this.generation++;
    this.clearTimers();
    this.moveBatchToQueue();
    this.closeSocket(CloseCode.NORMAL, 'client disconnect');
    this.setStatus(ConnectionStatus.DISCONNECTED);
    this.settleWaiters(new Error('disconnected'));
  }

  /** disconnect(), then drop every listener, queued message and position: nothing is left behind. */
  destroy(): void {
    if (this.destroyed) return;
    this.disconnect();
    this.destroyed = true;
    for (const frame of this.queue.drain()) this.emit('send_rejected', { frame, reason: 'destroyed' });
    this.unacked.clear();
    this.positions.clear();
    this.emitter.removeAllListeners();
  }

  getState(): ConnectionStatus {
    return this.status;
  }

  isConnected(): boolean {
    return this.status === ConnectionStatus.CONNECTED;
  }

  // ---- events ------------------------------------------------------------------------------

  on<K extends string>(type: K, listener: ListenerFor<K>): () => void {
    return this.emitter.on(type, listener as (data: never) => void);
  }

  off<K extends string>(type: K, listener: ListenerFor<K>): void {
    this.emitter.off(type, listener as (data: never) => void);
  }

  removeAllListeners(type?: string): void {
    this.emitter.removeAllListeners(type);
  }

  listenerCount(type?: string): number {
    return this.emitter.listenerCount(type);
  }

  // ---- sending -----------------------------------------------------------------------------

  /** Sends `{type, payload, timestamp}` now, or queues it while disconnected. Returns the frame. */
  send(type: string, payload: Payload = {}): ClientFrame {
    if (this.destroyed) throw new Error('client destroyed');
    const frame: ClientFrame = { type, payload, timestamp: nowIso() };
    if (type === 'chat_message' && typeof payload.id !== 'string') frame.payload = { ...payload, id: newId() };
    if (this.status !== ConnectionStatus.CONNECTED) {
      this.enqueue(frame);
    } else if (this.batching) {
      this.batch.push(frame);
      if (this.batch.length >= this.opts.maxBatchSize) this.flushBatch();
      else this.batchTimer ??= setTimeout(() => this.flushBatch(), this.opts.batchTimeout);
    } else {
      this.transmit([frame]);
    }
    return frame;
  }

  /** Sends a chat message with a client-generated id; returns that id. */
  sendChatMessage(content: string, attachments?: ChatAttachment[]): string {
    const payload: Payload = { content, id: newId() };
    if (attachments !== undefined && attachments.length > 0) payload.attachments = attachments;
    return this.send('chat_message', payload).payload.id as string;
  }

  sendTyping(isTyping: boolean): void {
    if (this.isConnected()) this.send(isTyping ? 'chat_typing_start' : 'chat_typing_stop', { is_typing: isTyping });
  }

  /** Subscribes to `channels` and leaves `unsubscribe`; remembered for every reconnect. */
  subscribeToChannels(channels: readonly string[], unsubscribe: readonly string[] = []): void {
    for (const c of channels) this.channels.add(c);
    for (const c of unsubscribe) {
      this.channels.delete(c);
      this.positions.forget(c);
    }
    if (this.isConnected()) this.send('subscribe', { channels: [...channels], unsubscribe_channels: [...unsubscribe] });
  }

  /** Asks who is present in a channel; the answer is a `presence_response` event. */
  requestPresence(channel: string): void {
    if (this.isConnected()) this.send('presence', { channel });
  }

  /** Sends a heartbeat now (not queued while disconnected); the reply measures latency. */
  sendHeartbeat(): void {
    if (!this.isConnected()) return;
    this.heartbeatSentAt = Date.now();
    this.transmit([{ type: 'heartbeat', payload: {}, timestamp: nowIso() }]);
  }

  setBatchingEnabled(enabled: boolean): void {
    this.batching = enabled;
    if (!enabled) this.flushBatch();
  }

  // ---- stats -------------------------------------------------------------------------------

  getStats(): ConnectionStats {
    const r = this.authReply;
    const stats: ConnectionStats = {
      status: this.status,
      url: this.currentUrl(),
      connects: this.connects,
      reconnectAttempt: this.attempt,
      queuedMessages: this.queue.size + this.batch.length,
      unacknowledgedMessages: this.unacked.size,
      channels: [...this.channels],
    };
    if (r?.connection_id !== undefined) stats.connectionId = r.connection_id;
    if (r?.user_id !== undefined) stats.userId = r.user_id;
    const sid = r?.session_id ?? this.sessionId;
    if (sid !== undefined) stats.sessionId = sid;
    if (this.lastCloseCode !== undefined) stats.lastCloseCode = this.lastCloseCode;
    return stats;
  }

  getPerformanceMetrics(): PerformanceMetrics {
    const m = this.metrics;
    const out: PerformanceMetrics = {
      messagesSent: m.messagesSent,
      messagesReceived: m.messagesReceived,
      bytesSent: m.bytesSent,
      bytesReceived: m.bytesReceived,
      messagesPerSecond: this.rate.perSecond(),
      queuedMessages: this.queue.size + this.batch.length,
      duplicatesDropped: m.duplicatesDropped,
      batchesSent: m.batchesSent,
    };
    if (m.latencyMs !== undefined) out.latencyMs = m.latencyMs;
    if (m.latencyCount > 0) out.averageLatencyMs = m.latencySum / m.latencyCount;
    return out;
  }

  /** The last `{offset, epoch}` received per channel (what the next reconnect recovers from). */
  getPositions(): Record<string, { offset: number; epoch: string }> {
    return this.positions.recoverMap() ?? {};
  }

  // ---- connection --------------------------------------------------------------------------

  private currentUrl(): string {
    return this.urls[this.urlIndex % this.urls.length] as string;
  }

  private async resolveToken(): Promise<string> {
    if (this.nextToken !== undefined) {
      const t = this.nextToken;
      this.nextToken = undefined;
      return t;
    }
    const src = this.opts.token;
    return typeof src === 'string' ? src : await src();
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    let token: string;
    try {
      token = await this.resolveToken();
    } catch (err) {
      if (gen !== this.generation || this.stopped) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.afterClose(gen, 1006, 'token function failed');
      return;
    }
    if (gen !== this.generation || this.stopped) return;
    this.lastToken = token;
    const url = this.currentUrl();
    this.log('connecting', { url, attempt: this.attempt });
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (err) {
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.afterClose(gen, 1006, 'bad url');
      return;
    }
    this.ws = ws;
    this.connectTimer = setTimeout(() => this.drop(gen, 'connection timeout'), this.opts.connectionTimeout);
    ws.onopen = () => {
      if (gen !== this.generation) return;
      this.setStatus(ConnectionStatus.AUTHENTICATING);
      this.rawSend(ws, JSON.stringify(this.authFrame(token)));
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (gen === this.generation) this.onFrame(gen, ev.data);
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (gen === this.generation) this.afterClose(gen, ev.code ?? 1006, ev.reason ?? '');
    };
    ws.onerror = () => undefined; // a close event follows
  }

  private authFrame(token: string): Record<string, unknown> {
    const frame: Record<string, unknown> = { token };
    if (this.sessionId !== undefined) frame.session_id = this.sessionId;
    if (this.channels.size > 0) frame.channels = [...this.channels];
    const recover = this.opts.recover ? this.positions.recoverMap() : undefined;
    if (recover !== undefined) frame.recover = recover;
    return frame;
  }

  private onFrame(gen: number, data: unknown): void {
    const text = typeof data === 'string' ? data : String(data);
    this.metrics.bytesReceived += utf8Length(text);
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch {
      this.log('bad_frame', {});
      return;
    }
    if (!isObject(obj)) return;
    if ('success' in obj) {
      this.onAuthReply(gen, obj as unknown as AuthReply);
      return;
    }
    this.onEvent(obj as unknown as WebSocketEvent);
  }

  private onAuthReply(gen: number, reply: AuthReply): void {
    if (!reply.success) {
      this.emit('error', new Error(`authentication failed: ${reply.error ?? reply.code ?? 'unknown'}`));
      return; // the server closes with 4001/4003 next
    }
    if (this.status === ConnectionStatus.CONNECTED) return;
    clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    const reconnected = this.connects > 0;
    this.authReply = reply;
    this.connects++;
    this.attempt = 0;
    this.setStatus(ConnectionStatus.CONNECTED);
    this.startHeartbeat(gen);
    this.emit('connect', reply);
    if (reconnected) this.emit('reconnect', reply);
    this.onRecovery(reply.recovered);
    this.flushQueue();
    this.settleWaiters();
  }

  private onEvent(event: WebSocketEvent): void {
    this.metrics.messagesReceived++;
    this.rate.add();
    if (!this.positions.accept(event)) {
      this.metrics.duplicatesDropped++;
      return;
    }
    this.unacked.delete(event.id);
    switch (event.type) {
      case WebSocketEventType.CONNECTION_HEARTBEAT:
        this.onHeartbeatReply();
        break;
      case WebSocketEventType.RECOVER_RESPONSE: {
        const channels = isObject(event.payload) ? event.payload.channels : undefined;
        if (isObject(channels)) this.onRecovery(channels as Record<string, RecoveryResult>);
        break;
      }
      case WebSocketEventType.CONNECTION_ERROR: {
        const p = event.payload;
        if (typeof p.message_id === 'string' && p.retryable !== true) this.unacked.delete(p.message_id);
        break;
      }
    }
    this.emit('message', event);
    this.emit(event.type, event);
  }

  private onRecovery(results: Record<string, RecoveryResult> | undefined): void {
    if (results === undefined || Object.keys(results).length === 0) return;
    const failed = this.positions.applyRecovery(results);
    this.emit('recovered', { channels: results, failed });
    if (failed.length > 0) this.emit('recovery_failed', failed);
  }

  /** What happens after a socket closed (or was dropped): stop, or schedule a reconnect. */
  private afterClose(gen: number, code: number, reason: string): void {
    if (gen !== this.generation) return;
    this.generation++;
    this.ws = null;
    this.clearTimers();
    this.moveBatchToQueue();
    this.lastCloseCode = code;
    this.heartbeatSentAt = undefined;
    if (this.stopped) return;
    this.setStatus(ConnectionStatus.RECONNECTING); // until decide() says otherwise
    void this.decide(code, reason || reasonOf(code));
  }

  private async decide(code: number, reason: string): Promise<void> {
    const gen = this.generation;
    let reconnect = shouldReconnect(code);
    if (!reconnect && isAuthFailure(code) && typeof this.opts.token === 'function') {
      try {
        const fresh = await this.opts.token();
        if (gen !== this.generation || this.stopped) return;
        reconnect = fresh !== this.lastToken;
        if (reconnect) this.nextToken = fresh;
      } catch {
        reconnect = false;
      }
    }
    if (reconnect && this.attempt >= this.opts.reconnectAttempts) reconnect = false;
    this.log('closed', { code, reason, reconnect });
    this.emit('disconnect', { code, reason, willReconnect: reconnect });
    if (!reconnect) {
      this.stopped = true;
      const terminal = code !== CloseCode.NORMAL;
      this.setStatus(terminal ? ConnectionStatus.ERROR : ConnectionStatus.DISCONNECTED);
      const err = new Error(`connection closed with ${code} (${reason})`);
      if (terminal) this.emit('error', err);
      this.settleWaiters(err);
      return;
    }
    this.attempt++;
    this.urlIndex++;
    const delayMs = backoffDelay(this.attempt, { baseMs: this.opts.reconnectDelay, maxMs: this.opts.maxReconnectDelay }, this.opts.random);
    this.setStatus(ConnectionStatus.RECONNECTING);
    this.emit('reconnecting', { attempt: this.attempt, delayMs, url: this.currentUrl() });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.stopped) void this.open();
    }, delayMs);
  }

  /** Gives up on the current socket without waiting for its close (timeouts, dead heartbeats). */
  private drop(gen: number, reason: string): void {
    if (gen !== this.generation) return;
    this.log('drop', { reason });
    this.closeSocket(CloseCode.NORMAL, reason);
    this.afterClose(gen, 1006, reason);
  }

  private closeSocket(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = null;
    if (ws === null) return;
    ws.onopen = ws.onmessage = ws.onclose = () => undefined;
    ws.onerror = () => undefined; // `ws` throws an unhandled 'error' without a listener
    try {
      ws.close(code, reason);
    } catch {
      // closing a socket that never opened can throw in some implementations
    }
  }

  // ---- heartbeats --------------------------------------------------------------------------

  private startHeartbeat(gen: number): void {
    if (this.opts.heartbeatInterval <= 0) return;
    this.heartbeatTimer = setTimeout(() => {
      this.heartbeatTimer = undefined;
      if (gen !== this.generation) return;
      if (this.heartbeatSentAt !== undefined) {
        this.drop(gen, 'heartbeat unanswered');
        return;
      }
      this.sendHeartbeat();
      this.startHeartbeat(gen);
    }, this.opts.heartbeatInterval);
  }

  private onHeartbeatReply(): void {
    if (this.heartbeatSentAt === undefined) return;
    const rtt = Date.now() - this.heartbeatSentAt;
    this.heartbeatSentAt = undefined;
    this.metrics.latencyMs = rtt;
    this.metrics.latencySum += rtt;
    this.metrics.latencyCount++;
  }

  // ---- queue and batches -------------------------------------------------------------------

  private enqueue(frame: ClientFrame): void {
    if (frame.type === 'heartbeat') return;
    const dropped = this.queue.push(frame);
    if (dropped !== undefined) this.emit('send_rejected', { frame: dropped, reason: 'queue_full' });
  }

  /** After auth: chat messages that may not have been stored are sent again (same id), then the
   * queue, in the order the application sent them. */
  private flushQueue(): void {
    const frames = [...this.unacked.values(), ...this.queue.drain()];
    this.unacked.clear();
    if (frames.length === 0) return;
    if (this.batching) {
      for (let i = 0; i < frames.length; i += this.opts.maxBatchSize) this.transmit(frames.slice(i, i + this.opts.maxBatchSize));
    } else {
      for (const f of frames) this.transmit([f]);
    }
  }

  private flushBatch(): void {
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    const frames = this.batch;
    this.batch = [];
    if (frames.length === 0) return;
    if (this.isConnected()) this.transmit(frames);
    else for (const f of frames) this.enqueue(f);
  }

  private moveBatchToQueue(): void {
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    const frames = this.batch;
    this.batch = [];
    for (const f of frames) this.enqueue(f);
  }

  /** Writes frames to the socket (one frame, or a batch frame); frames that cannot be written
   * go back to the queue. */
  private transmit(frames: ClientFrame[]): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== OPEN || !this.isConnected()) {
      for (const f of frames) this.enqueue(f);
      return;
    }
    const out: ClientFrame = frames.length === 1
      ? (frames[0] as ClientFrame)
      : { type: 'batch', payload: { messages: frames }, timestamp: nowIso() };
    if (frames.length > 1) this.metrics.batchesSent++;
    this.rawSend(ws, JSON.stringify(out));
    this.metrics.messagesSent += frames.length;
    this.rate.add(frames.length);
    for (const f of frames) {
      if (f.type === 'chat_message') {
        this.unacked.set(f.payload.id as string, f);
        while (this.unacked.size > this.opts.maxQueuedMessages) {
          this.unacked.delete(this.unacked.keys().next().value as string);
        }
      }
    }
  }

  private rawSend(ws: WebSocketLike, text: string): void {
    this.metrics.bytesSent += utf8Length(text);
    ws.send(text);
  }

  // ---- helpers -----------------------------------------------------------------------------

  private clearTimers(): void {
    clearTimeout(this.connectTimer);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.heartbeatTimer);
    this.connectTimer = this.reconnectTimer = this.heartbeatTimer = undefined;
  }

  private setStatus(status: ConnectionStatus): void {
    if (status === this.status) return;
    this.status = status;
    this.emit('status', status);
  }

  private settleWaiters(err?: Error): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) (err === undefined ? w.resolve() : w.reject(err));
  }

  private emit<K extends ClientEventName>(type: K, data: ClientEventMap[K]): void;
  private emit(type: string, data: WebSocketEvent): void;
  private emit(type: string, data: unknown): void {
    this.emitter.emit(type, data);
  }

  private log(event: string, fields: Record<string, unknown>): void {
    if (this.opts.debug) console.debug('[switchboard]', event, fields);
  }
}

/**
 * A minimal edge for unit tests: a real `ws` WebSocketServer on 127.0.0.1 that speaks the auth
 * handshake and records every frame, driven by each test (close codes, events, replies).
 */
import { type WebSocket, WebSocketServer } from 'ws';

export interface FakeConn {
  socket: WebSocket;
  auth: Record<string, unknown>;
  frames: Record<string, unknown>[];
}

export interface FakeEdgeOptions {
  /** The auth reply; default `{success: true, user_id: 'u1', connection_id: 'c<n>'}`. */
  authReply?: (auth: Record<string, unknown>, n: number) => Record<string, unknown> | { close: number };
  /** Answer heartbeats with connection_heartbeat (default true). */
  heartbeats?: boolean;
}

export class FakeEdge {
  readonly conns: FakeConn[] = [];
  private constructor(private readonly wss: WebSocketServer, readonly url: string) {}

  static async start(opts: FakeEdgeOptions = {}): Promise<FakeEdge> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((res) => wss.once('listening', () => res()));
    const addr = wss.address();
    if (typeof addr === 'string' || addr === null) throw new Error('no port');
    const edge = new FakeEdge(wss, `ws://127.0.0.1:${addr.port}`);
    wss.on('connection', (socket) => {
      let conn: FakeConn | undefined;
      socket.on('message', (raw) => {
        const msg = JSON.parse(String(raw)) as Record<string, unknown>;
        if (conn === undefined) {
          conn = { socket, auth: msg, frames: [] };
          edge.conns.push(conn);
          const reply = opts.authReply?.(msg, edge.conns.length) ?? { success: true, user_id: 'u1', connection_id: `c${edge.conns.length}` };
          if ('close' in reply && typeof reply.close === 'number') {
            socket.send(JSON.stringify({ success: false, error: 'nope', code: 'auth_failed' }));
            socket.close(reply.close);
          } else {
            socket.send(JSON.stringify(reply));
          }
          return;
        }
        conn.frames.push(msg);
        if (msg.type === 'heartbeat' && opts.heartbeats !== false) {
          socket.send(JSON.stringify({ id: 'hb', type: 'connection_heartbeat', timestamp: new Date().toISOString(), payload: {} }));
        }
      });
    });
    return edge;
  }

  get last(): FakeConn {
    const c = this.conns[this.conns.length - 1];
    if (c === undefined) throw new Error('no connection yet');
    return c;
  }

  /** Every client frame received on every connection, batches unpacked. */
  allFrames(): Record<string, unknown>[] {
    return this.conns.flatMap((c) => c.frames).flatMap((f) => f.type === 'batch'
      ? ((f.payload as { messages: Record<string, unknown>[] }).messages)
      : [f]);
  }

  event(conn: FakeConn, type: string, payload: Record<string, unknown>, extra: Record<string, unknown> = {}): void {
    conn.socket.send(JSON.stringify({ id: `e${Math.random()}`, type, timestamp: new Date().toISOString(), payload, ...extra }));
  }

  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    await new Promise<void>((res) => this.wss.close(() => res()));
  }
}

/** Connects a WebSocketClient's events to a chat state store (a reducer's dispatch). */
import type { WebSocketClient } from './client.js';
import type { ChatAction } from './state.js';

export function sessionChannel(sessionId: string): string {
  return `session:${sessionId}`;
}

/** Feeds every event, status change and recovery failure of `client` to `dispatch`, and asks
 * for the session's presence on each (re)connect. Returns the function that unbinds. */
export function bindChatState(client: WebSocketClient, dispatch: (action: ChatAction) => void, sessionId?: string): () => void {
  const offs = [
    client.on('message', (event) => {
      const self = client.getStats().userId;
      dispatch(self !== undefined ? { kind: 'event', event, selfUserId: self } : { kind: 'event', event });
    }),
    client.on('status', (status) => dispatch({ kind: 'status', status })),
    client.on('recovery_failed', (failed) => dispatch({ kind: 'unrecovered', channels: failed.map((f) => f.channel) })),
    client.on('connect', () => {
      if (sessionId !== undefined) client.requestPresence(sessionChannel(sessionId));
    }),
  ];
  dispatch({ kind: 'status', status: client.getState() });
  return () => offs.forEach((off) => off());
}

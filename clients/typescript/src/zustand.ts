/**
 * A Zustand slice: `create<MyStore>()((...a) => ({ ...createWebSocketSlice(...a), ...other }))`.
 * Its state is the same ChatState that the React hooks keep, reduced by the same reducer.
 */
import type { StateCreator } from 'zustand';
import { bindChatState } from './binding.js';
import { WebSocketClient, type WebSocketClientOptions } from './client.js';
import { type ChatAction, chatActionReducer, type ChatState, initialChatState } from './state.js';
import type { ChatAttachment } from './wire.js';

export interface WebSocketSlice extends ChatState {
  client: WebSocketClient | null;
  /** Creates a client (replacing any previous one) and connects it; resolves once connected. */
  connectWebSocket: (options: WebSocketClientOptions) => Promise<void>;
  /** Closes and destroys the client; the chat state stays until the next connect. */
  disconnectWebSocket: () => void;
  /** Sends a chat message (queued while disconnected); returns its id, or undefined without a client. */
  sendMessage: (content: string, attachments?: ChatAttachment[]) => string | undefined;
  /** Applies an action to the chat state (what the client binding calls). */
  dispatchChat: (action: ChatAction) => void;
}

export function createWebSocketSlice<S extends WebSocketSlice = WebSocketSlice>(
  ...[set, get]: Parameters<StateCreator<S, [], [], WebSocketSlice>>
): WebSocketSlice {
  let unbind: (() => void) | undefined;
  const update = (patch: Partial<WebSocketSlice>): void => set(patch as Partial<S>);
  const chatOf = (s: WebSocketSlice): ChatState => ({
    connectionStatus: s.connectionStatus, messages: s.messages, typingUsers: s.typingUsers,
    presence: s.presence, agent: s.agent, unrecovered: s.unrecovered,
  });
  const teardown = (): void => {
    unbind?.();
    unbind = undefined;
    get().client?.destroy();
  };
  return {
    ...initialChatState(),
    client: null,
    dispatchChat: (action) => {
      const before = chatOf(get());
      const after = chatActionReducer(before, action);
      if (after !== before) update(after);
    },
    connectWebSocket: (options) => {
      teardown();
      const client = new WebSocketClient(options);
      update({ ...initialChatState(), client });
      unbind = bindChatState(client, (a) => get().dispatchChat(a), options.sessionId);
      return client.connect();
    },
    disconnectWebSocket: () => {
      teardown();
      update({ client: null, connectionStatus: initialChatState().connectionStatus, typingUsers: [] });
    },
    sendMessage: (content, attachments) => get().client?.sendChatMessage(content, attachments),
  };
}

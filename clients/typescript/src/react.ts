/**
 * React hooks over WebSocketClient. Each hook owns one client: created in an effect, destroyed
 * on unmount or when its identity (URL, session, user, token) changes.
 */
import { useCallback, useEffect, useReducer, useRef, useState } from 'react';
import { bindChatState, sessionChannel } from './binding.js';
import { WebSocketClient, type WebSocketClientOptions, type TokenSource } from './client.js';
import {
  agentReducer, chatActionReducer, initialAgentState, initialChatState,
  type AgentState, type ChatMessage,
} from './state.js';
import { ConnectionStatus, type ChatAttachment, type Payload, type WebSocketEvent } from './wire.js';

/** Options of the hooks besides the session/user and token: everything WebSocketClient takes. */
export type HookOptions = Partial<Omit<WebSocketClientOptions, 'token' | 'sessionId'>>;

/** `ws(s)://<this page's host><path>` in a browser. */
export function defaultUrl(path: string): string {
  const loc = (globalThis as { location?: { protocol: string; host: string } }).location;
  if (loc === undefined) throw new TypeError('no url given and no page location to derive one from');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}${path}`;
}

function identity(url: unknown, token: TokenSource, id: string): string {
  return JSON.stringify([url, typeof token === 'string' ? token : 'fn', id]);
}

/** Owns a client for the component's lifetime; `token` functions are read through a ref. */
function useClient(options: WebSocketClientOptions, key: string): WebSocketClient | null {
  const [client, setClient] = useState<WebSocketClient | null>(null);
  const latest = useRef(options);
  latest.current = options;
  useEffect(() => {
    const opts = latest.current;
    const token = opts.token;
    const c = new WebSocketClient({
      ...opts,
      token: typeof token === 'string' ? token : () => {
        const t = latest.current.token;
        return typeof t === 'string' ? t : t();
      },
    });
    setClient(c);
    void c.connect();
    return () => {
      c.destroy();
      setClient(null);
    };
  }, [key]);
  return client;
}

export interface UseWebSocketResult {
  client: WebSocketClient | null;
  status: ConnectionStatus;
  lastEvent: WebSocketEvent | undefined;
  send: (type: string, payload?: Payload) => void;
}

/** A connected client, its status and the last event it received. */
export function useWebSocket(config: WebSocketClientOptions): UseWebSocketResult {
  const key = identity(config.url, config.token, config.sessionId ?? '');
  const client = useClient(config, key);
  const [status, setStatus] = useState(ConnectionStatus.DISCONNECTED);
  const [lastEvent, setLastEvent] = useState<WebSocketEvent | undefined>(undefined);
  useEffect(() => {
    if (client === null) return undefined;
    setStatus(client.getState());
    const offs = [client.on('status', setStatus), client.on('message', setLastEvent)];
    return () => offs.forEach((off) => off());
  }, [client]);
  const send = useCallback((type: string, payload?: Payload) => { client?.send(type, payload ?? {}); }, [client]);
  return { client, status, lastEvent, send };
}

export interface UseChatMessagesResult {
  messages: ChatMessage[];
  typingUsers: string[];
  presentUsers: string[];
  agent: AgentState;
  status: ConnectionStatus;
  /** Channels the server could not recover after a reconnect (reload them). */
  unrecovered: string[];
  /** Sends a chat message (queued while disconnected); returns its id. */
  sendMessage: (content: string, attachments?: ChatAttachment[]) => string | undefined;
  setTyping: (isTyping: boolean) => void;
  client: WebSocketClient | null;
}

/** A chat session: messages (streamed replies assembled), typing users, presence, agent status. */
export function useChatMessages(sessionId: string, token: TokenSource, options: HookOptions = {}): UseChatMessagesResult {
  const url = options.url ?? defaultUrl(`/api/ws/chat/${sessionId}`);
  const client = useClient({ ...options, url, token, sessionId }, identity(url, token, sessionId));
  const [state, dispatch] = useReducer(chatActionReducer, undefined, initialChatState);
  useEffect(() => {
    if (client === null) return undefined;
    dispatch({ kind: 'reset' });
    return bindChatState(client, dispatch, sessionId);
  }, [client, sessionId]);
  const sendMessage = useCallback(
    (content: string, attachments?: ChatAttachment[]) => client?.sendChatMessage(content, attachments),
    [client],
  );
  const setTyping = useCallback((isTyping: boolean) => client?.sendTyping(isTyping), [client]);
  return {
    messages: state.messages, typingUsers: state.typingUsers, presentUsers: state.presence,
    agent: state.agent, status: state.connectionStatus, unrecovered: state.unrecovered,
    sendMessage, setTyping, client,
  };
}

export interface UseAgentStatusResult extends AgentState {
  connectionStatus: ConnectionStatus;
}

/** An agent's status, current task and progress, from `/ws/agent-status/{userId}`. */
export function useAgentStatus(userId: string, token: TokenSource, options: HookOptions = {}): UseAgentStatusResult {
  const url = options.url ?? defaultUrl(`/api/ws/agent-status/${userId}`);
  const client = useClient({ ...options, url, token, channels: options.channels ?? [`agent_status:${userId}`] }, identity(url, token, userId));
  const [agent, dispatch] = useReducer(agentReducer, initialAgentState);
  const [connectionStatus, setStatus] = useState(ConnectionStatus.DISCONNECTED);
  useEffect(() => {
    if (client === null) return undefined;
    setStatus(client.getState());
    const offs = [client.on('message', dispatch), client.on('status', setStatus)];
    return () => offs.forEach((off) => off());
  }, [client]);
  return { ...agent, connectionStatus };
}

export { sessionChannel };

/**
 * The wire protocol of Switchboard (browser <-> edge), as TypeScript types.
 * JSON text frames; field names are snake_case. See DESIGN.md "Wire protocol".
 */

/** Every event type the server sends (DESIGN.md), replies included. */
export enum WebSocketEventType {
  CHAT_MESSAGE = 'chat_message',
  CHAT_MESSAGE_CHUNK = 'chat_message_chunk',
  CHAT_MESSAGE_COMPLETE = 'chat_message_complete',
  CHAT_TYPING_START = 'chat_typing_start',
  CHAT_TYPING_STOP = 'chat_typing_stop',
  USER_TYPING = 'user_typing',
  TOOL_CALL_START = 'tool_call_start',
  TOOL_CALL_PROGRESS = 'tool_call_progress',
  TOOL_CALL_COMPLETE = 'tool_call_complete',
  TOOL_CALL_ERROR = 'tool_call_error',
  AGENT_STATUS_UPDATE = 'agent_status_update',
  AGENT_TASK_START = 'agent_task_start',
  AGENT_TASK_PROGRESS = 'agent_task_progress',
  AGENT_TASK_COMPLETE = 'agent_task_complete',
  AGENT_ERROR = 'agent_error',
  CONNECTION_ESTABLISHED = 'connection_established',
  CONNECTION_ERROR = 'connection_error',
  CONNECTION_HEARTBEAT = 'connection_heartbeat',
  CONNECTION_CLOSE = 'connection_close',
  ERROR = 'error',
  NOTIFICATION = 'notification',
  SYSTEM_MESSAGE = 'system_message',
  PRESENCE_JOIN = 'presence_join',
  PRESENCE_LEAVE = 'presence_leave',
  SUBSCRIBE_RESPONSE = 'subscribe_response',
  RECOVER_RESPONSE = 'recover_response',
  HISTORY_RESPONSE = 'history_response',
  PRESENCE_RESPONSE = 'presence_response',
}

/** The client's connection state machine. */
export enum ConnectionStatus {
  DISCONNECTED = 'disconnected',
  CONNECTING = 'connecting',
  AUTHENTICATING = 'authenticating',
  CONNECTED = 'connected',
  RECONNECTING = 'reconnecting',
  /** Stopped for good: a terminal close code, or reconnect attempts exhausted. */
  ERROR = 'error',
}

export type Payload = Record<string, unknown>;

/** A server event. Durable events carry `offset` (strictly increasing per channel) and `epoch`. */
export interface WebSocketEvent<P = Payload> {
  id: string;
  type: WebSocketEventType | string;
  timestamp: string;
  payload: P;
  session_id?: string;
  user_id?: string;
  channel?: string;
  priority?: number;
  offset?: number;
  epoch?: string;
}

/** A stream position: what recovery sends back per channel. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** The server's answer per channel to a `recover` request. */
export interface RecoveryResult {
  recovered: boolean;
  reason?: string;
  epoch?: string;
  offset?: number;
}

export interface AuthReply {
  success: boolean;
  connection_id?: string;
  user_id?: string;
  session_id?: string;
  available_channels?: string[];
  subscribed_channels?: string[];
  recovered?: Record<string, RecoveryResult>;
  error?: string;
  code?: string;
}

/** A client frame: `{type, payload, timestamp}`. */
export interface ClientFrame {
  type: string;
  payload: Payload;
  timestamp: string;
}

export interface ChatAttachment {
  [key: string]: unknown;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A unique id for client-generated messages (at most 128 chars of [A-Za-z0-9_-]). */
export function newId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID().replace(/-/g, '');
  let s = '';
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}

export function nowIso(): string {
  return new Date().toISOString();
}

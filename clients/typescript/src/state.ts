/**
 * Chat and agent state as plain reducers: `(state, event) => state`, never mutating.
 * The React hooks and the Zustand slice share them; unit tests call them directly.
 */
import { ConnectionStatus, isObject, type WebSocketEvent, WebSocketEventType as T } from './wire.js';

export type MessageRole = 'user' | 'assistant' | 'system';

export interface ChatMessage {
  id: string;
  role: MessageRole;
  content: string;
  userId?: string;
  /** The channel offset of the event (for a streamed reply: of its first chunk). */
  offset?: number;
  timestamp: string;
  /** False while a streamed reply is still receiving chunks. */
  complete: boolean;
  /** Streamed pieces by chunk index (assembled in index order). */
  parts?: string[];
}

export interface AgentState {
  status: string;
  userId?: string;
  currentTask?: string;
  progress?: number;
  error?: string;
}

export interface ChatState {
  connectionStatus: ConnectionStatus;
  messages: ChatMessage[];
  /** Users typing now (the connection's own user excluded). */
  typingUsers: string[];
  /** Users present in the session, sorted. */
  presence: string[];
  agent: AgentState;
  /** Channels the server could not recover after a reconnect (reload them). */
  unrecovered: string[];
}

export interface ReduceOptions {
  /** The connection's own user: their typing is not shown. */
  selfUserId?: string;
  /** Bound of `messages` (oldest dropped first); default 500. */
  maxMessages?: number;
}

export const initialAgentState: AgentState = { status: 'idle' };

export function initialChatState(): ChatState {
  return {
    connectionStatus: ConnectionStatus.DISCONNECTED,
    messages: [],
    typingUsers: [],
    presence: [],
    agent: initialAgentState,
    unrecovered: [],
  };
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

function eventUser(e: WebSocketEvent): string | undefined {
  return str(e.payload.user_id) ?? str(e.payload.userId) ?? e.user_id;
}

function withOffset<M extends { offset?: number }>(m: M, offset: number | undefined): M {
  if (offset !== undefined) m.offset = offset;
  return m;
}

function bound(messages: ChatMessage[], max: number): ChatMessage[] {
  return messages.length > max ? messages.slice(messages.length - max) : messages;
}

function role(v: unknown, fallback: MessageRole): MessageRole {
  return v === 'user' || v === 'assistant' || v === 'system' ? v : fallback;
}

/** A chat message: appended once per id. */
export function addMessage(messages: ChatMessage[], e: WebSocketEvent): ChatMessage[] {
  if (messages.some((m) => m.id === e.id)) return messages;
  const m: ChatMessage = {
    id: e.id, role: role(e.payload.role, 'user'), content: str(e.payload.content) ?? '',
    timestamp: e.timestamp, complete: true,
  };
  const user = e.user_id ?? str(e.payload.user_id);
  if (user !== undefined) m.userId = user;
  return [...messages, withOffset(m, e.offset)];
}

/** A chunk of a streamed reply: creates the message on the first chunk, places each piece at
 * its index, and ignores chunks once the reply is complete. */
export function addChunk(messages: ChatMessage[], e: WebSocketEvent): ChatMessage[] {
  const id = str(e.payload.message_id) ?? str(e.payload.messageId);
  if (id === undefined) return messages;
  const i = messages.findIndex((m) => m.id === id);
  const current = i >= 0 ? (messages[i] as ChatMessage) : undefined;
  if (current?.complete) return messages;
  const parts = [...(current?.parts ?? [])];
  const index = num(e.payload.index) ?? parts.length;
  parts[index] = str(e.payload.content) ?? '';
  const next: ChatMessage = current !== undefined
    ? { ...current, parts, content: parts.join('') }
    : newReply(id, e, parts);
  return i >= 0 ? messages.map((m, j) => (j === i ? next : m)) : [...messages, next];
}

function newReply(id: string, e: WebSocketEvent, parts: string[]): ChatMessage {
  const m: ChatMessage = {
    id, role: role(e.payload.role, 'assistant'), content: parts.join(''), timestamp: e.timestamp,
    complete: false, parts,
  };
  const user = e.user_id ?? str(e.payload.user_id);
  if (user !== undefined) m.userId = user;
  return withOffset(m, e.offset);
}

/** The end of a streamed reply: its content is the whole text. */
export function completeMessage(messages: ChatMessage[], e: WebSocketEvent): ChatMessage[] {
  const id = str(e.payload.message_id) ?? str(e.payload.messageId) ?? e.id;
  const i = messages.findIndex((m) => m.id === id);
  const content = str(e.payload.content);
  if (i < 0) {
    const m: ChatMessage = {
      id, role: role(e.payload.role, 'assistant'), content: content ?? '', timestamp: e.timestamp, complete: true,
    };
    if (e.user_id !== undefined) m.userId = e.user_id;
    return [...messages, withOffset(m, e.offset)];
  }
  const current = messages[i] as ChatMessage;
  const next: ChatMessage = { ...current, complete: true, content: content ?? current.content };
  return messages.map((m, j) => (j === i ? next : m));
}

function setMember(list: string[], user: string, present: boolean): string[] {
  const has = list.includes(user);
  if (present === has) return list;
  return present ? [...list, user].sort() : list.filter((u) => u !== user);
}

export function reduceTyping(typing: string[], e: WebSocketEvent, selfUserId?: string): string[] {
  const user = eventUser(e);
  if (user === undefined || user === selfUserId) return typing;
  const flag = e.payload.is_typing ?? e.payload.isTyping;
  const isTyping = e.type === T.CHAT_TYPING_STOP ? false : flag !== false;
  return setMember(typing, user, isTyping);
}

/** presence_join / presence_leave (one `user_id`, or coalesced `users`) and presence_response. */
export function reducePresence(presence: string[], e: WebSocketEvent): string[] {
  const p = e.payload;
  if (e.type === T.PRESENCE_RESPONSE) {
    const users = Array.isArray(p.users) ? p.users : [];
    return users
      .map((u) => (isObject(u) ? str(u.user_id) : str(u)))
      .filter((u): u is string => u !== undefined)
      .sort();
  }
  const users = Array.isArray(p.users) ? p.users.filter((u): u is string => typeof u === 'string') : [];
  const one = str(p.user_id);
  if (one !== undefined) users.push(one);
  const present = e.type === T.PRESENCE_JOIN;
  return users.reduce((list, u) => setMember(list, u, present), presence);
}

export function agentReducer(state: AgentState, e: WebSocketEvent): AgentState {
  const p = e.payload;
  const withUser = (s: AgentState): AgentState => {
    const user = eventUser(e);
    return user !== undefined ? { ...s, userId: user } : s;
  };
  switch (e.type) {
    case T.AGENT_STATUS_UPDATE: {
      const next: AgentState = { ...state, status: str(p.status) ?? state.status };
      const progress = num(p.progress);
      if (progress !== undefined) next.progress = progress;
      const task = str(p.current_task) ?? str(p.task);
      if (task !== undefined) next.currentTask = task;
      return withUser(next);
    }
    case T.AGENT_TASK_START: {
      const task = str(p.task) ?? str(p.description) ?? str(p.task_id) ?? 'task';
      const next: AgentState = { ...state, status: str(p.status) ?? 'working', currentTask: task, progress: 0 };
      delete next.error;
      return withUser(next);
    }
    case T.AGENT_TASK_PROGRESS: {
      const progress = num(p.progress);
      return withUser(progress !== undefined ? { ...state, progress } : state);
    }
    case T.AGENT_TASK_COMPLETE: {
      const next: AgentState = { ...state, status: str(p.status) ?? 'idle', progress: 100 };
      delete next.currentTask;
      return withUser(next);
    }
    case T.AGENT_ERROR:
      return withUser({ ...state, status: 'error', error: str(p.error) ?? str(p.message) ?? 'agent error' });
    default:
      return state;
  }
}

/** Applies one server event to the chat state. */
export function chatReducer(state: ChatState, e: WebSocketEvent, opts: ReduceOptions = {}): ChatState {
  if (!isObject(e.payload)) return state;
  const max = opts.maxMessages ?? 500;
  switch (e.type) {
    case T.CHAT_MESSAGE: {
      const typingUser = eventUser(e);
      const typingUsers = typingUser !== undefined ? setMember(state.typingUsers, typingUser, false) : state.typingUsers;
      return { ...state, messages: bound(addMessage(state.messages, e), max), typingUsers };
    }
    case T.CHAT_MESSAGE_CHUNK:
      return { ...state, messages: bound(addChunk(state.messages, e), max) };
    case T.CHAT_MESSAGE_COMPLETE:
      return { ...state, messages: bound(completeMessage(state.messages, e), max) };
    case T.USER_TYPING:
    case T.CHAT_TYPING_START:
    case T.CHAT_TYPING_STOP:
      return { ...state, typingUsers: reduceTyping(state.typingUsers, e, opts.selfUserId) };
    case T.PRESENCE_JOIN:
    case T.PRESENCE_LEAVE:
    case T.PRESENCE_RESPONSE:
      return { ...state, presence: reducePresence(state.presence, e) };
    case T.AGENT_STATUS_UPDATE:
    case T.AGENT_TASK_START:
    case T.AGENT_TASK_PROGRESS:
    case T.AGENT_TASK_COMPLETE:
    case T.AGENT_ERROR:
      return { ...state, agent: agentReducer(state.agent, e) };
    default:
      return state;
  }
}

/** A new connection status; typing indicators are cleared when the connection is lost (their
 * stop events may never come). */
export function withConnectionStatus(state: ChatState, status: ConnectionStatus): ChatState {
  if (state.connectionStatus === status) return state;
  const lost = status !== ConnectionStatus.CONNECTED;
  return { ...state, connectionStatus: status, typingUsers: lost ? [] : state.typingUsers };
}

export function withUnrecovered(state: ChatState, channels: string[]): ChatState {
  const merged = [...new Set([...state.unrecovered, ...channels])].sort();
  return { ...state, unrecovered: merged };
}

// ---- one action type, so that hooks (useReducer) and the Zustand slice share one reducer ----

export type ChatAction =
  | { kind: 'event'; event: WebSocketEvent; selfUserId?: string }
  | { kind: 'status'; status: ConnectionStatus }
  | { kind: 'unrecovered'; channels: string[] }
  | { kind: 'reset' };

export function chatActionReducer(state: ChatState, action: ChatAction): ChatState {
  switch (action.kind) {
    case 'event':
      return chatReducer(state, action.event, action.selfUserId !== undefined ? { selfUserId: action.selfUserId } : {});
    case 'status':
      return withConnectionStatus(state, action.status);
    case 'unrecovered':
      return withUnrecovered(state, action.channels);
    case 'reset':
      return initialChatState();
  }
}

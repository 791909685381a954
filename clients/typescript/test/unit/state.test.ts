import { describe, expect, it, vi } from 'vitest';
import { create } from 'zustand';
import {
  agentReducer, chatActionReducer, chatReducer, initialAgentState, initialChatState, type ChatState,
} from '../../src/state.js';
import { ConnectionStatus, type WebSocketEvent } from '../../src/wire.js';
import { createWebSocketSlice, type WebSocketSlice } from '../../src/zustand.js';

let n = 0;
function ev(type: string, payload: Record<string, unknown>, extra: Partial<WebSocketEvent> = {}): WebSocketEvent {
  return { id: `e${++n}`, type, timestamp: '2026-01-01T00:00:00Z', payload, ...extra };
}

const reduce = (events: WebSocketEvent[], state: ChatState = initialChatState(), self?: string): ChatState =>
  events.reduce((s, e) => chatReducer(s, e, self !== undefined ? { selfUserId: self } : {}), state);

describe('chat reducer', () => {
  it('appends chat messages once per id, with offset, user and role', () => {
    const m = ev('chat_message', { content: 'hi', role: 'user' }, { user_id: 'alice', offset: 4, epoch: 'E' });
    const s = reduce([m, m]);
    expect(s.messages).toEqual([{ id: m.id, role: 'user', content: 'hi', userId: 'alice', offset: 4, timestamp: m.timestamp, complete: true }]);
  });

  it('assembles a streamed reply from chunks by message_id, in index order, closed by complete', () => {
    const chunk = (index: number, content: string, offset: number): WebSocketEvent =>
      ev('chat_message_chunk', { message_id: 'r1', index, content, role: 'assistant' }, { user_id: 'agent', offset });
    let s = reduce([chunk(0, 'You ', 10), chunk(2, 'there', 12), chunk(1, 'said ', 11)]);
    expect(s.messages).toHaveLength(1);
    expect(s.messages[0]).toMatchObject({ id: 'r1', role: 'assistant', content: 'You said there', complete: false, offset: 10, userId: 'agent' });
    s = reduce([ev('chat_message_complete', { message_id: 'r1', content: 'You said there.', role: 'assistant' }, { offset: 13 })], s);
    expect(s.messages[0]).toMatchObject({ content: 'You said there.', complete: true, offset: 10 });
    s = reduce([chunk(3, 'late', 14)], s); // chunks after completion change nothing
    expect(s.messages[0]?.content).toBe('You said there.');
  });

  it('tracks typing users (not oneself), cleared by stop, a message, or a lost connection', () => {
    let s = reduce([
      ev('chat_typing_start', { user_id: 'bob', is_typing: true }),
      ev('user_typing', { user_id: 'carol', is_typing: true }),
      ev('user_typing', { user_id: 'me', is_typing: true }),
    ], initialChatState(), 'me');
    expect(s.typingUsers).toEqual(['bob', 'carol']);
    s = reduce([ev('chat_typing_stop', { user_id: 'bob' }), ev('chat_message', { content: 'x' }, { user_id: 'carol' })], s);
    expect(s.typingUsers).toEqual([]);
    s = reduce([ev('user_typing', { user_id: 'dan', is_typing: true })], s);
    s = chatActionReducer(chatActionReducer(s, { kind: 'status', status: ConnectionStatus.CONNECTED }), { kind: 'status', status: ConnectionStatus.RECONNECTING });
    expect(s.typingUsers).toEqual([]);
    expect(s.connectionStatus).toBe('reconnecting');
  });

  it('tracks presence from joins, leaves (both shapes) and presence responses', () => {
    let s = reduce([ev('presence_response', { channel: 'session:a', users: [{ user_id: 'bob', connections: 1 }, { user_id: 'alice', connections: 2 }], count: 2 })]);
    expect(s.presence).toEqual(['alice', 'bob']);
    s = reduce([ev('presence_join', { user_id: 'carol', count: 3 }), ev('presence_join', { users: ['dan', 'erin'], count: 5 })], s);
    expect(s.presence).toEqual(['alice', 'bob', 'carol', 'dan', 'erin']);
    s = reduce([ev('presence_leave', { user_id: 'bob', count: 4 }), ev('presence_leave', { users: ['dan', 'erin'], count: 2 })], s);
    expect(s.presence).toEqual(['alice', 'carol']);
  });

  it('follows the agent: status updates, tasks, progress, errors', () => {
    const a = [
      ev('agent_status_update', { user_id: 'agent', status: 'thinking', progress: 0 }),
      ev('agent_status_update', { user_id: 'agent', status: 'streaming', progress: 50 }),
    ].reduce(agentReducer, initialAgentState);
    expect(a).toEqual({ status: 'streaming', progress: 50, userId: 'agent' });
    const t = [
      ev('agent_task_start', { task: 'search flights' }),
      ev('agent_task_progress', { progress: 40 }),
    ].reduce(agentReducer, initialAgentState);
    expect(t).toMatchObject({ status: 'working', currentTask: 'search flights', progress: 40 });
    const done = agentReducer(t, ev('agent_task_complete', {}));
    expect(done).toMatchObject({ status: 'idle', progress: 100 });
    expect(done.currentTask).toBeUndefined();
    expect(agentReducer(done, ev('agent_error', { error: 'boom' }))).toMatchObject({ status: 'error', error: 'boom' });
    expect(reduce([ev('agent_status_update', { status: 'thinking' })]).agent.status).toBe('thinking');
  });

  it('records unrecovered channels and resets', () => {
    let s = chatActionReducer(initialChatState(), { kind: 'unrecovered', channels: ['session:a'] });
    s = chatActionReducer(s, { kind: 'unrecovered', channels: ['session:a', 'user:u'] });
    expect(s.unrecovered).toEqual(['session:a', 'user:u']);
    expect(chatActionReducer(s, { kind: 'reset' })).toEqual(initialChatState());
  });
});

describe('zustand slice', () => {
  it('reduces dispatched actions with the shared reducer', () => {
    const store = create<WebSocketSlice>()((...a) => createWebSocketSlice(...a));
    const { dispatchChat } = store.getState();
    dispatchChat({ kind: 'event', event: ev('chat_message', { content: 'hello' }, { user_id: 'alice', offset: 1 }) });
    dispatchChat({ kind: 'event', event: ev('presence_join', { user_id: 'alice', count: 1 }) });
    dispatchChat({ kind: 'event', event: ev('user_typing', { user_id: 'bob', is_typing: true }) });
    const s = store.getState();
    expect(s.messages.map((m) => m.content)).toEqual(['hello']);
    expect(s.presence).toEqual(['alice']);
    expect(s.typingUsers).toEqual(['bob']);
    expect(s.sendMessage('x')).toBeUndefined(); // no client yet
  });
});

describe('zustand slice with a connection', () => {
  it('connects, fills messages and presence from the socket, sends, and disconnects', async () => {
    const { FakeEdge } = await import('../support/fake-edge.js');
    const { WebSocket } = await import('ws');
    const e = await FakeEdge.start();
    const store = create<WebSocketSlice>()((...a) => createWebSocketSlice(...a));
    try {
      await store.getState().connectWebSocket({ url: e.url, token: 't', sessionId: 's1', WebSocket, heartbeatInterval: 0 });
      expect(store.getState().connectionStatus).toBe('connected');
      await vi.waitFor(() => expect(e.last.frames[0]).toMatchObject({ type: 'presence', payload: { channel: 'session:s1' } }));
      e.event(e.last, 'presence_response', { channel: 'session:s1', users: [{ user_id: 'u1', connections: 1 }], count: 1 });
      e.event(e.last, 'chat_message', { content: 'hey' }, { user_id: 'u2', channel: 'session:s1', offset: 1, epoch: 'E' });
      await vi.waitFor(() => expect(store.getState().messages).toHaveLength(1));
      expect(store.getState().presence).toEqual(['u1']);
      const id = store.getState().sendMessage('reply');
      await vi.waitFor(() => expect(e.last.frames[1]).toMatchObject({ type: 'chat_message', payload: { id, content: 'reply' } }));
      store.getState().disconnectWebSocket();
      expect(store.getState().client).toBeNull();
      expect(store.getState().connectionStatus).toBe('disconnected');
    } finally {
      store.getState().disconnectWebSocket();
      await e.close();
    }
  });
});

export {
  WebSocketClient,
  type WebSocketClientOptions,
  type WebSocketLike,
  type WebSocketConstructor,
  type TokenSource,
  type ClientEventMap,
  type ClientEventName,
  type ConnectionStats,
  type PerformanceMetrics,
  type DisconnectInfo,
  type ReconnectingInfo,
  type RecoveryReport,
  type SendRejected,
} from './client.js';
export { CloseCode, CLOSE_RULES, shouldReconnect, isAuthFailure, reasonOf, type CloseRule } from './close-codes.js';
export { backoffCap, backoffDelay, type BackoffOptions } from './backoff.js';
export { PositionTracker, type RecoveryFailure } from './positions.js';
export { BoundedQueue } from './queue.js';
export {
  type ChatMessage, type ChatState, type AgentState, type ChatAction, type MessageRole, type ReduceOptions,
  initialChatState, initialAgentState, chatReducer, chatActionReducer, agentReducer, addMessage, addChunk,
  completeMessage, reduceTyping, reducePresence, withConnectionStatus, withUnrecovered,
} from './state.js';
export { bindChatState, sessionChannel } from './binding.js';
export {
  WebSocketEventType, ConnectionStatus, newId,
  type WebSocketEvent, type StreamPosition, type RecoveryResult, type AuthReply, type ClientFrame,
  type ChatAttachment, type Payload,
} from './wire.js';

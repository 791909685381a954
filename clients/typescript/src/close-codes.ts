/**
 * WebSocket close codes, mirrored from `services/common/close_codes.py` (the single written
 * contract). A unit test parses the Python file and checks that both tables agree.
 */

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  BAD_AUTH_FRAME: 4000,
  AUTH_FAILED: 4001,
  FORBIDDEN: 4003,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
} as const;

export type CloseCodeName = keyof typeof CloseCode;

export interface CloseRule {
  reason: string;
  reconnect: boolean;
}

export const CLOSE_RULES: Readonly<Record<number, CloseRule>> = {
  [CloseCode.NORMAL]: { reason: 'normal closure', reconnect: false },
  [CloseCode.GOING_AWAY]: { reason: 'going away', reconnect: true },
  [CloseCode.PROTOCOL_ERROR]: { reason: 'protocol error', reconnect: true },
  [CloseCode.UNSUPPORTED_DATA]: { reason: 'unsupported data', reconnect: true },
  [CloseCode.MESSAGE_TOO_BIG]: { reason: 'frame too big', reconnect: true },
  [CloseCode.INTERNAL_ERROR]: { reason: 'internal error', reconnect: true },
  [CloseCode.SERVICE_RESTART]: { reason: 'service restart', reconnect: true },
  [CloseCode.TRY_AGAIN_LATER]: { reason: 'try again later', reconnect: true },
  [CloseCode.BAD_AUTH_FRAME]: { reason: 'bad or missing auth frame', reconnect: true },
  [CloseCode.AUTH_FAILED]: { reason: 'authentication failed', reconnect: false },
  [CloseCode.FORBIDDEN]: { reason: 'forbidden', reconnect: false },
  [CloseCode.SLOW_CONSUMER]: { reason: 'slow consumer', reconnect: true },
  [CloseCode.RATE_LIMITED]: { reason: 'rate limited', reconnect: true },
};

/** Reconnect on every code but 1000, 4001 and 4003 (unknown codes, e.g. 1006, reconnect too). */
export function shouldReconnect(code: number): boolean {
  return CLOSE_RULES[code]?.reconnect ?? true;
}

/** Codes after which a fresh token may help: reconnect only if the token function gives a new one. */
export function isAuthFailure(code: number): boolean {
  return code === CloseCode.AUTH_FAILED || code === CloseCode.FORBIDDEN;
}

export function reasonOf(code: number): string {
  return CLOSE_RULES[code]?.reason ?? 'abnormal closure';
}

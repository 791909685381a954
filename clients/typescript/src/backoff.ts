/** Full-jitter exponential backoff: a uniform delay in [0, min(max, base * 2^attempt)]. */

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

/** The upper bound of the delay before reconnect attempt `attempt` (1-based). */
export function backoffCap(attempt: number, { baseMs, maxMs }: BackoffOptions): number {
  const exp = Math.min(Math.max(attempt - 1, 0), 30);
  return Math.min(maxMs, baseMs * 2 ** exp);
}

/** The delay before reconnect attempt `attempt`; `random` returns a number in [0, 1). */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number = Math.random): number {
  return Math.floor(random() * backoffCap(attempt, opts));
}

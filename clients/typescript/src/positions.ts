/**
 * Stream positions per channel: the last `{offset, epoch}` delivered to the application.
 *
 * They make two things work: recovery (sent back as `recover` in the auth frame of every
 * reconnect) and exactly-once delivery (an event whose offset is not above the channel's last
 * one, in the same epoch, is a duplicate and is dropped).
 */
import type { RecoveryResult, StreamPosition, WebSocketEvent } from './wire.js';

export interface RecoveryFailure {
  channel: string;
  reason: string;
}

export class PositionTracker {
  private readonly positions = new Map<string, StreamPosition>();

  /** True when the event is new (deliver it), false for a duplicate. Events without an offset
   * (ephemeral: typing, presence, heartbeats) are always new. */
  accept(event: Pick<WebSocketEvent, 'channel' | 'offset' | 'epoch'>): boolean {
    const { channel, offset } = event;
    if (channel === undefined || typeof offset !== 'number') return true;
    const epoch = event.epoch ?? '';
    const last = this.positions.get(channel);
    if (last !== undefined && last.epoch === epoch && offset <= last.offset) return false;
    this.positions.set(channel, { offset, epoch });
    return true;
  }

  get(channel: string): StreamPosition | undefined {
    return this.positions.get(channel);
  }

  forget(channel: string): void {
    this.positions.delete(channel);
  }

  clear(): void {
    this.positions.clear();
  }

  /** The `recover` map for the auth frame, or undefined when nothing was received yet. */
  recoverMap(): Record<string, StreamPosition> | undefined {
    if (this.positions.size === 0) return undefined;
    const out: Record<string, StreamPosition> = {};
    for (const [channel, pos] of this.positions) out[channel] = { ...pos };
    return out;
  }

  /** Applies the server's answer to a recovery: channels it could not recover are forgotten
   * (the application reloads them; the next reconnect starts from what arrives next). */
  applyRecovery(results: Record<string, RecoveryResult> | undefined): RecoveryFailure[] {
    const failed: RecoveryFailure[] = [];
    for (const [channel, result] of Object.entries(results ?? {})) {
      if (result.recovered) continue;
      failed.push({ channel, reason: result.reason ?? 'unknown' });
      this.positions.delete(channel);
    }
    return failed;
  }
}

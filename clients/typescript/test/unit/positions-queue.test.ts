import { describe, expect, it } from 'vitest';
import { PositionTracker } from '../../src/positions.js';
import { BoundedQueue } from '../../src/queue.js';

describe('PositionTracker', () => {
  it('drops duplicates by offset per channel, and accepts ephemeral events', () => {
    const t = new PositionTracker();
    const seen = [1, 2, 2, 1, 3, 5, 4, 6].filter((offset) => t.accept({ channel: 'session:a', offset, epoch: 'e1' }));
    expect(seen).toEqual([1, 2, 3, 5, 6]);
    expect(t.accept({ channel: 'session:b', offset: 1, epoch: 'e1' })).toBe(true); // other channel
    expect(t.accept({ channel: 'session:a' })).toBe(true); // no offset: typing, presence
    expect(t.accept({ channel: 'session:a' })).toBe(true);
  });

  it('starts over when the epoch changes (the store lost the channel)', () => {
    const t = new PositionTracker();
    t.accept({ channel: 'c', offset: 10, epoch: 'old' });
    expect(t.accept({ channel: 'c', offset: 1, epoch: 'new' })).toBe(true);
    expect(t.get('c')).toEqual({ offset: 1, epoch: 'new' });
  });

  it('gives the recover map and forgets channels that could not be recovered', () => {
    const t = new PositionTracker();
    expect(t.recoverMap()).toBeUndefined();
    t.accept({ channel: 'session:a', offset: 7, epoch: 'x' });
    t.accept({ channel: 'user:u', offset: 3, epoch: 'y' });
    expect(t.recoverMap()).toEqual({ 'session:a': { offset: 7, epoch: 'x' }, 'user:u': { offset: 3, epoch: 'y' } });
    const failed = t.applyRecovery({ 'session:a': { recovered: true, offset: 9, epoch: 'x' }, 'user:u': { recovered: false, reason: 'trimmed' } });
    expect(failed).toEqual([{ channel: 'user:u', reason: 'trimmed' }]);
    expect(t.recoverMap()).toEqual({ 'session:a': { offset: 7, epoch: 'x' } });
  });
});

describe('BoundedQueue', () => {
  it('keeps order and rejects the oldest when full', () => {
    const q = new BoundedQueue<number>(3);
    const dropped = [1, 2, 3, 4, 5].map((n) => q.push(n));
    expect(dropped).toEqual([undefined, undefined, undefined, 1, 2]);
    expect(q.size).toBe(3);
    expect(q.drain()).toEqual([3, 4, 5]);
    expect(q.size).toBe(0);
    expect(() => new BoundedQueue(0)).toThrow(RangeError);
  });
});

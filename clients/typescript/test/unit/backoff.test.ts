import { describe, expect, it } from 'vitest';
import { backoffCap, backoffDelay } from '../../src/backoff.js';

const opts = { baseMs: 100, maxMs: 5000 };

describe('full-jitter backoff', () => {
  it('doubles the cap per attempt up to the maximum', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 50].map((a) => backoffCap(a, opts))).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000]);
  });

  it('stays within [0, cap] at the extremes of the random source', () => {
    expect(backoffDelay(3, opts, () => 0)).toBe(0);
    expect(backoffDelay(3, opts, () => 0.999999)).toBe(399);
    expect(backoffDelay(100, opts, () => 0.999999)).toBeLessThan(5000);
  });

  it('is jittered: delays spread over the whole range', () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(5, opts));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThan(1600);
    expect(delays.filter((d) => d < 400).length).toBeGreaterThan(200); // lower quarter is hit
    expect(delays.filter((d) => d > 1200).length).toBeGreaterThan(200); // upper quarter is hit
    expect(new Set(delays).size).toBeGreaterThan(500);
  });
});

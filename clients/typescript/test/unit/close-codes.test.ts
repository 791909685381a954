import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLOSE_RULES, CloseCode, isAuthFailure, reasonOf, shouldReconnect } from '../../src/close-codes.js';
import { REPO_ROOT } from '../support/cluster.js';

/** Parses services/common/close_codes.py: the enum members and the RULES table. */
function pythonTable(): { codes: Record<string, number>; rules: Record<string, { reason: string; reconnect: boolean }> } {
  const src = readFileSync(join(REPO_ROOT, 'services', 'common', 'close_codes.py'), 'utf8');
  const enumBody = /class CloseCode\(IntEnum\):\n((?:\s+\w+ = \d+\n)+)/.exec(src)?.[1] ?? '';
  const codes = Object.fromEntries([...enumBody.matchAll(/(\w+) = (\d+)/g)].map((m) => [m[1], Number(m[2])]));
  const rules = Object.fromEntries([...src.matchAll(/CloseCode\.(\w+): CloseRule\("([^"]+)", reconnect=(True|False)\)/g)]
    .map((m) => [m[1], { reason: m[2] as string, reconnect: m[3] === 'True' }]));
  return { codes, rules };
}

describe('close codes', () => {
  it('mirror services/common/close_codes.py exactly', () => {
    const py = pythonTable();
    expect(Object.keys(py.codes).length).toBeGreaterThanOrEqual(10);
    expect({ ...CloseCode }).toEqual(py.codes);
    const ts = Object.fromEntries(Object.entries(CloseCode).map(([name, code]) => [name, CLOSE_RULES[code]]));
    expect(ts).toEqual(py.rules);
  });

  it('reconnect on all but 1000, 4001 and 4003, unknown codes included', () => {
    const stop = Object.values(CloseCode).filter((c) => !shouldReconnect(c)).sort();
    expect(stop).toEqual([1000, 4001, 4003]);
    expect(shouldReconnect(1006)).toBe(true);
    expect(shouldReconnect(4999)).toBe(true);
    expect(isAuthFailure(4001) && isAuthFailure(4003) && !isAuthFailure(1000)).toBe(true);
    expect(reasonOf(4008)).toBe('slow consumer');
  });
});

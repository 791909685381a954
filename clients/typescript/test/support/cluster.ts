/**
 * Starts test/support/cluster.py (a real Switchboard cluster: redis-server, history, 2 routers,
 * 2 edges) with the repo's Python, and mints HS256 dev tokens for it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const REPO_ROOT = resolve(PACKAGE_ROOT, '..', '..');

/** Scales every liveness timeout of the tests, like SWITCHBOARD_TEST_TIME_SCALE in pytest. */
export const TIME_SCALE = Number(process.env.SWITCHBOARD_TEST_TIME_SCALE ?? '1') || 1;
export const tu = (ms: number): number => ms * TIME_SCALE;

export interface Edge {
  url: string;
  http: string;
  pid: number;
}

export interface ClusterInfo {
  edges: Edge[];
  secret: string;
  workdir: string;
}

export interface Cluster extends ClusterInfo {
  /** Restarts every dead edge on its old port; resolves with the new edge list. */
  revive(): Promise<Edge[]>;
  stop(): Promise<void>;
  token(sub: string, opts?: { sessions?: string[]; scope?: string; ttlS?: number }): string;
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

export function mintToken(secret: string, sub: string, opts: { sessions?: string[]; scope?: string; ttlS?: number } = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = { sub, iat: now, exp: now + (opts.ttlS ?? 3600) };
  if (opts.sessions) claims.sessions = opts.sessions;
  if (opts.scope) claims.scope = opts.scope;
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })) + '.' + b64url(JSON.stringify(claims));
  return head + '.' + b64url(createHmac('sha256', secret).update(head).digest());
}

export async function startCluster(opts: { demo?: boolean; timeoutMs?: number } = {}): Promise<Cluster> {
  const python = join(REPO_ROOT, '.venv', 'bin', 'python');
  if (!existsSync(python)) throw new Error(`no ${python}: run scripts/bootstrap in the repository first`);
  const args = [join(PACKAGE_ROOT, 'test', 'support', 'cluster.py'), ...(opts.demo ? ['--demo'] : [])];
  const child: ChildProcess = spawn(python, args, {
    cwd: REPO_ROOT, env: { ...process.env, PYTHONPATH: REPO_ROOT }, stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const lines = createInterface({ input: child.stdout! });
  const pending: ((line: string) => void)[] = [];
  lines.on('line', (line) => pending.shift()?.(line));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));

  const nextLine = (what: string, timeoutMs: number): Promise<ClusterInfo> => new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`cluster: ${what} not done after ${timeoutMs} ms\n${stderr}`)), timeoutMs);
    void exited.then((code) => { clearTimeout(timer); rej(new Error(`cluster exited (${code}) during ${what}\n${stderr}`)); });
    pending.push((line) => { clearTimeout(timer); res(JSON.parse(line) as ClusterInfo); });
  });

  const info = await nextLine('start', opts.timeoutMs ?? tu(60_000)).catch((e: unknown) => {
    child.kill('SIGTERM');
    throw e;
  });
  const cluster: Cluster = {
    ...info,
    async revive() {
      child.stdin!.write('revive\n');
      const next = await nextLine('revive', tu(60_000));
      cluster.edges = next.edges;
      return next.edges;
    },
    async stop() {
      if (child.exitCode !== null) return;
      child.stdin!.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), tu(30_000));
      await exited;
      clearTimeout(timer);
    },
    token: (sub, o) => mintToken(info.secret, sub, o),
  };
  return cluster;
}

/** Resolves when `predicate` holds, polling; rejects with `what` after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs: number, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function publish(http: string, token: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await fetch(`${http}/api/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(tu(10_000)),
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`publish ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

/** A small typed event emitter (no dependency on Node's EventEmitter, so it runs in browsers). */
export type Listener = (data: never) => void;

export class Emitter {
  private readonly listeners = new Map<string, Set<(data: unknown) => void>>();

  on(type: string, fn: (data: never) => void): () => void {
    let set = this.listeners.get(type);
    if (set === undefined) this.listeners.set(type, (set = new Set()));
    set.add(fn as (data: unknown) => void);
    return () => this.off(type, fn);
  }

  off(type: string, fn: (data: never) => void): void {
    const set = this.listeners.get(type);
    set?.delete(fn as (data: unknown) => void);
    if (set?.size === 0) this.listeners.delete(type);
  }

  removeAllListeners(type?: string): void {
    if (type === undefined) this.listeners.clear();
    else this.listeners.delete(type);
  }

  listenerCount(type?: string): number {
    if (type !== undefined) return this.listeners.get(type)?.size ?? 0;
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  /** Calls every listener of `type`; a listener that throws does not stop the others. */
  emit(type: string, data: unknown): void {
    const set = this.listeners.get(type);
    if (set === undefined) return;
    for (const fn of [...set]) {
      try {
        fn(data);
      } catch (err) {
        if (type !== 'listener_error') this.emit('listener_error', err);
      }
    }
  }
}

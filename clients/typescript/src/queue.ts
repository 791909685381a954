/** A bounded FIFO: when full, pushing drops (and returns) the oldest item. */
export class BoundedQueue<T> {
  private items: T[] = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError('queue bound must be a positive integer');
  }

  get size(): number {
    return this.items.length;
  }

  /** Appends `item`; returns the oldest item it pushed out, if the queue was full. */
  push(item: T): T | undefined {
    this.items.push(item);
    return this.items.length > this.max ? this.items.shift() : undefined;
  }

  /** Removes the first item for which `match` is true; true when one was removed. */
  remove(match: (item: T) => boolean): boolean {
    const i = this.items.findIndex(match);
    if (i < 0) return false;
    this.items.splice(i, 1);
    return true;
  }

  /** Takes every item, oldest first. */
  drain(): T[] {
    const out = this.items;
    this.items = [];
    return out;
  }

  peek(): readonly T[] {
    return this.items;
  }

  clear(): void {
    this.items = [];
  }
}

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import type { Identity } from '../../src/core';
import type { TestPeer } from '../helpers';

/**
 * The frame the update attack suites share (rounds 12 and 15-18): a victim and a hostile peer's
 * identity made before the attacks, what they opened closed after them, and the checks every
 * attack must pass as a whole: no unhandled rejection while they ran, and (with `handleSpy`) no file
 * handle closed under a read, (with `cutHelpers`) no cut helper thread left running.
 *
 * Call it at the top of a suite, before the suite's own `before`: hooks run in the order they are
 * registered, so the handle spy is in place before the suite loads the modules of src/ it attacks.
 * This module imports nothing of src/ at load (types only): the suites that spy on node:fs load
 * src/ after their spies.
 */
export interface AttackFrame {
  /** Run after the attacks, last first (servers, connections). */
  cleanups: (() => Promise<void> | void)[];
  /** The peer under attack (the requester). Set once the suite's hooks ran. */
  victim: TestPeer;
  /** The identity a hostile peer presents. Set once the suite's hooks ran. */
  hostileIdentity: Identity;
}

export function attackFrame(checks: { handleSpy?: boolean; cutHelpers?: boolean } = {}): AttackFrame {
  const frame = { cleanups: [] } as unknown as AttackFrame;
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  before(async () => {
    if (checks.handleSpy) await (await import('./cut-spies')).installHandleSpy();
    const helpers = await import('../helpers');
    frame.victim = await helpers.makePeer();
    frame.hostileIdentity = (await helpers.makePeer()).identity;
    process.on('unhandledRejection', onUnhandled);
  });
  after(async () => {
    for (const cleanup of frame.cleanups.reverse()) await cleanup();
    process.off('unhandledRejection', onUnhandled);
    assert.deepEqual(unhandled.map(String), [], 'no unhandled rejection while the attacks ran');
    if (checks.handleSpy) assert.deepEqual((await import('./cut-spies')).closedUnderReader, [], 'no handle closed under a read or a cut helper');
    if (checks.cutHelpers) assert.equal((await import('./cut-spies')).helpersRunning(), 0, 'no cut helper left running');
  });
  return frame;
}

/**
 * The modules of src/ and of the tests that the update attack suites share, loaded when called: a
 * suite calls it in its `before`, once its spies on node:fs are in place (see above).
 */
export async function loadAttackModules() {
  return {
    core: await import('../../src/core'),
    cdc: await import('../../src/core/cdc'),
    delta: await import('../../src/core/delta'),
    blocks: await import('../../src/core/blocks'),
    blake3: (await import('../../src/core/blake3')).blake3,
    manifestOfBytes: (await import('../../src/core/v2/share-messages')).manifestOfBytes,
    helpers: await import('../helpers'),
    hostileKit: await import('../hostile'),
    answers: await import('./chunk-answers'),
  };
}

export type AttackModules = Awaited<ReturnType<typeof loadAttackModules>>;

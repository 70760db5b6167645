// The peer core: Node only, never `vscode` (test/core/boundaries.test.ts enforces it).
export * from './errors';
export * from './limits';
export * from './peer-id';
export * from './identity';
export * from './trust';
export * from './invite';
export * from './protocol';
export * from './share';
export * from './server';
export * from './client';
export * from './download';
export * from './names';
export * from './format';
export * from './discovery';
export * from './probe';
export * from './reach';

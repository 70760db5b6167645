/**
 * Runs inside the "public" namespace: the DHT's bootstrap nodes, each bound to its own address
 * (a node bound to 0.0.0.0 in a namespace with several addresses answers from another address
 * than the one a peer wrote to, and the NATs drop those answers). Prints `ready` once all joined;
 * runs until stdin closes.
 */
export {};

// eslint-disable-next-line @typescript-eslint/no-require-imports
const DHT = require('hyperdht') as {
  bootstrapper(port: number, host: string, options?: Record<string, unknown>): DhtNode;
  new (options: Record<string, unknown>): DhtNode;
};
interface DhtNode {
  fullyBootstrapped(): Promise<void>;
  destroy(): Promise<void>;
}

async function main(): Promise<void> {
  const [first, ...others] = process.argv.slice(2); // HOST:PORT for each node
  const [host, port] = first.split(':');
  // `host` twice: bootstrapper() takes it as the address it announces, the option as the one it binds.
  const nodes: DhtNode[] = [DHT.bootstrapper(Number(port), host, { host })];
  await nodes[0].fullyBootstrapped();
  for (const other of others) {
    const [h, p] = other.split(':');
    const node = new DHT({ bootstrap: [first], host: h, port: Number(p), ephemeral: false, firewalled: false });
    await node.fullyBootstrapped();
    nodes.push(node);
  }
  process.stdout.write('ready\n');
  process.stdin.resume();
  process.stdin.on('end', () => void Promise.all(nodes.map((n) => n.destroy())).then(() => process.exit(0)));
}

main().catch((err: unknown) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});

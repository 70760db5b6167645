import { execFileSync } from 'node:child_process';

/**
 * A small internet in network namespaces (issue 14's end-to-end test), made and removed by the
 * test itself; it needs root, `ip` (iproute2) and `nft` (nftables).
 *
 *   home1 10.1.0.2 ── 10.1.0.1 router1 198.18.1.2 ──┐
 *                                                    public: 198.18.1.1, 198.18.2.1; DHT nodes on 198.18.0.1-3
 *   home2 10.2.0.2 ── 10.2.0.1 router2 198.18.2.2 ──┘
 *
 * Each router masquerades its home behind its one public address (nftables) and drops what comes
 * from outside unasked, in its input and forward hooks: without the input rule Linux conntrack
 * confirms an entry for the other side's first punch packet, and the home's own mapping then loses
 * its port. The public namespace routes between the routers and knows no route to either home, so
 * the only way between the homes is through both NATs. `randomPorts` makes both NATs pick a random
 * port per connection (`masquerade random`), where hole punching must fail.
 * 198.18.0.0/15 is the range set aside for benchmarking networks (RFC 2544): nothing real is there,
 * and nothing here leaves the namespaces.
 */
export interface Topology {
  /** Namespace names. */
  readonly pub: string;
  readonly home1: string;
  readonly home2: string;
  /** The NAT routers' namespaces (home1's, home2's). */
  readonly router1: string;
  readonly router2: string;
  /** The DHT bootstrap nodes' addresses, in the public namespace. */
  readonly dhtNodes: string[];
  remove(): void;
}

export function hasTools(): string | undefined {
  if (process.getuid?.() !== 0) return 'it needs root (network namespaces)';
  for (const tool of ['ip', 'nft']) {
    try {
      execFileSync(tool, ['-V'], { stdio: 'ignore' });
    } catch {
      return `it needs \`${tool}\` (apt-get install ${tool === 'ip' ? 'iproute2' : 'nftables'})`;
    }
  }
  return undefined;
}

export function makeTopology(options: { randomPorts: boolean }): Topology {
  const tag = `ps${process.pid}${options.randomPorts ? 'r' : 'c'}`;
  const names = { pub: `${tag}-pub`, r1: `${tag}-r1`, r2: `${tag}-r2`, home1: `${tag}-h1`, home2: `${tag}-h2` };
  const made: string[] = [];
  const remove = (): void => {
    for (const ns of made.reverse()) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // already gone
      }
    }
  };
  const ip = (...args: string[]): void => void execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const inNs = (ns: string, ...args: string[]): void => void execFileSync('ip', ['netns', 'exec', ns, ...args], { stdio: ['pipe', 'ignore', 'pipe'] });
  const nft = (ns: string, rules: string): void => void execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: rules, stdio: ['pipe', 'ignore', 'pipe'] });
  try {
    for (const ns of Object.values(names)) {
      ip('netns', 'add', ns);
      made.push(ns);
      inNs(ns, 'ip', 'link', 'set', 'lo', 'up');
    }
    const link = (a: string, aIf: string, b: string, bIf: string): void => ip('link', 'add', aIf, 'netns', a, 'type', 'veth', 'peer', 'name', bIf, 'netns', b);
    link(names.home1, 'up0', names.r1, 'lan0');
    link(names.home2, 'up0', names.r2, 'lan0');
    link(names.r1, 'wan0', names.pub, 'r1');
    link(names.r2, 'wan0', names.pub, 'r2');
    const addr = (ns: string, dev: string, cidr: string): void => {
      inNs(ns, 'ip', 'addr', 'add', cidr, 'dev', dev);
      inNs(ns, 'ip', 'link', 'set', dev, 'up');
    };
    addr(names.pub, 'r1', '198.18.1.1/24');
    addr(names.pub, 'r2', '198.18.2.1/24');
    const dhtNodes = ['198.18.0.1', '198.18.0.2', '198.18.0.3'];
    for (const host of dhtNodes) inNs(names.pub, 'ip', 'addr', 'add', `${host}/32`, 'dev', 'lo');
    inNs(names.pub, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
    for (const [router, home, n] of [
      [names.r1, names.home1, 1],
      [names.r2, names.home2, 2],
    ] as const) {
      addr(router, 'wan0', `198.18.${n}.2/24`);
      addr(router, 'lan0', `10.${n}.0.1/24`);
      inNs(router, 'ip', 'route', 'add', 'default', 'via', `198.18.${n}.1`);
      inNs(router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
      nft(
        router,
        `table ip nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade${options.randomPorts ? ' random' : ''}; }
}
table ip filter {
  chain input { type filter hook input priority filter; policy accept; iifname "wan0" ct state established,related accept; iifname "wan0" drop; }
  chain forward { type filter hook forward priority filter; policy accept; iifname "wan0" ct state established,related accept; iifname "wan0" drop; }
}
`,
      );
      addr(home, 'up0', `10.${n}.0.2/24`);
      inNs(home, 'ip', 'route', 'add', 'default', 'via', `10.${n}.0.1`);
    }
    return { pub: names.pub, home1: names.home1, home2: names.home2, router1: names.r1, router2: names.r2, dhtNodes: dhtNodes.map((h) => `${h}:49737`), remove };
  } catch (err) {
    remove();
    throw new Error(`Could not build the namespaced network: ${(err as { stderr?: Buffer }).stderr?.toString().trim() || String(err)}`);
  }
}

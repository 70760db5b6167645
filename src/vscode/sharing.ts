import * as vscode from 'vscode';
import {
  DEFAULT_PORT,
  PeerShareError,
  formatDhtKey,
  sanitizeForDisplay,
  toPeerShareError,
  type AccessDecision,
  type AccessRequest,
  type ActiveShare,
  type PeerServer,
  type StreamRoute,
} from '../core';
import type { Peers } from './peers';
import { filesExcludePatterns, readSettings } from './settings';

/**
 * Starting and stopping the peer server for the workspace folders, the invite, and the status
 * bar item that shows whether we share and how many peers are connected.
 */
/** How the sharer answers a nearby peer's request. Replaceable in tests, which cannot click. */
export type AccessPrompt = (request: AccessRequest, signal: AbortSignal) => Promise<AccessDecision>;
/** Asks once whether to turn internet reach on, saying what it means; true: Turn On. Replaceable in tests. */
export type InternetPrompt = () => Promise<boolean>;

/** Where the person's yes to internet reach is kept (globalState): asked once per installation. */
export const INTERNET_CONSENT_KEY = 'peershare.internetConsent';

export class Sharing implements vscode.Disposable {
  accessPrompt: AccessPrompt = askAccess;
  internetPrompt: InternetPrompt = askInternet;
  private server?: PeerServer;
  private active?: ActiveShare;
  /** The port the server last had, and the setting it had then: a restart under the same setting keeps it. */
  private last?: { port: number; setting: number };
  private starting?: Promise<void>;
  private readonly statusItem: vscode.StatusBarItem;
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    private readonly peers: Peers,
    private readonly log: vscode.LogOutputChannel,
    /** Keeps the yes to internet reach (INTERNET_CONSENT_KEY). */
    private readonly consent: vscode.Memento,
  ) {
    this.statusItem = vscode.window.createStatusBarItem('peershare.status', vscode.StatusBarAlignment.Left, 50);
    this.statusItem.name = 'PeerShare';
    this.statusItem.command = 'peershare.sharingActions';
    this.render();
    this.statusItem.show();
    this.disposables.push(
      this.statusItem,
      this.changed,
      // Settings and folders take effect without a reload: restart the server if it runs.
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration('peershare.discovery')) void this.peers.stopDiscovery().then(() => this.server && this.restart());
        else if (e.affectsConfiguration('peershare.internet')) void this.internetSettingChanged();
        else if (this.server && (e.affectsConfiguration('peershare') || e.affectsConfiguration('files.exclude'))) void this.restart();
      }),
      vscode.workspace.onDidChangeWorkspaceFolders(() => {
        if (this.server) void this.restart();
      }),
    );
  }

  get isSharing(): boolean {
    return this.server !== undefined;
  }

  get port(): number | undefined {
    return this.server?.port;
  }

  /** The DHT key this share listens on (its invites carry it); undefined without internet reach. */
  get internetKey(): string | undefined {
    return this.active?.internetKey;
  }

  /** Why the running share is not on the DHT though internet reach is on; undefined otherwise. */
  get internetError(): PeerShareError | undefined {
    return this.active?.internetError;
  }

  /** How a peer reading our share reached it (LAN or DHT), while it is connected. */
  incomingRoute(peerId: string): StreamRoute | undefined {
    return this.server?.connectedPeers().find((p) => p.id === peerId)?.route;
  }

  connectedCount(): number {
    return this.server ? new Set(this.server.connectedPeers().map((p) => p.id)).size : 0;
  }

  async start(): Promise<void> {
    if (this.server) return;
    if (this.starting) return this.starting;
    this.starting = this.doStart().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async doStart(): Promise<void> {
    if (!vscode.workspace.isTrusted) throw new PeerShareError('INVALID_ARGUMENT', 'PeerShare shares files only from trusted workspaces.');
    const folders = (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file');
    if (folders.length === 0) {
      throw new PeerShareError('INVALID_ARGUMENT', 'Open a folder on this machine to share it. Virtual folders cannot be shared.');
    }
    const settings = readSettings();
    const internet = settings.internet.enabled && (await this.internetAllowed());
    const { node } = await this.peers.load();
    const excludes = [...settings.exclude];
    if (settings.useFilesExclude) for (const f of folders) excludes.push(...filesExcludePatterns(f));
    // Announcements go out on the view's discovery (started here if it is not yet), so one set of sockets serves both.
    const announce = (await this.peers.discovery()) !== undefined;
    // The default port, or any free one if it is taken; a port set to anything else, exactly.
    // A restart keeps the port it had (unless a port is set), so paired peers still reach us.
    const active = await node
      .share({
        folders: folders.map((f) => f.uri.fsPath),
        excludes: [...new Set(excludes)],
        honourGitignore: settings.useGitignore,
        host: settings.bindAddress,
        port: settings.port === DEFAULT_PORT ? undefined : settings.port,
        previousPort: this.last?.setting === settings.port ? this.last.port : undefined,
        announce,
        limits: { approvalTimeoutMs: settings.requestTimeoutSeconds * 1000 },
        internet,
        onAccessRequest: async (request, signal) => {
          if (!readSettings().allowNearbyRequests) return 'deny';
          this.log.info(`${sanitizeForDisplay(request.name)} (${request.id}) at ${request.address} asks to connect; verification code ${request.verificationCode}`);
          const decision = await this.accessPrompt(request, signal);
          this.log.info(`Request from ${request.id}: ${decision}`);
          return decision;
        },
      })
      .catch((err: unknown) => {
        const coded = toPeerShareError(err);
        if (coded.code !== 'ADDRESS_IN_USE') throw coded;
        throw new PeerShareError('ADDRESS_IN_USE', `${coded.message} Change the peershare.port setting (0: any free port).`, { detail: coded.detail, cause: coded });
      });
    const { server, share, defaultPortInUse, internetKey, internetError } = active;
    this.last = { port: server.port, setting: settings.port };
    if (internetError) {
      // The share runs on the LAN regardless (the node already logged why): say it where it is seen.
      void vscode.window.showWarningMessage(`Sharing on your network only. ${internetError.message}`, 'Show Log').then((c) => c && this.log.show());
    }
    if (defaultPortInUse) {
      const how = settings.discovery.enabled ? 'through your announcements on the network, or a new invite' : 'only with a new invite';
      const moved = `Port ${defaultPortInUse} is in use; sharing on port ${server.port} instead. Peers that paired with you find you ${how}.`;
      this.log.warn(moved);
      void vscode.window.showWarningMessage(moved);
    }
    const onPeers = (): void => {
      this.render();
      this.changed.fire();
    };
    server.on('peer-connected', onPeers);
    server.on('peer-paired', (peer: { name: string; id: string }) => {
      onPeers();
      void vscode.window.showInformationMessage(`${sanitizeForDisplay(peer.name)} paired with you and can now download from this workspace.`);
    });
    server.on('peer-disconnected', onPeers);
    this.server = server;
    this.active = active;
    this.sharesWithInternet = internet;
    await vscode.commands.executeCommand('setContext', 'peershare.sharing', true);
    this.log.info(`Sharing ${share.roots.map((r) => r.realPath).join(', ')} on ${server.addresses().join(', ')}${internetKey ? ` and on the DHT as ${formatDhtKey(internetKey)}` : ''}`);
    this.render();
    this.changed.fire();
  }

  async stop(): Promise<void> {
    await this.starting?.catch(() => undefined);
    const active = this.active;
    if (!active) return;
    this.server = undefined;
    this.active = undefined;
    await active.stop();
    await vscode.commands.executeCommand('setContext', 'peershare.sharing', false);
    this.log.info('Stopped sharing');
    this.render();
    this.changed.fire();
  }

  private async restart(): Promise<void> {
    this.log.info('Settings or folders changed: restarting the peer server');
    await this.stop();
    try {
      await this.start();
    } catch (err) {
      const coded = toPeerShareError(err);
      this.log.error(`Could not restart sharing: ${coded.message}`);
      void vscode.window.showErrorMessage(`Could not restart sharing. ${coded.message}`);
    }
  }

  /**
   * peershare.internet changed. Turning it on asks first, the first time, before anything stops;
   * Cancel turns the setting back off. A running share then restarts with (or without) the DHT.
   */
  private async internetSettingChanged(): Promise<void> {
    const wanted = readSettings().internet.enabled && (await this.internetAllowed());
    // Off and never on in this share (a Cancel just turned it back off): nothing to restart.
    if (this.server && (wanted || this.sharesWithInternet)) await this.restart();
  }

  /**
   * Whether the person agreed to internet reach: asked once per installation, with what it means.
   * A no turns the setting off (where the user set it), so it is not asked again at every start.
   */
  private async internetAllowed(): Promise<boolean> {
    if (this.consent.get<boolean>(INTERNET_CONSENT_KEY) === true) return true;
    this.asking ??= this.internetPrompt().finally(() => (this.asking = undefined));
    const yes = await this.asking;
    if (yes) {
      await this.consent.update(INTERNET_CONSENT_KEY, true);
      return true;
    }
    this.log.info('Internet reach was not turned on: sharing stays on your network.');
    if (readSettings().internet.enabled) await vscode.workspace.getConfiguration('peershare').update('internet.enabled', false, vscode.ConfigurationTarget.Global);
    return false;
  }

  private asking?: Promise<boolean>;
  /** Whether the running share was asked to listen on the DHT too. */
  private sharesWithInternet = false;

  /** A new invite (single use, one hour), as a link the partner can click or paste. */
  createInvite(): string {
    if (!this.server) throw new PeerShareError('INVALID_ARGUMENT', 'Start sharing first.');
    return this.server.createInvite({ uses: 1, ttlMs: 60 * 60_000 }).replace(/^peershare:\/\/invite/, 'vscode://peershare.peershare/invite');
  }

  /** Closes a forgotten peer's connections at once. */
  disconnect(peerId: string): void {
    this.server?.disconnectPeer(peerId);
  }

  private render(): void {
    if (!this.server) {
      this.statusItem.text = '$(broadcast) Not sharing';
      this.statusItem.tooltip = 'PeerShare: not sharing. Click for sharing actions.';
      return;
    }
    const n = this.connectedCount();
    const internet = this.active?.internetKey !== undefined;
    this.statusItem.text = `$(broadcast) Sharing · ${n} peer${n === 1 ? '' : 's'}${internet ? ' · internet' : ''}`;
    const reach = internet ? ' and over the internet (HyperDHT)' : '';
    this.statusItem.tooltip = `PeerShare: sharing on port ${this.server.port}${reach}, ${n} peer${n === 1 ? '' : 's'} connected. Click for sharing actions.`;
  }

  dispose(): void {
    void this.stop();
    for (const d of this.disposables) d.dispose();
  }
}

/** The first time internet reach is turned on: what it means, plainly, before anything is announced. */
async function askInternet(): Promise<boolean> {
  const choice = await vscode.window.showWarningMessage(
    'Turn on internet reach?',
    {
      modal: true,
      detail:
        'While you share, PeerShare then also listens on the HyperDHT network, so peers beyond your local network can connect. The DHT learns this machine\'s IP address and its internet key. Anyone who learns the key (it is in your invites) can try to connect; only peers you trust get in, over the same pinned TLS as on your network.',
    },
    'Turn On',
  );
  return choice === 'Turn On';
}

/** Asks the person at this editor; both sides show the same verification code. */
async function askAccess(request: AccessRequest, signal: AbortSignal): Promise<AccessDecision> {
  const choice = await Promise.race([
    vscode.window.showInformationMessage(
      `${sanitizeForDisplay(request.name)} (${request.address}) asks to connect and download from this workspace. Verification code ${request.verificationCode.replace(' ', '\u00a0')}: check that they see the same.`,
      'Allow Once',
      'Always Allow',
      'Deny',
    ),
    new Promise<undefined>((resolve) => signal.addEventListener('abort', () => resolve(undefined), { once: true })),
  ]);
  return choice === 'Allow Once' ? 'once' : choice === 'Always Allow' ? 'always' : 'deny';
}

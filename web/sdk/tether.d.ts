// Types for the Tether browser SDK (tether.js). Behaviour: docs/clients.md.

export type ConnState = 'IDLE' | 'CONNECTING' | 'OPEN' | 'RECONNECTING' | 'OFFLINE' | 'CLOSED' | 'ERROR'
export declare const State: Readonly<{ [K in ConnState]: K }>

export declare const CloseCode: Readonly<{
  NORMAL: 1000; GOING_AWAY: 1001; PROTOCOL_ERROR: 1002; UNSUPPORTED: 1003
  ABNORMAL: 1006; INVALID_UTF8: 1007; POLICY: 1008; TOO_BIG: 1009
  INTERNAL: 1011; RESTART: 1012; TRY_AGAIN_LATER: 1013
  HEARTBEAT: 4000; RESYNC: 4010; SLOW_CONSUMER: 4008; RATE_LIMITED: 4029
  UNAUTHORIZED: 4401; FORBIDDEN: 4403; SESSION_INVALID: 4409
}>

export type ClosePolicy = 'terminal' | 'reconnect-later' | 'reconnect'
export declare function policyFor(code: number): ClosePolicy

export interface ReconnectPolicy {
  baseDelayMs: number      // 500
  factor: number           // 1.8
  maxDelayMs: number       // 15000
  jitter: number           // 0.2 (±20%)
  maxRetries: number       // Infinity
  laterDelayMs: number     // 5000: minimum wait after 4008/4029/1013
  stableAfterMs: number    // 5000: the retry counter resets after staying open this long
  connectTimeoutMs: number // 10000: an attempt without welcome by then is abandoned
}
export interface HeartbeatPolicy { intervalMs: number; timeoutMs: number } // 10000, 25000
export declare const defaultReconnect: Readonly<ReconnectPolicy>
export declare const defaultHeartbeat: Readonly<HeartbeatPolicy>
export declare function backoffDelay(attempt: number, policy?: ReconnectPolicy, random?: () => number): number
/** A URL fit for a log: the token and session removed, the positions counted. */
export declare function redact(url: string): string

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
  now(): number
}

export interface TetherOptions {
  /**
   * ws:// or wss:// URL, or a function returning one per attempt. Default:
   * the node this module was loaded from (`…/sdk/tether.js` → `ws(s)://that host/ws`),
   * else the page's own host; `?user=<user>` added when `user` is given.
   */
  url?: string | (() => string)
  user?: string
  /** Token mode: the token, or a function returning a fresh one per attempt; sent as ?token=. */
  token?: string | (() => string)
  /** A sessionStorage key: the session, rooms and positions are kept there so that a reloaded page resumes. */
  persist?: string
  /** Where persist keeps them (default: sessionStorage). */
  storage?: Pick<Storage, 'getItem' | 'setItem'>
  /** false: never resume a session (default true). */
  resume?: boolean
  autoConnect?: boolean
  reconnect?: Partial<ReconnectPolicy>
  heartbeat?: Partial<HeartbeatPolicy>
  outboxLimit?: number // 1000
  logLimit?: number    // 200
  /** For tests: a WebSocket constructor, timers, and the window-like object that fires online/offline. */
  WebSocket?: new (url: string) => WebSocket
  timers?: Timers
  environment?: EventTarget & { navigator?: { onLine: boolean }; document?: EventTarget } | null
  random?: () => number
}

export interface CloseSnapshot { code: number; reason: string; wasClean: boolean; at: number }
export interface LogLine { at: number; text: string }

/** A file a message carries; fetch it from client.fileURL(file). Show `name` as text. */
export interface FileInfo {
  id: string; name: string; mime: string; size: number
  /** A PNG, JPEG, GIF or WebP picture: safe to show inline. Anything else is a download. */
  image?: boolean
  url: string
}
export interface Chat { room: string; from: string; text: string; seq: number; epoch: string; id?: string; ts: number; file?: FileInfo }
export interface Direct { from: string; to: string; text: string; seq: number; epoch: string; id?: string; ts: number; file?: FileInfo }
export interface Presence { room: string; user?: string; action: 'join' | 'leave' | 'count'; count: number }
export interface Members { room: string; users: string[]; count: number; truncated?: boolean; epoch: string; top: number }
export interface Recovered { room?: string; inbox?: boolean; recovered: boolean; count: number; epoch: string; top: number }
export interface ReconnectInfo { attempt: number; delayMs: number; at: number; code: number | null }
export interface Welcome {
  protocol: number; user: string; session: string; resumed: boolean; online: number; rooms: string[]
  /** The private inbox's position when this connection started receiving it. */
  inbox: { epoch: string; top: number }
  heartbeat: { interval: number; timeout: number }; max_text: number
  /** The largest file the server takes, in bytes; 0 when files are off. */
  max_file: number
}
export interface HistoryPage { room: string; epoch: string; top: number; oldest: number; messages: Chat[] }
export interface Ack { id: string; seq?: number }
export interface ErrorReply { code: string; message: string; id?: string }

export interface TetherEvents {
  state: { state: ConnState; prev: ConnState; reason: string }
  /** A retry is scheduled: attempt n, in delayMs, at (ms since the epoch), after a close with code. */
  reconnect: ReconnectInfo
  welcome: Welcome
  recovered: Recovered
  chat: Chat
  direct: Direct
  presence: Presence
  members: Members
  left: { user: string }
  /** The application took the user out of a room (server API); the client no longer asks for it. */
  unsubscribed: { room: string }
  history: HistoryPage
  error: ErrorReply
  outbox: { pending: number }
  ack: Ack
  log: LogLine
  message: { type: string; id?: string; ts?: number; payload?: unknown }
}

export declare class TetherError extends Error {
  code: string
  id?: string
}

/** A promise for a queued message; id is the client message id it travels with. */
export type Sent<T> = Promise<T> & { id: string }

export declare class TetherClient {
  constructor(options?: TetherOptions)
  readonly state: ConnState
  readonly attempt: number
  readonly nextRetryAt: number | null
  /** How the last connection ended, or what the server said to refuse one. */
  readonly lastClose: CloseSnapshot | null
  /** The last attempt that failed without a word from the server (1006 before any welcome). */
  readonly lastFailure: { code: number; reason: string; at: number } | null
  readonly lastErrorAt: number | null
  readonly lastMessageAt: number | null
  readonly user: string | null
  readonly session: string | null
  /** The last welcome resumed the session presented. */
  readonly resumed: boolean
  readonly rooms: Set<string>
  readonly log: LogLine[]
  readonly pending: number
  readonly activeTimers: number
  on<E extends keyof TetherEvents>(event: E, fn: (data: TetherEvents[E]) => void): () => void
  connect(): void
  disconnect(reason?: string): void
  join(room: string): Sent<Ack>
  leave(room: string): Sent<Ack>
  send(room: string, text: string): Sent<Ack>
  direct(user: string, text: string): Sent<Ack>
  /** Send a file (a picture or any file) to a room; it enters the outbox once its bytes are read. */
  sendFile(room: string, file: Blob | ArrayBuffer | Uint8Array, opts?: { name?: string; type?: string; text?: string }): Promise<Ack>
  /** Send a file to a user, like sendFile. */
  directFile(user: string, file: Blob | ArrayBuffer | Uint8Array, opts?: { name?: string; type?: string; text?: string }): Promise<Ack>
  /** Where to fetch a message's file, with the token in token mode. */
  fileURL(file: FileInfo): string
  /** The largest file the server takes (from the welcome); 0 before it or when files are off. */
  readonly maxFile: number
  who(room: string): Promise<Members>
  history(room: string, opts?: { before?: number; after?: number; limit?: number }): Promise<HistoryPage>
  destroy(): void
}

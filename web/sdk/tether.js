// Tether browser SDK: a reconnecting WebSocket client for the Tether
// protocol (docs/protocol.md), with a visible state machine, backoff with
// jitter, a heartbeat that detects dead sockets, and an outbox that keeps
// every message until the server acknowledged it.
//
// No dependencies, no build step: import it as an ES module from the server
// (`/sdk/tether.js`) or from the package (web/sdk). Behaviour is specified in
// docs/clients.md; the Go SDK follows the same document.

/** Connection states. */
export const State = Object.freeze({
  IDLE: 'IDLE',                 // created, connect() not called yet
  CONNECTING: 'CONNECTING',     // first attempt in progress
  OPEN: 'OPEN',                 // socket open and welcomed
  RECONNECTING: 'RECONNECTING', // waiting for, or making, another attempt
  OFFLINE: 'OFFLINE',           // the browser says it is offline: no attempts until online
  CLOSED: 'CLOSED',             // stopped: manual disconnect, terminal close code or retry limit
  ERROR: 'ERROR',               // stopped on an unrecoverable client-side error (bad URL)
})

/** Close codes the server uses (docs/protocol.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000, GOING_AWAY: 1001, PROTOCOL_ERROR: 1002, UNSUPPORTED: 1003,
  ABNORMAL: 1006, INVALID_UTF8: 1007, POLICY: 1008, TOO_BIG: 1009,
  INTERNAL: 1011, RESTART: 1012, TRY_AGAIN_LATER: 1013,
  HEARTBEAT: 4000, RESYNC: 4010, SLOW_CONSUMER: 4008, RATE_LIMITED: 4029,
  UNAUTHORIZED: 4401, FORBIDDEN: 4403, SESSION_INVALID: 4409,
})

const TERMINAL = new Set([1000, 1002, 1003, 1007, 1008, 1009, 4401, 4403])
const LATER = new Set([1013, 4008, 4029])

/**
 * What to do after a close: 'terminal' (stop), 'reconnect-later' (wait at
 * least policy.laterDelayMs) or 'reconnect'. Unknown codes reconnect.
 */
export function policyFor(code) {
  if (TERMINAL.has(code)) return 'terminal'
  if (LATER.has(code)) return 'reconnect-later'
  return 'reconnect'
}

/** Default reconnect policy (the course's values). */
export const defaultReconnect = Object.freeze({
  baseDelayMs: 500,
  factor: 1.8,
  maxDelayMs: 15000,
  jitter: 0.2,          // ±20%
  maxRetries: Infinity, // attempts after a drop before giving up (CLOSED)
  laterDelayMs: 5000,   // minimum wait after a rate-limit/overload close
  stableAfterMs: 5000,  // the retry counter resets only after staying open this long
  connectTimeoutMs: 10000,
})

/** Default heartbeat: ping every interval; silence past timeout is death. */
export const defaultHeartbeat = Object.freeze({ intervalMs: 10000, timeoutMs: 25000 })

/**
 * Delay before reconnect attempt n (1-based):
 * min(max, base·factor^(n-1)) · random(1-jitter, 1+jitter).
 */
export function backoffDelay(attempt, policy = defaultReconnect, random = Math.random) {
  const n = Math.max(1, attempt)
  const pure = Math.min(policy.maxDelayMs, policy.baseDelayMs * Math.pow(policy.factor, n - 1))
  const j = Math.min(1, Math.max(0, policy.jitter))
  return Math.max(0, Math.round(pure * (1 - j + random() * 2 * j)))
}

/** Error for a message the server refused or the client could not send. */
export class TetherError extends Error {
  constructor(code, message, id) {
    super(message)
    this.name = 'TetherError'
    this.code = code
    this.id = id
  }
}

// moduleServer is the Tether node this module was loaded from (its
// /sdk/tether.js), or null when it was bundled into an application.
const moduleServer = (() => {
  try {
    const u = new URL(import.meta.url)
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.pathname.endsWith('/sdk/tether.js') ? u : null
  } catch { return null }
})()

// defaultURL is where to connect when no url is given: the node that served
// this module (so a page on another origin that imports it from the node
// reaches that node), else the page's own host.
function defaultURL(user) {
  const from = moduleServer || globalThis.location
  const base = from ? `${from.protocol === 'https:' ? 'wss' : 'ws'}://${from.host}/ws` : 'ws://127.0.0.1:8000/ws'
  return user ? `${base}?user=${encodeURIComponent(user)}` : base
}

// fileFrame is a file's binary frame: the header's length (2 bytes, big
// endian), the header (JSON), the bytes (docs/protocol.md, Files).
function fileFrame(id, p) {
  const header = { type: 'file', id, name: p.name, mime: p.mime }
  if (p.room) header.room = p.room
  else header.to = p.to
  if (p.text) header.text = p.text
  const h = new TextEncoder().encode(JSON.stringify(header))
  const out = new Uint8Array(2 + h.length + p.bytes.length)
  out[0] = h.length >> 8
  out[1] = h.length & 0xff
  out.set(h, 2)
  out.set(p.bytes, 2 + h.length)
  return out
}

function sizeText(n) {
  if (n >= 1 << 20) return `${+(n / (1 << 20)).toFixed(1)} MiB`
  if (n >= 1 << 10) return `${+(n / (1 << 10)).toFixed(1)} KiB`
  return `${n} bytes`
}

// redact is a URL fit for the log: the token and session are secrets (a
// session can be resumed by whoever holds it), and the positions are
// long; what is left says who connects where, and whether it resumes.
export function redact(url) {
  try {
    const u = new URL(url)
    const notes = []
    if (u.searchParams.has('token')) { u.searchParams.set('token', '…'); notes.push('token') }
    if (u.searchParams.has('session')) { u.searchParams.delete('session'); notes.push('resuming its session') }
    if (u.searchParams.has('since')) {
      try { notes.push(`${Object.keys(JSON.parse(u.searchParams.get('since'))).length} positions`) } catch { /* ignore */ }
      u.searchParams.delete('since')
    }
    return `${u.toString().replace('token=%E2%80%A6', 'token=…')}${notes.length ? ` (${notes.join(', ')})` : ''}`
  } catch { return '(an invalid URL)' }
}

const realTimers = {
  setTimeout: (f, ms) => globalThis.setTimeout(f, ms),
  clearTimeout: (t) => globalThis.clearTimeout(t),
  now: () => Date.now(),
}

/**
 * TetherClient is one logical connection to a Tether server that survives
 * the real network: it reconnects by itself, re-joins its rooms, and
 * delivers what was sent while disconnected exactly once, in order.
 *
 * Events (subscribe with on(name, fn), which returns an unsubscribe function):
 *   state    {state, prev, reason}     every transition
 *   welcome  welcome payload           each successful (re)connect
 *   chat, direct, presence, members, left, history   server messages (payload)
 *   recovered {room|inbox, recovered, count, epoch, top}  after a reconnect's replay of a stream
 *   error    {code, message, id}       error replies
 *   outbox   {pending}                 the number of unacknowledged messages changed
 *   ack      {id, seq}                 a message was acknowledged
 *   log      {at, text}                one line of the evidence log
 *   message  envelope                  every server message, raw
 */
export class TetherClient {
  constructor(options = {}) {
    this.options = options
    this.reconnectPolicy = { ...defaultReconnect, ...(options.reconnect || {}) }
    this.heartbeatPolicy = { ...defaultHeartbeat, ...(options.heartbeat || {}) }
    this.outboxLimit = options.outboxLimit ?? 1000
    this.logLimit = options.logLimit ?? 200
    this._WS = options.WebSocket || globalThis.WebSocket
    this._t = options.timers || realTimers
    this._env = options.environment === undefined ? globalThis.window : options.environment
    this._random = options.random || Math.random

    this.state = State.IDLE
    this.attempt = 0          // reconnect attempts since the last stable connection
    this.nextRetryAt = null   // when the next attempt is scheduled (ms), or null
    this.lastClose = null     // {code, reason, wasClean, at}: how the last connection ended (see _handleClose)
    this.lastFailure = null   // {code, reason, at}: the last attempt that failed without a word from the server
    this.lastErrorAt = null
    this.lastMessageAt = null
    this.user = options.user || null
    this.session = null
    this.resumed = false
    this.rooms = new Set()
    this._asked = []          // the rooms the current attempt asked for (?rooms=)
    this.maxFile = 0          // the largest file the server takes (welcome.max_file)
    this.log = []

    this._listeners = new Map()
    this._ws = null
    this._manual = false
    this._timers = { retry: null, connect: null, heartbeat: null, silence: null, stable: null, resend: null, errorClose: null }
    this._outbox = []         // {id, type, payload, resolve, reject}
    this._pendingReplies = new Map() // id -> {resolve, reject} for requests outside the outbox
    this._seq = 0
    this._idPrefix = Math.floor(this._random() * 36 ** 6).toString(36)
    this._positions = new Map() // stream -> {epoch, seq} of the last message received: continuity, dedupe and resume
    this._resyncing = false     // a gap was found: the socket is being replaced
    this._welcomed = false      // the current socket got its welcome
    this._joinedAt = new Map()  // room -> {epoch, seq} from the join reply: resume point until a message arrives
    this._onEnv = {
      online: () => this._handleOnline(),
      offline: () => this._handleOffline(),
      check: () => this._checkAlive('page became visible'),
      persist: () => this._persist(),
    }
    this._restore()
    this._watchEnvironment(true)
    if (options.autoConnect) this.connect()
  }

  // ---- public API ------------------------------------------------------

  /** Subscribe to an event; returns a function that unsubscribes. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set())
    this._listeners.get(event).add(fn)
    return () => this._listeners.get(event)?.delete(fn)
  }

  /** Number of messages waiting for the server's ack. */
  get pending() { return this._outbox.length }

  /**
   * Connect now. Safe to call in any state: an open or opening connection
   * is kept (single flight); a scheduled retry is brought forward; after
   * CLOSED (manual, terminal or retry limit) it starts afresh.
   */
  connect() {
    this._manual = false
    if (this.state === State.OPEN || (this._ws && this._timers.connect !== null)) return
    if (this.state === State.CLOSED || this.state === State.ERROR || this.state === State.IDLE) this.attempt = 0
    this._clearTimer('retry')
    this._open(this.state === State.IDLE || this.state === State.CLOSED || this.state === State.ERROR
      ? State.CONNECTING : State.RECONNECTING, 'connect() called')
  }

  /**
   * Close for good (code 1000: the server takes the user out of their rooms
   * at once and forgets the session). No reconnect follows until connect()
   * is called again. Unacknowledged messages stay in the outbox, their
   * promises pending, and are sent on the next connect(); pending who()
   * and history() calls are rejected (they need the connection).
   */
  disconnect(reason = 'manual disconnect') {
    this._manual = true
    this._clearAllTimers()
    this._detach(CloseCode.NORMAL, reason)
    this._rejectRequests('the connection was closed before the answer came')
    this.lastClose = { code: CloseCode.NORMAL, reason, wasClean: true, at: this._t.now() }
    this._setState(State.CLOSED, reason)
  }

  /** Join a room; resolves on the server's ack. */
  join(room) { this.rooms.add(room); return this._enqueue('join', { room }) }

  /** Leave a room; resolves on the server's ack. */
  leave(room) {
    this.rooms.delete(room)
    this._joinedAt.delete(room)
    this._positions.delete(`room:${room}`)
    return this._enqueue('leave', { room })
  }

  /** Send a chat message to a room; resolves with {id, seq} on ack. */
  send(room, text) { return this._enqueue('chat', { room, text }) }

  /** Send a private message to a user; resolves with {id, seq} on ack. */
  direct(user, text) { return this._enqueue('direct', { to: user, text }) }

  /**
   * Send a file (a picture, or any file: a Blob, File, ArrayBuffer or
   * Uint8Array) to a room; resolves with {id, seq} on ack, like send. It
   * enters the outbox once its bytes are read (await it before sending
   * more to keep the order), waits there while disconnected, and is
   * delivered exactly once, as a chat message with `file`. Rejects with
   * `file_too_large` past the server's limit (welcome.max_file), `bad_file`
   * when empty or when a picture's bytes are not what its type says.
   */
  sendFile(room, file, opts = {}) { return this._enqueueFile({ room }, file, opts) }

  /** Send a file to a user, like sendFile. */
  directFile(user, file, opts = {}) { return this._enqueueFile({ to: user }, file, opts) }

  /** Where to fetch a message's file (`message.file`), with the token in token mode. */
  fileURL(file) {
    if (!file || !file.url) return ''
    let base
    try { base = new URL(this._ws?.url || this._url()) } catch { return file.url }
    base.protocol = base.protocol === 'wss:' ? 'https:' : 'http:'
    const u = new URL(file.url, base)
    const tok = typeof this.options.token === 'function' ? this.options.token() : this.options.token
    if (tok) u.searchParams.set('token', tok)
    return u.toString()
  }

  async _enqueueFile(to, file, opts) {
    const name = opts.name || file?.name || 'file'
    const mime = opts.type || file?.type || ''
    let bytes
    if (file instanceof Uint8Array) bytes = file
    else if (file instanceof ArrayBuffer) bytes = new Uint8Array(file)
    else if (file && typeof file.arrayBuffer === 'function') bytes = new Uint8Array(await file.arrayBuffer())
    else throw new TetherError('bad_file', 'sendFile takes a Blob, File, ArrayBuffer or Uint8Array')
    if (bytes.length === 0) throw new TetherError('bad_file', `"${name}" is empty`)
    if (this.maxFile > 0 && bytes.length > this.maxFile) {
      throw new TetherError('file_too_large', `"${name}" is ${sizeText(bytes.length)}; the limit is ${sizeText(this.maxFile)}`)
    }
    return this._enqueue('file', { ...to, name, mime, text: opts.text || '', bytes })
  }

  /** Ask who is in a room (answered by a `members` event). Not queued. */
  who(room) { return this._request('who', { room }) } // answered by `members` with the same id

  /** Page back through a room's history (answered by a `history` event). Not queued. */
  history(room, { before = 0, after = 0, limit = 50 } = {}) {
    return this._request('history', { room, before, after, limit })
  }

  /**
   * Stop for good and release every timer and listener. Every message
   * still in the outbox is rejected with code `closed` (it was not sent,
   * or not acknowledged: it may have been delivered).
   */
  destroy() {
    this.disconnect('destroyed')
    const items = this._outbox.splice(0)
    for (const item of items) {
      item.reject(new TetherError('closed', 'the client was destroyed before the server acknowledged this message', item.id))
    }
    if (items.length) this._emit('outbox', { pending: 0 })
    this._watchEnvironment(false)
    this._listeners.clear()
  }

  // ---- connection lifecycle -------------------------------------------

  // _url is the URL of the next attempt: the configured one plus the token,
  // and the session and stream positions to resume from.
  _url() {
    const u = this.options.url
    const base = typeof u === 'function' ? u() : (u || defaultURL(this.user))
    const url = new URL(base, globalThis.location?.href)
    const tok = typeof this.options.token === 'function' ? this.options.token() : this.options.token
    if (tok) url.searchParams.set('token', tok)
    if (this.session && this.options.resume !== false) url.searchParams.set('session', this.session)
    if (this.options.resume !== false) {
      const since = {}
      for (const [room, pos] of this._joinedAt) since[room] = [pos.epoch, pos.seq]
      for (const [stream, pos] of this._positions) {
        since[stream === 'inbox' ? '@' : stream.slice(5)] = [pos.epoch, pos.seq]
      }
      if (Object.keys(since).length) url.searchParams.set('since', JSON.stringify(since))
    }
    // The rooms to be in, joined in the same step as the connection (with
    // what was missed in each replayed), also when the session expired.
    this._asked = [...this.rooms]
    if (this._asked.length) url.searchParams.set('rooms', this._asked.join(','))
    return url.toString()
  }

  _open(state, reason) {
    this._detach()
    this._clearAllTimers()
    if (this._env && this._env.navigator && this._env.navigator.onLine === false) {
      this._setState(State.OFFLINE, 'browser is offline')
      return
    }
    let ws, url
    try {
      url = this._url()
      ws = new this._WS(url)
    } catch (e) {
      this.lastErrorAt = this._t.now()
      this._log(`[error] cannot open a socket to ${url ? redact(url) : 'the configured URL'}: ${e.message}`)
      this._setState(State.ERROR, 'invalid URL')
      return
    }
    this._ws = ws
    this._setState(state, reason)
    this._log(`[connect] attempt=${this.attempt} url=${redact(url)}`)
    ws.onopen = () => this._log('[open] waiting for welcome')
    ws.onmessage = (e) => this._handleMessage(e.data)
    ws.onerror = () => {
      this.lastErrorAt = this._t.now()
      this._log('[error] socket error (details are in the close that follows)')
      // Some WebSocket implementations (Node's) report a refused
      // connection with an error and no close: give the close a moment,
      // then treat the socket as closed abnormally.
      this._clearTimer('errorClose')
      this._timers.errorClose = this._t.setTimeout(() => {
        this._timers.errorClose = null
        if (this._ws === ws) this._abandon(CloseCode.ABNORMAL, 'socket error without a close')
      }, 500)
    }
    ws.onclose = (e) => this._handleClose(e.code, e.reason, e.wasClean)
    this._timers.connect = this._t.setTimeout(() => {
      this._timers.connect = null
      this._log(`[timeout] no welcome within ${this.reconnectPolicy.connectTimeoutMs}ms`)
      this._abandon(4000, 'connect timeout')
    }, this.reconnectPolicy.connectTimeoutMs)
  }

  // _detach makes the current socket irrelevant: its handlers are removed
  // (so a late close cannot touch the state) and it is closed with code.
  _detach(code = 4000, reason = 'replaced') {
    const ws = this._ws
    if (!ws) return
    this._ws = null
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null
    try {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(code, reason)
    } catch { /* ignore */ }
  }

  // _abandon gives up on the current socket without waiting for the
  // browser's closing handshake (which takes ~60s against a frozen peer).
  _abandon(code, reason) {
    this._detach(code, reason)
    this._handleClose(code, reason, false, true)
  }

  _handleClose(code, reason, wasClean, local = false) {
    if (!local) this._ws = null
    this._clearAllTimers()
    this._rejectRequests(`the connection closed (${code}) before the answer came`)
    // lastClose is the evidence of why the client is not connected: how a
    // connection that was open ended, or what the server said to refuse
    // one. An attempt that failed without a word (1006 before any welcome:
    // a server still down) goes to lastFailure, so that after a restart
    // the server's 1012 stays on show instead of the retries' 1006.
    const at = this._t.now()
    if (this._welcomed || code !== CloseCode.ABNORMAL) {
      this.lastClose = { code, reason: reason || '', wasClean: !!wasClean, at }
    } else {
      this.lastFailure = { code, reason: reason || '', at }
    }
    this._welcomed = false
    this._log(`[close] code=${code} reason=${reason || '-'} wasClean=${!!wasClean}`)
    if (code === CloseCode.SESSION_INVALID) {
      this._log('[session] refused by the server: reconnecting with a new one')
      this.session = null
    }
    if (this._manual) {
      this._setState(State.CLOSED, 'manual disconnect')
      return
    }
    const policy = policyFor(code)
    if (policy === 'terminal') {
      this._log(`[close] code ${code} is terminal: not reconnecting`)
      this._setState(State.CLOSED, `terminal close ${code}`)
      return
    }
    this._scheduleReconnect(policy === 'reconnect-later', `closed with ${code}`, code)
  }

  _scheduleReconnect(later, reason, code) {
    if (this._manual) return
    if (this._env && this._env.navigator && this._env.navigator.onLine === false) {
      this._setState(State.OFFLINE, 'browser is offline')
      this._log('[offline] waiting for online')
      return
    }
    const next = this.attempt + 1
    if (next > this.reconnectPolicy.maxRetries) {
      this._log(`[reconnect] giving up after ${this.attempt} attempts`)
      this._setState(State.CLOSED, 'retry limit reached')
      return
    }
    this.attempt = next
    let delay = backoffDelay(next, this.reconnectPolicy, this._random)
    if (later) delay = Math.max(delay, this.reconnectPolicy.laterDelayMs)
    this.nextRetryAt = this._t.now() + delay
    this._setState(State.RECONNECTING, reason)
    this._log(`[reconnect] attempt=${next} in ${delay}ms`)
    this._emit('reconnect', { attempt: next, delayMs: delay, at: this.nextRetryAt, code: code ?? null })
    this._timers.retry = this._t.setTimeout(() => {
      this._timers.retry = null
      this.nextRetryAt = null
      this._open(State.RECONNECTING, `attempt ${next}`)
    }, delay)
  }

  _handleOnline() {
    this._log('[online] network is back')
    if (this._manual || this.state === State.CLOSED || this.state === State.ERROR || this.state === State.IDLE) return
    if (this.state === State.OPEN) { this._checkAlive('online'); return }
    this._clearTimer('retry')
    this._open(State.RECONNECTING, 'browser is online')
  }

  _handleOffline() {
    this._log('[offline] browser reports no network')
    if (this._manual || this.state === State.CLOSED || this.state === State.ERROR || this.state === State.IDLE) return
    this._detach()
    this._clearAllTimers()
    this._rejectRequests('the browser went offline before the answer came')
    this.lastClose = { code: CloseCode.ABNORMAL, reason: 'browser offline', wasClean: false, at: this._t.now() }
    this._setState(State.OFFLINE, 'browser is offline')
  }

  _watchEnvironment(on) {
    const env = this._env
    if (!env || typeof env.addEventListener !== 'function') return
    const m = on ? 'addEventListener' : 'removeEventListener'
    env[m]('online', this._onEnv.online)
    env[m]('offline', this._onEnv.offline)
    env[m]('pageshow', this._onEnv.check)
    env[m]('focus', this._onEnv.check)
    env[m]('pagehide', this._onEnv.persist)
    const doc = env.document
    if (doc && typeof doc.addEventListener === 'function') doc[m]('visibilitychange', this._onEnv.check)
  }

  // ---- heartbeat -------------------------------------------------------

  // The heartbeat re-arms a one-shot timer each round and measures silence
  // with wall-clock deltas, so a throttled background tab or a laptop that
  // slept notices a dead socket on the first check after waking.
  _startHeartbeat() {
    this._clearTimer('heartbeat')
    const tick = () => {
      this._timers.heartbeat = this._t.setTimeout(() => {
        this._timers.heartbeat = null
        if (!this._checkAlive('heartbeat')) return
        this._sendNow({ type: 'ping', payload: { ts: this._t.now() } })
        tick()
      }, this.heartbeatPolicy.intervalMs)
    }
    tick()
    this._armSilence()
  }

  // _armSilence sets one timer for the moment the heartbeat timeout would
  // elapse if nothing arrived meanwhile; when it fires it checks (and, if
  // something did arrive, sets itself for the new moment). So a dead socket
  // leaves OPEN when the timeout elapses, not at the next ping.
  _armSilence() {
    this._clearTimer('silence')
    if (this.state !== State.OPEN) return
    const due = (this.lastMessageAt ?? this._t.now()) + this.heartbeatPolicy.timeoutMs - this._t.now()
    this._timers.silence = this._t.setTimeout(() => {
      this._timers.silence = null
      if (this._checkAlive('silence')) this._armSilence()
    }, Math.max(1, due))
  }

  // _checkAlive closes the socket with 4000 when nothing arrived for the
  // heartbeat timeout. Returns whether the connection is still usable.
  _checkAlive(why) {
    if (this.state !== State.OPEN) return false
    const silent = this._t.now() - (this.lastMessageAt ?? 0)
    if (silent >= this.heartbeatPolicy.timeoutMs) {
      this._log(`[heartbeat] silent for ${silent}ms (> ${this.heartbeatPolicy.timeoutMs}ms) on ${why}: closing with 4000`)
      this._abandon(CloseCode.HEARTBEAT, 'heartbeat timeout')
      return false
    }
    return true
  }

  // ---- sending ---------------------------------------------------------

  _nextID() { return `${this._idPrefix}-${++this._seq}` }

  _enqueue(type, payload) {
    if (this._outbox.length >= this.outboxLimit) {
      return Promise.reject(new TetherError('outbox_full',
        `outbox full (${this.outboxLimit} messages waiting for the server); not queued`))
    }
    const item = { id: this._nextID(), type, payload, sent: false }
    const p = new Promise((resolve, reject) => { item.resolve = resolve; item.reject = reject })
    p.id = item.id // lets a UI match the server's echo of this message to its pending line
    this._outbox.push(item)
    this._emit('outbox', { pending: this._outbox.length })
    if (this.state === State.OPEN && this._checkAlive('send')) {
      item.sent = this._sendNow({ type, id: item.id, payload })
    }
    return p
  }

  // _rejectRequests fails the who() and history() calls waiting for an
  // answer on a connection that is gone.
  _rejectRequests(why) {
    const pending = [...this._pendingReplies.entries()]
    this._pendingReplies.clear()
    for (const [id, { reject }] of pending) reject(new TetherError('not_connected', why, id))
  }

  _request(type, payload) {
    if (this.state !== State.OPEN || !this._checkAlive('send')) {
      return Promise.reject(new TetherError('not_connected', `not connected (${this.state})`))
    }
    const id = this._nextID()
    return new Promise((resolve, reject) => {
      this._pendingReplies.set(id, { resolve, reject })
      this._sendNow({ type, id, payload })
    })
  }

  _sendNow(msg) {
    const ws = this._ws
    if (!ws || ws.readyState !== 1) return false
    try {
      if (msg.type === 'file') {
        ws.send(fileFrame(msg.id, msg.payload))
        return true
      }
      ws.send(JSON.stringify({ ...msg, ts: this._t.now() }))
      return true
    } catch (e) {
      this._log(`[error] send failed: ${e.message}`)
      return false
    }
  }

  _flushOutbox() {
    for (const item of this._outbox) {
      item.sent = this._sendNow({ type: item.type, id: item.id, payload: item.payload })
    }
  }

  // ---- receiving -------------------------------------------------------

  _handleMessage(data) {
    this.lastMessageAt = this._t.now()
    let env
    try {
      env = JSON.parse(data)
    } catch {
      this._log('[error] server sent a frame that is not JSON')
      return
    }
    this._emit('message', env)
    const p = env.payload || {}
    switch (env.type) {
      case 'welcome': return this._handleWelcome(p)
      case 'ack': return this._settle(env.id || p.id, null, p)
      case 'error': return this._handleError(env.id || p.id, p)
      case 'pong': return
      case 'chat':
        if (!this._accept(`room:${p.room}`, p)) return
        return this._emit('chat', p)
      case 'direct':
        if (!this._accept('inbox', p)) return
        return this._emit('direct', p)
      case 'members':
        // The join reply's position is where to resume a room from which
        // nothing has arrived yet.
        // ("", 0) — a room that has not published yet — is a position too.
        if (typeof p.epoch === 'string' && this.rooms.has(p.room) && !this._positions.has(`room:${p.room}`)) {
          this._joinedAt.set(p.room, { epoch: p.epoch, seq: p.top })
        }
        this._settle(env.id, null, p, true)
        return this._emit('members', p)
      case 'history':
        this._settle(env.id, null, p, true)
        return this._emit('history', p)
      case 'recovered': return this._handleRecovered(p)
      case 'unsubscribed':
        // The application took this user out of the room: not asked for again.
        this.rooms.delete(p.room)
        this._joinedAt.delete(p.room)
        this._positions.delete(`room:${p.room}`)
        this._persist()
        return this._emit('unsubscribed', p)
      default:
        return this._emit(env.type, p)
    }
  }

  _handleWelcome(w) {
    this._clearTimer('connect')
    this._resyncing = false
    this._welcomed = true
    const resumedUser = this.user === w.user
    this.user = w.user
    this.session = w.session
    this.resumed = !!w.resumed
    this.maxFile = w.max_file || 0
    // The inbox's position at this connection's start: a first private
    // message sent while the client is away is recovered from it. A client
    // that has a position keeps it (a resume's welcome is already past
    // what the replay brings).
    if (w.inbox && !this._positions.has('inbox')) {
      this._positions.set('inbox', { epoch: w.inbox.epoch, seq: w.inbox.top })
    }
    this._persist()
    this.nextRetryAt = null
    this._setState(State.OPEN, 'welcome received')
    this._log(`[open] user=${w.user} online=${w.online} session ${w.resumed ? 'resumed' : 'new'}${resumedUser ? '' : ' (new user)'}`)
    this._startHeartbeat()
    this._timers.stable = this._t.setTimeout(() => {
      this._timers.stable = null
      if (this.attempt) this._log(`[stable] open for ${this.reconnectPolicy.stableAfterMs}ms: retry counter reset`)
      this.attempt = 0
    }, this.reconnectPolicy.stableAfterMs)

    // Re-join what the server does not already have us in, then re-send
    // every unacknowledged message in its original order.
    // A room this attempt asked for in its URL and did not get was refused
    // (an error event says why): asking again would repeat the refusal.
    const have = new Set(w.rooms || [])
    for (const r of have) this.rooms.add(r)
    for (const room of this.rooms) {
      if (!have.has(room) && !this._asked.includes(room) &&
          !this._outbox.some((i) => i.type === 'join' && i.payload.room === room)) {
        this._sendNow({ type: 'join', payload: { room } })
      }
    }
    this._flushOutbox()
    this._emit('welcome', w)
  }

  // _handleRecovered ends the replay of one stream. When it could not be
  // replayed (older than the retained history, or a new epoch), the
  // position moves to the stream's current top so that the next live
  // message is accepted; the application can page back with history().
  _handleRecovered(r) {
    const stream = r.inbox ? 'inbox' : `room:${r.room}`
    if (r.recovered) {
      this._log(`[recovered] ${stream}: ${r.count} missed messages replayed`)
    } else {
      this._log(`[recovered] ${stream}: not recoverable (epoch ${r.epoch || '-'}, top ${r.top}); history() fills the gap`)
      if (r.epoch) this._positions.set(stream, { epoch: r.epoch, seq: r.top })
      else this._positions.delete(stream)
      if (r.room) this._joinedAt.delete(r.room)
    }
    this._emit('recovered', r)
  }

  _handleError(id, p) {
    const err = new TetherError(p.code, p.message, id)
    if (id && this._settle(id, err, p)) {
      this._emit('error', p)
      return
    }
    this._log(`[server error] ${p.code}: ${p.message}`)
    this._emit('error', p)
  }

  // _settle resolves or rejects the outbox item or request with this id.
  _settle(id, err, payload, requestOnly = false) {
    if (!id) return false
    const req = this._pendingReplies.get(id)
    if (req) {
      this._pendingReplies.delete(id)
      err ? req.reject(err) : req.resolve(payload)
      return true
    }
    if (requestOnly) return false
    const i = this._outbox.findIndex((x) => x.id === id)
    if (i < 0) return false
    if (err && ['rate_limited', 'unavailable', 'internal'].includes(err.code)) {
      // Retryable: keep it and send the refused messages again shortly (or
      // with everything else after a reconnect).
      this._log(`[outbox] ${id} refused with ${err.code}; re-sending in ${this.reconnectPolicy.baseDelayMs * 2}ms`)
      this._outbox[i].sent = false
      if (this._timers.resend === null) {
        this._timers.resend = this._t.setTimeout(() => {
          this._timers.resend = null
          if (this.state !== State.OPEN) return
          for (const item of this._outbox) {
            if (!item.sent) item.sent = this._sendNow({ type: item.type, id: item.id, payload: item.payload })
          }
        }, this.reconnectPolicy.baseDelayMs * 2)
      }
      return true
    }
    const [item] = this._outbox.splice(i, 1)
    this._emit('outbox', { pending: this._outbox.length })
    if (err) {
      item.reject(err)
    } else {
      item.resolve(payload)
      this._emit('ack', payload)
    }
    return true
  }

  // _accept decides whether a message is delivered. Each stream's messages
  // must come in sequence: after (epoch, n) comes (epoch, n+1). One
  // already seen (a replay overlapping a live delivery) is dropped. One
  // further ahead, or of another epoch, is a gap: nothing more is taken
  // from this socket, which is closed with 4010 to resume from the last
  // position; the replay fills the gap (or says recovered: false).
  _accept(stream, p) {
    if (this._resyncing) return false
    if (!p.seq) return true
    const pos = this._positions.get(stream) ||
      (stream.startsWith('room:') ? this._joinedAt.get(stream.slice(5)) : undefined)
    if (pos) {
      if (pos.epoch === p.epoch && p.seq <= pos.seq) {
        this._log(`[dedupe] dropped ${stream} seq=${p.seq}`)
        return false
      }
      const next = (pos.epoch === p.epoch && p.seq === pos.seq + 1) || (!pos.epoch && !pos.seq && p.seq === 1)
      if (!next) {
        this._resyncing = true
        const why = `missed messages on ${stream}: at ${pos.epoch || '-'}/${pos.seq}, got ${p.epoch}/${p.seq}`
        this._log(`[gap] ${why}: resuming to recover them`)
        this._abandon(CloseCode.RESYNC, 'missed messages')
        return false
      }
    }
    this._positions.set(stream, { epoch: p.epoch, seq: p.seq })
    if (stream.startsWith('room:')) this._joinedAt.delete(stream.slice(5))
    return true
  }

  // ---- persistence across page reloads (options.persist) -----------------

  _storage() {
    if (!this.options.persist) return null
    try { return this.options.storage || globalThis.sessionStorage || null } catch { return null }
  }

  // _persist keeps the session and stream positions in sessionStorage, so
  // a reloaded page resumes where it was instead of starting over.
  _persist() {
    const st = this._storage()
    if (!st) return
    try {
      st.setItem(this.options.persist, JSON.stringify({
        user: this.user, session: this.session, rooms: [...this.rooms],
        positions: [...this._positions], joinedAt: [...this._joinedAt],
      }))
    } catch { /* storage full or denied: resuming after a reload is best effort */ }
  }

  _restore() {
    const st = this._storage()
    if (!st) return
    try {
      const saved = JSON.parse(st.getItem(this.options.persist) || 'null')
      if (!saved || (this.user && saved.user && saved.user !== this.user)) return
      this.session = saved.session || null
      for (const r of saved.rooms || []) this.rooms.add(r)
      this._positions = new Map(saved.positions || [])
      this._joinedAt = new Map(saved.joinedAt || [])
    } catch { /* ignore a corrupt entry */ }
  }

  // ---- plumbing ----------------------------------------------------------

  _setState(state, reason) {
    if (state === this.state) return
    const prev = this.state
    this.state = state
    this._log(`[state] ${prev} -> ${state} (${reason})`)
    this._emit('state', { state, prev, reason })
  }

  _log(text) {
    const line = { at: this._t.now(), text }
    this.log.push(line)
    if (this.log.length > this.logLimit) this.log.splice(0, this.log.length - this.logLimit)
    this._emit('log', line)
  }

  _emit(event, data) {
    const fns = this._listeners.get(event)
    if (!fns) return
    for (const fn of [...fns]) {
      try { fn(data) } catch (e) { console.error(`tether: ${event} listener failed`, e) }
    }
  }

  _clearTimer(name) {
    if (this._timers[name] !== null) {
      this._t.clearTimeout(this._timers[name])
      this._timers[name] = null
    }
  }

  _clearAllTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name)
    this.nextRetryAt = null
  }

  /** Number of timers the client holds (for leak checks in tests). */
  get activeTimers() {
    return Object.values(this._timers).filter((t) => t !== null).length
  }
}

// Unit tests of the browser SDK's state machine, backoff and outbox, with a
// fake clock and a fake WebSocket: no network, deterministic.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { TetherClient, State, backoffDelay, policyFor, defaultReconnect, redact } from '../tether.js'

class FakeClock {
  constructor() { this.t = 1_000_000; this.timers = new Map(); this.next = 1 }
  now() { return this.t }
  setTimeout(fn, ms) { const id = this.next++; this.timers.set(id, { at: this.t + ms, fn }); return id }
  clearTimeout(id) { this.timers.delete(id) }
  /** Moves time forward, running every timer that falls due, in order. */
  advance(ms) {
    const end = this.t + ms
    for (;;) {
      let due = null
      for (const [id, tm] of this.timers) if (tm.at <= end && (!due || tm.at < due[1].at)) due = [id, tm]
      if (!due) break
      this.timers.delete(due[0])
      this.t = due[1].at
      due[1].fn()
    }
    this.t = end
  }
}

class FakeWS {
  static all = []
  constructor(url) { this.url = url; this.readyState = 0; this.sent = []; FakeWS.all.push(this) }
  send(s) {
    if (this.readyState !== 1) throw new Error('not open')
    if (s instanceof Uint8Array) { // a file frame: [2-byte length][JSON header][bytes]
      const n = (s[0] << 8) | s[1]
      const header = JSON.parse(new TextDecoder().decode(s.subarray(2, 2 + n)))
      this.sent.push({ ...header, bytes: s.subarray(2 + n) })
      return
    }
    this.sent.push(JSON.parse(s))
  }
  close(code, reason) { this.readyState = 3; this.closedWith = { code, reason } }
  // test helpers: what the server or the network does
  open() { this.readyState = 1; this.onopen?.({}) }
  receive(type, payload = {}, id) { this.onmessage?.({ data: JSON.stringify({ type, id, payload }) }) }
  welcome(extra = {}) {
    this.open()
    this.receive('welcome', { user: 'alice', session: 's1', online: 1, rooms: ['general'], heartbeat: { interval: 10000, timeout: 10000 }, ...extra })
  }
  drop(code = 1006, reason = '', wasClean = false) { this.readyState = 3; this.onclose?.({ code, reason, wasClean }) }
}

class FakeEnv {
  constructor() { this.navigator = { onLine: true }; this.handlers = {} }
  addEventListener(ev, fn) { (this.handlers[ev] ||= new Set()).add(fn) }
  removeEventListener(ev, fn) { this.handlers[ev]?.delete(fn) }
  fire(ev) { for (const fn of this.handlers[ev] || []) fn() }
}

function setup(opts = {}) {
  FakeWS.all = []
  const clock = new FakeClock()
  const env = new FakeEnv()
  const client = new TetherClient({
    url: 'ws://test/ws', WebSocket: FakeWS, timers: clock, environment: env, random: () => 0.5, ...opts,
  })
  const states = []
  client.on('state', (s) => states.push(s.state))
  return { client, clock, env, states, last: () => FakeWS.all.at(-1) }
}

const liveSockets = () => FakeWS.all.filter((w) => w.readyState <= 1 && w.onmessage).length

test('backoffDelay grows by the factor, is capped, and jitters within ±jitter', () => {
  const p = defaultReconnect
  for (let n = 1; n <= 30; n++) {
    const pure = Math.min(p.maxDelayMs, p.baseDelayMs * p.factor ** (n - 1))
    assert.equal(backoffDelay(n, p, () => 0.5), Math.round(pure))
    assert.equal(backoffDelay(n, p, () => 0), Math.round(pure * 0.8))
    assert.ok(backoffDelay(n, p, () => 0.999999) <= Math.round(pure * 1.2))
    const d = backoffDelay(n, p)
    assert.ok(d >= pure * 0.8 - 1 && d <= pure * 1.2 + 1, `attempt ${n}: ${d} outside ±20% of ${pure}`)
  }
  assert.equal(backoffDelay(1, p, () => 0.5), 500)
  assert.equal(backoffDelay(2, p, () => 0.5), 900)
  assert.equal(backoffDelay(50, p, () => 0.5), 15000)
})

test('policyFor follows the close-code table', () => {
  for (const c of [1000, 1002, 1003, 1007, 1008, 1009, 4401, 4403]) assert.equal(policyFor(c), 'terminal', String(c))
  for (const c of [1013, 4008, 4029]) assert.equal(policyFor(c), 'reconnect-later', String(c))
  for (const c of [1001, 1005, 1006, 1011, 1012, 4000, 4409, 4999]) assert.equal(policyFor(c), 'reconnect', String(c))
})

test('connect → OPEN on welcome; an abnormal close schedules a reconnect with growing delays', () => {
  const { client, clock, states, last } = setup()
  client.connect()
  assert.equal(client.state, State.CONNECTING)
  last().welcome()
  assert.equal(client.state, State.OPEN)

  const delays = []
  for (let i = 0; i < 4; i++) {
    last().drop(1006)
    assert.equal(client.state, State.RECONNECTING)
    delays.push(client.nextRetryAt - clock.now())
    const before = FakeWS.all.length
    clock.advance(delays.at(-1) - 1)
    assert.equal(FakeWS.all.length, before, 'no attempt before the delay')
    clock.advance(1)
    assert.equal(FakeWS.all.length, before + 1, 'one attempt after the delay')
    last().drop(1006) // the attempt fails too
    clock.advance(client.nextRetryAt - clock.now())
    last().welcome()
  }
  assert.ok(delays.every((d) => d >= 400), `delays ${delays}`)
  assert.deepEqual(states.slice(0, 3), ['CONNECTING', 'OPEN', 'RECONNECTING'])
})

test('retry counter resets only after the connection stayed up for stableAfterMs', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  for (let i = 1; i <= 3; i++) {
    last().drop(1006)
    assert.equal(client.attempt, i)
    clock.advance(client.nextRetryAt - clock.now())
    last().welcome() // accepted, then dropped at once: no reset
  }
  clock.advance(defaultReconnect.stableAfterMs)
  assert.equal(client.attempt, 0)
})

test('manual disconnect is CLOSED with 1000 and never reconnects; connect() starts again', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  client.disconnect()
  assert.equal(client.state, State.CLOSED)
  assert.equal(last().closedWith.code, 1000)
  assert.equal(client.lastClose.code, 1000)
  assert.equal(client.activeTimers, 0)
  const n = FakeWS.all.length
  clock.advance(600_000)
  assert.equal(FakeWS.all.length, n)
  client.connect()
  assert.equal(client.state, State.CONNECTING)
  assert.equal(FakeWS.all.length, n + 1)
})

test('terminal close codes stop; reconnectable ones do not', () => {
  for (const [code, want] of [[4401, State.CLOSED], [1008, State.CLOSED], [1000, State.CLOSED], [1012, State.RECONNECTING], [4000, State.RECONNECTING], [4008, State.RECONNECTING]]) {
    const { client, clock, last } = setup()
    client.connect()
    last().welcome()
    last().drop(code, 'x', true)
    assert.equal(client.state, want, `code ${code}`)
    if (want === State.CLOSED) {
      const n = FakeWS.all.length
      clock.advance(600_000)
      assert.equal(FakeWS.all.length, n, `code ${code} must not retry`)
    }
  }
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  last().drop(4029, 'rate limit', true)
  assert.ok(client.nextRetryAt - clock.now() >= defaultReconnect.laterDelayMs, 'rate limit waits at least laterDelayMs')
})

test('retry limit ends in CLOSED, and connect() works afterwards', () => {
  const { client, clock, last } = setup({ reconnect: { maxRetries: 2 } })
  client.connect()
  last().welcome()
  last().drop(1006)
  clock.advance(60_000)
  last().drop(1006)
  clock.advance(60_000)
  last().drop(1006)
  assert.equal(client.state, State.CLOSED)
  const n = FakeWS.all.length
  client.connect()
  assert.equal(FakeWS.all.length, n + 1)
  last().welcome()
  assert.equal(client.state, State.OPEN)
})

test('heartbeat: silence past the timeout leaves OPEN at once with 4000 and reconnects', () => {
  const { client, clock, last } = setup({ heartbeat: { intervalMs: 1000, timeoutMs: 3000 } })
  client.connect()
  const ws = last()
  ws.welcome()
  clock.advance(1000)
  assert.equal(ws.sent.at(-1).type, 'ping')
  clock.advance(3000) // pings go out, nothing comes back; the 4s check sees 4s of silence
  assert.equal(client.state, State.RECONNECTING)
  assert.equal(client.lastClose.code, 4000)
  assert.equal(ws.onclose, null, 'the dead socket is detached, not awaited')
  assert.equal(ws.closedWith.code, 4000)
})

test('a laptop waking up: the first check after a long sleep detects the dead socket before sending', () => {
  const { client, clock, last } = setup({ heartbeat: { intervalMs: 10000, timeoutMs: 25000 } })
  client.connect()
  const ws = last()
  ws.welcome()
  clock.t += 3_600_000 // an hour passes without any timer firing (suspended)
  client.send('general', 'hello after sleep')
  assert.equal(ws.sent.filter((m) => m.type === 'chat').length, 0, 'nothing sent into the dead socket')
  assert.equal(client.state, State.RECONNECTING)
  assert.equal(client.pending, 1)
})

test('outbox: queued while down, re-sent in order after reconnect, resolved on ack, never twice on the wire per socket', async () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  last().drop(1006)
  const p1 = client.send('general', 'one')
  const p2 = client.direct('bob', 'two')
  const p3 = client.send('general', 'three')
  assert.equal(client.pending, 3)
  clock.advance(client.nextRetryAt - clock.now())
  const ws = last()
  ws.welcome()
  const sent = ws.sent.filter((m) => m.id)
  assert.deepEqual(sent.map((m) => m.payload.text), ['one', 'two', 'three'])
  assert.deepEqual(sent.map((m) => m.id), [p1.id, p2.id, p3.id])
  for (const m of sent) ws.receive('ack', { id: m.id, seq: 7 }, m.id)
  assert.deepEqual(await Promise.all([p1, p2, p3]), [{ id: p1.id, seq: 7 }, { id: p2.id, seq: 7 }, { id: p3.id, seq: 7 }])
  assert.equal(client.pending, 0)
})

test('outbox: unacked messages are re-sent on the next connection with the same ids', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  const p = client.send('general', 'maybe lost')
  const first = last().sent.find((m) => m.type === 'chat')
  last().drop(1006) // the ack never came
  clock.advance(client.nextRetryAt - clock.now())
  last().welcome()
  const again = last().sent.find((m) => m.type === 'chat')
  assert.equal(again.id, first.id)
  assert.equal(again.id, p.id)
})

test('outbox: a full queue is an error the caller sees, never a silent drop', async () => {
  const { client } = setup({ outboxLimit: 2 })
  client.connect()
  client.send('general', 'a')
  client.send('general', 'b')
  await assert.rejects(client.send('general', 'c'), (e) => e.code === 'outbox_full')
  assert.equal(client.pending, 2)
})

test('an error reply rejects the message it names and removes it from the outbox', async () => {
  const { client, last } = setup()
  client.connect()
  last().welcome()
  const p = client.send('nowhere', 'x')
  last().receive('error', { code: 'not_member', message: 'join room nowhere first', id: p.id }, p.id)
  await assert.rejects(p, (e) => e.code === 'not_member')
  assert.equal(client.pending, 0)
})

test('offline: no attempts while offline; online: an immediate attempt', () => {
  const { client, clock, env, last } = setup()
  client.connect()
  last().welcome()
  env.navigator.onLine = false
  env.fire('offline')
  assert.equal(client.state, State.OFFLINE)
  const n = FakeWS.all.length
  clock.advance(600_000)
  assert.equal(FakeWS.all.length, n, 'no attempts while offline')
  assert.equal(client.activeTimers, 0)
  env.navigator.onLine = true
  env.fire('online')
  assert.equal(FakeWS.all.length, n + 1, 'online triggers one attempt at once')
  assert.equal(client.state, State.RECONNECTING)
})

test('a connect attempt that hangs is abandoned after connectTimeoutMs', () => {
  const { client, clock, last } = setup({ reconnect: { connectTimeoutMs: 2000 } })
  client.connect()
  const hung = last()
  clock.advance(2000)
  assert.equal(client.state, State.RECONNECTING)
  assert.equal(hung.onmessage, null)
  clock.advance(client.nextRetryAt - clock.now())
  assert.notEqual(last(), hung)
})

test('single flight: connect() while connecting or open makes no second socket', () => {
  const { client, last } = setup()
  client.connect()
  client.connect()
  assert.equal(FakeWS.all.length, 1)
  last().welcome()
  client.connect()
  assert.equal(FakeWS.all.length, 1)
})

test('200 forced drops in a row leave exactly one live socket and no growth in timers', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  for (let i = 0; i < 200; i++) {
    last().drop(1006)
    clock.advance(client.nextRetryAt - clock.now())
    last().welcome()
    assert.ok(client.activeTimers <= 3, `timers ${client.activeTimers}`)
  }
  assert.equal(client.state, State.OPEN)
  assert.equal(liveSockets(), 1)
  assert.equal(clock.timers.size, client.activeTimers)
})

test('server messages are deduplicated by (stream, seq) within an epoch', () => {
  const { client, last } = setup()
  const got = []
  client.on('chat', (m) => got.push(m.seq))
  client.connect()
  const ws = last()
  ws.welcome()
  for (const seq of [1, 2, 2, 1, 3]) ws.receive('chat', { room: 'general', from: 'b', text: 't', seq, epoch: 'e1' })
  assert.deepEqual(got, [1, 2, 3])
})

// joinOpsAndDrop connects, joins ops and drops: the client is making its
// next attempt when it returns.
function joinOpsAndDrop() {
  const t = setup()
  const { client, clock, last } = t
  client.connect()
  last().welcome({ rooms: ['general'] })
  client.join('ops')
  last().receive('ack', {}, last().sent.at(-1).id)
  last().drop(1006)
  clock.advance(client.nextRetryAt - clock.now())
  return t
}

test('rooms are asked for again on a reconnect, in its URL', () => {
  const { last } = joinOpsAndDrop()
  assert.equal(new URL(last().url).searchParams.get('rooms'), 'general,ops')
  last().welcome({ rooms: ['general', 'ops'] })
  assert.ok(!last().sent.some((m) => m.type === 'join'), 'nothing to join by command')
})

test('a room the URL asked for and did not get is not asked for again; one joined meanwhile is', () => {
  const { client, last } = joinOpsAndDrop()
  client.join('dev') // after the attempt's URL was made: queued in the outbox
  last().welcome({ rooms: ['general'] }) // ops refused (an error frame says why)
  const joins = last().sent.filter((m) => m.type === 'join').map((m) => m.payload.room)
  assert.deepEqual(joins, ['dev'])
})

test('a reconnect presents the session and the last position of every stream', () => {
  const { client, clock, last } = setup({ token: 'tok' })
  client.connect()
  assert.equal(new URL(last().url).searchParams.get('token'), 'tok')
  const ws = last()
  ws.welcome({ session: 'S1' })
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 41, epoch: 'e1' })
  ws.receive('chat', { room: 'ops', from: 'b', text: 't', seq: 7, epoch: 'e2' })
  ws.receive('direct', { from: 'b', to: 'alice', text: 't', seq: 3, epoch: 'e3' })
  ws.drop(1006)
  clock.advance(client.nextRetryAt - clock.now())
  const u = new URL(last().url)
  assert.equal(u.searchParams.get('session'), 'S1')
  assert.deepEqual(JSON.parse(u.searchParams.get('since')), { general: ['e1', 41], ops: ['e2', 7], '@': ['e3', 3] })
  assert.equal(u.searchParams.get('token'), 'tok')
})

test('4409 (session refused) reconnects without the session', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome({ session: 'S1' })
  last().drop(4409, 'session belongs to another user', true)
  assert.equal(client.state, State.RECONNECTING)
  clock.advance(client.nextRetryAt - clock.now())
  assert.equal(new URL(last().url).searchParams.get('session'), null)
})

test('recovered: false moves the position to the new epoch so live messages are accepted', () => {
  const { client, last } = setup()
  const got = []
  const recs = []
  client.on('chat', (m) => got.push(`${m.epoch}:${m.seq}`))
  client.on('recovered', (r) => recs.push(r))
  client.connect()
  const ws = last()
  ws.welcome()
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 50, epoch: 'old' })
  ws.receive('recovered', { room: 'general', recovered: false, count: 0, epoch: 'new', top: 3 })
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 3, epoch: 'new' }) // already counted in top
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 4, epoch: 'new' })
  assert.deepEqual(got, ['old:50', 'new:4'])
  assert.equal(recs.length, 1)
})

test('persist keeps session, rooms and positions across a page reload', () => {
  const store = new Map()
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) }
  const first = setup({ persist: 'tether', storage })
  first.client.connect()
  first.last().welcome({ session: 'S9' })
  first.last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 12, epoch: 'e' })
  first.env.fire('pagehide')
  const second = setup({ persist: 'tether', storage })
  second.client.connect()
  const u = new URL(second.last().url)
  assert.equal(u.searchParams.get('session'), 'S9')
  assert.deepEqual(JSON.parse(u.searchParams.get('since')), { general: ['e', 12] })
})

test('a room joined but silent resumes from the join reply position', () => {
  const { client, clock, last } = setup()
  client.connect()
  const ws = last()
  ws.welcome({ session: 'S1' })
  ws.receive('members', { room: 'general', users: ['alice'], count: 1, epoch: 'e7', top: 12 })
  ws.drop(1006)
  clock.advance(client.nextRetryAt - clock.now())
  assert.deepEqual(JSON.parse(new URL(last().url).searchParams.get('since')), { general: ['e7', 12] })
  last().welcome({ session: 'S1' })
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 13, epoch: 'e7' })
  last().drop(1006)
  clock.advance(client.nextRetryAt - clock.now())
  assert.deepEqual(JSON.parse(new URL(last().url).searchParams.get('since')), { general: ['e7', 13] })
})

test('a skipped sequence is a gap: nothing more is taken from that socket, which closes with 4010 and resumes from the last position', () => {
  const { client, clock, last } = setup()
  const got = []
  client.on('chat', (m) => got.push(m.seq))
  client.on('direct', (m) => got.push(`d${m.seq}`))
  client.connect()
  const ws = last()
  ws.welcome({ session: 'S1', inbox: { epoch: 'i1', top: 4 } })
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 7, epoch: 'e' }) // first seen: no position to check
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 8, epoch: 'e' })
  ws.receive('direct', { from: 'b', to: 'alice', text: 'd', seq: 5, epoch: 'i1' }) // follows the welcome's inbox position
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 10, epoch: 'e' }) // 9 is missing
  ws.receive('chat', { room: 'general', from: 'b', text: 't', seq: 11, epoch: 'e' })
  assert.deepEqual(got, [7, 8, 'd5'])
  assert.equal(ws.closedWith.code, 4010)
  assert.equal(client.lastClose.code, 4010)
  assert.equal(client.state, State.RECONNECTING)
  assert.ok(client.log.some((l) => l.text.startsWith('[gap] missed messages on room:general: at e/8, got e/10')))
  clock.advance(client.nextRetryAt - clock.now())
  const since = JSON.parse(new URL(last().url).searchParams.get('since'))
  assert.deepEqual(since, { general: ['e', 8], '@': ['i1', 5] })
  last().welcome({ session: 'S1', resumed: true, inbox: { epoch: 'i1', top: 5 } })
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 9, epoch: 'e' }) // the replay
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 10, epoch: 'e' })
  last().receive('recovered', { room: 'general', recovered: true, count: 2, epoch: 'e', top: 10 })
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 10, epoch: 'e' }) // live overlap: dropped
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 11, epoch: 'e' })
  assert.deepEqual(got, [7, 8, 'd5', 9, 10, 11])
})

test('a new epoch is a gap too; a stream that had not published (epoch "") continues at seq 1 of any epoch', () => {
  const { client, last } = setup()
  const got = []
  client.on('chat', (m) => got.push(`${m.epoch}/${m.seq}`))
  client.connect()
  last().welcome({ inbox: { epoch: '', top: 0 } })
  last().receive('members', { room: 'general', users: [], count: 1, epoch: '', top: 0 })
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 1, epoch: 'new' })
  last().receive('chat', { room: 'general', from: 'b', text: 't', seq: 2, epoch: 'other' })
  assert.deepEqual(got, ['new/1'])
  assert.equal(client.lastClose.code, 4010)
})

test('a joined room that has not published yet resumes from ("", 0)', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome({ session: 'S1' })
  last().receive('members', { room: 'general', users: ['alice'], count: 1, epoch: '', top: 0 })
  last().drop(1006)
  clock.advance(client.nextRetryAt - clock.now())
  assert.deepEqual(JSON.parse(new URL(last().url).searchParams.get('since')), { general: ['', 0] })
})

test('disconnect() closes the socket with 1000 (not 4000): the server takes the user out at once', () => {
  const { client, last } = setup()
  client.connect()
  const ws = last()
  ws.welcome()
  client.disconnect('bye')
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'bye' })
  assert.equal(client.state, State.CLOSED)
  assert.deepEqual({ ...client.lastClose, at: 0 }, { code: 1000, reason: 'bye', wasClean: true, at: 0 })
})

test('an invalid URL is the ERROR state, never an exception', () => {
  const { client, states } = setup({ url: 'ws://[bad/ws' })
  assert.doesNotThrow(() => client.connect())
  assert.equal(client.state, State.ERROR)
  assert.deepEqual(states, ['ERROR'])
  assert.ok(client.log.some((l) => l.text.startsWith('[error] cannot open a socket')))
  FakeWS.all = []
  assert.doesNotThrow(() => new TetherClient({ url: 'ws://[bad/ws', WebSocket: FakeWS, environment: null, autoConnect: true }))
})

test('the heartbeat leaves OPEN when the timeout elapses, not at the next ping', () => {
  const { client, clock, last } = setup({ heartbeat: { intervalMs: 10000, timeoutMs: 25000 } })
  client.connect()
  last().welcome()
  const t0 = clock.now()
  clock.advance(24999)
  assert.equal(client.state, State.OPEN)
  clock.advance(1)
  assert.equal(client.state, State.RECONNECTING, `still OPEN ${clock.now() - t0} ms after the last message`)
  assert.equal(client.lastClose.code, 4000)
})

test('a message resets the silence: the timeout counts from the last one', () => {
  const { client, clock, last } = setup({ heartbeat: { intervalMs: 10000, timeoutMs: 25000 } })
  client.connect()
  last().welcome()
  clock.advance(20000)
  last().receive('pong', {})
  clock.advance(24999)
  assert.equal(client.state, State.OPEN)
  clock.advance(1)
  assert.equal(client.state, State.RECONNECTING)
})

test('every scheduled retry is a reconnect event: attempt, delay, time, close code', () => {
  const { client, clock, last } = setup()
  const events = []
  client.on('reconnect', (r) => events.push(r))
  client.connect()
  last().welcome()
  last().drop(1006)
  assert.deepEqual(events, [{ attempt: 1, delayMs: 500, at: clock.now() + 500, code: 1006 }])
  clock.advance(500)
  last().drop(1012)
  assert.equal(events[1].attempt, 2)
  assert.equal(events[1].code, 1012)
})

test('destroy() rejects what is left in the outbox; a pending who() is rejected when its socket closes', async () => {
  const { client, last } = setup()
  client.connect()
  last().welcome()
  const who = client.who('general')
  last().drop(1006)
  await assert.rejects(who, (e) => e.code === 'not_connected')
  const sent = client.send('general', 'never acked')
  client.disconnect()
  let settled = false
  sent.then(() => { settled = true }, () => { settled = true })
  await new Promise((r) => setTimeout(r, 10))
  assert.equal(settled, false, 'disconnect() keeps the outbox: sent on the next connect()')
  client.destroy()
  await assert.rejects(sent, (e) => e.code === 'closed')
  assert.equal(client.pending, 0)
})

test('the log never holds the token or the session', () => {
  const { client, clock, last } = setup({ url: 'ws://test/ws?user=alice', token: 'tok-s3cret' })
  client.connect()
  last().welcome({ session: 'sess-s3cret' })
  last().drop(1006)
  clock.advance(client.nextRetryAt - clock.now())
  assert.ok(last().url.includes('sess-s3cret') && last().url.includes('tok-s3cret'), 'the socket gets them')
  for (const l of client.log) assert.ok(!l.text.includes('s3cret'), `log line holds a secret: ${l.text}`)
  assert.equal(redact('ws://h/ws?user=a&token=t&session=s&since=%7B%22general%22%3A%5B%22e%22%2C1%5D%7D'),
    'ws://h/ws?user=a&token=… (token, resuming its session, 1 positions)')
})

test('lastClose keeps how the last connection ended; attempts that fail without a word go to lastFailure', () => {
  const { client, clock, last } = setup()
  client.connect()
  last().welcome()
  last().drop(1012, 'server restarting', true)
  for (let i = 0; i < 3; i++) {
    clock.advance(client.nextRetryAt - clock.now())
    last().drop(1006) // refused: the server is not back yet
  }
  assert.equal(client.lastClose.code, 1012)
  assert.equal(client.lastClose.reason, 'server restarting')
  assert.equal(client.lastFailure.code, 1006)
  clock.advance(client.nextRetryAt - clock.now())
  last().open()
  last().drop(4401, 'token expired', true) // a refusal with words is shown
  assert.equal(client.lastClose.code, 4401)
})

test('sendFile: a file frame with its header and bytes, queued while disconnected, sent once after the welcome; the limits checked at once', async () => {
  const { client, last } = setup()
  client.connect()
  const p = client.sendFile('general', new Uint8Array([1, 2, 3]), { name: 'a.bin', text: 'caption' })
  await new Promise((r) => setTimeout(r, 0)) // the bytes are read
  assert.equal(client.pending, 1, 'queued while not yet open')
  last().welcome({ max_file: 10 })
  const sent = last().sent.filter((m) => m.type === 'file')
  assert.equal(sent.length, 1)
  assert.deepEqual({ ...sent[0], bytes: [...sent[0].bytes] },
    { type: 'file', id: sent[0].id, room: 'general', name: 'a.bin', mime: '', text: 'caption', bytes: [1, 2, 3] })
  last().receive('ack', { id: sent[0].id, seq: 7 }, sent[0].id)
  assert.equal((await p).seq, 7)
  await assert.rejects(client.sendFile('general', new Uint8Array(11), { name: 'big.bin' }), { code: 'file_too_large' })
  await assert.rejects(client.directFile('bob', new Uint8Array(0), { name: 'empty.bin' }), { code: 'bad_file' })
  assert.equal(client.fileURL({ id: 'f', name: 'x', mime: 'image/png', size: 1, url: '/files/f' }).endsWith('/files/f'), true)
})

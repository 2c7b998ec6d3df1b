// The SDK on Node's own WebSocket (node --experimental-websocket): a
// refused connection is reported by an `error` with no `close` after it;
// the SDK must still count the attempt as failed at once, not after its
// 10 s connect timeout.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { TetherClient, State } from '../tether.js'

async function closedPort() {
  return new Promise((resolve) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)) })
  })
}

test('Node WebSocket: a refused connection is a failed attempt at once, not after the connect timeout', { skip: typeof WebSocket === 'undefined' && 'run with --experimental-websocket' }, async () => {
  const port = await closedPort()
  const c = new TetherClient({ url: `ws://127.0.0.1:${port}/ws`, environment: null, reconnect: { connectTimeoutMs: 10000, baseDelayMs: 5000 } })
  const started = Date.now()
  const reconnect = new Promise((resolve) => c.on('reconnect', resolve))
  c.connect()
  const r = await reconnect
  const took = Date.now() - started
  const failure = c.lastFailure
  c.destroy()
  assert.equal(r.attempt, 1)
  assert.equal(r.code, 1006)
  assert.equal(failure.code, 1006)
  assert.ok(took < 2000, `the refused attempt took ${took} ms to count as failed`)
  assert.equal(c.state, State.CLOSED)
})

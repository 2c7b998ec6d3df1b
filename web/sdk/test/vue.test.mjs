// useTether mirrors the client's state into Vue refs and cleans up.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { watch, nextTick } from 'vue'
import { TetherClient } from '../tether.js'
import { useTether } from '../vue.js'

class FakeWS {
  static last
  constructor() { this.readyState = 0; this.sent = []; FakeWS.last = this }
  send(s) { this.sent.push(JSON.parse(s)) }
  close() { this.readyState = 3 }
}

test('useTether exposes reactive state, messages and methods', async () => {
  const timers = { setTimeout: () => 0, clearTimeout: () => {}, now: () => 1000 }
  const client = new TetherClient({ url: 'ws://x/ws', WebSocket: FakeWS, timers, environment: null })
  const t = useTether({ client })
  const seen = []
  watch(t.state, (s) => seen.push(s), { flush: 'sync' })
  t.connect()
  const ws = FakeWS.last
  ws.readyState = 1
  ws.onmessage({ data: JSON.stringify({ type: 'welcome', payload: { user: 'ann', session: 's', online: 1, rooms: ['general'], heartbeat: {} } }) })
  ws.onmessage({ data: JSON.stringify({ type: 'chat', payload: { room: 'general', from: 'bob', text: 'hi', seq: 1, epoch: 'e' } }) })
  await nextTick()
  assert.deepEqual(seen, ['CONNECTING', 'OPEN'])
  assert.equal(t.user.value, 'ann')
  assert.equal(t.messages.value.length, 1)
  assert.equal(t.messages.value[0].text, 'hi')
  t.send('general', 'yo')
  assert.equal(t.pending.value, 1)
  assert.equal(ws.sent.at(-1).payload.text, 'yo')
  ws.onclose({ code: 1006, reason: '', wasClean: false })
  await nextTick()
  assert.equal(t.state.value, 'RECONNECTING')
  assert.equal(t.lastClose.value.code, 1006)
  t.dispose()
  client.disconnect()
  await nextTick()
  assert.equal(t.state.value, 'RECONNECTING', 'after dispose the refs no longer follow the client')
})

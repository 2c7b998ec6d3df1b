// The browser SDK in real headless Chromium against the real tether binary:
// the failures that reconnecting-websocket, partysocket, socket.io-client,
// graphql-ws and phoenix users report, shown absent.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { execFileSync } from 'node:child_process'
import { browserMissing, TetherProcess, CutProxy, launchBrowser, sdkPage, tetherBinary, until } from './harness.mjs'

const skip = browserMissing()

// connect starts a client in the page as window.c and waits for OPEN.
async function connect(page, opts) {
  await page.evaluate((o) => {
    window.events = []
    window.c = new window.T.TetherClient({ ...o, autoConnect: true })
    window.c.on('state', (s) => window.events.push(`state:${s.state}`))
    window.c.on('chat', (m) => window.events.push(`chat:${m.text}`))
    window.c.on('recovered', (r) => window.events.push(`recovered:${r.room || '@'}:${r.recovered}:${r.count}`))
  }, opts)
  await until(() => page.evaluate(() => window.c.state === 'OPEN'), 'OPEN')
}

const attempts = (page) => page.evaluate(() => window.c.log.filter((l) => l.text.startsWith('[connect]')).length)
const state = (page) => page.evaluate(() => window.c.state)

test('offline: no attempts while offline, OPEN again after online', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const page = await sdkPage(browser, server.url)
  await connect(page, { url: `ws://127.0.0.1:${server.port}/ws?user=olive` })

  await page.context().setOffline(true)
  await until(async () => (await state(page)) === 'OFFLINE', 'OFFLINE')
  const n = await attempts(page)
  await sleep(3000)
  assert.equal(await attempts(page), n, 'no connection attempts while offline')
  assert.equal(await page.evaluate(() => window.c.activeTimers), 0)
  await page.context().setOffline(false)
  await until(async () => (await state(page)) === 'OPEN', 'OPEN after online')
})

test('half-open: a frozen server is detected by the heartbeat (4000), OPEN again after it thaws', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { server.thaw(); await browser.close(); await server.kill() })
  const page = await sdkPage(browser, server.url)
  await connect(page, {
    url: `ws://127.0.0.1:${server.port}/ws?user=hal`,
    heartbeat: { intervalMs: 500, timeoutMs: 2000 },
    reconnect: { connectTimeoutMs: 2000, maxDelayMs: 1000 },
  })
  server.freeze()
  const frozenAt = Date.now()
  await until(async () => (await state(page)) !== 'OPEN', 'leaving OPEN', 10000)
  const left = Date.now() - frozenAt
  const close = await page.evaluate(() => window.c.lastClose)
  assert.equal(close.code, 4000)
  assert.equal(close.reason, 'heartbeat timeout')
  assert.equal(await state(page), 'RECONNECTING')
  t.diagnostic(`left OPEN ${left} ms after the freeze (timeout 2000 ms, not the ~60 s closing handshake)`)
  server.thaw()
  await until(async () => (await state(page)) === 'OPEN', 'OPEN after thaw', 15000)
})

test('manual disconnect: CLOSED with 1000 and no attempts afterwards', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const page = await sdkPage(browser, server.url)
  await connect(page, { url: `ws://127.0.0.1:${server.port}/ws?user=manny` })
  await page.evaluate(() => window.c.disconnect())
  assert.equal(await state(page), 'CLOSED')
  assert.equal(await page.evaluate(() => window.c.lastClose.code), 1000)
  const n = await attempts(page)
  await sleep(2500)
  assert.equal(await attempts(page), n)
  assert.equal(await page.evaluate(() => window.c.activeTimers), 0)
})

test('terminal close: an expired token (4401) is not retried', { skip }, async (t) => {
  const secret = 'e2e-secret'
  const server = await TetherProcess.start(['--auth-secret', secret])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const token = execFileSync(tetherBinary(), ['token', '--user', 'tess', '--ttl', '1s', '--auth-secret', secret]).toString().trim()
  await sleep(1500) // let it expire
  const page = await sdkPage(browser, server.url)
  await page.evaluate((tok) => {
    window.c = new window.T.TetherClient({ url: `ws://${location.host}/ws`, token: tok, autoConnect: true })
  }, token)
  await until(async () => (await state(page)) === 'CLOSED', 'CLOSED')
  const close = await page.evaluate(() => window.c.lastClose)
  assert.equal(close.code, 4401)
  assert.equal(close.reason, 'token expired')
  const n = await attempts(page)
  await sleep(2500)
  assert.equal(await attempts(page), n, 'no retry with the same token')
})

test('200 forced drops in a row: one socket at the end, no timer growth', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const proxy = await CutProxy.start(server.port)
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await proxy.close(); await server.kill() })
  const page = await sdkPage(browser, server.url)
  await connect(page, {
    url: `ws://127.0.0.1:${proxy.port}/ws?user=drop`,
    reconnect: { baseDelayMs: 5, maxDelayMs: 20, stableAfterMs: 600000 },
  })
  for (let i = 0; i < 200; i++) {
    proxy.cut()
    await until(() => page.evaluate((n) => window.c.attempt === n && window.c.state === 'OPEN', i + 1), `OPEN after drop ${i + 1}`)
    const timers = await page.evaluate(() => window.c.activeTimers)
    assert.ok(timers <= 3, `after drop ${i + 1}: ${timers} timers`)
  }
  await sleep(500)
  assert.equal(proxy.live, 1, 'exactly one socket open')
  assert.equal(await state(page), 'OPEN')
  assert.equal(await page.evaluate(() => window.c.attempt), 200, 'the counter did not reset while unstable')
  assert.ok(proxy.accepted >= 201)
})

test('resume: a client cut off while 50 messages go to its room gets exactly those 50, in order', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const proxy = await CutProxy.start(server.port)
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await proxy.close(); await server.kill() })
  const reader = await sdkPage(browser, server.url)
  await connect(reader, { url: `ws://127.0.0.1:${proxy.port}/ws?user=rita`, reconnect: { baseDelayMs: 200, maxDelayMs: 500 } })
  const writer = await sdkPage(browser, server.url)
  await connect(writer, { url: `ws://127.0.0.1:${server.port}/ws?user=will` })

  await writer.evaluate(() => window.c.send('general', 'before'))
  await until(() => reader.evaluate(() => window.events.includes('chat:before')), 'before')
  proxy.block()
  proxy.cut()
  await until(async () => (await state(reader)) === 'RECONNECTING', 'RECONNECTING')
  await writer.evaluate(async () => {
    for (let i = 1; i <= 50; i++) await window.c.send('general', `missed ${i}`)
  })
  proxy.unblock()
  await until(() => reader.evaluate(() => window.events.some((e) => e.startsWith('recovered:general'))), 'recovered', 15000)
  const chats = await reader.evaluate(() => window.events.filter((e) => e.startsWith('chat:')))
  assert.deepEqual(chats, ['chat:before', ...Array.from({ length: 50 }, (_, i) => `chat:missed ${i + 1}`)])
  assert.ok(await reader.evaluate(() => window.events.includes('recovered:general:true:50')))
  assert.equal(await reader.evaluate(() => window.c.resumed), true)
})

test('gap: a room message and a private message that never arrive are noticed at the next one and recovered, in order, once', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const proxy = await CutProxy.start(server.port)
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await proxy.close(); await server.kill() })
  const reader = await sdkPage(browser, server.url)
  await connect(reader, { url: `ws://127.0.0.1:${proxy.port}/ws?user=gail`, reconnect: { baseDelayMs: 50, maxDelayMs: 200 } })
  await reader.evaluate(() => window.c.on('direct', (m) => window.events.push(`direct:${m.text}`)))
  const writer = await sdkPage(browser, server.url)
  await connect(writer, { url: `ws://127.0.0.1:${server.port}/ws?user=walt` })

  proxy.dropFrames('"text":"m4"')
  await writer.evaluate(async () => { for (let i = 1; i <= 8; i++) await window.c.send('general', `m${i}`) })
  proxy.dropFrames('"text":"d2"')
  await writer.evaluate(async () => { for (let i = 1; i <= 4; i++) await window.c.direct('gail', `d${i}`) })
  await until(() => reader.evaluate(() => window.events.filter((e) => /^(chat|direct):/.test(e)).length >= 12), '12 messages')
  await sleep(300)
  // Order is per stream (a room, the inbox): the inbox's replay may come
  // before the room's.
  const chats = await reader.evaluate(() => window.events.filter((e) => e.startsWith('chat:')))
  const directs = await reader.evaluate(() => window.events.filter((e) => e.startsWith('direct:')))
  assert.deepEqual(chats, Array.from({ length: 8 }, (_, i) => `chat:m${i + 1}`))
  assert.deepEqual(directs, Array.from({ length: 4 }, (_, i) => `direct:d${i + 1}`))
  assert.equal(proxy.dropped, 2)
  const gaps = await reader.evaluate(() => window.c.log.filter((l) => l.text.startsWith('[gap]')).length)
  assert.equal(gaps, 2, 'each gap noticed once')
})

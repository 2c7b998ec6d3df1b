// What docs/clients.md promises about the browser SDK, checked in real
// headless Chromium against the real binary: the close a manual
// disconnect sends, a reload that resumes, a closed tab that its partner
// learns of, a frozen server found when the timeout elapses, the module
// imported from another origin, and no secret in the log.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { execFileSync } from 'node:child_process'
import { browserMissing, TetherProcess, freePort, launchBrowser, root, sdkPage, tetherBinary, until } from './harness.mjs'

const skip = browserMissing()

// client starts a client in the page as window[name]; what it receives
// goes to window.events, and also to sessionStorage (so that a test can
// see what a page received before it was reloaded).
async function client(page, opts, name = 'c') {
  await page.evaluate(([o, n]) => {
    window.events ||= []
    const note = (e) => {
      window.events.push(e)
      sessionStorage.setItem('events', JSON.stringify([...JSON.parse(sessionStorage.getItem('events') || '[]'), e]))
    }
    const c = new window.T.TetherClient({ ...o, autoConnect: true })
    window[n] = c
    c.on('chat', (m) => note(`chat:${m.text}`))
    c.on('left', (l) => note(`left:${l.user}`))
    c.on('presence', (p) => note(`presence:${p.user}:${p.action}`))
    c.on('recovered', (r) => note(`recovered:${r.room || '@'}:${r.recovered}:${r.count}`))
  }, [opts, name])
  await until(() => page.evaluate((n) => window[n].state === 'OPEN', name), `${name} OPEN`)
}

const events = (page) => page.evaluate(() => window.events)

test('disconnect(): the server sees 1000, so the room sees the leave at once, not after the grace period', { skip }, async (t) => {
  const server = await TetherProcess.start(['--presence-grace', '10s'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const watcher = await sdkPage(browser, server.url)
  await client(watcher, { url: `ws://127.0.0.1:${server.port}/ws?user=walt` })
  const leaver = await sdkPage(browser, server.url)
  await client(leaver, { url: `ws://127.0.0.1:${server.port}/ws?user=lena` })
  await until(async () => (await events(watcher)).includes('presence:lena:join'), 'lena joined')
  const t0 = Date.now()
  await leaver.evaluate(() => window.c.disconnect())
  await until(async () => (await events(watcher)).includes('presence:lena:leave'), 'lena left', 5000)
  const took = Date.now() - t0
  assert.ok(took < 2000, `the leave came ${took} ms after disconnect(); a 4000 close would wait for the 10 s grace`)
  assert.deepEqual(await leaver.evaluate(() => ({ code: window.c.lastClose.code, state: window.c.state })), { code: 1000, state: 'CLOSED' })
})

test('reload with persist: the page resumes its session and gets what was sent during the reload', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const writer = await sdkPage(browser, server.url)
  await client(writer, { url: `ws://127.0.0.1:${server.port}/ws?user=will` })
  const reader = await sdkPage(browser, server.url)
  await client(reader, { url: `ws://127.0.0.1:${server.port}/ws?user=rhea`, persist: 'tether' })
  await writer.evaluate(() => window.c.send('general', 'before the reload'))
  await until(async () => (await events(reader)).includes('chat:before the reload'), 'before')
  const session = await reader.evaluate(() => window.c.session)

  const reloading = reader.reload() // the browser closes the socket with 1001
  await writer.evaluate(async () => { for (let i = 1; i <= 5; i++) await window.c.send('general', `during ${i}`) })
  await reloading
  await reader.evaluate(async () => { window.T = await import('/sdk/tether.js') })
  await client(reader, { url: `ws://127.0.0.1:${server.port}/ws?user=rhea`, persist: 'tether' })
  await until(async () => (await events(reader)).some((e) => e.startsWith('recovered:general')), 'recovered')
  assert.equal(await reader.evaluate(() => window.c.resumed), true, 'the reloaded page resumed')
  assert.equal(await reader.evaluate(() => window.c.session), session)
  // Across the reload (what the page got before it went, then the resumed
  // page): every message once, in order; the resume replayed the ones the
  // old page had not received.
  const all = await reader.evaluate(() => JSON.parse(sessionStorage.getItem('events')))
  const chats = all.filter((e) => e.startsWith('chat:'))
  assert.deepEqual(chats, ['chat:before the reload', ...[1, 2, 3, 4, 5].map((i) => `chat:during ${i}`)])
  const after = await events(reader)
  const replayed = after.filter((e) => e.startsWith('chat:')).length
  assert.ok(after.includes(`recovered:general:true:${replayed}`), JSON.stringify(after))
  t.diagnostic(`${5 - replayed} arrived before the page went, ${replayed} were replayed after the reload`)
})

test('a closed tab: its private partner is told within about two seconds', { skip }, async (t) => {
  const server = await TetherProcess.start(['--presence-grace', '10s'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const bob = await sdkPage(browser, server.url)
  await client(bob, { url: `ws://127.0.0.1:${server.port}/ws?user=bob` })
  const alice = await sdkPage(browser, server.url)
  await client(alice, { url: `ws://127.0.0.1:${server.port}/ws?user=alice`, persist: 'tether' })
  await alice.evaluate(() => window.c.direct('bob', 'hi'))
  const t0 = Date.now()
  await alice.close()
  await until(async () => (await events(bob)).includes('left:alice'), 'left:alice', 5000)
  const took = Date.now() - t0
  t.diagnostic(`bob was told ${took} ms after alice's tab closed`)
  assert.ok(took < 3000, `bob was told ${took} ms after the tab closed`)
})

test('a frozen server is found when the heartbeat timeout elapses (within 1 s), not at the next ping', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { server.thaw(); await browser.close(); await server.kill() })
  const page = await sdkPage(browser, server.url)
  // Pings every 2 s, dead after 3 s of silence: a check only on the ping
  // ticks would leave OPEN at 4 s.
  await client(page, { url: `ws://127.0.0.1:${server.port}/ws?user=frida`, heartbeat: { intervalMs: 2000, timeoutMs: 3000 } })
  await sleep(2300) // just after a pong
  server.freeze()
  await until(() => page.evaluate(() => window.c.state !== 'OPEN'), 'leaving OPEN', 10000)
  const { silent, code } = await page.evaluate(() => ({ silent: Date.now() - window.c.lastMessageAt, code: window.c.lastClose.code }))
  t.diagnostic(`left OPEN ${silent} ms after the last message (timeout 3000 ms)`)
  assert.equal(code, 4000)
  assert.ok(silent >= 3000 && silent < 4000, `left OPEN ${silent} ms after the last message`)
})

test('the README snippet from a page on another origin: the module is imported from the node and connects to it', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const snippet = readme.match(/```js\n([\s\S]*?)```/)[1].replaceAll('127.0.0.1:8000', `127.0.0.1:${server.port}`)
  assert.match(snippet, /new TetherClient\(\{ user: 'alice', autoConnect: true \}\)/, 'the README snippet gives no url')
  const html = `<!doctype html><script type="module">
${snippet}
window.done = true
</script>`
  const app = createServer((req, res) => { res.setHeader('Content-Type', 'text/html'); res.end(html) })
  const port = await freePort()
  await new Promise((r) => app.listen(port, '127.0.0.1', r))
  t.after(async () => { await browser.close(); await server.kill(); app.close() })
  const page = await (await browser.newContext()).newPage()
  const logs = []
  page.on('console', (m) => logs.push(m.text()))
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(`http://127.0.0.1:${port}/`)
  await until(() => page.evaluate(() => window.done === true), 'the snippet ran to its end (its send was acknowledged)')
  assert.deepEqual(errors, [])
  assert.ok(logs.includes('OPEN'), JSON.stringify(logs))
  await until(() => logs.includes('#general alice: hello'), 'its own message back')
})

test('token mode: neither the token nor the session id appears in the log, across a reconnect', { skip }, async (t) => {
  const server = await TetherProcess.start(['--auth-secret', 'k'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const token = execFileSync(tetherBinary(), ['token', '--user', 'tess', '--auth-secret', 'k'], { encoding: 'utf8' }).trim()
  const page = await sdkPage(browser, server.url)
  await client(page, { url: `ws://127.0.0.1:${server.port}/ws`, token, reconnect: { baseDelayMs: 50 } })
  await page.context().setOffline(true) // the socket goes; then back, resuming
  await until(() => page.evaluate(() => window.c.state === 'OFFLINE'), 'OFFLINE')
  await page.context().setOffline(false)
  await until(() => page.evaluate(() => window.c.state === 'OPEN' && window.c.resumed), 'resumed after going offline')
  const { log, session } = await page.evaluate(() => ({ log: window.c.log.map((l) => l.text), session: window.c.session }))
  const leaks = log.filter((l) => l.includes(token) || l.includes(session) || l.includes(token.slice(-20)))
  assert.deepEqual(leaks, [])
  assert.ok(log.some((l) => l.includes('token=…') && l.includes('resuming its session')), log.join('\n'))
})

// The web chat in real headless Chromium against the real tether binary.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browserMissing, TetherProcess, launchBrowser, screenshot, until } from './harness.mjs'

const skip = browserMissing()

async function openChat(browser, server, user) {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 720 } })).newPage()
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(`${server.url}/?user=${encodeURIComponent(user)}`)
  await until(() => page.evaluate(() => window.tether?.state === 'OPEN'), `${user} OPEN`)
  page.jsErrors = errors
  return page
}

async function say(page, text) {
  await page.fill('#text', text)
  await page.press('#text', 'Enter')
}

const lines = (page, text) => page.locator('#messages li', { hasText: text })

test('web chat: room and private conversation between two browsers, hostile text stays text', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })

  const alice = await openChat(browser, server, 'alice')
  const bob = await openChat(browser, server, 'bob')
  assert.equal(await alice.textContent('#state'), 'OPEN')
  await until(async () => (await alice.locator('#members li').allTextContents()).join(',') === 'alice (you),bob', 'alice sees bob in general')

  await say(alice, 'Hi bob, the deploy is done.')
  await lines(bob, 'Hi bob, the deploy is done.').waitFor()
  await alice.locator('#messages li.mine:not(.pending)', { hasText: 'the deploy is done' }).waitFor()
  await say(bob, 'Great, thanks alice!')
  await lines(alice, 'Great, thanks alice!').waitFor()

  // Hostile text: shown as text, nothing runs.
  const hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
  await say(bob, hostile)
  await lines(alice, '<img src=x').waitFor()
  assert.equal(await alice.evaluate(() => window.__pwned), undefined)
  assert.equal(await alice.locator('#messages img, #messages script').count(), 0)

  // Private conversation: bob clicks alice in the member list.
  await bob.locator('#members li', { hasText: /^alice$/ }).click()
  await say(bob, 'psst: lunch at noon?')
  await alice.locator('#dms li', { hasText: 'bob' }).click()
  await lines(alice, 'psst: lunch at noon?').waitFor()
  await say(alice, 'yes!')
  await lines(bob, 'yes!').waitFor()
  await alice.locator('#rooms li', { hasText: 'general' }).click()
  await lines(alice, 'Great, thanks alice!').waitFor()
  await screenshot(alice, 'chat-open')

  // bob's last tab goes away: alice's private conversation says so.
  await bob.context().close()
  await alice.locator('#dms li', { hasText: 'bob' }).click()
  await lines(alice, 'bob left the chat').waitFor()

  assert.deepEqual(alice.jsErrors, [])
})
test('web chat: a server restart shows RECONNECTING, then delivers what was typed meanwhile exactly once', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })

  const alice = await openChat(browser, server, 'alice')
  const bob = await openChat(browser, server, 'bob')

  await server.kill()
  await until(async () => (await alice.textContent('#state')) === 'RECONNECTING', 'alice RECONNECTING')
  await say(alice, 'typed while the server was down')
  await alice.locator('#messages li.pending', { hasText: 'typed while the server was down' }).waitFor()
  await until(async () => Number(await alice.textContent('#f-attempt')) >= 2, 'a second attempt')
  await screenshot(alice, 'chat-reconnecting')
  const close = await alice.textContent('#f-close')
  assert.match(close, /^1006/, 'a killed server is an abnormal close')

  await server.start()
  await until(async () => (await alice.textContent('#state')) === 'OPEN', 'alice OPEN again', 20000)
  await until(async () => (await bob.textContent('#state')) === 'OPEN', 'bob OPEN again', 20000)
  await lines(bob, 'typed while the server was down').waitFor({ timeout: 10000 }).catch(async (e) => {
    const log = await bob.evaluate(() => window.tether.log.map((l) => l.text).join('\n'))
    throw new Error(`${e.message}\nbob's log:\n${log}`)
  })
  await alice.locator('#messages li.mine:not(.pending)', { hasText: 'typed while the server was down' }).waitFor()
  await new Promise((r) => setTimeout(r, 500))
  assert.equal(await lines(bob, 'typed while the server was down').count(), 1)
  assert.equal(await lines(alice, 'typed while the server was down').count(), 1)
})

test('web chat: a hostile user name is refused, shown nowhere as markup, and nothing runs', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const page = await (await browser.newContext()).newPage()
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  const hostile = '<img src=x onerror="window.__pwned=1">'
  await page.goto(`${server.url}/?user=${encodeURIComponent(hostile)}`)
  await page.locator('#login').waitFor()                      // not accepted as a name: asked for another
  assert.equal(await page.locator('#app').isVisible(), false)
  await page.fill('#login-name', hostile)
  await page.click('#login button')
  assert.match(await page.textContent('#login-error'), /not allowed/)
  assert.equal(await page.evaluate(() => window.__pwned), undefined)
  assert.equal(await page.locator('img').count(), 0)
  // The server refuses it too, whatever a client sends.
  const r = await fetch(`${server.url}/ws?user=${encodeURIComponent(hostile)}`)
  assert.equal(r.status, 400)
  assert.deepEqual(errors, [])
})

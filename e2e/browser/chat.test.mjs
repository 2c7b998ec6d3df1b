// The web chat in real headless Chromium against the real tether binary.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browserMissing, TetherProcess, launchBrowser, openChat, screenshot, until } from './harness.mjs'

const skip = browserMissing()

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

test('web chat: token mode asks for a token, with the server\'s reason, and takes one from /#token= too', { skip }, async (t) => {
  const server = await TetherProcess.start(['--auth-secret', 'k'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const { execFileSync } = await import('node:child_process')
  const { tetherBinary } = await import('./harness.mjs')
  const token = (user) => execFileSync(tetherBinary(), ['token', '--user', user, '--auth-secret', 'k'], { encoding: 'utf8' }).trim()

  const page = await (await browser.newContext()).newPage()
  await page.goto(`${server.url}/?user=tina`)
  await page.locator('#signin').waitFor()
  assert.match(await page.textContent('#signin-why'), /4401 token required/)
  await page.fill('#signin-token', token('tina'))
  await page.click('#signin button')
  await until(() => page.evaluate(() => window.tether.state === 'OPEN'), 'OPEN after signing in')
  assert.equal(await page.textContent('#me'), 'tina')
  const log = await page.textContent('#log')
  assert.ok(!log.includes(token('tina').split('.')[2]), 'the log on screen shows no token')

  const handed = await (await browser.newContext()).newPage()
  await handed.goto(`${server.url}/#token=${token('hugo')}`)
  await until(() => handed.evaluate(() => window.tether?.state === 'OPEN'), 'OPEN with a handed-over token')
  assert.equal(await handed.textContent('#me'), 'hugo')
  assert.equal(new URL(handed.url()).hash, '', 'the token is taken out of the address bar')
  assert.equal(await handed.locator('#signin').isVisible(), false)
})

test('web chat: the panel after a restart, the member list, bubbles, unread badges, the online count', { skip }, async (t) => {
  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const alice = await openChat(browser, server, 'alice')
  const bob = await openChat(browser, server, 'bob')

  // The online count is on screen.
  assert.match(await bob.textContent('#online'), /^2 online$/)
  // Retry count only while retrying.
  assert.equal(await alice.textContent('#f-attempt'), '-')

  // Members: bob joins and leaves a room alice is looking at.
  await alice.fill('#join-name', 'ops')
  await alice.press('#join-name', 'Enter')
  await bob.fill('#join-name', 'ops')
  await bob.press('#join-name', 'Enter')
  await until(async () => (await alice.locator('#members li').allTextContents()).join(',') === 'alice (you),bob', 'bob listed in ops')
  // alice opens a private conversation with bob: no room's list stays on
  // show (it was ops', and went stale while she looked elsewhere).
  await alice.locator('#members li', { hasText: /^bob$/ }).click()
  assert.equal(await alice.locator('#members-section').isVisible(), false)
  await bob.click('#leave')
  await alice.locator('#rooms li', { hasText: 'ops' }).click()
  await until(async () => (await alice.locator('#members li').allTextContents()).join(',') === 'alice (you)', 'bob no longer listed in ops')

  // Unread badges count messages, not notices: while alice looks at ops,
  // carol comes to general (a notice there), then bob says something.
  await alice.locator('#rooms li', { hasText: 'ops' }).click()
  await bob.locator('#rooms li', { hasText: 'general' }).click()
  await openChat(browser, server, 'carol')
  await new Promise((r) => setTimeout(r, 300))
  assert.equal(await alice.locator('#rooms li', { hasText: 'general' }).locator('.badge').count(), 0, 'a presence notice is not unread')
  await say(bob, 'hi')
  await until(async () => (await alice.locator('#rooms li', { hasText: 'general' }).textContent()).endsWith('1'), 'one unread in general')
  const badge = await alice.locator('#rooms li', { hasText: 'general' }).locator('.badge').textContent()
  assert.equal(badge, '1')

  // Others' bubbles are as wide as their text, not three quarters of the view.
  await alice.locator('#rooms li', { hasText: 'general' }).click()
  const widths = await alice.evaluate(() => {
    const li = [...document.querySelectorAll('#messages li')].find((l) => l.textContent.includes('hi') && !l.classList.contains('mine'))
    return { li: li.getBoundingClientRect().width, list: document.querySelector('#messages').getBoundingClientRect().width }
  })
  assert.ok(widths.li < widths.list * 0.4, `a short message's bubble is ${widths.li}px of ${widths.list}px`)

  // After a restart the panel shows the server's close, not the retries'.
  await server.stop()
  await until(async () => Number(await alice.evaluate(() => window.tether.attempt)) >= 2, 'a second attempt')
  await until(async () => (await alice.textContent('#f-failure')) !== '-', 'the failed try shown')
  assert.match(await alice.textContent('#f-close'), /^1012 server restarting/)
  await server.start()
  await until(async () => (await alice.textContent('#state')) === 'OPEN', 'OPEN again', 20000)
  assert.equal(await alice.textContent('#f-attempt'), '-')
})

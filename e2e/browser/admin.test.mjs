// The admin page in real headless Chromium against the real tether binary:
// sign-in, the cluster's figures and live charts from the node's metrics,
// the publish and disconnect forms, and hostile names shown as text.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browserMissing, TetherProcess, launchBrowser, sdkPage, screenshot, until } from './harness.mjs'

const skip = browserMissing()
const secret = 'admin-secret-for-the-test'

// Names that break pages which build HTML from strings or keep names as
// object keys. User and room names are letters, digits, '_', '-' and '.'
// only (the protocol refuses anything else), so markup comes through the
// node's id, which an operator types and the page shows.
const hostileNode = '<img src=x onerror="window.__pwned=1">'
const users = ['__proto__', 'constructor', 'שלום', 'x'.repeat(64)]
const rooms = ['__proto__', 'toString', '..']

test('admin page: sign-in, figures, live charts, forms, hostile names as text', { skip }, async (t) => {
  const server = await TetherProcess.start(['--admin-secret', secret, '--node-id', hostileNode])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })

  // The users, each in a room or two, from a page of SDK clients.
  const clients = await sdkPage(browser, server.url)
  await clients.evaluate(async ({ users, rooms }) => {
    window.cs = {}
    for (const [i, u] of users.entries()) {
      const c = new window.T.TetherClient({ url: `ws://${location.host}/tether/ws?user=${encodeURIComponent(u)}`, autoConnect: true })
      window.cs[i] = c
      c.received = []
      c.on('chat', (m) => c.received.push(m.text))
      await new Promise((resolve) => c.on('state', (s) => s.state === 'OPEN' && resolve()))
      for (const r of rooms.slice(0, i + 1)) await c.join(r)
    }
  }, { users, rooms })

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(`${server.url}/admin`)

  // A wrong secret is refused, in words.
  await page.locator('#secret').fill('not-the-secret')
  await page.locator('#signin button').click()
  await page.locator('#signin-error', { hasText: 'not the admin secret' }).waitFor()
  assert.equal(await page.locator('#dashboard').isHidden(), true)

  await page.locator('#secret').fill(secret)
  await page.locator('#signin button').click()
  await page.locator('#dashboard').waitFor()

  // Figures: one node, the users online, the busiest rooms.
  await until(async () => (await page.textContent('#t-online')) === String(users.length), 'users online')
  assert.equal(await page.textContent('#t-nodes'), '1')
  assert.equal(await page.textContent('#t-conns'), String(users.length))
  const shown = await page.locator('#users li').allTextContents()
  assert.deepEqual([...shown].sort(), [...users].sort(), 'every user, by name, as text')
  const roomRows = await page.locator('#rooms tr').evaluateAll((rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)))
  // By members, then by name; 'general' is the lobby every client starts in.
  assert.deepEqual(roomRows, [['__proto__', '4'], ['general', '4'], ['toString', '3'], ['..', '2']])

  // The node's id is markup: shown as text, nothing runs, no element made.
  await until(async () => (await page.textContent('#node')).includes(hostileNode), 'the node id as text')
  assert.equal(await page.locator('#nodes li').first().evaluate((li) => li.firstChild.nodeValue), hostileNode)
  assert.equal(await page.locator('img').count(), 0)
  assert.equal(await page.evaluate(() => window.__pwned), undefined)

  // Messages per second and latency, live: users chat (20 a second, 100 at
  // most), the charts move.
  await clients.evaluate(() => {
    let i = 0
    window.chatter = setInterval(() => { if (i < 100) window.cs[0].send('__proto__', `m${i++}`) }, 50)
  })
  await until(async () => Number(await page.textContent('#t-out')) > 0, 'deliveries per second above 0')
  await until(async () => /\d( ms| s)$/.test(await page.textContent('#t-p99')), 'a latency p99')
  const points = (id) => page.locator(`#${id} polyline`).evaluateAll((ls) => ls.map((l) => l.getAttribute('points').split(' ').filter(Boolean).length))
  await until(async () => (await points('chart-rate')).every((n) => n >= 4), 'the rate chart drawn')
  await until(async () => (await points('chart-latency')).every((n) => n >= 1), 'the latency chart drawn')
  const heights = await page.locator('#chart-rate polyline.out').evaluate((l) => l.getAttribute('points').split(' ').map((p) => Number(p.split(',')[1])))
  assert.ok(Math.min(...heights) < 150, `the delivered line rises above the axis: ${heights}`)
  await screenshot(page, 'admin')
  await clients.evaluate(() => clearInterval(window.chatter))

  // Publish to a room named like Object.prototype, with markup as text.
  const text = '<b>maintenance</b> at 10'
  await page.locator('#publish-room').fill('__proto__')
  await page.locator('#publish-text').fill(text)
  await page.locator('#publish button').click()
  await page.locator('#publish-result.ok', { hasText: 'Published to __proto__ as message' }).waitFor()
  await until(() => clients.evaluate((t) => Object.values(window.cs).every((c) => c.received.includes(t)), text), 'every member got it')

  // A bad room: the server's reason, shown.
  await page.locator('#publish-room').fill('no spaces')
  await page.locator('#publish-text').fill('x')
  await page.locator('#publish button').click()
  await page.locator('#publish-result.bad', { hasText: 'bad_room' }).waitFor()

  // Disconnect a user with a code: that client stops (4403 is terminal),
  // the others stay.
  await page.locator('#disconnect-user').fill('constructor')
  await page.locator('#disconnect button').click()
  await page.locator('#disconnect-result.ok', { hasText: 'Disconnected constructor (close code 4403)' }).waitFor()
  await until(() => clients.evaluate(() => window.cs[1].state === 'CLOSED'), 'constructor CLOSED')
  assert.deepEqual(await clients.evaluate(() => Object.values(window.cs).map((c) => c.state)), ['OPEN', 'CLOSED', 'OPEN', 'OPEN'])
  await until(async () => (await page.textContent('#t-online')) === String(users.length - 1), 'one user fewer online')
  await page.locator('#disconnect-user').fill('nobody')
  await page.locator('#disconnect button').click()
  await page.locator('#disconnect-result.bad', { hasText: 'nobody is not online' }).waitFor()

  // Reloading keeps the tab signed in; signing out forgets the secret.
  await page.reload()
  await page.locator('#dashboard').waitFor()
  await page.locator('#signout').click()
  await page.locator('#signin').waitFor()
  assert.equal(await page.evaluate(() => sessionStorage.length), 0)
  assert.deepEqual(errors, [], 'no errors in the page')
})

test('admin page: off unless the node has an admin secret or an API key', { skip }, async (t) => {
  const server = await TetherProcess.start()
  t.after(() => server.kill())
  const res = await fetch(`${server.url}/admin/`)
  assert.equal(res.status, 404)
  assert.equal((await res.json()).code, 'disabled')
})

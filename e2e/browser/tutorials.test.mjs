// The FastAPI tutorials' clients, written their way (the tutorials' own
// message shapes and URLs; these pages are the project's, not copies), in
// headless Chromium against the real binary with the tutorial dialects on,
// beside a browser-SDK client in the same room or conversation.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { browserMissing, TetherProcess, launchBrowser, sdkPage, until } from './harness.mjs'

const skip = browserMissing()

// page001 is a tutorial-001 page: JSON {type, data}, it joins a room under
// a name once open, shows the welcome's online count and the chat lines.
const page001 = (room, user) => `<!doctype html><title>001</title>
<p>online: <span id="online">-</span></p><ul id="log"></ul>
<script>
  const ws = new WebSocket('ws://' + window.location.host + '/ws')
  ws.onopen = () => ws.send(JSON.stringify({ type: 'join', data: { room: ${JSON.stringify(room)}, user: ${JSON.stringify(user)} } }))
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data)
    if (msg.type === 'welcome') document.getElementById('online').textContent = msg.data.online
    if (msg.type === 'chat') {
      const li = document.createElement('li')
      li.textContent = msg.data.from + ': ' + msg.data.text
      document.getElementById('log').append(li)
    }
    if (msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong' }))
  }
  window.say = (text) => ws.send(JSON.stringify({ type: 'chat', data: { text } }))
</script>`

// page003 is a tutorial-003 page: /ws/{client_id}, plain text both ways,
// "target:message" out, every line in shown as it is.
const page003 = (id) => `<!doctype html><title>003</title><ul id="log"></ul>
<script>
  const ws = new WebSocket('ws://' + window.location.host + '/ws/' + ${JSON.stringify(id)})
  ws.onmessage = (event) => {
    const li = document.createElement('li')
    li.textContent = event.data
    document.getElementById('log').append(li)
  }
  window.send = (target, message) => ws.send(target + ':' + message)
  window.onbeforeunload = () => ws.close()
</script>`

async function tutorialPage(browser, origin, html) {
  const page = await (await browser.newContext()).newPage()
  await page.goto(`${origin}/healthz`) // the server's origin: window.location.host is the node
  await page.setContent(html)
  return page
}

const lines = (page) => page.$$eval('#log li', (li) => li.map((x) => x.textContent))

async function sdkClient(browser, server, user, rooms = []) {
  const page = await sdkPage(browser, server.url)
  await page.evaluate(async ({ url, rooms }) => {
    window.got = []
    window.c = new window.T.TetherClient({ url, autoConnect: true })
    window.c.on('chat', (m) => window.got.push(`${m.room} ${m.from}: ${m.text}`))
    window.c.on('direct', (m) => window.got.push(`direct ${m.from}: ${m.text}`))
    await new Promise((resolve) => window.c.on('welcome', resolve))
    for (const r of rooms) await window.c.join(r)
  }, { url: `ws://127.0.0.1:${server.port}/tether/ws?user=${user}`, rooms })
  return page
}

test('tutorial 001: a page written its way joins a room under its name and chats with an SDK user there', { skip }, async (t) => {
  const server = await TetherProcess.start(['--ws-dialect', 'tutorial-001', '--ws-id-dialect', 'tutorial-003'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const bob = await sdkClient(browser, server, 'bob', ['random'])
  const alice = await tutorialPage(browser, server.url, page001('random', 'alice'))
  const other = await tutorialPage(browser, server.url, page001('general', 'olga'))

  await until(async () => (await alice.textContent('#online')) === '2', 'alice welcomed with the room count')
  await alice.evaluate(() => window.say('hello from 001'))
  await until(() => bob.evaluate(() => window.got.includes('random alice: hello from 001')), 'bob has alice\'s message, under her name')
  await bob.evaluate(() => window.c.send('random', 'hello from the SDK'))
  await until(async () => (await lines(alice)).includes('bob: hello from the SDK'), 'alice has bob\'s message')
  await sleep(300)
  assert.deepEqual(await lines(other), [], 'a user who joined general gets nothing of random')
  assert.equal(await other.textContent('#online'), '2', 'general: olga and bob (auto-joined there)')
})

test('tutorial 003: pages written its way chat privately in plain text, with an SDK user too, and learn when a partner leaves', { skip }, async (t) => {
  const server = await TetherProcess.start(['--ws-id-dialect', 'tutorial-003'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const p1001 = await tutorialPage(browser, server.url, page003('1001'))
  const p1002 = await tutorialPage(browser, server.url, page003('1002'))
  const bob = await sdkClient(browser, server, 'bob')
  for (const p of [p1001, p1002]) await until(() => p.evaluate(() => ws.readyState === WebSocket.OPEN), 'the page\'s socket open') // eslint-disable-line no-undef

  await p1001.evaluate(() => window.send('1002', 'hello'))
  await until(async () => (await lines(p1002)).includes('Client #1001 says: hello'), '1002 has the message')
  await until(async () => (await lines(p1001)).includes('You wrote: hello'), '1001 has its echo')
  await bob.evaluate(() => window.c.direct('1001', 'from the SDK'))
  await until(async () => (await lines(p1001)).includes('Client #bob says: from the SDK'), '1001 has bob\'s message')
  await p1001.evaluate(() => window.send('bob', 'back to the SDK'))
  await until(() => bob.evaluate(() => window.got.includes('direct 1001: back to the SDK')), 'bob has 1001\'s answer')

  const closed = Date.now()
  await p1002.close({ runBeforeUnload: true })
  await until(async () => (await lines(p1001)).includes('Client #1002 left the chat'), '1001 told that 1002 left', 5000)
  const took = Date.now() - closed
  assert.ok(took < 3000, `the left notice took ${took} ms`)
  for (const line of await lines(p1001)) assert.ok(!line.trim().startsWith('{'), `JSON reached a 003 page: ${line}`)
})

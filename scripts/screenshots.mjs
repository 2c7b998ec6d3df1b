// Regenerates the documentation's screenshots from the real binary in
// headless Chromium: docs/images/chat.png (the README's: a conversation in
// a room and a private one, the connection panel) and
// docs/images/chat-reconnecting.png (docs/clients.md: the server down, a
// message pending). Run: node scripts/screenshots.mjs (after make build).
import { join } from 'node:path'
import { TetherProcess, launchBrowser, root, until } from '../e2e/browser/harness.mjs'

const images = join(root, 'docs', 'images')
const server = await TetherProcess.start()
const browser = await launchBrowser()

async function open(user) {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 720 } })).newPage()
  await page.goto(`${server.url}/?user=${user}`)
  await until(() => page.evaluate(() => window.tether?.state === 'OPEN'), `${user} OPEN`)
  return page
}
async function say(page, text) {
  await page.fill('#text', text)
  await page.press('#text', 'Enter')
  await page.locator('#messages li.mine:not(.pending)', { hasText: text }).waitFor()
}
const pause = (ms) => new Promise((r) => setTimeout(r, ms))

try {
  const bob = await open('bob')
  const carol = await open('carol')
  const alice = await open('alice')
  await say(bob, 'Morning! Is the 2.4 release still on for today?')
  await say(alice, 'Yes: tests are green, I deploy at 11.')
  await say(carol, 'I will watch the dashboards while it rolls out.')
  await say(bob, 'Great, ping me if you need a hand.')
  await carol.locator('#members li', { hasText: /^alice$/ }).click()
  await say(carol, 'Can you send me the rollback steps, just in case?')
  await say(alice, 'Deploying now.')
  await alice.locator('#dms li', { hasText: 'carol' }).waitFor()
  await pause(300)
  await alice.screenshot({ path: join(images, 'chat.png') })

  await server.kill()
  await until(async () => (await alice.textContent('#state')) === 'RECONNECTING', 'RECONNECTING')
  await alice.fill('#text', 'The deploy finished, all good.')
  await alice.press('#text', 'Enter')
  await until(async () => Number(await alice.evaluate(() => window.tether.attempt)) >= 2, 'a second attempt')
  await pause(300)
  await alice.screenshot({ path: join(images, 'chat-reconnecting.png') })
  console.log('wrote docs/images/chat.png and docs/images/chat-reconnecting.png')
} finally {
  await browser.close()
  await server.kill()
}

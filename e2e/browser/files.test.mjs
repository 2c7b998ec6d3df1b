// Pictures and files in the web chat, in real headless Chromium against the
// real tether binary.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browserMissing, TetherProcess, launchBrowser, openChat, screenshot, until } from './harness.mjs'

const skip = browserMissing()

// A real 1×1 PNG, and a 2×2 one.
const png1 = Buffer.from('89504e470d0a1a0a0000000d4948445200000001000000010806000000' +
  '1f15c4890000000d49444154789c63f80f00000101000518d84e0000000049454e44ae426082', 'hex')
const png2 = Buffer.from('89504e470d0a1a0a0000000d49484452000000020000000208060000' +
  '0072b60d24000000124944415478da63f8cfc0f01f0a33a0010042fb0ff1a4b1c3c10000000049454e44ae426082', 'hex')

const pick = (page, name, mimeType, buffer) => page.setInputFiles('#file', { name, mimeType, buffer })

// loaded waits for the picture named alt in page's conversation to have
// loaded from the server, and returns its natural width.
async function loaded(page, alt) {
  const img = page.locator(`#messages img[alt="${alt}"]`)
  await img.waitFor()
  return until(() => img.evaluate((el) => el.complete && el.naturalWidth), `${alt} loaded`)
}

test('web chat: a picture sent by one user appears for the other, also after a drop; refusals are explained; names stay text', { skip }, async (t) => {
  const server = await TetherProcess.start(['--max-file-size', '2000'])
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const alice = await openChat(browser, server, 'alice')
  const bob = await openChat(browser, server, 'bob')

  await pick(alice, 'dot.png', 'image/png', png1)
  assert.equal(await loaded(bob, 'dot.png'), 1, 'bob sees the picture')
  assert.equal(await loaded(alice, 'dot.png'), 1, 'alice sees her own')

  // A file that is not a picture, with a hostile name: a download link
  // whose text is the name; nothing runs.
  const hostile = '<img src=x onerror="window.__pwned=1">.txt'
  await pick(alice, hostile, 'text/plain', Buffer.from('just some notes\n'))
  const link = bob.locator('#messages a.file', { hasText: '<img src=x' })
  await link.waitFor()
  assert.match(await link.textContent(), /<img src=x onerror="window.__pwned=1">\.txt/)
  assert.equal(await bob.evaluate(() => window.__pwned), undefined)
  assert.equal(await bob.locator('#messages img[src="x"]').count(), 0)

  // Too big, and not what it says: refused, in words the user can read.
  await pick(alice, 'huge.png', 'image/png', Buffer.concat([png1, Buffer.alloc(3000)]))
  await alice.locator('#messages li.failed', { hasText: 'huge.png was not sent' }).waitFor()
  assert.match(await alice.locator('#messages li.failed', { hasText: 'huge.png' }).textContent(), /limit is 2000 bytes|limit is 2 KiB/)
  await pick(alice, 'fake.png', 'image/png', Buffer.from('this is text, not a picture'))
  const fake = alice.locator('#messages li.failed', { hasText: 'fake.png was not sent' })
  await fake.waitFor()
  assert.match(await fake.textContent(), /said to be image\/png, but its bytes are/)

  // bob drops off the network; a picture sent meanwhile is there when he is back.
  await bob.context().setOffline(true)
  await until(async () => (await bob.textContent('#state')) === 'OFFLINE', 'bob OFFLINE')
  await pick(alice, 'while-away.png', 'image/png', png2)
  await alice.locator('#messages img[alt="while-away.png"]').waitFor()
  await bob.context().setOffline(false)
  assert.equal(await loaded(bob, 'while-away.png'), 2, 'bob got the picture sent while he was away')
  assert.equal(await bob.locator('#messages img[alt="while-away.png"]').count(), 1, 'once')
  await screenshot(bob, 'chat-pictures')

  // Dropped on the conversation, and pasted into the message box.
  const viaEvent = (page, kind, name) => page.evaluate(({ kind, name, bytes }) => {
    const dt = new DataTransfer()
    dt.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }))
    if (kind === 'drop') document.getElementById('messages').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }))
    else document.getElementById('text').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }))
  }, { kind, name, bytes: [...png1] })
  await viaEvent(alice, 'drop', 'dropped.png')
  assert.equal(await loaded(bob, 'dropped.png'), 1, 'a dropped picture')
  await viaEvent(alice, 'paste', 'pasted.png')
  assert.equal(await loaded(bob, 'pasted.png'), 1, 'a pasted picture')

  // A private picture.
  await bob.locator('#members li', { hasText: /^alice$/ }).click()
  await pick(bob, 'for-alice.png', 'image/png', png1)
  await alice.locator('#dms li', { hasText: 'bob' }).click()
  assert.equal(await loaded(alice, 'for-alice.png'), 1)

  assert.deepEqual(alice.jsErrors, [])
  assert.deepEqual(bob.jsErrors, [])
})

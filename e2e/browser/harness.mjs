// Shared set-up for the browser tests: the real tether binary in a child
// process (killable, freezable, restartable on the same port) and Debian's
// headless Chromium driven by playwright-core. Never a downloaded browser.
import { spawn, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const artifacts = join(root, 'artifacts')
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium'

/**
 * Returns a reason to skip when Chromium is missing, or throws under
 * CI=true: in CI a missing dependency is a failure, never a skip.
 */
export function browserMissing() {
  if (existsSync(chromiumPath)) return false
  const msg = `Chromium not found at ${chromiumPath} (apt-get install chromium)`
  if (process.env.CI === 'true') throw new Error(msg)
  return msg
}

let binary = process.env.TETHER_BIN
/** Builds the tether binary once per test process. */
export function tetherBinary() {
  if (!binary) {
    const dir = mkdtempSync(join(tmpdir(), 'tether-e2e-'))
    binary = join(dir, 'tether')
    execFileSync('go', ['build', '-o', binary, './cmd/tether'], { cwd: root, stdio: 'inherit' })
  }
  return binary
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

/** A tether server process the test controls. */
export class TetherProcess {
  constructor(port, args = []) {
    this.port = port
    this.args = args
    this.url = `http://127.0.0.1:${port}`
    this.proc = null
    this.output = ''
  }

  static async start(args = []) {
    const p = new TetherProcess(await freePort(), args)
    await p.start()
    return p
  }

  async start() {
    this.proc = spawn(tetherBinary(), ['serve', '--addr', `127.0.0.1:${this.port}`, ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.proc.stdout.on('data', (d) => { this.output += d })
    this.proc.stderr.on('data', (d) => { this.output += d })
    const deadline = Date.now() + 10000
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`${this.url}/healthz`)
        if (r.ok) return
      } catch { /* not up yet */ }
      await sleep(50)
    }
    throw new Error(`tether did not start on ${this.port}:\n${this.output}`)
  }

  /** SIGKILL: the process dies without closing anything. */
  async kill() { await this._signal('SIGKILL', true) }

  /** SIGTERM: graceful shutdown. */
  async stop() { await this._signal('SIGTERM', true) }

  /** SIGSTOP / SIGCONT: a frozen peer that keeps its sockets open. */
  freeze() { this.proc.kill('SIGSTOP') }
  thaw() { this.proc.kill('SIGCONT') }

  async _signal(sig, wait) {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return
    const exited = new Promise((r) => this.proc.once('exit', r))
    this.proc.kill(sig)
    if (wait) await exited
  }
}

/** Launches Debian Chromium headless with the flags this machine needs. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core')
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true })
  const path = join(artifacts, `${name}.png`)
  await page.screenshot({ path })
  return path
}

/** Polls fn until it returns a truthy value or the timeout passes. */
export async function until(fn, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs
  let last
  while (Date.now() < deadline) {
    last = await fn()
    if (last) return last
    await sleep(50)
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what} (last: ${JSON.stringify(last)})`)
}

/**
 * A TCP relay in front of the server that the test controls: cut() drops
 * every relayed connection without a close frame (a network failure),
 * block() refuses new ones (the network is still down), live counts the
 * client connections currently relayed, and dropFrames(pattern, n) leaves
 * out the next n WebSocket text frames from the server that contain
 * pattern while the connection stays up (a gap in what the client gets).
 */
export class CutProxy {
  static async start(targetPort) {
    const { createServer: tcp, connect } = await import('node:net')
    const p = new CutProxy()
    p.pairs = new Set()
    p.blocked = false
    p.accepted = 0
    p.server = tcp((client) => {
      if (p.blocked) { client.destroy(); return }
      p.accepted++
      const upstream = connect(targetPort, '127.0.0.1')
      const pair = { client, upstream }
      p.pairs.add(pair)
      const end = () => { p.pairs.delete(pair); client.destroy(); upstream.destroy() }
      client.on('error', end).on('close', end)
      upstream.on('error', end).on('close', end)
      client.pipe(upstream)
      const frames = new FrameFilter(p)
      upstream.on('data', (chunk) => {
        const out = frames.filter(chunk)
        if (out.length) client.write(out)
      })
    })
    p.dropPattern = null
    p.dropLeft = 0
    p.dropped = 0
    await new Promise((r) => p.server.listen(0, '127.0.0.1', r))
    p.port = p.server.address().port
    p.url = `http://127.0.0.1:${p.port}`
    return p
  }

  get live() { return this.pairs.size }

  cut() {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy?.() ?? client.destroy()
      upstream.destroy()
    }
    this.pairs.clear()
  }

  block() { this.blocked = true }
  unblock() { this.blocked = false }

  dropFrames(pattern, n = 1) { this.dropPattern = Buffer.from(pattern); this.dropLeft = n }

  async close() {
    this.cut()
    await new Promise((r) => this.server.close(r))
  }
}

// FrameFilter passes a WebSocket server's bytes on whole frames at a time
// (after the HTTP response head), leaving out those the proxy drops.
class FrameFilter {
  constructor(proxy) { this.proxy = proxy; this.headed = false; this.buf = Buffer.alloc(0) }

  filter(chunk) {
    this.buf = Buffer.concat([this.buf, chunk])
    const out = []
    if (!this.headed) {
      const i = this.buf.indexOf('\r\n\r\n')
      if (i < 0) return Buffer.alloc(0)
      out.push(this.buf.subarray(0, i + 4))
      this.buf = this.buf.subarray(i + 4)
      this.headed = true
    }
    for (;;) {
      const size = frameSize(this.buf)
      if (size < 0) break
      const frame = this.buf.subarray(0, size)
      const p = this.proxy
      if (p.dropLeft > 0 && (frame[0] & 0x0f) === 1 && frame.includes(p.dropPattern)) {
        p.dropLeft--
        p.dropped++
      } else {
        out.push(frame)
      }
      this.buf = this.buf.subarray(size)
    }
    return Buffer.concat(out)
  }
}

// frameSize is the size of the whole frame at the start of b, or -1.
function frameSize(b) {
  if (b.length < 2) return -1
  let head = 2
  let n = b[1] & 0x7f
  if (n === 126) {
    if (b.length < 4) return -1
    head = 4
    n = b.readUInt16BE(2)
  } else if (n === 127) {
    if (b.length < 10) return -1
    head = 10
    n = Number(b.readBigUInt64BE(2))
  }
  if (b[1] & 0x80) head += 4
  return b.length - head < n ? -1 : head + n
}

/**
 * Opens a page on the server's origin with the SDK loaded as window.T
 * (the module) and returns it.
 */
export async function sdkPage(browser, origin) {
  const context = await browser.newContext()
  const page = await context.newPage()
  await page.goto(`${origin}/healthz`)
  await page.evaluate(async () => { window.T = await import('/sdk/tether.js') })
  return page
}

/**
 * Opens the web chat as user in a fresh browser context and waits for it
 * to be OPEN; page.jsErrors collects the page's uncaught errors.
 */
export async function openChat(browser, server, user) {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 720 } })).newPage()
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(`${server.url}/?user=${encodeURIComponent(user)}`)
  await until(() => page.evaluate(() => window.tether?.state === 'OPEN'), `${user} OPEN`)
  page.jsErrors = errors
  return page
}

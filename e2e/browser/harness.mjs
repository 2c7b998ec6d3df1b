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
 * client connections currently relayed.
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
      upstream.pipe(client)
    })
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

  async close() {
    this.cut()
    await new Promise((r) => this.server.close(r))
  }
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

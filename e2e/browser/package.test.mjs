// The browser SDK as an npm package, as a user gets it: `npm pack` yields
// the ES module, the types and the Vue composable (and the licence); the
// tarball installs into a fresh TypeScript project, the README's npm
// example type-checks against it, esbuild bundles it, and the bundle
// talks to a live server in Chromium.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { browserMissing, TetherProcess, launchBrowser, root, until } from './harness.mjs'

const skip = browserMissing()
const bin = (name) => join(root, 'node_modules', '.bin', name)

test('npm package: packed, installed into a fresh TypeScript project, type-checked, bundled, run against a server', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-npm-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))

  // npm pack: what the package holds.
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', dir], { cwd: join(root, 'web', 'sdk'), encoding: 'utf8' }))
  const files = packed[0].files.map((f) => f.path).sort()
  assert.deepEqual(files, ['LICENSE', 'README.md', 'package.json', 'tether.d.ts', 'tether.js', 'vue.d.ts', 'vue.js'])
  assert.equal(JSON.parse(readFileSync(join(root, 'web', 'sdk', 'package.json'), 'utf8')).license, 'MIT')

  // A fresh project that installs the tarball.
  const app = join(dir, 'app')
  execFileSync('mkdir', ['-p', app])
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', join(dir, packed[0].filename)], { cwd: app, stdio: 'pipe' })

  // The README's npm example, type-checked against the installed package.
  const readme = readFileSync(join(root, 'web', 'sdk', 'README.md'), 'utf8')
  const example = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]).find((b) => b.includes("from '@tether-chat/sdk'"))
  assert.ok(example, "the SDK README has an example that imports '@tether-chat/sdk'")
  writeFileSync(join(app, 'example.ts'), example)
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, target: 'es2022', module: 'esnext', moduleResolution: 'bundler', lib: ['es2022', 'dom'], types: [] },
    files: ['example.ts'],
  }))
  try {
    execFileSync(bin('tsc'), ['-p', join(app, 'tsconfig.json')], { encoding: 'utf8' })
  } catch (e) {
    assert.fail(`the README's npm example does not type-check against the package:\n${e.stdout}${e.stderr}`)
  }

  // An application bundled with esbuild, run in Chromium against a server.
  writeFileSync(join(app, 'main.js'), `import { TetherClient, State } from '@tether-chat/sdk'
window.result = []
const c = new TetherClient({ url: window.tetherURL, autoConnect: true })
c.on('chat', (m) => window.result.push(m.from + ': ' + m.text))
c.on('state', (s) => { if (s.state === State.OPEN) c.send('general', 'from the bundle').then((a) => window.result.push('acked ' + a.seq)) })
`)
  execFileSync(bin('esbuild'), ['main.js', '--bundle', '--format=iife', '--outfile=bundle.js', '--log-level=warning'], { cwd: app })
  const bundle = readFileSync(join(app, 'bundle.js'), 'utf8')
  assert.ok(!bundle.includes("from '@tether-chat/sdk'"), 'the bundle is self-contained')

  const server = await TetherProcess.start()
  const browser = await launchBrowser()
  t.after(async () => { await browser.close(); await server.kill() })
  const page = await (await browser.newContext()).newPage()
  await page.goto(`${server.url}/healthz`)
  await page.evaluate((url) => { window.tetherURL = url }, `ws://127.0.0.1:${server.port}/ws?user=npm-user`)
  await page.addScriptTag({ content: bundle })
  const got = await until(() => page.evaluate(() => window.result.length >= 2 && window.result), 'the bundle chats')
  assert.ok(got.includes('npm-user: from the bundle') && got.some((l) => /^acked \d+$/.test(l)), JSON.stringify(got))
})

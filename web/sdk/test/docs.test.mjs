// The documented examples type-check against the SDK's types: every
// JavaScript block of README.md, docs/clients.md and the SDK's README is
// compiled with `tsc --noEmit --checkJs`, so that the types and the docs
// cannot drift apart (a TypeScript user copies them).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const docs = ['README.md', 'docs/clients.md', 'web/sdk/README.md']

// What an application supplies around the examples.
const globals = `
declare function render(m: unknown): void
declare function currentToken(): string
declare function useState<T>(v: T): [T, (v: T) => void]
declare function useEffect(f: () => void | (() => void), deps: unknown[]): void
`

test('every JavaScript example in the docs type-checks against tether.d.ts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-docs-'))
  try {
    const files = []
    for (const doc of docs) {
      const text = readFileSync(join(root, doc), 'utf8')
      let i = 0
      for (const m of text.matchAll(/```js\n([\s\S]*?)```/g)) {
        const name = `${doc.replace(/[/.]/g, '_')}_${++i}.js`
        writeFileSync(join(dir, name), `// ${doc}, example ${i}\nexport {}\n${m[1]}`)
        files.push(name)
      }
    }
    assert.ok(files.length >= 6, `only ${files.length} examples found`)
    writeFileSync(join(dir, 'globals.d.ts'), globals)
    const sdk = join(root, 'web', 'sdk')
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        allowJs: true, checkJs: true, noEmit: true, strict: false, noImplicitAny: false,
        target: 'es2022', module: 'esnext', moduleResolution: 'bundler', lib: ['es2022', 'dom'],
        skipLibCheck: false, types: [], typeRoots: [join(root, 'node_modules', '@types')],
        baseUrl: dir,
        paths: {
          'http://127.0.0.1:8000/sdk/tether.js': [join(sdk, 'tether.d.ts')],
          '/sdk/tether.js': [join(sdk, 'tether.d.ts')],
          '/sdk/vue.js': [join(sdk, 'vue.d.ts')],
          '@tether-chat/sdk': [join(sdk, 'tether.d.ts')],
          '@tether-chat/sdk/vue': [join(sdk, 'vue.d.ts')],
          vue: [join(root, 'node_modules', 'vue')],
        },
      },
      files: ['globals.d.ts', ...files],
    }))
    try {
      execFileSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', join(dir, 'tsconfig.json')], { encoding: 'utf8' })
    } catch (e) {
      assert.fail(`the documented examples do not type-check:\n${e.stdout}${e.stderr}`)
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

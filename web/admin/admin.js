// The admin page: reads /admin/api/* with the admin secret (or API key)
// as a bearer token, charts this node's metrics live, and publishes or
// disconnects through the server API. Every name shown (rooms, users,
// nodes) comes from outside, so it is set as text, never as HTML.

import { quantile } from './quantile.js'

const STATS_EVERY_MS = 1000
const OVERVIEW_EVERY_MS = 3000
const POINTS = 120 // two minutes of readings

const $ = (id) => document.getElementById(id)
const storageKey = 'tether-admin-secret'
let secret = sessionStorage.getItem(storageKey) || ''
let timers = []
let previous = null // the last stats reading
const series = { in: [], out: [], p50: [], p99: [] }

class Unauthorized extends Error {}

async function call(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${secret}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    cache: 'no-store',
  })
  let data = null
  try { data = await res.json() } catch { /* not JSON: said below */ }
  if (res.status === 401) throw new Unauthorized(data?.message || 'wrong secret')
  if (!res.ok) throw new Error(data?.message ? `${data.code}: ${data.message}` : `HTTP ${res.status}`)
  return data
}

function setStatus(text, bad = false) {
  $('status').textContent = text
  $('status').classList.toggle('bad', bad)
}

function signOut(why = '') {
  for (const t of timers) clearInterval(t)
  timers = []
  secret = ''
  previous = null
  for (const k of Object.keys(series)) series[k] = []
  sessionStorage.removeItem(storageKey)
  $('dashboard').hidden = true
  $('signout').hidden = true
  $('signin').hidden = false
  $('signin-error').textContent = why
  $('node').textContent = ''
  setStatus('')
  $('secret').focus()
}

function failed(err) {
  if (err instanceof Unauthorized) signOut(`Refused: ${err.message}`)
  else setStatus(`Cannot reach the node: ${err.message}`, true)
}

// list replaces el's children with one element per item, made by make.
function list(el, items, make) {
  el.replaceChildren(...items.map(make))
}

function li(text, note) {
  const e = document.createElement('li')
  e.textContent = text
  if (note) {
    const n = document.createElement('span')
    n.className = 'muted'
    n.textContent = note
    e.append(n)
  }
  return e
}

function duration(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s`
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`
  return `${(seconds / 3600).toFixed(1)} h`
}

async function refreshOverview() {
  let o
  try { o = await call('GET', '/admin/api/overview') } catch (err) { return failed(err) }
  const node = o.node
  $('node').textContent = `node ${node.id} · ${node.engine} engine · v${node.version} · up ${duration(node.uptime_seconds)}`
  const nodes = o.instances?.length ? o.instances : [node.id]
  $('t-nodes').textContent = String(nodes.length)
  $('t-online').textContent = String(o.online)
  // A shared engine lists instances: a node's id, a dot and 8 hex digits.
  const mine = (id) => id === node.id || (id.startsWith(`${node.id}.`) && /^[0-9a-f]{8}$/.test(id.slice(node.id.length + 1)))
  list($('nodes'), nodes, (id) => li(id, mine(id)
    ? `this node: ${node.connections} connections, ${node.users} users, ${node.rooms} rooms${node.ready ? '' : ', NOT READY'}`
    : ''))
  list($('rooms'), o.rooms, (r) => {
    const tr = document.createElement('tr')
    const name = document.createElement('td')
    name.textContent = r.room
    const n = document.createElement('td')
    n.textContent = String(r.count)
    tr.append(name, n)
    return tr
  })
  list($('users'), o.users, (u) => li(u))
  $('users-more').textContent = o.users_truncated ? `(first ${o.users.length} of ${o.online})` : ''
  if (o.errors?.length) setStatus(o.errors.map((e) => e.message).join('; '), true)
}

function push(name, v) {
  series[name].push(v)
  if (series[name].length > POINTS) series[name].shift()
}

function rate(x) { return x >= 100 ? Math.round(x).toString() : x.toFixed(1) }
function ms(s) { return s == null ? '–' : s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(s < 0.01 ? 2 : 0)} ms` }

async function refreshStats() {
  let s
  try { s = await call('GET', '/admin/api/stats') } catch (err) { return failed(err) }
  setStatus(`live · ${new Date(s.time).toLocaleTimeString()}`)
  $('t-conns').textContent = String(s.connections)
  if (previous) {
    const dt = (s.time - previous.time) / 1000
    if (dt > 0) {
      const rin = (s.received - previous.received) / dt
      const rout = (s.delivered - previous.delivered) / dt
      const p50 = quantile(0.5, previous.latency, s.latency)
      const p99 = quantile(0.99, previous.latency, s.latency)
      push('in', rin); push('out', rout); push('p50', p50); push('p99', p99)
      $('t-in').textContent = rate(rin)
      $('t-out').textContent = rate(rout)
      $('t-p99').textContent = ms(p99)
      draw($('chart-rate'), [series.in, series.out], $('chart-rate-max'), (v) => `${rate(v)}/s`)
      draw($('chart-latency'), [series.p50, series.p99], $('chart-latency-max'), ms)
    }
  }
  previous = s
}

// draw charts the series (same length, null for no value) as polylines
// scaled to the largest value, which it writes in label.
function draw(svg, lines, label, format) {
  const W = 600; const H = 160
  const values = lines.flat().filter((v) => v != null)
  const top = Math.max(...values, 0) || 1
  label.textContent = `max ${format(top)}`
  const ns = 'http://www.w3.org/2000/svg'
  svg.replaceChildren(...lines.map((data, i) => {
    const p = document.createElementNS(ns, 'polyline')
    p.setAttribute('class', i === 0 ? 'in' : 'out')
    const step = W / (POINTS - 1)
    const x0 = W - step * (data.length - 1)
    p.setAttribute('points', data.map((v, j) => v == null ? null : `${(x0 + j * step).toFixed(1)},${(H - (v / top) * (H - 4)).toFixed(1)}`).filter(Boolean).join(' '))
    return p
  }))
}

function start() {
  $('signin').hidden = true
  $('dashboard').hidden = false
  $('signout').hidden = false
  setStatus('connecting…')
  refreshOverview()
  refreshStats()
  timers.push(setInterval(refreshOverview, OVERVIEW_EVERY_MS), setInterval(refreshStats, STATS_EVERY_MS))
}

$('signin').addEventListener('submit', async (e) => {
  e.preventDefault()
  secret = $('secret').value.trim()
  $('secret').value = ''
  try {
    await call('GET', '/admin/api/stats')
  } catch (err) {
    signOut(err instanceof Unauthorized ? 'That is not the admin secret or the API key.' : `Cannot reach the node: ${err.message}`)
    return
  }
  sessionStorage.setItem(storageKey, secret)
  start()
})

$('signout').addEventListener('click', () => signOut())

function result(el, text, ok) {
  el.textContent = text
  el.className = `result ${ok ? 'ok' : 'bad'}`
}

$('publish').addEventListener('submit', async (e) => {
  e.preventDefault()
  const room = $('publish-room').value.trim()
  const from = $('publish-from').value.trim()
  const text = $('publish-text').value
  try {
    const r = await call('POST', '/admin/api/publish', { room, text, ...(from ? { from } : {}) })
    result($('publish-result'), `Published to ${room} as message ${r.seq}.`, true)
    $('publish-text').value = ''
  } catch (err) {
    if (err instanceof Unauthorized) return failed(err)
    result($('publish-result'), `Not published: ${err.message}`, false)
  }
})

$('disconnect').addEventListener('submit', async (e) => {
  e.preventDefault()
  const user = $('disconnect-user').value.trim()
  const code = Number($('disconnect-code').value) || 4403
  const reason = $('disconnect-reason').value.trim()
  try {
    const r = await call('POST', '/admin/api/disconnect', { user, code, ...(reason ? { reason } : {}) })
    result($('disconnect-result'), r.online
      ? `Disconnected ${user} (close code ${code}) on every node.`
      : `${user} is not online: nothing to disconnect.`, r.online)
  } catch (err) {
    if (err instanceof Unauthorized) return failed(err)
    result($('disconnect-result'), `Not disconnected: ${err.message}`, false)
  }
})

if (secret) start()
else signOut()

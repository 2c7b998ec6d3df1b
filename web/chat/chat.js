// The Tether web chat: rooms, private conversations, who is online, and a
// connection panel that shows the SDK's state machine and evidence log.
// Everything a user typed is put on the page with textContent, never as HTML.
import { TetherClient, State } from './sdk/tether.js'

const $ = (id) => document.getElementById(id)
const NAME = /^[\p{L}\p{N}_.-]{1,64}$/u

const params = new URLSearchParams(location.search)
let user = params.get('user') || localStorage.getItem('tether.user') || ''

// Token mode: an application hands the page a token as /#token=… (a
// fragment never reaches a server or its logs); it is kept for this tab
// and taken out of the address bar. Or the user pastes one (signIn).
const fragment = new URLSearchParams(location.hash.slice(1))
if (fragment.get('token')) {
  sessionStorage.setItem('tether.token', fragment.get('token'))
  history.replaceState(null, '', location.pathname + location.search)
}
const token = () => sessionStorage.getItem('tether.token') || ''

if (token()) start(null)
else if (user && NAME.test(user)) start(user)
else showLogin()

function showLogin() {
  $('login').hidden = false
  $('login-name').focus()
  $('login').addEventListener('submit', (e) => {
    e.preventDefault()
    const name = $('login-name').value.trim()
    if (!NAME.test(name)) {
      $('login-error').textContent = 'That name has characters that are not allowed.'
      return
    }
    localStorage.setItem('tether.user', name)
    $('login').hidden = true
    start(name)
  })
}

function start(name) {
  $('app').hidden = false
  // persist: a reload resumes the session and gets what it missed. In
  // token mode the token names the user.
  // /tether/ws speaks Tether's protocol even when /ws is given to a
  // tutorial's clients (--ws-dialect).
  const ws = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/tether/ws`
  const client = new TetherClient({ user: name || undefined, token, autoConnect: true,
    url: name ? `${ws}?user=${encodeURIComponent(name)}` : ws,
    persist: `tether.session.${name || 'token'}` })
  window.tether = client // for the browser tests and for curious users

  // A server that wants a token (4401) or refuses this one (4403): ask
  // for one, with the server's reason; the client then starts again.
  client.on('state', (s) => {
    const lc = client.lastClose
    if (s.state === State.CLOSED && lc && (lc.code === 4401 || lc.code === 4403)) signIn(`${lc.code} ${lc.reason}`)
  })
  function signIn(why) {
    $('signin-why').textContent = `The server said: ${why}.`
    $('signin').hidden = false
    $('signin-token').focus()
  }
  $('signin').addEventListener('submit', (e) => {
    e.preventDefault()
    sessionStorage.setItem('tether.token', $('signin-token').value.trim())
    $('signin-token').value = ''
    $('signin').hidden = true
    client.connect()
  })

  /** conversations: key -> {key, kind: 'room'|'dm', name, list: <ol>, unread, gone} */
  const convs = new Map()
  let current = null
  const pendingEls = new Map() // client message id -> <li>
  const mySent = new Set()     // ids of private messages this tab sent

  function conv(kind, cname) {
    const key = `${kind}:${cname}`
    let c = convs.get(key)
    if (!c) {
      c = { key, kind, name: cname, nodes: [], unread: 0, gone: false, seen: new Set() }
      convs.set(key, c)
      renderLists()
    }
    return c
  }

  function select(key) {
    current = convs.get(key)
    current.unread = 0
    const ol = $('messages')
    ol.replaceChildren(...current.nodes)
    ol.scrollTop = ol.scrollHeight
    $('conv-title').textContent = current.kind === 'room' ? `# ${current.name}` : `@ ${current.name}`
    $('leave').hidden = current.kind !== 'room'
    $('members-section').hidden = current.kind !== 'room'
    if (current.kind === 'room') {
      $('members-room').textContent = current.name
      client.who(current.name).catch(() => {})
    }
    renderLists()
    $('text').focus()
  }

  // add puts a line in a conversation; a message (not a notice) in one
  // that is not on screen counts as unread.
  function add(c, li, message = true) {
    c.nodes.push(li)
    if (c.nodes.length > 500) c.nodes.shift().remove()
    if (current === c) {
      const ol = $('messages')
      const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40
      ol.append(li)
      if (atBottom) ol.scrollTop = ol.scrollHeight
    } else if (message) {
      c.unread++
      renderLists()
    }
  }

  function messageLi(from, text, ts, mine, file) {
    const li = document.createElement('li')
    if (mine) li.classList.add('mine')
    const f = document.createElement('span')
    f.className = 'from'
    f.textContent = from
    const t = document.createElement('span')
    t.className = 'text'
    t.textContent = text
    const meta = document.createElement('span')
    meta.className = 'meta'
    meta.textContent = time(ts)
    li.append(f, t)
    if (file) li.append(attachment(file))
    li.append(meta)
    return li
  }

  // attachment shows a message's file: a picture as a thumbnail that opens
  // full size, anything else as a link to download. The name is text.
  function attachment(file) {
    const url = file.local || client.fileURL(file)
    const a = document.createElement('a')
    a.href = url
    a.target = '_blank'
    a.rel = 'noopener'
    if (file.image) {
      a.className = 'picture'
      const img = document.createElement('img')
      img.src = url
      img.alt = file.name
      img.title = `${file.name} · ${size(file.size)} · click to open`
      img.loading = 'lazy'
      a.append(img)
    } else {
      a.className = 'file'
      a.download = file.name
      a.textContent = `${file.name} (${size(file.size)}, download)`
    }
    return a
  }

  function notice(c, text) {
    const li = document.createElement('li')
    li.className = 'notice'
    li.textContent = text
    add(c, li, false)
  }

  function renderLists() {
    for (const [listId, kind] of [['rooms', 'room'], ['dms', 'dm']]) {
      const ul = $(listId)
      ul.replaceChildren()
      for (const c of convs.values()) {
        if (c.kind !== kind) continue
        const li = document.createElement('li')
        li.textContent = (kind === 'room' ? '# ' : '@ ') + c.name
        if (c === current) li.classList.add('active')
        if (c.gone) li.classList.add('gone')
        if (c.unread) {
          const b = document.createElement('span')
          b.className = 'badge'
          b.textContent = String(c.unread)
          li.append(b)
        }
        li.addEventListener('click', () => select(c.key))
        ul.append(li)
      }
    }
  }

  function renderMembers(m) {
    if (!current || current.kind !== 'room' || current.name !== m.room) return
    $('members-count').textContent = `(${m.count})`
    const ul = $('members')
    ul.replaceChildren()
    for (const u of m.users) {
      const li = document.createElement('li')
      li.textContent = u === client.user ? `${u} (you)` : u
      if (u !== client.user) li.addEventListener('click', () => select(conv('dm', u).key))
      ul.append(li)
    }
  }

  // ---- server events ----
  client.on('welcome', (w) => {
    $('me').textContent = w.user
    $('online').textContent = `${w.online} online`
    $('online').title = 'users online on the server when this tab (re)connected'
    for (const r of client.rooms) conv('room', r)
    if (!current) select(conv('room', w.rooms[0] || 'general').key)
    else if (current.kind === 'room') client.who(current.name).catch(() => {})
  })
  // showChat puts a room message on screen once, whether it arrives live,
  // replayed after a reconnect, or from a history page.
  function showChat(m) {
    const c = conv('room', m.room)
    const key = `${m.epoch}:${m.seq}`
    if (c.seen.has(key)) return
    c.seen.add(key)
    const el = m.id && pendingEls.get(m.id)
    if (el && m.from === client.user) {
      markSent(el, m.seq)
      return
    }
    add(c, messageLi(m.from, m.text, m.ts, m.from === client.user, m.file))
  }
  client.on('chat', showChat)
  client.on('direct', (m) => {
    if (m.from === client.user && mySent.has(m.id)) return // our own copy, replayed after a reconnect
    const other = m.from === client.user ? m.to : m.from
    const c = conv('dm', other)
    c.gone = false
    add(c, messageLi(m.from, m.text, m.ts, m.from === client.user, m.file))
  })
  // After a reconnect that could not replay a room (the server restarted,
  // or the gap is older than its history), fill the screen from history.
  client.on('recovered', async (r) => {
    if (r.recovered || !r.room) return
    const c = convs.get(`room:${r.room}`)
    if (!c) return
    try {
      const page = await client.history(r.room, { limit: 50 })
      const fresh = page.messages.filter((m) => !c.seen.has(`${m.epoch}:${m.seq}`))
      if (fresh.length) notice(c, `— ${fresh.length} message${fresh.length > 1 ? 's' : ''} from while you were away —`)
      fresh.forEach(showChat)
    } catch (err) {
      notice(c, `could not load history: ${err.message}`)
    }
  })
  client.on('presence', (p) => {
    const c = convs.get(`room:${p.room}`)
    if (!c) return
    if (p.user !== client.user) notice(c, `${p.user} ${p.action === 'join' ? 'joined' : 'left'} · ${p.count} here`)
    if (current === c) client.who(p.room).catch(() => {})
  })
  client.on('members', renderMembers)
  client.on('unsubscribed', ({ room }) => {
    const c = convs.get(`room:${room}`)
    if (c) notice(c, `you were taken out of #${room}`)
  })
  client.on('left', (l) => {
    const c = convs.get(`dm:${l.user}`)
    if (!c) return
    c.gone = true
    notice(c, `${l.user} left the chat`)
    renderLists()
  })

  // ---- sending ----
  function markSent(li, seq) {
    li.classList.remove('pending')
    li.querySelector('.meta').textContent = `${time(Date.now())} ✓${seq ? ` #${seq}` : ''}`
  }

  function submit() {
    const text = $('text').value
    if (!text.trim() || !current) return
    $('text').value = ''
    const li = messageLi(client.user, text, Date.now(), true)
    li.classList.add('pending')
    li.querySelector('.meta').textContent = client.state === State.OPEN ? 'sending…' : 'pending (offline)'
    add(current, li)
    const p = current.kind === 'room' ? client.send(current.name, text) : client.direct(current.name, text)
    const id = p.id
    if (id) pendingEls.set(id, li)
    if (current.kind === 'dm') mySent.add(id)
    p.then((ack) => markSent(li, ack.seq), (err) => {
      li.classList.remove('pending')
      li.classList.add('failed')
      li.querySelector('.meta').textContent = `not sent: ${err.message}`
    }).finally(() => id && pendingEls.delete(id))
  }
  // Files: the picker, a drop on the conversation, a paste in the message
  // box. A picture appears for everyone as a thumbnail; a file the server
  // refuses (too big, not what it says it is) shows why, in words.
  function sendFiles(files) {
    if (!current) return
    const c = current
    for (const file of files) {
      const li = document.createElement('li')
      li.className = 'notice pending'
      li.textContent = `sending ${file.name || 'a pasted picture'} (${size(file.size)})…`
      add(c, li, false)
      const caption = $('text').value.trim()
      if (caption) $('text').value = ''
      const opts = { name: file.name || 'pasted.png', text: caption }
      const p = c.kind === 'room' ? client.sendFile(c.name, file, opts) : client.directFile(c.name, file, opts)
      p.then(() => {
        li.remove()
        if (c.kind === 'dm') { // a room's own copy comes back from the server; a private one does not
          const local = { name: opts.name, size: file.size, image: /^image\/(png|jpeg|gif|webp)$/.test(file.type), local: URL.createObjectURL(file) }
          add(c, messageLi(client.user, caption, Date.now(), true, local))
        }
      }, (err) => {
        li.classList.remove('pending')
        li.classList.add('failed')
        li.textContent = `${opts.name} was not sent: ${err.message}`
      })
    }
  }
  $('file').addEventListener('change', (e) => { sendFiles([...e.target.files]); e.target.value = '' })
  $('messages').addEventListener('dragover', (e) => { e.preventDefault(); $('messages').classList.add('drop') })
  $('messages').addEventListener('dragleave', () => $('messages').classList.remove('drop'))
  $('messages').addEventListener('drop', (e) => {
    e.preventDefault()
    $('messages').classList.remove('drop')
    if (e.dataTransfer?.files?.length) sendFiles([...e.dataTransfer.files])
  })
  $('text').addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])]
    if (files.length) { e.preventDefault(); sendFiles(files) }
  })
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); submit() })
  $('text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); submit() }
  })
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const r = $('join-name').value.trim()
    if (!NAME.test(r)) { $('join-name').setCustomValidity('letters, digits, _ - . only'); $('join-name').reportValidity(); return }
    $('join-name').setCustomValidity('')
    $('join-name').value = ''
    client.join(r).catch((err) => notice(conv('room', r), `could not join: ${err.message}`))
    select(conv('room', r).key)
  })
  $('leave').addEventListener('click', () => {
    if (!current || current.kind !== 'room') return
    const c = current
    client.leave(c.name).catch(() => {})
    convs.delete(c.key)
    current = null
    const next = convs.values().next().value
    if (next) select(next.key)
    else { $('messages').replaceChildren(); renderLists() }
  })

  // ---- connection panel ----
  $('btn-connect').addEventListener('click', () => client.connect())
  $('btn-disconnect').addEventListener('click', () => client.disconnect())
  client.on('state', renderPanel)
  client.on('outbox', renderPanel)
  client.on('log', (line) => {
    const li = document.createElement('li')
    li.textContent = `${time(line.at)} ${line.text}`
    const log = $('log')
    log.append(li)
    while (log.children.length > client.logLimit) log.firstChild.remove()
    log.scrollTop = log.scrollHeight
  })
  function renderPanel() {
    const st = $('state')
    st.textContent = client.state
    st.className = `state ${client.state}`
    // The retry count matters while retrying; OPEN, it is only the
    // counter waiting for the connection to prove stable.
    $('f-attempt').textContent = client.state === State.OPEN ? '-' : String(client.attempt)
    $('f-next').textContent = client.nextRetryAt ? `${Math.max(0, Math.ceil((client.nextRetryAt - Date.now()) / 100) / 10)}s` : '-'
    const lc = client.lastClose
    $('f-close').textContent = lc ? `${lc.code}${lc.reason ? ` ${lc.reason}` : ''}` : '-'
    $('f-clean').textContent = lc ? String(lc.wasClean) : '-'
    const lf = client.lastFailure
    $('f-failure').textContent = lf ? `${time(lf.at)} (${lf.code})` : '-'
    $('f-last').textContent = client.lastMessageAt ? `${ago(client.lastMessageAt)} (${time(client.lastMessageAt)})` : '-'
    $('f-error').textContent = client.lastErrorAt ? time(client.lastErrorAt) : '-'
    $('f-pending').textContent = String(client.pending)
  }
  setInterval(renderPanel, 250)
  renderPanel()
}

function size(n) {
  if (n >= 1 << 20) return `${+(n / (1 << 20)).toFixed(1)} MiB`
  if (n >= 1 << 10) return `${+(n / (1 << 10)).toFixed(1)} KiB`
  return `${n} bytes`
}

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
}

function ago(ts) {
  const s = Math.max(0, Math.round((Date.now() - ts) / 1000))
  return s < 1 ? 'just now' : `${s}s ago`
}

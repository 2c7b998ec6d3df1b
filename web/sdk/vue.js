// useTether: a Vue 3 composable over TetherClient, in the spirit of the
// course's useReconnectingWebSocket. The client stays framework-agnostic;
// this file only mirrors its state into refs. Vue is a peer dependency
// (in a page without a bundler, map "vue" with an import map).
import { ref, shallowRef, readonly, getCurrentInstance, onBeforeUnmount } from 'vue'
import { TetherClient } from './tether.js'

/**
 * @param {import('./tether.js').TetherOptions} options
 * @returns reactive state (read-only refs) and the client's methods
 */
export function useTether(options = {}) {
  const client = options.client || new TetherClient(options)
  const state = ref(client.state)
  const attempt = ref(client.attempt)
  const nextRetryAt = ref(client.nextRetryAt)
  const lastClose = shallowRef(client.lastClose)
  const lastErrorAt = ref(client.lastErrorAt)
  const lastMessageAt = ref(client.lastMessageAt)
  const pending = ref(client.pending)
  const user = ref(client.user)
  const logs = shallowRef([...client.log])
  const messages = shallowRef([]) // chat and direct messages, oldest first
  const limit = options.messageLimit ?? 500

  const sync = () => {
    state.value = client.state
    attempt.value = client.attempt
    nextRetryAt.value = client.nextRetryAt
    lastClose.value = client.lastClose
    lastErrorAt.value = client.lastErrorAt
    lastMessageAt.value = client.lastMessageAt
    pending.value = client.pending
    user.value = client.user
  }
  const keep = (m) => { messages.value = [...messages.value, m].slice(-limit) }
  const offs = [
    client.on('state', sync),
    client.on('outbox', sync),
    client.on('welcome', sync),
    client.on('message', () => { lastMessageAt.value = client.lastMessageAt }),
    client.on('log', () => { logs.value = [...client.log]; sync() }),
    client.on('chat', (m) => keep({ kind: 'chat', ...m })),
    client.on('direct', (m) => keep({ kind: 'direct', ...m })),
  ]
  const dispose = () => { offs.forEach((off) => off()); if (!options.client) client.destroy() }
  if (getCurrentInstance()) onBeforeUnmount(dispose)

  return {
    client,
    state: readonly(state), attempt: readonly(attempt), nextRetryAt: readonly(nextRetryAt),
    lastClose: readonly(lastClose), lastErrorAt: readonly(lastErrorAt), lastMessageAt: readonly(lastMessageAt),
    pending: readonly(pending), user: readonly(user), logs: readonly(logs), messages: readonly(messages),
    connect: () => client.connect(),
    disconnect: (reason) => client.disconnect(reason),
    join: (room) => client.join(room),
    leave: (room) => client.leave(room),
    send: (room, text) => client.send(room, text),
    direct: (to, text) => client.direct(to, text),
    dispose,
  }
}

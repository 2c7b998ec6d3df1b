import type { Ref } from 'vue'
import type { TetherClient, TetherOptions, ConnState, CloseSnapshot, LogLine, Chat, Direct, Ack, Sent } from './tether.js'

export interface UseTetherOptions extends TetherOptions {
  /** Use an existing client instead of creating one (it is then not destroyed on unmount). */
  client?: TetherClient
  /** Most chat/direct messages kept in `messages` (500). */
  messageLimit?: number
}

export type TetherMessage = ({ kind: 'chat' } & Chat) | ({ kind: 'direct' } & Direct)

export declare function useTether(options?: UseTetherOptions): {
  client: TetherClient
  state: Readonly<Ref<ConnState>>
  attempt: Readonly<Ref<number>>
  nextRetryAt: Readonly<Ref<number | null>>
  lastClose: Readonly<Ref<CloseSnapshot | null>>
  lastErrorAt: Readonly<Ref<number | null>>
  lastMessageAt: Readonly<Ref<number | null>>
  pending: Readonly<Ref<number>>
  user: Readonly<Ref<string | null>>
  logs: Readonly<Ref<readonly LogLine[]>>
  messages: Readonly<Ref<readonly TetherMessage[]>>
  connect(): void
  disconnect(reason?: string): void
  join(room: string): Sent<Ack>
  leave(room: string): Sent<Ack>
  send(room: string, text: string): Sent<Ack>
  direct(user: string, text: string): Sent<Ack>
  dispose(): void
}

// The chat state and how events change it (a reducer: one place to read every rule).
import type { Conversation, ListedConversation, Message, Presence } from "@parley/client";

export interface Pending {
  clientMsgId: string;
  content: string;
  status: "pending" | "failed";
  error?: string;
  createdAt: string;
}

export interface HistoryState {
  loaded: boolean;
  hasOlder: boolean;
  loading: boolean;
  /** The last page request failed: not retried by itself (a button does). */
  failed: boolean;
}

export interface State {
  me: string;
  convs: Record<string, ListedConversation>;
  listLoaded: boolean;
  nextBefore: string | null;
  /** Loaded messages of each conversation, sorted by seq, no duplicates. */
  messages: Record<string, Message[]>;
  history: Record<string, HistoryState>;
  pending: Record<string, Pending[]>;
  /** conversation → user → when the "typing" expires (ms). */
  typing: Record<string, Record<string, number>>;
  presence: Record<string, Presence>;
  /** conversation → user → the highest seq that user has read (from message:read). */
  readBy: Record<string, Record<string, number>>;
}

export type Action =
  | { type: "list"; conversations: ListedConversation[]; nextBefore: string | null; append: boolean }
  | { type: "conversation"; conversation: Conversation }
  | { type: "messages"; messages: Message[]; live: boolean }
  | { type: "updated"; message: Message }
  | { type: "historyLoading"; conversationId: string }
  | { type: "history"; conversationId: string; messages: Message[]; hasMore: boolean }
  | { type: "historyFailed"; conversationId: string }
  | { type: "pending"; conversationId: string; pending: Pending }
  | { type: "sendFailed"; clientMsgId: string; error: string }
  | { type: "typing"; conversationId: string; userId: string; isTyping: boolean }
  | { type: "typingExpire" }
  | { type: "presence"; presence: Presence[] }
  | { type: "read"; conversationId: string; userId: string; seq: number; readAt: string }
  | { type: "markedRead"; conversationId: string };

export const TYPING_TTL_MS = 6_000;

export function initialState(me: string): State {
  return {
    me,
    convs: {},
    listLoaded: false,
    nextBefore: null,
    messages: {},
    history: {},
    pending: {},
    typing: {},
    presence: {},
    readBy: {},
  };
}

/** Merges messages into a sorted list; a later copy of a seq (an edit) replaces the earlier. */
function merge(list: Message[] = [], incoming: Message[]): Message[] {
  const bySeq = new Map(list.map((m) => [m.seq, m]));
  for (const m of incoming) {
    const old = bySeq.get(m.seq);
    // A live message:new never undoes an edit or delete we already have.
    if (old && (old.editedAt || old.deletedAt) && !m.editedAt && !m.deletedAt) continue;
    bySeq.set(m.seq, m);
  }
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

export function activityOf(c: ListedConversation): string {
  return c.lastMessage?.createdAt ?? c.lastMessageAt ?? c.createdAt;
}

export function reducer(state: State, action: Action): State {
  switch (action.type) {
    case "list": {
      const convs = { ...state.convs };
      for (const c of action.conversations) {
        const old = convs[c.id];
        // A message that arrived while the list was on its way stays the newest we know.
        if (old && old.lastSeq > c.lastSeq) {
          convs[c.id] = { ...c, lastSeq: old.lastSeq, lastMessage: old.lastMessage, lastMessageAt: old.lastMessageAt };
        } else {
          convs[c.id] = c;
        }
      }
      return {
        ...state,
        convs,
        listLoaded: true,
        nextBefore: action.append || !state.listLoaded ? action.nextBefore : state.nextBefore,
      };
    }
    case "conversation": {
      const c = action.conversation;
      const old = state.convs[c.id];
      const listed: ListedConversation = {
        ...c,
        lastMessage: old?.lastMessage ?? null,
        unreadCount: old?.unreadCount ?? 0,
        lastSeq: Math.max(c.lastSeq, old?.lastSeq ?? 0),
        lastMessageAt: old && old.lastSeq > c.lastSeq ? old.lastMessageAt : c.lastMessageAt,
      };
      return { ...state, convs: { ...state.convs, [c.id]: listed } };
    }
    case "messages": {
      if (action.messages.length === 0) return state;
      const messages = { ...state.messages };
      const convs = { ...state.convs };
      const pending = { ...state.pending };
      const typing = { ...state.typing };
      for (const m of action.messages) {
        messages[m.conversationId] = merge(messages[m.conversationId], [m]);
        const c = convs[m.conversationId];
        if (c && m.seq > c.lastSeq) {
          const unread = m.senderId !== state.me && !m.deletedAt ? 1 : 0;
          convs[m.conversationId] = {
            ...c,
            lastSeq: m.seq,
            lastMessage: m,
            lastMessageAt: m.createdAt,
            unreadCount: c.unreadCount + unread,
          };
        } else if (c && c.lastMessage?.seq === m.seq) {
          convs[m.conversationId] = { ...c, lastMessage: m };
        }
        if (m.senderId === state.me && pending[m.conversationId]) {
          pending[m.conversationId] = pending[m.conversationId].filter((p) => p.clientMsgId !== m.clientMsgId);
        }
        if (action.live && typing[m.conversationId]?.[m.senderId]) {
          const { [m.senderId]: _, ...rest } = typing[m.conversationId];
          typing[m.conversationId] = rest;
        }
      }
      return { ...state, messages, convs, pending, typing };
    }
    case "updated": {
      const m = action.message;
      const list = state.messages[m.conversationId];
      const c = state.convs[m.conversationId];
      return {
        ...state,
        messages: list ? { ...state.messages, [m.conversationId]: list.map((x) => (x.seq === m.seq ? m : x)) } : state.messages,
        convs:
          c && c.lastMessage?.seq === m.seq
            ? {
                ...state.convs,
                [c.id]: {
                  ...c,
                  lastMessage: m,
                  unreadCount: m.deletedAt && m.senderId !== state.me && c.unreadCount > 0 ? c.unreadCount - 1 : c.unreadCount,
                },
              }
            : state.convs,
      };
    }
    case "historyLoading":
    case "historyFailed": {
      const h = state.history[action.conversationId] ?? { loaded: false, hasOlder: true, loading: false, failed: false };
      const loading = action.type === "historyLoading";
      return {
        ...state,
        history: { ...state.history, [action.conversationId]: { ...h, loading, failed: !loading } },
      };
    }
    case "history": {
      const id = action.conversationId;
      const h = state.history[id];
      const merged = merge(state.messages[id], action.messages);
      const oldest = merged[0]?.seq ?? 1;
      // An older page only shortens what is left; the first page decides alone.
      // The server says so: a page may stop short of the limit (replies are bounded in bytes).
      const hasOlder = action.hasMore && oldest > 1 && (h?.loaded ? h.hasOlder : true);
      const c = state.convs[id];
      const newest = merged[merged.length - 1];
      return {
        ...state,
        messages: { ...state.messages, [id]: merged },
        history: { ...state.history, [id]: { loaded: true, hasOlder, loading: false, failed: false } },
        convs:
          c && newest && newest.seq >= c.lastSeq
            ? { ...state.convs, [id]: { ...c, lastSeq: newest.seq, lastMessage: newest } }
            : state.convs,
      };
    }
    case "pending": {
      const list = (state.pending[action.conversationId] ?? []).filter(
        (p) => p.clientMsgId !== action.pending.clientMsgId,
      );
      return { ...state, pending: { ...state.pending, [action.conversationId]: [...list, action.pending] } };
    }
    case "sendFailed": {
      const pending: State["pending"] = {};
      for (const [id, list] of Object.entries(state.pending)) {
        pending[id] = list.map((p) =>
          p.clientMsgId === action.clientMsgId ? { ...p, status: "failed" as const, error: action.error } : p,
        );
      }
      return { ...state, pending };
    }
    case "typing": {
      if (action.userId === state.me) return state;
      const forConv = { ...(state.typing[action.conversationId] ?? {}) };
      if (action.isTyping) forConv[action.userId] = Date.now() + TYPING_TTL_MS;
      else delete forConv[action.userId];
      return { ...state, typing: { ...state.typing, [action.conversationId]: forConv } };
    }
    case "typingExpire": {
      const now = Date.now();
      let changed = false;
      const typing: State["typing"] = {};
      for (const [conv, users] of Object.entries(state.typing)) {
        typing[conv] = {};
        for (const [user, until] of Object.entries(users)) {
          if (until > now) typing[conv][user] = until;
          else changed = true;
        }
      }
      return changed ? { ...state, typing } : state;
    }
    case "presence": {
      const presence = { ...state.presence };
      for (const p of action.presence) presence[p.userId] = p;
      return { ...state, presence };
    }
    case "read": {
      const { conversationId, userId, seq, readAt } = action;
      const c = state.convs[conversationId];
      if (userId === state.me) {
        // Read on another device (or this one): nothing left unread up to seq.
        if (!c || seq < c.lastSeq) return state;
        return { ...state, convs: { ...state.convs, [conversationId]: { ...c, unreadCount: 0 } } };
      }
      const forConv = state.readBy[conversationId] ?? {};
      if ((forConv[userId] ?? 0) >= seq) return state;
      const list = state.messages[conversationId];
      return {
        ...state,
        readBy: { ...state.readBy, [conversationId]: { ...forConv, [userId]: seq } },
        messages:
          list && c?.kind === "direct"
            ? {
                ...state.messages,
                [conversationId]: list.map((m) =>
                  m.senderId === state.me && m.seq <= seq && !m.readAt ? { ...m, readAt } : m,
                ),
              }
            : state.messages,
      };
    }
    case "markedRead": {
      const c = state.convs[action.conversationId];
      if (!c || c.unreadCount === 0) return state;
      return { ...state, convs: { ...state.convs, [c.id]: { ...c, unreadCount: 0 } } };
    }
  }
}

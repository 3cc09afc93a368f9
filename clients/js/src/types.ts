// The wire types of Parley's client protocol (DESIGN §4, §6): camelCase, RFC 3339 UTC strings.

export type ErrorCode =
  | "unauthenticated"
  | "forbidden"
  | "not_found"
  | "invalid"
  | "too_large"
  | "rate_limited"
  | "unavailable";

export interface ApiError {
  code: ErrorCode;
  message: string;
}

/** Every request is answered `{ok: true, ...}` or `{ok: false, error}`. */
export type Reply<T> = ({ ok: true } & T) | { ok: false; error: ApiError };

export interface Message {
  id: string;
  conversationId: string;
  seq: number;
  senderId: string;
  clientMsgId: string;
  content: string;
  readAt: string | null;
  createdAt: string;
  editedAt: string | null;
  deletedAt: string | null;
}

export interface Conversation {
  id: string;
  kind: "direct" | "group";
  title: string | null;
  participantIds: string[];
  lastSeq: number;
  lastMessageAt: string | null;
  createdAt: string;
}

/** A conversation as `conversation:list` gives it. */
export interface ListedConversation extends Conversation {
  lastMessage: Message | null;
  /** Messages after your read position that others sent and nobody deleted. */
  unreadCount: number;
}

export interface Presence {
  userId: string;
  online: boolean;
  lastSeenAt: string | null;
}

export interface SyncPosition {
  conversationId: string;
  afterSeq: number;
}

/** Client → server events: data and the reply each acknowledgement carries. */
export interface ClientEvents {
  "message:send": {
    data: { conversationId?: string; to?: string; content: string; clientMsgId: string };
    reply: Reply<{ clientMsgId: string; conversationId: string; status: "accepted" }>;
  };
  "conversation:open": {
    data: { participantIds: string[]; title?: string };
    reply: Reply<{ conversation: Conversation }>;
  };
  "message:history": {
    data: { conversationId: string; beforeSeq?: number; limit?: number };
    /** `hasMore`: older messages exist; a page may stop short of `limit` (replies are bounded in bytes). */
    reply: Reply<{ messages: Message[]; hasMore: boolean }>;
  };
  sync: {
    data: { conversations: SyncPosition[]; limit?: number };
    reply: Reply<{ messages: Message[]; hasMore: boolean }>;
  };
  "message:read": {
    data: { conversationId: string; seq: number };
    reply: Reply<Record<never, never>>;
  };
  typing: { data: { conversationId: string; isTyping: boolean }; reply: Reply<Record<never, never>> };
  "conversation:list": {
    data: { before?: string; limit?: number };
    reply: Reply<{ conversations: ListedConversation[]; nextBefore: string | null; hasMore: boolean }>;
  };
  "message:edit": {
    data: { conversationId: string; seq: number; content: string };
    reply: Reply<{ message: Message }>;
  };
  "message:delete": {
    data: { conversationId: string; seq: number };
    reply: Reply<Record<never, never>>;
  };
  "member:add": {
    data: { conversationId: string; userId: string };
    reply: Reply<{ conversation: Conversation }>;
  };
  "member:remove": {
    data: { conversationId: string; userId: string };
    reply: Reply<{ conversation: Conversation }>;
  };
  "presence:get": { data: { userIds: string[] }; reply: Reply<{ presence: Presence[] }> };
  "auth:refresh": { data: { token: string }; reply: Reply<{ exp: number }> };
}

/** Server → client events. */
export interface ServerEvents {
  "message:new": (message: Message) => void;
  "message:updated": (message: Message) => void;
  "message:read": (data: { conversationId: string; userId: string; seq: number; readAt: string }) => void;
  typing: (data: { conversationId: string; userId: string; isTyping: boolean }) => void;
  presence: (presence: Presence) => void;
  "conversation:new": (conversation: Conversation) => void;
  "conversation:updated": (conversation: Conversation) => void;
  error: (error: ApiError & { clientMsgId?: string }) => void;
  "token:expiring": (data: { exp: number }) => void;
  "server:draining": (data: { reconnectAfterMs: number }) => void;
  /** The gateway is back from a broker outage: deliveries may have been missed; sync. */
  "server:resync": (data: Record<string, never>) => void;
}

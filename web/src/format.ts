// Names, titles, times and ids: small pure helpers.
import type { ListedConversation } from "@parley/client";
import { nameOf, type User } from "./api";

export function conversationTitle(c: ListedConversation, me: string, names: Record<string, User>): string {
  if (c.kind === "group") {
    if (c.title) return c.title;
    const others = c.participantIds.filter((id) => id !== me);
    return others.map((id) => nameOf(id, names)).join(", ") || "Group";
  }
  const other = c.participantIds.find((id) => id !== me) ?? me;
  return other === me ? `${nameOf(me, names)} (you)` : nameOf(other, names);
}

/** The other member of a direct conversation (null for a group). */
export function otherParticipant(c: ListedConversation, me: string): string | null {
  return c.kind === "direct" ? (c.participantIds.find((id) => id !== me) ?? null) : null;
}

export function newClientMsgId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const time = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const shortDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const longDate = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

export function dayKey(iso: string): string {
  const d = new Date(iso);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function daysAgo(iso: string): number {
  const d = new Date(iso);
  const today = new Date();
  const a = Date.UTC(d.getFullYear(), d.getMonth(), d.getDate());
  const b = Date.UTC(today.getFullYear(), today.getMonth(), today.getDate());
  return Math.round((b - a) / 86_400_000);
}

export function formatDay(iso: string): string {
  const n = daysAgo(iso);
  if (n === 0) return "Today";
  if (n === 1) return "Yesterday";
  return longDate.format(new Date(iso));
}

export function formatTime(iso: string): string {
  return time.format(new Date(iso));
}

export function formatFull(iso: string): string {
  return full.format(new Date(iso));
}

export function formatListTime(iso: string): string {
  return daysAgo(iso) === 0 ? formatTime(iso) : shortDate.format(new Date(iso));
}

export function formatLastSeen(iso: string | null): string {
  if (!iso) return "Offline";
  const n = daysAgo(iso);
  if (n === 0) return `Last seen at ${formatTime(iso)}`;
  if (n === 1) return `Last seen yesterday`;
  return `Last seen ${shortDate.format(new Date(iso))}`;
}

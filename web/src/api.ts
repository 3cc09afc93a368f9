// HTTP calls to the gateway and the small local directory of user names.
import { useSyncExternalStore } from "react";

export interface User {
  id: string;
  username: string;
  displayName: string | null;
}

export class HttpError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const r = await fetch(path, {
    method,
    credentials: "include",
    headers: body === undefined ? undefined : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: reported below by status
  }
  if (!r.ok) {
    const err = (data as { error?: { code?: string; message?: string } } | null)?.error;
    throw new HttpError(r.status, err?.code ?? "error", err?.message ?? `The server answered ${r.status}.`);
  }
  return data as T;
}

interface AuthReply {
  token: string;
  exp: number;
  user: User;
}

export async function register(input: {
  username: string;
  email: string;
  password: string;
  displayName?: string;
}): Promise<User> {
  const reply = await call<AuthReply>("POST", "/api/auth/register", input);
  return reply.user;
}

export async function login(username: string, password: string): Promise<User> {
  const reply = await call<AuthReply>("POST", "/api/auth/login", { username, password });
  return reply.user;
}

export async function logout(): Promise<void> {
  await call<void>("POST", "/api/auth/logout");
}

/** The signed-in user's id from the session cookie, or null when there is no live session. */
export async function currentUserId(): Promise<string | null> {
  try {
    const { token } = await call<{ token: string }>("GET", "/api/auth/token");
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part)) as { sub?: string };
    return claims.sub ?? null;
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) return null;
    throw e;
  }
}

export async function searchUsers(query: string): Promise<User[]> {
  const { users } = await call<{ users: User[] }>("GET", `/api/users?query=${encodeURIComponent(query)}&limit=20`);
  rememberUsers(users);
  return users;
}

/** Names users by id (`GET /api/users?ids=`), at most 100 at a time, and remembers them. */
export async function lookupUsers(ids: string[]): Promise<void> {
  for (let i = 0; i < ids.length; i += 100) {
    const chunk = ids.slice(i, i + 100);
    const { users } = await call<{ users: User[] }>(
      "GET",
      `/api/users?ids=${chunk.map(encodeURIComponent).join(",")}`,
    );
    rememberUsers(users);
  }
}

// ---- Names ------------------------------------------------------------------------------
// Names are learnt from searches, from lookups by id of the members of our conversations, and
// from our own user, and kept in localStorage so a reload shows them at once.

const NAMES_KEY = "parley.users";
const ME_KEY = "parley.me";
let names: Record<string, User> = load(NAMES_KEY) ?? {};
const listeners = new Set<() => void>();

function load<T>(key: string): T | null {
  try {
    const raw = localStorage.getItem(key);
    return raw ? (JSON.parse(raw) as T) : null;
  } catch {
    return null;
  }
}

export function rememberUsers(users: User[]): void {
  let changed = false;
  const next = { ...names };
  for (const u of users) {
    const old = next[u.id];
    if (!old || old.username !== u.username || old.displayName !== u.displayName) {
      next[u.id] = { id: u.id, username: u.username, displayName: u.displayName };
      changed = true;
    }
  }
  if (!changed) return;
  names = next;
  try {
    localStorage.setItem(NAMES_KEY, JSON.stringify(names));
  } catch {
    // storage full or disabled: names only last for this page
  }
  listeners.forEach((l) => l());
}

export function useNames(): Record<string, User> {
  return useSyncExternalStore(
    (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    () => names,
  );
}

export function nameOf(id: string, directory: Record<string, User>): string {
  const u = directory[id];
  if (u) return u.displayName || u.username;
  return `User ${id.replace(/-/g, "").slice(-6)}`;
}

export function savedMe(id: string): User | null {
  const me = load<User>(ME_KEY);
  return me && me.id === id ? me : null;
}

export function saveMe(user: User | null): void {
  try {
    if (user) localStorage.setItem(ME_KEY, JSON.stringify(user));
    else localStorage.removeItem(ME_KEY);
  } catch {
    // ignore
  }
  if (user) rememberUsers([user]);
}

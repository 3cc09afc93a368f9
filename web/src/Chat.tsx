// The signed-in app: owns the socket and the chat state, and lays out the two panes.
import { useCallback, useEffect, useMemo, useReducer, useRef, useState } from "react";
import { request, useSocket, type ParleySocket, type ServerEvents } from "@parley/client";
import { lookupUsers, useNames, type User } from "./api";
import { ConversationList } from "./ConversationList";
import { ConversationView } from "./ConversationView";
import { activityOf, initialState, reducer, TYPING_TTL_MS } from "./store";

export type ConnectionState = "connecting" | "online" | "reconnecting" | "expired" | "error";

interface Props {
  me: User;
  onSignOut: () => void;
  onSessionOver: () => void;
}

const LIST_PAGE = 50;
const HISTORY_PAGE = 50;

/** The open conversation lives in the URL (`#/c/<id>`), so a reload or the back button keep it. */
function useActiveConversation(): [string | null, (id: string | null) => void] {
  const read = () => {
    const m = /^#\/c\/(.+)$/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  };
  const [id, setId] = useState(read);
  useEffect(() => {
    const onPop = () => setId(read());
    addEventListener("popstate", onPop);
    addEventListener("hashchange", onPop);
    return () => {
      removeEventListener("popstate", onPop);
      removeEventListener("hashchange", onPop);
    };
  }, []);
  const set = useCallback((next: string | null) => {
    const current = read();
    if (next === current) return;
    if (next) {
      // The history stays [list, conversation]: switching conversations replaces the entry.
      const url = `#/c/${encodeURIComponent(next)}`;
      if (current) history.replaceState({ conversation: next, pushed: history.state?.pushed }, "", url);
      else history.pushState({ conversation: next, pushed: true }, "", url);
    } else if (history.state?.pushed) {
      history.back(); // the entry we pushed when opening: back to the list
      return;
    } else {
      history.replaceState(null, "", location.pathname + location.search);
    }
    setId(next);
  }, []);
  return [id, set];
}

function useDocumentVisible(): boolean {
  const [visible, setVisible] = useState(() => document.visibilityState === "visible");
  useEffect(() => {
    const on = () => setVisible(document.visibilityState === "visible");
    document.addEventListener("visibilitychange", on);
    return () => document.removeEventListener("visibilitychange", on);
  }, []);
  return visible;
}

export function Chat({ me, onSignOut, onSessionOver }: Props) {
  const [state, dispatch] = useReducer(reducer, me.id, initialState);
  const stateRef = useRef(state);
  stateRef.current = state;
  const names = useNames();
  const [activeId, setActiveId] = useActiveConversation();
  const visible = useDocumentVisible();
  const socketRef = useRef<ParleySocket | null>(null);
  const listRefresh = useRef<ReturnType<typeof setTimeout> | null>(null);

  const { socket, isConnected, error } = useSocket({
    onMessage: (m) => {
      const st = stateRef.current;
      const newest = st.messages[m.conversationId]?.at(-1)?.seq;
      dispatch({ type: "messages", messages: [m], live: true });
      if (!st.convs[m.conversationId]) scheduleListRefresh();
      // A message past a gap in what we hold: fetch the ones in between.
      if (st.history[m.conversationId]?.loaded && newest !== undefined && m.seq > newest + 1) {
        void fillGaps(m.conversationId, m.seq);
      }
    },
  });
  socketRef.current = socket;

  const [everConnected, setEverConnected] = useState(false);
  useEffect(() => {
    if (isConnected) setEverConnected(true);
  }, [isConnected]);
  const connection: ConnectionState =
    error === "unauthenticated"
      ? "expired"
      : isConnected
        ? "online"
        : everConnected
          ? "reconnecting"
          : error
            ? "error"
            : "connecting";

  // Names for the members of our conversations whom no search has named yet; each id is asked
  // for once per page (an id the auth role does not know stays "User …").
  const askedNames = useRef(new Set<string>());
  useEffect(() => {
    const unknown = [
      ...new Set(Object.values(state.convs).flatMap((c) => c.participantIds)),
    ].filter((id) => !names[id] && !askedNames.current.has(id));
    if (unknown.length === 0) return;
    unknown.forEach((id) => askedNames.current.add(id));
    lookupUsers(unknown).catch(() => {
      // Names are a nicety: keep the short ids, and try again on the next change.
      unknown.forEach((id) => askedNames.current.delete(id));
    });
  }, [state.convs, names]);

  // ---- Loading ----------------------------------------------------------------------------

  const fetchPresence = useCallback(async (userIds: string[]) => {
    const s = socketRef.current;
    const ids = [...new Set(userIds)].filter((id) => id !== me.id).slice(0, 500);
    if (!s || ids.length === 0) return;
    try {
      const r = await request(s, "presence:get", { userIds: ids });
      if (r.ok) dispatch({ type: "presence", presence: r.presence });
    } catch {
      // presence is best effort
    }
  }, [me.id]);

  // The loaded messages of a conversation are kept gap-free from the oldest loaded one up to
  // `atLeast` (a seq known to exist): whatever is missing is fetched with `sync`.
  const filling = useRef(new Map<string, number>());
  const fillGaps = useCallback(async (conversationId: string, atLeast: number) => {
    const s = socketRef.current;
    if (!s || !s.connected) return;
    if (filling.current.has(conversationId)) {
      // One at a time; the running one goes round again for this.
      filling.current.set(conversationId, Math.max(atLeast, filling.current.get(conversationId) ?? 0));
      return;
    }
    filling.current.set(conversationId, atLeast);
    try {
      let seqs = (stateRef.current.messages[conversationId] ?? []).map((m) => m.seq);
      for (let round = 0; round < 50; round++) {
        const target = Math.max(filling.current.get(conversationId) ?? 0, stateRef.current.convs[conversationId]?.lastSeq ?? 0);
        let afterSeq = seqs.length ? seqs[seqs.length - 1] : 0;
        for (let i = 0; i + 1 < seqs.length; i++) {
          if (seqs[i + 1] !== seqs[i] + 1) {
            afterSeq = seqs[i];
            break;
          }
        }
        if (target <= afterSeq) return;
        const r = await request(s, "sync", { conversations: [{ conversationId, afterSeq }], limit: 500 });
        if (!r.ok || !r.messages.some((m) => m.seq === afterSeq + 1)) return;
        dispatch({ type: "messages", messages: r.messages, live: false });
        seqs = [...new Set([...seqs, ...r.messages.map((m) => m.seq)])].sort((a, b) => a - b);
      }
    } catch {
      // no answer: the next reconnect or live message tries again
    } finally {
      filling.current.delete(conversationId);
    }
  }, []);

  const loadList = useCallback(
    async (before?: string) => {
      const s = socketRef.current;
      if (!s) return;
      const r = await request(s, "conversation:list", before ? { before, limit: LIST_PAGE } : { limit: LIST_PAGE });
      if (!r.ok) return;
      dispatch({ type: "list", conversations: r.conversations, nextBefore: r.nextBefore, append: !!before });
      void fetchPresence(r.conversations.flatMap((c) => c.participantIds));
      // What was missed in the conversations we hold messages of (useSocket syncs only the
      // ones it saw live messages of since the page loaded).
      const st = stateRef.current;
      for (const c of r.conversations) if (st.history[c.id]?.loaded) void fillGaps(c.id, c.lastSeq);
    },
    [fetchPresence, fillGaps],
  );

  function scheduleListRefresh() {
    if (listRefresh.current) return;
    listRefresh.current = setTimeout(() => {
      listRefresh.current = null;
      void loadList().catch(() => undefined);
    }, 300);
  }
  useEffect(() => () => clearTimeout(listRefresh.current ?? undefined), []);

  // Every (re)connect: the list afresh (unread counts, previews), and what was missed.
  useEffect(() => {
    if (socket && isConnected) void loadList().catch(() => undefined);
  }, [socket, isConnected, loadList]);

  const loadHistory = useCallback(async (conversationId: string, older: boolean) => {
    const s = socketRef.current;
    const st = stateRef.current;
    if (!s || st.history[conversationId]?.loading) return;
    const beforeSeq = older ? st.messages[conversationId]?.[0]?.seq : undefined;
    dispatch({ type: "historyLoading", conversationId });
    try {
      const r = await request(s, "message:history", { conversationId, beforeSeq, limit: HISTORY_PAGE });
      if (!r.ok) throw new Error(r.error.message);
      dispatch({ type: "history", conversationId, messages: r.messages, hasMore: r.hasMore });
    } catch {
      dispatch({ type: "historyFailed", conversationId });
    }
  }, []);

  const activeHistory = activeId ? state.history[activeId] : undefined;
  useEffect(() => {
    if (activeId && isConnected && !activeHistory?.loaded && !activeHistory?.loading && !activeHistory?.failed) {
      void loadHistory(activeId, false);
    }
  }, [activeId, isConnected, activeHistory?.loaded, activeHistory?.loading, activeHistory?.failed, loadHistory]);

  // ---- Server events ------------------------------------------------------------------------

  useEffect(() => {
    if (!socket) return;
    const onUpdated: ServerEvents["message:updated"] = (m) => dispatch({ type: "updated", message: m });
    const onRead: ServerEvents["message:read"] = (d) => dispatch({ type: "read", ...d });
    const onTyping: ServerEvents["typing"] = (d) => {
      dispatch({ type: "typing", ...d });
      if (d.isTyping) setTimeout(() => dispatch({ type: "typingExpire" }), TYPING_TTL_MS + 100);
    };
    const onPresence: ServerEvents["presence"] = (p) => dispatch({ type: "presence", presence: [p] });
    const onConversation: ServerEvents["conversation:new"] = (c) => {
      dispatch({ type: "conversation", conversation: c });
      void fetchPresence(c.participantIds);
    };
    const onError: ServerEvents["error"] = (e) => {
      if (e.clientMsgId) dispatch({ type: "sendFailed", clientMsgId: e.clientMsgId, error: e.message });
    };
    socket.on("message:updated", onUpdated);
    socket.on("message:read", onRead);
    socket.on("typing", onTyping);
    socket.on("presence", onPresence);
    socket.on("conversation:new", onConversation);
    socket.on("conversation:updated", onConversation);
    socket.on("error", onError);
    return () => {
      socket.off("message:updated", onUpdated);
      socket.off("message:read", onRead);
      socket.off("typing", onTyping);
      socket.off("presence", onPresence);
      socket.off("conversation:new", onConversation);
      socket.off("conversation:updated", onConversation);
      socket.off("error", onError);
    };
  }, [socket, fetchPresence]);

  // The browser knows first when the network goes: drop the socket at once so the state shows
  // "reconnecting" and Socket.IO starts coming back (instead of waiting for a missed ping).
  useEffect(() => {
    if (!socket) return;
    const onOffline = () => {
      if (socket.connected) socket.io.engine?.close();
    };
    addEventListener("offline", onOffline);
    return () => removeEventListener("offline", onOffline);
  }, [socket]);

  // ---- Reading ------------------------------------------------------------------------------

  const sentRead = useRef(new Map<string, number>());
  const activeConv = activeId ? state.convs[activeId] : undefined;
  const activeMessages = activeId ? state.messages[activeId] : undefined;
  const newestSeq = activeMessages?.[activeMessages.length - 1]?.seq ?? 0;
  const newestFromOthers = activeMessages?.findLast((m) => m.senderId !== me.id)?.seq ?? 0;
  useEffect(() => {
    if (!activeId || !activeConv || !visible || !socket || !isConnected || !activeHistory?.loaded) return;
    // Read up to the newest message, whenever someone else has written since the last receipt.
    if (newestFromOthers > (sentRead.current.get(activeId) ?? 0)) {
      sentRead.current.set(activeId, newestSeq);
      const conversationId = activeId;
      request(socket, "message:read", { conversationId, seq: newestSeq })
        .then((r) => {
          if (!r.ok) sentRead.current.delete(conversationId);
        })
        .catch(() => sentRead.current.delete(conversationId));
    }
    if (activeConv.unreadCount > 0) dispatch({ type: "markedRead", conversationId: activeId });
  }, [activeId, activeConv, visible, socket, isConnected, activeHistory?.loaded, newestSeq, newestFromOthers]);

  // ---- Actions ------------------------------------------------------------------------------

  const send = useCallback(async (conversationId: string, content: string, clientMsgId: string) => {
    dispatch({
      type: "pending",
      conversationId,
      pending: { clientMsgId, content, status: "pending", createdAt: new Date().toISOString() },
    });
    const s = socketRef.current;
    if (!s) return dispatch({ type: "sendFailed", clientMsgId, error: "Not connected" });
    try {
      const r = await request(s, "message:send", { conversationId, content, clientMsgId });
      if (!r.ok) dispatch({ type: "sendFailed", clientMsgId, error: r.error.message });
    } catch {
      // No answer in time. Socket.IO may still deliver it later; a retry with the same
      // clientMsgId is stored once.
      dispatch({ type: "sendFailed", clientMsgId, error: "No answer from the server" });
    }
  }, []);

  const withSocket = <T,>(f: (s: ParleySocket) => Promise<T>): Promise<T> => {
    const s = socketRef.current;
    if (!s || !s.connected) return Promise.reject(new Error("You are offline."));
    return f(s);
  };

  const edit = (conversationId: string, seq: number, content: string) =>
    withSocket(async (s) => {
      const r = await request(s, "message:edit", { conversationId, seq, content });
      if (!r.ok) throw new Error(r.error.message);
      dispatch({ type: "updated", message: r.message });
    });

  const remove = (conversationId: string, seq: number) =>
    withSocket(async (s) => {
      const r = await request(s, "message:delete", { conversationId, seq });
      if (!r.ok) throw new Error(r.error.message);
    });

  const openConversation = (participantIds: string[], title?: string) =>
    withSocket(async (s) => {
      const r = await request(s, "conversation:open", title ? { participantIds, title } : { participantIds });
      if (!r.ok) throw new Error(r.error.message);
      dispatch({ type: "conversation", conversation: r.conversation });
      void fetchPresence(r.conversation.participantIds);
      setActiveId(r.conversation.id);
    });

  const addMember = (conversationId: string, userId: string) =>
    withSocket(async (s) => {
      const r = await request(s, "member:add", { conversationId, userId });
      if (!r.ok) throw new Error(r.error.message);
      dispatch({ type: "conversation", conversation: r.conversation });
      void fetchPresence([userId]);
    });

  const sendTyping = (conversationId: string, isTyping: boolean) => {
    const s = socketRef.current;
    if (s?.connected) request(s, "typing", { conversationId, isTyping }).catch(() => undefined);
  };

  // ---- Layout -------------------------------------------------------------------------------

  const sorted = useMemo(
    () => Object.values(state.convs).sort((a, b) => activityOf(b).localeCompare(activityOf(a))),
    [state.convs],
  );

  return (
    <div className="app" data-view={activeId ? "conversation" : "list"}>
      <header className="topbar">
        <h1 className="brand">Parley</h1>
        <ConnectionBadge state={connection} />
        <span className="me" data-testid="me" title={`@${me.username}`}>
          {me.displayName || me.username}
        </span>
        <button type="button" onClick={onSignOut} data-testid="sign-out">
          Sign out
        </button>
      </header>
      {connection === "expired" && (
        <div className="banner" role="alert" data-testid="session-expired">
          Your session has expired.{" "}
          <button type="button" className="primary" onClick={onSessionOver}>
            Sign in again
          </button>
        </div>
      )}
      {connection === "error" && (
        <div className="banner" role="alert">
          Could not connect: {error}.{" "}
          <button type="button" onClick={() => location.reload()}>
            Retry
          </button>
        </div>
      )}
      <div className="panes">
        <ConversationList
          me={me.id}
          names={names}
          conversations={sorted}
          loaded={state.listLoaded}
          hasMore={!!state.nextBefore}
          onLoadMore={() => void loadList(state.nextBefore ?? undefined).catch(() => undefined)}
          activeId={activeId}
          presence={state.presence}
          onSelect={setActiveId}
          onOpen={openConversation}
        />
        {activeId && activeConv ? (
          <ConversationView
            key={activeId}
            me={me.id}
            names={names}
            conversation={activeConv}
            messages={activeMessages ?? []}
            pending={state.pending[activeId] ?? []}
            history={activeHistory}
            typing={state.typing[activeId] ?? {}}
            presence={state.presence}
            readBy={state.readBy[activeId] ?? {}}
            online={isConnected}
            onBack={() => setActiveId(null)}
            onLoadOlder={() => void loadHistory(activeId, !!activeHistory?.loaded)}
            onSend={(content, clientMsgId) => void send(activeId, content, clientMsgId)}
            onEdit={(seq, content) => edit(activeId, seq, content)}
            onDelete={(seq) => remove(activeId, seq)}
            onTyping={(isTyping) => sendTyping(activeId, isTyping)}
            onAddMember={(user) => addMember(activeId, user.id)}
          />
        ) : (
          <section className="conversation empty" aria-label="Conversation">
            {activeId && state.listLoaded ? (
              <p>
                This conversation is not available.{" "}
                <button type="button" className="link" onClick={() => setActiveId(null)}>
                  Back to the list
                </button>
              </p>
            ) : activeId ? (
              <p role="status">Loading…</p>
            ) : (
              <p>Pick a conversation, or start a new one.</p>
            )}
          </section>
        )}
      </div>
    </div>
  );
}

const CONNECTION_TEXT: Record<ConnectionState, string> = {
  connecting: "Connecting…",
  online: "Online",
  reconnecting: "Reconnecting…",
  expired: "Session expired",
  error: "Offline",
};

function ConnectionBadge({ state }: { state: ConnectionState }) {
  return (
    <span className="connection" data-testid="connection-state" data-state={state} role="status" aria-live="polite">
      <span className="dot" aria-hidden="true" />
      {CONNECTION_TEXT[state]}
    </span>
  );
}

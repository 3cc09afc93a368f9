import { useEffect, useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent, type Ref } from "react";
import type { ListedConversation, Message, Presence } from "@parley/client";
import { nameOf, type User } from "./api";
import {
  conversationTitle,
  dayKey,
  formatDay,
  formatFull,
  formatLastSeen,
  formatTime,
  newClientMsgId,
  otherParticipant,
} from "./format";
import type { HistoryState, Pending } from "./store";
import { UserSearch } from "./UserSearch";

interface Props {
  me: string;
  names: Record<string, User>;
  conversation: ListedConversation;
  messages: Message[];
  pending: Pending[];
  history: HistoryState | undefined;
  typing: Record<string, number>;
  presence: Record<string, Presence>;
  readBy: Record<string, number>;
  online: boolean;
  onBack: () => void;
  onLoadOlder: () => void;
  onSend: (content: string, clientMsgId: string) => void;
  onEdit: (seq: number, content: string) => Promise<void>;
  onDelete: (seq: number) => Promise<void>;
  onTyping: (isTyping: boolean) => void;
  onAddMember: (user: User) => Promise<void>;
}

type Item = { kind: "message"; m: Message } | { kind: "pending"; p: Pending };
interface Group {
  sender: string;
  items: Item[];
}
interface Day {
  key: string;
  label: string;
  groups: Group[];
}

/** Messages (then the ones still being sent) by day, and within a day by runs of one sender. */
function groupItems(messages: Message[], pending: Pending[], me: string): Day[] {
  const items: Item[] = [
    ...messages.map((m) => ({ kind: "message" as const, m })),
    ...pending.map((p) => ({ kind: "pending" as const, p })),
  ];
  const days: Day[] = [];
  for (const item of items) {
    const at = item.kind === "message" ? item.m.createdAt : item.p.createdAt;
    const sender = item.kind === "message" ? item.m.senderId : me;
    const key = dayKey(at);
    let day = days[days.length - 1];
    if (!day || day.key !== key) {
      day = { key, label: formatDay(at), groups: [] };
      days.push(day);
    }
    let group = day.groups[day.groups.length - 1];
    if (!group || group.sender !== sender) {
      group = { sender, items: [] };
      day.groups.push(group);
    }
    group.items.push(item);
  }
  return days;
}

export function ConversationView(props: Props) {
  const { me, names, conversation: c, messages, pending, history, presence } = props;
  const title = conversationTitle(c, me, names);
  const other = otherParticipant(c, me);
  const isGroup = c.kind === "group";
  const [adding, setAdding] = useState(false);
  const [addError, setAddError] = useState<string | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [editing, setEditing] = useState<number | null>(null);
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const previous = useRef<{ first?: number; height: number }>({ height: 0 });
  const titleRef = useRef<HTMLHeadingElement>(null);
  const composerRef = useRef<HTMLTextAreaElement>(null);

  const subtitle = isGroup
    ? `${c.participantIds.length} members`
    : other && presence[other]
      ? presence[other].online
        ? "Online"
        : formatLastSeen(presence[other].lastSeenAt)
      : "";

  // "Seen" goes under our last message of a direct conversation once the other has read it.
  let seenSeq: number | null = null;
  if (!isGroup && other) {
    const mine = [...messages].reverse().find((m) => m.senderId === me && !m.deletedAt);
    if (mine && (mine.readAt || (props.readBy[other] ?? 0) >= mine.seq)) seenSeq = mine.seq;
  }

  const typingNames = Object.keys(props.typing)
    .filter((id) => id !== me)
    .map((id) => nameOf(id, names));
  const typingText =
    typingNames.length === 0
      ? ""
      : typingNames.length === 1
        ? `${isGroup ? typingNames[0] : title} is typing…`
        : typingNames.length === 2
          ? `${typingNames[0]} and ${typingNames[1]} are typing…`
          : "Several people are typing…";

  // Open: the composer on a wide screen; the heading on a phone (no keyboard popping up).
  useEffect(() => {
    if (matchMedia("(min-width: 720px)").matches) composerRef.current?.focus();
    else titleRef.current?.focus();
  }, []);

  // Scrolling: stay at the bottom when there; keep the view still when an older page arrives;
  // fetch older pages while the list does not fill the pane.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const first = messages[0]?.seq;
    const prev = previous.current;
    if (prev.first !== undefined && first !== undefined && first < prev.first) {
      el.scrollTop += el.scrollHeight - prev.height;
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
    previous.current = { first, height: el.scrollHeight };
    if (history?.loaded && history.hasOlder && !history.loading && !history.failed && el.scrollHeight <= el.clientHeight + 8) {
      props.onLoadOlder();
    }
  });

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    if (el.scrollTop < 150 && history?.loaded && history.hasOlder && !history.loading && !history.failed) props.onLoadOlder();
  };

  const send = (content: string) => {
    atBottom.current = true;
    props.onSend(content, newClientMsgId());
  };

  const act = async (f: () => Promise<void>) => {
    setActionError(null);
    try {
      await f();
    } catch (e) {
      setActionError(e instanceof Error ? e.message : String(e));
    }
  };

  const days = groupItems(messages, pending, me);

  return (
    <section className="conversation" aria-labelledby="conversation-title" data-testid="conversation-view">
      <header className="conv-header">
        <button type="button" className="back" onClick={props.onBack} data-testid="back" aria-label="Back to conversations">
          <span aria-hidden="true">←</span>
        </button>
        <span className="avatar" aria-hidden="true">
          {isGroup ? "#" : title.slice(0, 1).toUpperCase()}
          {other && <span className="presence-dot" data-online={presence[other]?.online === true} />}
        </span>
        <div className="conv-heading">
          <h2 id="conversation-title" ref={titleRef} tabIndex={-1} data-testid="conversation-header-title">
            {title}
          </h2>
          <p className="conv-sub" data-testid="conversation-subtitle">
            {subtitle}
          </p>
        </div>
        {isGroup && (
          <button
            type="button"
            data-testid="add-member"
            aria-expanded={adding}
            onClick={() => {
              setAdding(!adding);
              setAddError(null);
            }}
          >
            Add people
          </button>
        )}
      </header>
      {adding && (
        <div className="new-panel">
          <UserSearch
            me={me}
            label="Add someone to this group"
            autoFocus
            exclude={c.participantIds}
            onPick={async (u) => {
              setAddError(null);
              try {
                await props.onAddMember(u);
                setAdding(false);
              } catch (e) {
                setAddError(e instanceof Error ? e.message : String(e));
              }
            }}
          />
          {addError && (
            <p className="form-error" role="alert">
              {addError}
            </p>
          )}
        </div>
      )}
      <div
        className="messages"
        ref={scroller}
        onScroll={onScroll}
        role="log"
        aria-label={`Messages with ${title}`}
        tabIndex={0}
        data-testid="message-list"
      >
        {history?.loaded && history.hasOlder && !history.failed && (
          <button type="button" className="load-older" onClick={props.onLoadOlder} disabled={history.loading}>
            {history.loading ? "Loading…" : "Load older messages"}
          </button>
        )}
        {history?.failed ? (
          <p className="messages-note" role="alert">
            Could not load messages.{" "}
            <button type="button" className="link" onClick={props.onLoadOlder}>
              Try again
            </button>
          </p>
        ) : (
          !history?.loaded && (
            <p className="messages-note" role="status">
              Loading messages…
            </p>
          )
        )}
        {history?.loaded && days.length === 0 && <p className="messages-note">No messages yet. Say hello!</p>}
        {days.map((day) => (
          <section key={day.key} className="day" aria-label={day.label}>
            <h3 className="day-label">
              <span>{day.label}</span>
            </h3>
            {day.groups.map((g, i) => {
              const mine = g.sender === me;
              return (
                <div key={`${g.sender}-${i}`} className={`group ${mine ? "mine" : "theirs"}`}>
                  <h4 className={isGroup && !mine ? "sender" : "sender visually-hidden"}>
                    {mine ? "You" : nameOf(g.sender, names)}
                  </h4>
                  <ul>
                    {g.items.map((item) =>
                      item.kind === "message" ? (
                        <MessageItem
                          key={item.m.seq}
                          m={item.m}
                          mine={mine}
                          seen={item.m.seq === seenSeq}
                          editing={editing === item.m.seq}
                          onStartEdit={() => setEditing(item.m.seq)}
                          onCancelEdit={() => setEditing(null)}
                          onSave={(content) =>
                            act(async () => {
                              await props.onEdit(item.m.seq, content);
                              setEditing(null);
                            })
                          }
                          onDelete={() => {
                            if (confirm("Delete this message for everyone?")) void act(() => props.onDelete(item.m.seq));
                          }}
                        />
                      ) : (
                        <li
                          key={item.p.clientMsgId}
                          className={`message ${item.p.status}`}
                          data-testid="message"
                          data-status={item.p.status}
                          data-client-msg-id={item.p.clientMsgId}
                        >
                          <p className="content" data-testid="message-content">
                            {item.p.content}
                          </p>
                          <span className="meta">
                            {item.p.status === "pending" ? (
                              <span data-testid="message-pending">Sending…</span>
                            ) : (
                              <span className="failed-note" role="alert">
                                Not sent{item.p.error ? ` (${item.p.error})` : ""}.{" "}
                                <button
                                  type="button"
                                  className="link"
                                  data-testid="retry"
                                  onClick={() => props.onSend(item.p.content, item.p.clientMsgId)}
                                >
                                  Retry
                                </button>
                              </span>
                            )}
                          </span>
                        </li>
                      ),
                    )}
                  </ul>
                </div>
              );
            })}
          </section>
        ))}
      </div>
      <p className="typing" data-testid="typing-indicator" aria-live="polite">
        {typingText}
      </p>
      {actionError && (
        <p className="form-error inline" role="alert">
          {actionError}
        </p>
      )}
      <Composer ref={composerRef} online={props.online} onSend={send} onTyping={props.onTyping} />
    </section>
  );
}

function MessageItem(props: {
  m: Message;
  mine: boolean;
  seen: boolean;
  editing: boolean;
  onStartEdit: () => void;
  onCancelEdit: () => void;
  onSave: (content: string) => Promise<void>;
  onDelete: () => void;
}) {
  const { m, mine } = props;
  return (
    <li
      className={`message${m.deletedAt ? " deleted" : ""}`}
      data-testid="message"
      data-seq={m.seq}
      data-status="sent"
      data-client-msg-id={m.clientMsgId}
    >
      {props.editing ? (
        <EditBox initial={m.content} onSave={props.onSave} onCancel={props.onCancelEdit} />
      ) : (
        <p className="content" data-testid="message-content">
          {m.deletedAt ? <em>Message deleted</em> : m.content}
        </p>
      )}
      <span className="meta">
        <time dateTime={m.createdAt} title={formatFull(m.createdAt)}>
          {formatTime(m.createdAt)}
        </time>
        {m.editedAt && !m.deletedAt && <span data-testid="edited"> · edited</span>}
        {props.seen && (
          <span className="seen" data-testid="seen">
            {" "}
            · Seen
          </span>
        )}
      </span>
      {mine && !m.deletedAt && !props.editing && (
        <span className="actions">
          <button type="button" className="link" data-testid="edit-message" onClick={props.onStartEdit} aria-label="Edit message">
            Edit
          </button>
          <button type="button" className="link" data-testid="delete-message" onClick={props.onDelete} aria-label="Delete message">
            Delete
          </button>
        </span>
      )}
    </li>
  );
}

function EditBox({
  initial,
  onSave,
  onCancel,
}: {
  initial: string;
  onSave: (content: string) => Promise<void>;
  onCancel: () => void;
}) {
  const [text, setText] = useState(initial);
  const save = () => {
    const content = text.trim();
    if (!content || content === initial) return onCancel();
    void onSave(content);
  };
  return (
    <form
      className="edit-box"
      onSubmit={(e) => {
        e.preventDefault();
        save();
      }}
    >
      <label className="visually-hidden" htmlFor="edit-message">
        Edit message
      </label>
      <textarea
        id="edit-message"
        data-testid="edit-input"
        autoFocus
        value={text}
        onChange={(e) => setText(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === "Escape") onCancel();
          else if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
            e.preventDefault();
            save();
          }
        }}
      />
      <div className="row">
        <button type="submit" className="primary" data-testid="edit-save">
          Save
        </button>
        <button type="button" className="link" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function Composer({
  ref,
  online,
  onSend,
  onTyping,
}: {
  ref: Ref<HTMLTextAreaElement>;
  online: boolean;
  onSend: (content: string) => void;
  onTyping: (isTyping: boolean) => void;
}) {
  const [text, setText] = useState("");
  const lastTyping = useRef(0);
  const onTypingRef = useRef(onTyping);
  onTypingRef.current = onTyping;

  // Leaving the conversation while typing: say so now rather than after the server's 5 s.
  useEffect(
    () => () => {
      if (lastTyping.current) onTypingRef.current(false);
    },
    [],
  );

  const stopTyping = () => {
    if (lastTyping.current) {
      lastTyping.current = 0;
      onTyping(false);
    }
  };

  const change = (value: string) => {
    setText(value);
    if (!value.trim()) return stopTyping();
    const now = Date.now();
    // Refresh about every 2 s while typing; the server clears it 5 s after the last one.
    if (now - lastTyping.current > 2_000) {
      lastTyping.current = now;
      onTyping(true);
    }
  };

  const submit = (e?: FormEvent) => {
    e?.preventDefault();
    const content = text.trim();
    if (!content) return;
    onSend(content);
    setText("");
    stopTyping();
  };

  const keyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      submit();
    }
  };

  return (
    <form className="composer" onSubmit={submit}>
      <label htmlFor="composer" className="visually-hidden">
        Message
      </label>
      <textarea
        id="composer"
        ref={ref}
        data-testid="composer"
        rows={1}
        maxLength={4000}
        placeholder={online ? "Write a message" : "Offline: reconnecting…"}
        aria-describedby="composer-hint"
        value={text}
        onChange={(e) => change(e.target.value)}
        onKeyDown={keyDown}
        onBlur={stopTyping}
      />
      <span id="composer-hint" className="visually-hidden">
        Enter sends, Shift+Enter starts a new line.
      </span>
      <button type="submit" className="primary" data-testid="send" disabled={!text.trim()}>
        Send
      </button>
    </form>
  );
}

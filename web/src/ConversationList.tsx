import { useState, type FormEvent } from "react";
import type { ListedConversation, Presence } from "@parley/client";
import { nameOf, type User } from "./api";
import { activityOf } from "./store";
import { UserSearch } from "./UserSearch";
import { conversationTitle, formatListTime, otherParticipant } from "./format";

interface Props {
  me: string;
  names: Record<string, User>;
  conversations: ListedConversation[];
  loaded: boolean;
  hasMore: boolean;
  onLoadMore: () => void;
  activeId: string | null;
  presence: Record<string, Presence>;
  onSelect: (id: string) => void;
  onOpen: (participantIds: string[], title?: string) => Promise<void>;
}

export function ConversationList(props: Props) {
  const { me, names, conversations, loaded, activeId, presence, onSelect } = props;
  const [creating, setCreating] = useState<"direct" | "group" | null>(null);

  return (
    <nav className="list-pane" aria-label="Conversations">
      <div className="list-header">
        <h2>Chats</h2>
        <div className="list-actions">
          <button
            type="button"
            data-testid="new-chat"
            aria-expanded={creating === "direct"}
            onClick={() => setCreating(creating === "direct" ? null : "direct")}
          >
            New chat
          </button>
          <button
            type="button"
            data-testid="new-group"
            aria-expanded={creating === "group"}
            onClick={() => setCreating(creating === "group" ? null : "group")}
          >
            New group
          </button>
        </div>
      </div>
      {creating === "direct" && (
        <NewDirect me={me} onOpen={props.onOpen} onDone={() => setCreating(null)} />
      )}
      {creating === "group" && <NewGroup me={me} onOpen={props.onOpen} onDone={() => setCreating(null)} />}
      {!loaded ? (
        <p className="list-empty" role="status">
          Loading conversations…
        </p>
      ) : conversations.length === 0 ? (
        <p className="list-empty">No conversations yet. Start one with “New chat”.</p>
      ) : (
        <ul className="conversations" data-testid="conversation-list">
          {conversations.map((c) => {
            const title = conversationTitle(c, me, names);
            const other = otherParticipant(c, me);
            const online = other ? presence[other]?.online === true : undefined;
            const last = c.lastMessage;
            const preview = !last
              ? "No messages yet"
              : last.deletedAt
                ? "Message deleted"
                : `${last.senderId === me ? "You: " : c.kind === "group" ? `${nameOf(last.senderId, names)}: ` : ""}${last.content}`;
            return (
              <li key={c.id}>
                <button
                  type="button"
                  className="conversation-item"
                  data-testid="conversation-item"
                  data-conversation-id={c.id}
                  aria-current={c.id === activeId ? "page" : undefined}
                  onClick={() => onSelect(c.id)}
                >
                  <span className="avatar" aria-hidden="true">
                    {c.kind === "group" ? "#" : title.slice(0, 1).toUpperCase()}
                    {online !== undefined && (
                      <span className="presence-dot" data-testid="presence-dot" data-online={online} />
                    )}
                  </span>
                  <span className="item-main">
                    <span className="item-top">
                      <span className="item-title" data-testid="conversation-title">
                        {title}
                      </span>
                      <time className="item-time" dateTime={activityOf(c)}>
                        {formatListTime(activityOf(c))}
                      </time>
                    </span>
                    <span className="item-bottom">
                      <span className="item-preview" data-testid="conversation-preview">
                        {preview}
                      </span>
                      {c.unreadCount > 0 && (
                        <span className="badge" data-testid="unread-badge" aria-label={`${c.unreadCount} unread`}>
                          {c.unreadCount > 99 ? "99+" : c.unreadCount}
                        </span>
                      )}
                    </span>
                    {online !== undefined && <span className="visually-hidden">{online ? ", online" : ", offline"}</span>}
                  </span>
                </button>
              </li>
            );
          })}
        </ul>
      )}
      {props.hasMore && (
        <button type="button" className="load-more" onClick={props.onLoadMore}>
          Load more conversations
        </button>
      )}
    </nav>
  );
}

function NewDirect({
  me,
  onOpen,
  onDone,
}: {
  me: string;
  onOpen: Props["onOpen"];
  onDone: () => void;
}) {
  const [error, setError] = useState<string | null>(null);
  return (
    <section className="new-panel" aria-label="New chat" data-testid="new-chat-panel">
      <UserSearch
        me={me}
        label="Find someone to chat with"
        autoFocus
        onPick={async (u) => {
          setError(null);
          try {
            await onOpen([u.id]);
            onDone();
          } catch (e) {
            setError(e instanceof Error ? e.message : String(e));
          }
        }}
      />
      {error && (
        <p className="form-error" role="alert">
          {error}
        </p>
      )}
      <button type="button" className="link" onClick={onDone}>
        Cancel
      </button>
    </section>
  );
}

function NewGroup({ me, onOpen, onDone }: { me: string; onOpen: Props["onOpen"]; onDone: () => void }) {
  const [title, setTitle] = useState("");
  const [members, setMembers] = useState<User[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!title.trim()) return setError("Give the group a name.");
    if (members.length === 0) return setError("Add at least one person.");
    setBusy(true);
    setError(null);
    try {
      await onOpen(
        members.map((m) => m.id),
        title.trim(),
      );
      onDone();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="new-panel" aria-label="New group" onSubmit={submit} data-testid="new-group-panel">
      <label>
        Group name
        <input
          data-testid="group-title"
          required
          maxLength={200}
          autoFocus
          value={title}
          onChange={(e) => setTitle(e.target.value)}
        />
      </label>
      {members.length > 0 && (
        <ul className="chips" aria-label="Members to add">
          {members.map((m) => (
            <li key={m.id}>
              {m.displayName || m.username}
              <button
                type="button"
                aria-label={`Remove ${m.displayName || m.username}`}
                onClick={() => setMembers(members.filter((x) => x.id !== m.id))}
              >
                ×
              </button>
            </li>
          ))}
        </ul>
      )}
      <UserSearch
        me={me}
        label="Add people"
        exclude={members.map((m) => m.id)}
        onPick={(u) => setMembers([...members, u])}
      />
      {error && (
        <p className="form-error" role="alert">
          {error}
        </p>
      )}
      <div className="row">
        <button type="submit" className="primary" disabled={busy} data-testid="create-group">
          Create group
        </button>
        <button type="button" className="link" onClick={onDone}>
          Cancel
        </button>
      </div>
    </form>
  );
}

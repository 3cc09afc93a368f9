import { useEffect, useId, useState } from "react";
import { searchUsers, type User } from "./api";

interface Props {
  me: string;
  label: string;
  /** Users not to offer (already chosen or already members). */
  exclude?: string[];
  onPick: (user: User) => void;
  autoFocus?: boolean;
}

/** A search box over `/api/users` (prefix of username or display name) and its results. */
export function UserSearch({ me, label, exclude = [], onPick, autoFocus }: Props) {
  const id = useId();
  const [query, setQuery] = useState("");
  const [results, setResults] = useState<User[]>([]);
  const [status, setStatus] = useState<"idle" | "searching" | "done" | "error">("idle");

  useEffect(() => {
    const q = query.trim();
    if (!q) {
      setResults([]);
      setStatus("idle");
      return;
    }
    let cancelled = false;
    const timer = setTimeout(async () => {
      setStatus("searching");
      try {
        const users = await searchUsers(q);
        if (cancelled) return;
        setResults(users.filter((u) => u.id !== me));
        setStatus("done");
      } catch {
        if (!cancelled) setStatus("error");
      }
    }, 200);
    return () => {
      cancelled = true;
      clearTimeout(timer);
    };
  }, [query, me]);

  const shown = results.filter((u) => !exclude.includes(u.id));
  return (
    <div className="user-search">
      <label htmlFor={id}>{label}</label>
      <input
        id={id}
        type="search"
        data-testid="user-search"
        autoComplete="off"
        autoFocus={autoFocus}
        placeholder="Name or username"
        value={query}
        onChange={(e) => setQuery(e.target.value)}
      />
      <p className="search-status" role="status" aria-live="polite">
        {status === "searching" && "Searching…"}
        {status === "error" && "Search failed. Try again."}
        {status === "done" && shown.length === 0 && "No one found."}
      </p>
      {shown.length > 0 && (
        <ul className="user-results" aria-label="People found">
          {shown.map((u) => (
            <li key={u.id}>
              <button type="button" data-testid="user-result" data-username={u.username} onClick={() => onPick(u)}>
                <span className="avatar" aria-hidden="true">
                  {(u.displayName || u.username).slice(0, 1).toUpperCase()}
                </span>
                <span className="user-name">{u.displayName || u.username}</span>
                <span className="user-handle">@{u.username}</span>
              </button>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

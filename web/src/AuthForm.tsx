import { useState, type FormEvent } from "react";
import { HttpError, login, register, type User } from "./api";

const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;

export function AuthForm({ onSignedIn, notice }: { onSignedIn: (me: User) => void; notice?: string }) {
  const [mode, setMode] = useState<"signIn" | "signUp">("signIn");
  const [username, setUsername] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const signUp = mode === "signUp";

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (signUp && !USERNAME.test(username)) {
      return setError("Usernames are 3–32 letters, digits, dots, dashes or underscores.");
    }
    if (signUp && (password.length < 8 || password.length > 256)) {
      return setError("Passwords are 8 to 256 characters.");
    }
    setBusy(true);
    try {
      const me = signUp
        ? await register({ username, email, password, displayName: displayName.trim() || undefined })
        : await login(username, password);
      onSignedIn(me);
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) setError("Wrong username or password.");
      else if (err instanceof HttpError && err.status === 429) setError("Too many attempts. Wait a minute and try again.");
      else setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="auth">
      <form className="auth-card" onSubmit={submit} aria-labelledby="auth-title" data-testid="auth-form">
        <h1 className="brand">Parley</h1>
        <h2 id="auth-title">{signUp ? "Create an account" : "Sign in"}</h2>
        {notice && !error && (
          <p className="notice" role="status" data-testid="auth-notice">
            {notice}
          </p>
        )}
        <label>
          {signUp ? "Username" : "Username or email"}
          <input
            name="username"
            data-testid="auth-username"
            autoComplete="username"
            required
            autoFocus
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
        </label>
        {signUp && (
          <>
            <label>
              Display name <span className="hint">(optional)</span>
              <input
                name="displayName"
                data-testid="auth-display-name"
                autoComplete="name"
                value={displayName}
                onChange={(e) => setDisplayName(e.target.value)}
              />
            </label>
            <label>
              Email
              <input
                name="email"
                type="email"
                data-testid="auth-email"
                autoComplete="email"
                required
                value={email}
                onChange={(e) => setEmail(e.target.value)}
              />
            </label>
          </>
        )}
        <label>
          Password
          <input
            name="password"
            type="password"
            data-testid="auth-password"
            autoComplete={signUp ? "new-password" : "current-password"}
            required
            minLength={signUp ? 8 : undefined}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        {error && (
          <p className="form-error" role="alert" data-testid="auth-error">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy} data-testid="auth-submit">
          {busy ? "Please wait…" : signUp ? "Sign up" : "Sign in"}
        </button>
        <p className="switch">
          {signUp ? "Already have an account?" : "New here?"}{" "}
          <button
            type="button"
            className="link"
            data-testid="auth-switch"
            onClick={() => {
              setMode(signUp ? "signIn" : "signUp");
              setError(null);
            }}
          >
            {signUp ? "Sign in" : "Create an account"}
          </button>
        </p>
      </form>
    </main>
  );
}

import { useEffect, useState } from "react";
import { currentUserId, logout, savedMe, saveMe, type User } from "./api";
import { AuthForm } from "./AuthForm";
import { Chat } from "./Chat";

type Session = { state: "loading" } | { state: "signedOut"; notice?: string } | { state: "signedIn"; me: User };

export function App() {
  const [session, setSession] = useState<Session>({ state: "loading" });

  useEffect(() => {
    let cancelled = false;
    const check = async () => {
      try {
        const id = await currentUserId();
        if (cancelled) return;
        if (!id) return setSession({ state: "signedOut" });
        setSession({ state: "signedIn", me: savedMe(id) ?? { id, username: id.slice(0, 8), displayName: null } });
      } catch {
        if (!cancelled) setSession({ state: "signedOut", notice: "Could not reach the server. Try again." });
      }
    };
    void check();
    return () => {
      cancelled = true;
    };
  }, []);

  const signedIn = (me: User) => {
    saveMe(me);
    setSession({ state: "signedIn", me });
  };

  const signOut = async () => {
    try {
      await logout();
    } catch {
      // the session is gone either way on this side
    }
    saveMe(null);
    history.replaceState(null, "", location.pathname);
    setSession({ state: "signedOut" });
  };

  if (session.state === "loading") {
    return (
      <div className="splash" role="status">
        Loading…
      </div>
    );
  }
  if (session.state === "signedOut") return <AuthForm onSignedIn={signedIn} notice={session.notice} />;
  return (
    <Chat
      key={session.me.id}
      me={session.me}
      onSignOut={signOut}
      onSessionOver={() => {
        saveMe(null);
        setSession({ state: "signedOut", notice: "Your session has expired. Please sign in again." });
      }}
    />
  );
}

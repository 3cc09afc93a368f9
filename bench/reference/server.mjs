// The reference server: the seed plan's real-time messaging (one Node process, Socket.IO 4,
// Postgres, one transaction per message), built only so parley-bench can measure Parley against
// what app teams run before they move. It speaks the part of Parley's Socket.IO protocol the
// bench's `dm` and `group` use (conversation:open, message:send, message:new) and nothing more.
// See README.md for what it mirrors from the seed and where it departs.
//
// Environment: DATABASE_URL and AUTH_SECRET (required); PORT (default 3000; 0 picks a free one);
// HOST (default 0.0.0.0); POOL_SIZE (default: Prisma's, 2 × CPUs + 1).
// Prints `listening on <host>:<port>` on stdout once it accepts connections.

import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { availableParallelism } from "node:os";

import pg from "pg";
import { Server } from "socket.io";

// Parley's limits (DESIGN §3, §9), so the same payloads are accepted and refused alike.
const USER_ID = /^[A-Za-z0-9_-]{1,128}$/;
const CLIENT_MSG_ID = /^[\x21-\x7e]{1,128}$/;
const MAX_CONTENT_CHARS = 4000;
const MAX_MEMBERS = 256;
const MAX_TITLE_CHARS = 200;
const MAX_TOKEN_BYTES = 8192;

// Prisma's DateTime is timestamp(3) without time zone, holding UTC: read it back as UTC
// whatever this process's time zone.
pg.types.setTypeParser(pg.types.builtins.TIMESTAMP, (s) => new Date(`${s.replace(" ", "T")}Z`));
// bigint (seq): a JS number, as Prisma returns a BigInt only for BigInt fields declared so.
pg.types.setTypeParser(pg.types.builtins.INT8, Number);

/** A refusal the client sees as `{ok: false, error: {code, message}}` (Parley's codes). */
class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
const invalid = (message) => new ApiError("invalid", message);
const forbidden = () => new ApiError("forbidden", "you are not a member of this conversation");

function config(env) {
  const missing = ["DATABASE_URL", "AUTH_SECRET"].filter((k) => !env[k]);
  if (missing.length) {
    throw new Error(`${missing.join(" and ")} must be set`);
  }
  const port = Number(env.PORT ?? 3000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`PORT is not a port number: ${env.PORT}`);
  }
  const poolSize = Number(env.POOL_SIZE ?? availableParallelism() * 2 + 1);
  if (!Number.isInteger(poolSize) || poolSize < 1) {
    throw new Error(`POOL_SIZE is not a positive integer: ${env.POOL_SIZE}`);
  }
  return {
    databaseUrl: env.DATABASE_URL,
    secret: env.AUTH_SECRET,
    host: env.HOST ?? "0.0.0.0",
    port,
    poolSize,
  };
}

/**
 * The user id of an HS256 JWT signed with `secret`, or null: the seed's `jwt.verify(token,
 * AUTH_SECRET)` done with node's crypto, refusing what Parley refuses (another algorithm, a bad
 * signature, a missing or past `exp`, a `sub` that is not a user id, an oversized token).
 */
function verifyToken(token, secret, nowSeconds = Date.now() / 1000) {
  if (typeof token !== "string" || token.length > MAX_TOKEN_BYTES) return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const [head, body, signature] = parts;
  try {
    const header = JSON.parse(Buffer.from(head, "base64url").toString("utf8"));
    if (header?.alg !== "HS256") return null;
    const expected = createHmac("sha256", secret).update(`${head}.${body}`).digest();
    const given = Buffer.from(signature, "base64url");
    // Buffer's base64url decoder skips what it cannot read: compare the text as well.
    if (given.toString("base64url") !== signature) return null;
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    const claims = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
    if (typeof claims?.exp !== "number" || claims.exp <= nowSeconds) return null;
    if (typeof claims.sub !== "string" || !USER_ID.test(claims.sub)) return null;
    return claims.sub;
  } catch {
    return null;
  }
}

function object(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw invalid("the payload must be an object");
  }
  return data;
}

/** `conversation:open`'s payload: the members (the caller included, sorted) and a title. */
function parseOpen(userId, data) {
  const { participantIds, title } = object(data);
  if (!Array.isArray(participantIds)) throw invalid("participantIds must be an array");
  if (participantIds.length > MAX_MEMBERS) {
    throw invalid(`a conversation has at most ${MAX_MEMBERS} members`);
  }
  for (const id of participantIds) {
    if (typeof id !== "string" || !USER_ID.test(id)) {
      throw invalid("participantIds must be user ids (A-Z, a-z, 0-9, '_', '-')");
    }
  }
  // The seed sorts participantIds "for consistent lookup" of a DM.
  const members = [...new Set([...participantIds, userId])].sort();
  if (members.length < 2) throw invalid("a conversation needs at least one participant besides you");
  if (members.length > MAX_MEMBERS) throw invalid(`a conversation has at most ${MAX_MEMBERS} members`);
  if (title !== undefined && title !== null && typeof title !== "string") {
    throw invalid("title must be a string");
  }
  const trimmed = title?.trim() || null;
  if (trimmed && [...trimmed].length > MAX_TITLE_CHARS) {
    throw invalid(`title is longer than ${MAX_TITLE_CHARS} characters`);
  }
  return { members, title: trimmed };
}

/** `message:send`'s payload. */
function parseSend(data) {
  const { conversationId, clientMsgId, content } = object(data);
  if (typeof conversationId !== "string" || conversationId.length === 0 || conversationId.length > 128) {
    throw invalid("conversationId must be a conversation's id");
  }
  if (typeof clientMsgId !== "string" || !CLIENT_MSG_ID.test(clientMsgId)) {
    throw invalid("clientMsgId must be 1 to 128 printable ASCII characters without spaces");
  }
  if (typeof content !== "string" || content.trim() === "") throw invalid("content must not be empty");
  if (content.includes("\0")) throw invalid("content must not contain NUL characters");
  if (content.length > MAX_CONTENT_CHARS && [...content].length > MAX_CONTENT_CHARS) {
    throw new ApiError("too_large", `content is longer than ${MAX_CONTENT_CHARS} characters`);
  }
  return { conversationId, clientMsgId, content };
}

const conversationJson = (row, kind, title) => ({
  id: row.id,
  kind,
  title,
  participantIds: row.participantIds,
  lastSeq: row.lastSeq,
  lastMessageAt: row.lastMessageAt.toISOString(),
  createdAt: row.createdAt.toISOString(),
});

const rooms = (userIds) => userIds.map((id) => `user:${id}`);

/**
 * Runs each conversation's deliveries in seq order. The row lock on the conversation hands
 * seqs out in order (a send's UPDATE returns only after the previous send committed), but
 * commits are answered on separate connections and may reach this process out of order, and
 * a member must see 1, 2, 3. A send takes its turn right after its UPDATE returns, so turns
 * are taken in seq order; a send that fails passes its turn on (its seq was rolled back and
 * is given to the next send).
 */
class InTurn {
  #tails = new Map();

  /** Takes the next turn of `key`; call the result with the work to run in it, or with none. */
  take(key) {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let done;
    const mine = new Promise((resolve) => {
      done = resolve;
    });
    const tail = Promise.all([previous, mine]).then(([, work]) => {
      try {
        work?.();
      } catch (e) {
        console.error("a delivery failed:", e);
      }
    });
    this.#tails.set(key, tail);
    tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return done;
  }
}

async function main() {
  const cfg = config(process.env);
  const pool = new pg.Pool({ connectionString: cfg.databaseUrl, max: cfg.poolSize });
  pool.on("error", (e) => console.error("an idle database connection failed:", e.message));
  const schema = await readFile(new URL("./schema.sql", import.meta.url), "utf8");
  await pool.query(schema);

  const httpServer = createServer((req, res) => {
    res.writeHead(404).end();
  });
  const io = new Server(httpServer);
  const turns = new InTurn();
  // Users known to have their "User" row (the seed's users register before they chat).
  const known = new Set();

  async function ensureUser(userId) {
    if (known.has(userId)) return;
    await pool.query(`insert into "User" ("id") values ($1) on conflict do nothing`, [userId]);
    known.add(userId);
  }

  async function open(userId, data) {
    const { members, title } = parseOpen(userId, data);
    const direct = members.length === 2 && !title;
    const kind = direct ? "direct" : "group";
    if (direct) {
      // The seed's DM lookup: the sorted pair, found before one is created.
      const found = await pool.query(
        `select * from "Conversation" where "participantIds" = $1::text[] limit 1`,
        [members],
      );
      if (found.rowCount > 0) return { ok: true, conversation: conversationJson(found.rows[0], kind, null) };
    }
    const now = new Date().toISOString();
    const created = await pool.query(
      `insert into "Conversation" ("id", "participantIds", "lastMessageAt", "createdAt")
       values ($1, $2, $3, $3) returning *`,
      [randomUUID(), members, now],
    );
    const conversation = conversationJson(created.rows[0], kind, title);
    io.to(rooms(members)).emit("conversation:new", conversation);
    return { ok: true, conversation };
  }

  // The seed's send: in one transaction (Prisma's interactive $transaction), the
  // conversation's update (lastMessageAt; here also lastSeq, and only if the sender is a
  // member) and one INSERT of the message; once committed, message:new to every member's room.
  async function send(userId, data) {
    const { conversationId, clientMsgId, content } = parseSend(data);
    const createdAt = new Date();
    const id = randomUUID();
    const client = await pool.connect();
    let turn;
    let broken;
    try {
      await client.query("begin");
      const updated = await client.query(
        `update "Conversation" set "lastSeq" = "lastSeq" + 1, "lastMessageAt" = $3
         where "id" = $1 and $2 = any("participantIds")
         returning "lastSeq", "participantIds"`,
        [conversationId, userId, createdAt.toISOString()],
      );
      if (updated.rowCount === 0) {
        await client.query("rollback");
        throw forbidden();
      }
      turn = turns.take(conversationId);
      const { lastSeq: seq, participantIds } = updated.rows[0];
      await client.query(
        `insert into "Message" ("id", "conversationId", "senderId", "content", "seq", "createdAt")
         values ($1, $2, $3, $4, $5, $6)`,
        [id, conversationId, userId, content, seq, createdAt.toISOString()],
      );
      await client.query("commit");
      const message = {
        id,
        conversationId,
        seq,
        senderId: userId,
        clientMsgId,
        content,
        readAt: null,
        createdAt: createdAt.toISOString(),
        editedAt: null,
        deletedAt: null,
      };
      turn(() => io.to(rooms(participantIds)).emit("message:new", message));
      return { ok: true, clientMsgId, conversationId, status: "accepted", message };
    } catch (e) {
      turn?.();
      if (!(e instanceof ApiError)) {
        broken = e;
        await client.query("rollback").catch(() => {});
      }
      throw e;
    } finally {
      client.release(broken);
    }
  }

  const handlers = { "conversation:open": open, "message:send": send };

  io.use((socket, next) => {
    const userId = verifyToken(socket.handshake.auth?.token, cfg.secret);
    if (!userId) return next(new Error("Authentication error"));
    ensureUser(userId).then(
      () => {
        socket.data.userId = userId;
        next();
      },
      (e) => {
        console.error("could not record the user:", e.message);
        next(new Error("Service unavailable"));
      },
    );
  });

  io.on("connection", (socket) => {
    const { userId } = socket.data;
    socket.join(`user:${userId}`);
    socket.onAny((event, ...args) => {
      const ack = typeof args.at(-1) === "function" ? args.pop() : null;
      const handler = handlers[event];
      const answer = (reply) => ack?.(reply);
      if (!handler) {
        answer({ ok: false, error: { code: "invalid", message: `the reference server does not serve ${event}` } });
        return;
      }
      handler(userId, args[0]).then(answer, (e) => {
        if (e instanceof ApiError) {
          answer({ ok: false, error: { code: e.code, message: e.message } });
        } else {
          console.error(`${event} failed:`, e);
          answer({
            ok: false,
            error: { code: "unavailable", message: "the service is temporarily unavailable, try again" },
          });
        }
      });
    });
  });

  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(cfg.port, cfg.host, resolve);
  });
  const { address, port } = httpServer.address();
  console.log(`listening on ${address}:${port}`);

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    io.close(() => pool.end().then(() => process.exit(0)));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(`reference server: ${e.message}`);
  process.exit(1);
});

-- The seed plan's models (.planning 05-01, prisma/schema.prisma) as `prisma db push` creates
-- them: Prisma's quoted PascalCase table names and camelCase columns, `DateTime` as
-- timestamp(3), `String[]` as text[], its btree indexes and its cascading foreign keys.
-- Two columns are added, and only these: "Conversation"."lastSeq" and "Message"."seq", the
-- per-conversation order parley-bench checks every delivery against (the seed has none).
-- Applied by server.mjs at every start; everything is IF NOT EXISTS.

-- Stand-in for the User model of the seed's earlier phases (Auth.js): only what the message's
-- foreign key needs. server.mjs adds a row the first time a user connects.
create table if not exists "User" (
    "id" text primary key,
    "createdAt" timestamp(3) not null default current_timestamp
);

create table if not exists "Conversation" (
    "id" text primary key,
    "participantIds" text[],
    "lastMessageAt" timestamp(3) not null default current_timestamp,
    "createdAt" timestamp(3) not null default current_timestamp,
    "lastSeq" bigint not null default 0
);

create index if not exists "Conversation_participantIds_idx" on "Conversation" ("participantIds");
create index if not exists "Conversation_lastMessageAt_idx" on "Conversation" ("lastMessageAt");

create table if not exists "Message" (
    "id" text primary key,
    "conversationId" text not null
        references "Conversation" ("id") on delete cascade on update cascade,
    "senderId" text not null
        references "User" ("id") on delete cascade on update cascade,
    "content" text not null,
    "readAt" timestamp(3),
    "createdAt" timestamp(3) not null default current_timestamp,
    "seq" bigint not null
);

create index if not exists "Message_conversationId_idx" on "Message" ("conversationId");
create index if not exists "Message_senderId_idx" on "Message" ("senderId");
create index if not exists "Message_createdAt_idx" on "Message" ("createdAt");

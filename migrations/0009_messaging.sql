-- Messaging (issue 9). A message is an event of the log (type message.sent: ordered, hash-chained,
-- durable before anyone is told, the cross-node wake-up) plus a row here that indexes it per channel
-- and makes a client's resend idempotent. Delivery and read state are high-rate and mutable, so they
-- stay out of the log: a cursor per member and channel, and a receipt row per message and member.
-- See docs/messaging.md.

-- Channels that need a definition. Incident, agency and broadcast channels are derived (from the
-- incident's agencies and assignments, from the agency) and have no row; talkgroups and direct
-- channels do.
CREATE TABLE channels (
    id         text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    kind       text        NOT NULL CHECK (kind IN ('talkgroup', 'direct')),
    agency_id  text        CHECK (length(agency_id) <= 128),          -- a talkgroup's owner
    name       text        NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    agencies   text[]      NOT NULL DEFAULT '{}',                      -- a talkgroup's member agencies
    units      text[]      NOT NULL DEFAULT '{}',                      -- a talkgroup's member units
    members    text[]      NOT NULL DEFAULT '{}',                      -- a direct channel's two members
    created_by jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channels_agencies ON channels USING gin (agencies);
CREATE INDEX channels_units ON channels USING gin (units);
CREATE INDEX channels_members ON channels USING gin (members);
CREATE INDEX channels_owner ON channels (agency_id);

-- One row per message: `seq` is its message.sent event's seq (text, sender and the rest are there).
-- (sender, client_id) is unique: a resend with the same client id finds the first message.
CREATE TABLE messages (
    seq           bigint      PRIMARY KEY,
    channel_id    text        NOT NULL CHECK (length(channel_id) BETWEEN 1 AND 128),
    sender        text        NOT NULL CHECK (length(sender) BETWEEN 1 AND 200),
    client_id     text        NOT NULL CHECK (length(client_id) BETWEEN 1 AND 200),
    request_hash  bytea       NOT NULL,
    priority      text        NOT NULL CHECK (priority IN ('normal', 'emergency')),
    attachment_id text,
    at            timestamptz NOT NULL,
    UNIQUE (sender, client_id)
);
CREATE INDEX messages_channel_seq ON messages (channel_id, seq);
CREATE INDEX messages_emergency ON messages (channel_id, seq) WHERE priority = 'emergency';
CREATE INDEX messages_attachment ON messages (attachment_id) WHERE attachment_id IS NOT NULL;

-- Per member and channel: the last seq the member's client confirmed it received (delivered) and
-- read. Drives delivery on reconnect (everything after `delivered`) and the receipts below.
CREATE TABLE channel_cursors (
    member     text        NOT NULL CHECK (length(member) BETWEEN 1 AND 200),
    channel_id text        NOT NULL CHECK (length(channel_id) BETWEEN 1 AND 128),
    delivered  bigint      NOT NULL DEFAULT 0,
    read       bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member, channel_id)
);

-- Per message and member: when it was delivered, read and (emergency messages) acknowledged. Each
-- time is the first one; later confirmations do not move it.
CREATE TABLE message_receipts (
    seq          bigint      NOT NULL,
    member       text        NOT NULL CHECK (length(member) BETWEEN 1 AND 200),
    delivered_at timestamptz,
    read_at      timestamptz,
    acked_at     timestamptz,
    PRIMARY KEY (seq, member)
);

-- Attachments: the bytes live in ICP_DATA_DIR/attachments, named by id; this row says what they are
-- (type found by sniffing the content) and which channel they were uploaded to.
CREATE TABLE attachments (
    id           text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    channel_id   text        NOT NULL CHECK (length(channel_id) BETWEEN 1 AND 128),
    uploader     text        NOT NULL,
    name         text        NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    content_type text        NOT NULL,
    size         bigint      NOT NULL CHECK (size > 0),
    sha256       bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_created ON attachments (created_at);

-- The matcher's system of record: partition ownership, profile state, instances, outbox, analytics.

-- Which matcher replica acts for which partition. `epoch` is the fencing token: it grows on every
-- change of owner, and every matcher commit re-reads it FOR SHARE, so a replica that lost its
-- lease can never commit for that partition again (a takeover's UPDATE waits for the commit in
-- flight, and the next commit of the old owner sees a different epoch and rolls back).
CREATE TABLE partition_leases (
    partition        integer     PRIMARY KEY,
    owner            text,
    epoch            bigint      NOT NULL DEFAULT 0,
    expires_at       timestamptz NOT NULL DEFAULT '-infinity',
    last_applied_seq bigint      NOT NULL DEFAULT 0   -- INPUTS stream sequence applied last
);

-- Each profile's interpreter state (traits, active instances, entry history), msgpack-encoded.
CREATE TABLE profile_states (
    profile_id  text        PRIMARY KEY,
    partition   integer     NOT NULL,
    state       bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every journey instance, for operators and analytics (the interpreter's truth is profile_states).
CREATE TABLE journey_instances (
    instance_id   text        PRIMARY KEY,
    journey       text        NOT NULL,
    version       integer     NOT NULL,
    profile_id    text        NOT NULL,
    unique_value  text,
    status        text        NOT NULL CHECK (status IN ('active', 'completed', 'exited')),
    exit_reason   text,
    converted_at  timestamptz,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX journey_instances_by_journey ON journey_instances (journey, version, status);
CREATE INDEX journey_instances_by_profile ON journey_instances (profile_id);

-- Transactional outbox: messages committed with the state change that caused them, published
-- after the commit (Nats-Msg-Id = msg_id), deleted once JetStream acknowledged them.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL UNIQUE,
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Analytics counters per journey, version, step and hour; increments are committed with the input
-- that caused them, so they are exact under redelivery and crashes.
CREATE TABLE journey_stats (
    journey  text        NOT NULL,
    version  integer     NOT NULL,
    step_id  text        NOT NULL DEFAULT '',
    counter  text        NOT NULL,
    hour     timestamptz NOT NULL,
    n        bigint      NOT NULL,
    PRIMARY KEY (journey, version, step_id, counter, hour)
);

-- Matcher replicas alive now (heartbeat), so a replica that holds no partition yet still counts
-- when the others work out their fair share.
CREATE TABLE matcher_members (
    owner    text        PRIMARY KEY,
    seen_at  timestamptz NOT NULL
);

-- Timers the matcher set, fired by the scheduler. Written by the matcher in its commit
-- transaction (deterministic timer_id, so a redelivered input re-inserts nothing), cancelled by
-- deleting the row. A scheduler replica claims the timers due within its lookahead
-- (FOR UPDATE SKIP LOCKED, then claimed_by/claimed_until), fires each into its partition with
-- Nats-Msg-Id = timer_id, and deletes it afterwards; a claim left by a dead replica expires.
CREATE TABLE timers (
    timer_id       text        PRIMARY KEY,
    profile_id     text        NOT NULL,
    partition      integer     NOT NULL,
    instance_id    text        NOT NULL,
    step_id        text        NOT NULL,
    kind           text        NOT NULL DEFAULT 'wait',
    due_at         timestamptz NOT NULL,
    claimed_by     text,
    claimed_until  timestamptz
);
CREATE INDEX timers_by_due ON timers (due_at);

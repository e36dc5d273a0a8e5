-- The dispatcher's system of record: one ledger row per delivery, suppressions it honours.

-- One row per delivery id (deterministic: instance, step, visit). The unique key is what makes a
-- redelivered request a no-op once it reached a terminal status; 'retrying' and 'deferred' rows
-- are still in flight. Frequency caps count 'sent' rows per profile and channel.
CREATE TABLE delivery_ledger (
    delivery_id          text        PRIMARY KEY,
    profile_id           text        NOT NULL,
    journey              text        NOT NULL,
    version              integer     NOT NULL,
    instance_id          text        NOT NULL,
    step_id              text        NOT NULL,
    channel              text,
    destination          text,
    address              text,
    status               text        NOT NULL CHECK (status IN (
                             'sent', 'failed', 'bounced', 'skipped', 'suppressed', 'dropped',
                             'dead_lettered', 'retrying', 'deferred')),
    reason               text,
    provider_message_id  text,
    attempts             integer     NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz
);

CREATE INDEX delivery_ledger_caps ON delivery_ledger (profile_id, channel, sent_at)
    WHERE status = 'sent';
CREATE INDEX delivery_ledger_instance ON delivery_ledger (instance_id);

-- Suppressions (unsubscribed, bounced, complained) live in `suppressions` (migration 0002).

-- Ingest: write keys, dedupe beyond JetStream's window, and the suppression list that
-- unsubscribe links feed (read by the dispatcher).

-- Write keys authenticate the Tracking API. Only the sha256 of the secret is stored.
CREATE TABLE write_keys (
    key_id      text PRIMARY KEY,             -- public id, e.g. 'wk_...'; shown in lists
    name        text NOT NULL,
    key_hash    text NOT NULL UNIQUE,         -- sha256 hex of the secret key
    rate_limit  integer,                      -- events per second, NULL = unlimited
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Ingest keeps an in-memory cache of the keys; this tells every replica to refresh it at once.
CREATE FUNCTION write_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cairn_write_keys', '');
    RETURN NULL;
END $$;

CREATE TRIGGER write_keys_notify AFTER INSERT OR UPDATE OR DELETE ON write_keys
    FOR EACH STATEMENT EXECUTE FUNCTION write_keys_changed();

-- messageIds seen in the last 24 h+ (JetStream's duplicate window covers only minutes).
-- Rows older than the retention are pruned by ingest.
CREATE TABLE ingest_dedupe (
    message_id   text        PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_dedupe_received_at ON ingest_dedupe (received_at);

-- Addresses that must not be sent to on a channel (unsubscribes, hard bounces, complaints).
-- Written by ingest's unsubscribe endpoint and by the dispatcher; read by the dispatcher.
CREATE TABLE suppressions (
    profile_id  text        NOT NULL,
    channel     text        NOT NULL,         -- 'email', 'sms', 'push', ...
    address     text        NOT NULL DEFAULT '',  -- '' = every address of the profile on the channel
    reason      text        NOT NULL,         -- 'unsubscribed', 'bounced', 'complained', ...
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, channel, address)
);
CREATE INDEX suppressions_address ON suppressions (channel, address);

-- Send-rate limits shared by every dispatcher replica (cairn_common.rates). One row per limited
-- key ('journey:<name>', 'channel:<name>', 'destination:<name>'): ``next_at`` is the first free
-- slot of its schedule. A reservation takes the row lock, so replicas hand out slots one after
-- the other, in the order they reach them; a send given a later slot is deferred until it.
CREATE TABLE send_rates (
    key      text        PRIMARY KEY,
    next_at  timestamptz NOT NULL
);

-- The slot a delivery was given (kept once it was sent, for audit) and when a rate limit first
-- held it back. A 'deferred' row with a slot waits for that slot; it is not given another.
ALTER TABLE delivery_ledger ADD COLUMN slot_at timestamptz;
ALTER TABLE delivery_ledger ADD COLUMN held_since timestamptz;

-- How long a rate limit held a sent delivery back, in milliseconds (analytics: the delay).
ALTER TABLE delivery_events ADD COLUMN held_ms bigint;

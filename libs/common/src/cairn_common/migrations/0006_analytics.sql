-- Observability: trace context kept with the rows that outlive a request, and the delivery
-- analytics (outcomes, opens, clicks) the interpreter's counters do not see.

-- The W3C traceparent of the input that caused the row. The outbox relay publishes a message with
-- the trace context of the input that emitted it (even after a crash), and a fired timer's span
-- links to the trace that set the timer.
ALTER TABLE outbox ADD COLUMN traceparent text;
ALTER TABLE timers ADD COLUMN traceparent text;

-- What became of each delivery, as the matcher saw it: one row per (delivery, kind), written in
-- the matcher's batch transaction with the input that reported it (INSERT ... ON CONFLICT DO
-- NOTHING), so a redelivered DeliveryResult, a repeated open of one email or a pixel fetched by
-- three mail clients counts once. `kind` is a DeliveryResult outcome ('sent', 'failed',
-- 'bounced', 'skipped', 'suppressed', 'deferred', 'dropped', 'dead_lettered') or a tracking hit
-- ('opened', 'clicked', 'unsubscribed'): outcomes count deliveries, hits count unique
-- deliveries opened/clicked. Journey and version come from journey_instances.
CREATE TABLE delivery_events (
    delivery_id  text        NOT NULL,
    kind         text        NOT NULL,
    instance_id  text        NOT NULL,
    step_id      text        NOT NULL,
    channel      text,
    reason       text,
    at           timestamptz NOT NULL,
    PRIMARY KEY (delivery_id, kind)
);
CREATE INDEX delivery_events_by_instance ON delivery_events (instance_id);

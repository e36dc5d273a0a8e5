-- Analytics counters in shards. Every matcher commit adds to the same few counter rows of a busy
-- journey (entered, sent, ... in this hour) and holds their row locks until its commit is on
-- disk, so concurrent committers queued behind one another, one WAL flush each. Each committer now
-- adds to its own shard of a counter; the stats read sum(n) over the shards, as they always summed
-- over hours and versions.
ALTER TABLE journey_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE journey_stats DROP CONSTRAINT journey_stats_pkey;
ALTER TABLE journey_stats ADD PRIMARY KEY (journey, version, step_id, counter, hour, shard);

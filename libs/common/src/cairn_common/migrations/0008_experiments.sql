-- The winner of a split experiment (``winner: {after, sample}``), decided once per published
-- version and split step by the matcher from the analytics counters, then read with the
-- journeys: every later entry takes the winning path. ``figures`` keeps what the decision saw
-- (per path: entries, sends, conversions) so it can be shown as it was.
CREATE TABLE split_decisions (
    journey     text        NOT NULL,
    version     integer     NOT NULL,
    step_id     text        NOT NULL,
    path        integer     NOT NULL CHECK (path >= 0),
    path_name   text        NOT NULL,
    reason      text        NOT NULL,
    figures     jsonb       NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journey, version, step_id),
    FOREIGN KEY (journey, version) REFERENCES journey_versions (journey, version)
);

-- Control-plane resources and profiles: the part of the system of record every service reads.

-- Documents applied with `cairn apply` (Journey drafts, Template, Trigger, Channel, Destination).
CREATE TABLE resources (
    kind        text        NOT NULL,
    name        text        NOT NULL,
    document    jsonb       NOT NULL,
    source      text,                         -- file the document came from, for error messages
    status      text        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'ready')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- A journey's lifecycle; its draft lives in resources(kind = 'Journey').
CREATE TABLE journeys (
    name          text        PRIMARY KEY,
    state         text        NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'live', 'stopped')),
    live_version  integer,
    stop_mode     text        CHECK (stop_mode IN ('drain', 'exit_all')),
    stopped_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Published versions never change: no UPDATE path exists in the code, and a trigger refuses one.
CREATE TABLE journey_versions (
    journey       text        NOT NULL REFERENCES journeys (name),
    version       integer     NOT NULL CHECK (version > 0),
    definition    jsonb       NOT NULL,
    checksum      text        NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journey, version)
);

CREATE FUNCTION journey_versions_are_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'published journey versions are immutable (%, v%)', OLD.journey, OLD.version;
END $$;

CREATE TRIGGER journey_versions_frozen BEFORE UPDATE ON journey_versions
    FOR EACH ROW EXECUTE FUNCTION journey_versions_are_frozen();

-- Profile traits set by identify calls; readable as profile.<trait>.
CREATE TABLE profiles (
    profile_id  text        PRIMARY KEY,
    traits      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

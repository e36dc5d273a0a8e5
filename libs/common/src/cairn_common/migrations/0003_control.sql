-- Control plane: what `cairn apply` / `cairn publish` need beyond the resources of 0001.

-- The text each document was applied from (the whole file, as sent), so that publishing a draft
-- later reports every problem with the file and line the operator wrote it on.
ALTER TABLE resources ADD COLUMN source_text text;

-- Who changed what in the control plane, newest last: apply, publish, stop, template status,
-- write keys. Operators read it to answer "why did this journey change at 3 am?".
CREATE TABLE control_audit (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    action  text        NOT NULL,          -- 'apply', 'publish', 'stop', 'template.ready', ...
    kind    text        NOT NULL,          -- 'Journey', 'Template', 'WriteKey', ...
    name    text        NOT NULL,
    detail  jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX control_audit_by_resource ON control_audit (kind, name, id);

-- The templates a published version sends, frozen with it (name -> Template document), so an edit
-- to a template after publishing changes nothing until the journey is published again.
ALTER TABLE journey_versions ADD COLUMN templates jsonb NOT NULL DEFAULT '{}'::jsonb;

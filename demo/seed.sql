-- The embedded demo database: loaded by `make demo` through --init-sql when
-- demo.db has no schema yet, so it becomes the primary's first commit (txid 1).
CREATE TABLE regions (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    one_way_ms INTEGER NOT NULL
);
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    region TEXT NOT NULL REFERENCES regions(code),
    body TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX notes_region ON notes(region);
INSERT INTO regions VALUES ('fra', 'Frankfurt', 0), ('iad', 'Virginia', 40), ('syd', 'Sydney', 80);
INSERT INTO notes(region, body) VALUES
    ('fra', 'written on the primary'),
    ('iad', 'read locally, microseconds away'),
    ('syd', 'writes come back before they are acknowledged');

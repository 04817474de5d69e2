-- The catalog. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Timestamps are Unix milliseconds; sizes are bytes.

CREATE TABLE repos (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

-- One immutable upload. `id` is the 40-hex commit of its high-precision files, `int8_id` the
-- commit of its INT8 files; both are accepted wherever a revision is.
CREATE TABLE revisions (
    id          TEXT PRIMARY KEY,
    int8_id     TEXT NOT NULL UNIQUE,
    repo        TEXT NOT NULL REFERENCES repos(name),
    blob_key    TEXT NOT NULL,
    blob_size   BIGINT NOT NULL,
    high_dtype  TEXT NOT NULL,
    high_size   BIGINT NOT NULL,
    int8_size   BIGINT NOT NULL,
    plain_size  BIGINT NOT NULL,
    tensors     BIGINT NOT NULL,
    quantized   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX revisions_by_repo ON revisions (repo, created_at);

-- The files of a revision per precision: 'high', 'int8', or 'both' for files shared by the two.
-- `object_key` NULL means the file is decoded from the revision's blob.
CREATE TABLE files (
    revision    TEXT NOT NULL REFERENCES revisions(id),
    precision   TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    object_key  TEXT,
    PRIMARY KEY (revision, precision, path)
);

-- Branches (main, bf16 or fp16, int8) move to each new upload.
CREATE TABLE branches (
    repo        TEXT NOT NULL REFERENCES repos(name),
    name        TEXT NOT NULL,
    revision    TEXT NOT NULL REFERENCES revisions(id),
    PRIMARY KEY (repo, name)
);

-- API tokens, stored as sha256 hex of the token.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- The repository model: a repo is a history of commits; branches and tags point at commits;
-- each commit has a full file set; weights live in blobs shared by every commit (of any repo)
-- whose weights they hold; other files are content-addressed objects stored once.
-- Portable SQL (SQLite and PostgreSQL). Existing revisions become commits on `main`.

ALTER TABLE repos ADD COLUMN private BIGINT NOT NULL DEFAULT 0;

-- One .qstore blob. `weights` identifies its content: the sha256 over the names and sha256 of
-- the high-precision files (and any supplied INT8 files) it reproduces.
CREATE TABLE blobs (
    id          TEXT PRIMARY KEY,
    weights     TEXT NOT NULL,
    object_key  TEXT NOT NULL,
    size        BIGINT NOT NULL,
    high_dtype  TEXT NOT NULL,
    high_size   BIGINT NOT NULL,
    int8_size   BIGINT NOT NULL,
    tensors     BIGINT NOT NULL,
    quantized   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX blobs_by_weights ON blobs (weights);

-- `id` names the commit's uploaded precision, `int8_id` its INT8 twin; both are accepted
-- wherever a revision is. `blob` is NULL for a commit without weights.
CREATE TABLE commits (
    id          TEXT PRIMARY KEY,
    int8_id     TEXT NOT NULL UNIQUE,
    repo        TEXT NOT NULL REFERENCES repos(name),
    parent      TEXT,
    blob        TEXT REFERENCES blobs(id),
    title       TEXT NOT NULL,
    message     TEXT NOT NULL,
    author      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX commits_by_repo ON commits (repo, created_at);

-- A commit's files per view: 'high', 'int8', or 'both'. `object_key` NULL: decoded from the
-- commit's blob. `git_oid`: git blob SHA-1 of a regular (non-LFS) file's bytes.
CREATE TABLE commit_files (
    commit_id   TEXT NOT NULL REFERENCES commits(id),
    precision   TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    git_oid     TEXT,
    lfs         BIGINT NOT NULL,
    object_key  TEXT,
    PRIMARY KEY (commit_id, precision, path)
);
CREATE INDEX commit_files_by_sha256 ON commit_files (sha256);

-- Branches and tags.
CREATE TABLE refs (
    repo        TEXT NOT NULL REFERENCES repos(name),
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    commit_id   TEXT NOT NULL REFERENCES commits(id),
    PRIMARY KEY (repo, kind, name)
);

-- LFS uploads in progress: the id is the capability in the upload URLs.
CREATE TABLE lfs_uploads (
    id          TEXT PRIMARY KEY,
    repo        TEXT NOT NULL,
    oid         TEXT NOT NULL,
    size        BIGINT NOT NULL,
    part_size   BIGINT NOT NULL,
    parts       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Which repo an LFS object was uploaded for: a commit may name uploaded bytes only in that repo
-- (or bytes a public commit, or one of its own repo, already has), so nobody can claim content
-- they never had by knowing its sha256.
CREATE TABLE lfs_objects (
    oid         TEXT NOT NULL,
    repo        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (oid, repo)
);

-- Namespaces a token may write in (comma-separated; empty: all) and whether it only reads.
ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN read_only BIGINT NOT NULL DEFAULT 0;

-- Existing data: each revision's blob, a commit per revision chained by upload time, its files,
-- and `main` (bf16/fp16/int8 are now views of main, no longer stored branches).
INSERT INTO blobs (id, weights, object_key, size, high_dtype, high_size, int8_size, tensors,
                   quantized, created_at)
SELECT id, 'legacy:' || id, blob_key, blob_size, high_dtype, high_size, int8_size, tensors,
       quantized, created_at
FROM revisions;

INSERT INTO commits (id, int8_id, repo, parent, blob, title, message, author, created_at)
SELECT r.id, r.int8_id, r.repo,
       (SELECT p.id FROM revisions p
        WHERE p.repo = r.repo
          AND (p.created_at < r.created_at OR (p.created_at = r.created_at AND p.id < r.id))
        ORDER BY p.created_at DESC, p.id DESC LIMIT 1),
       r.id, 'Upload', '', 'qstore', r.created_at
FROM revisions r;

INSERT INTO commit_files (commit_id, precision, path, size, sha256, git_oid, lfs, object_key)
SELECT revision, precision, path, size, sha256, NULL,
       CASE WHEN object_key IS NULL THEN 1 ELSE 0 END, object_key
FROM files;

INSERT INTO refs (repo, kind, name, commit_id)
SELECT repo, 'branch', name, revision FROM branches WHERE name = 'main';

DROP TABLE files;
DROP TABLE branches;
DROP TABLE revisions;

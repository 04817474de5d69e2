-- The Xet write path (the CAS current Hub clients upload large files through). Portable SQL.

-- A xorb (a container of compressed chunks, named by its Merkle hash) held for the repos it
-- was uploaded for: a shard may build files only from xorbs of its own repo, so knowing a hash
-- never grants bytes. Rows expire like LFS records (after the gc grace period), and their
-- objects (`xet/xorbs/{hash}`) with them: xorbs are working data, not a second copy.
CREATE TABLE xet_xorbs (
    hash        TEXT NOT NULL,
    repo        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (hash, repo)
);

-- Short-lived CAS tokens handed out by `xet-write-token`; only their sha256 is stored, with the
-- repo they may write and the hash of the API token they came from (empty: a configured token
-- or an open loopback server), so revoking that token ends them too.
CREATE TABLE xet_tokens (
    hash        TEXT PRIMARY KEY,
    repo        TEXT NOT NULL,
    parent      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- Bumped whenever xorbs are collected. It is part of the CAS URL clients are given, and they
-- key their local dedup caches by that URL, so no cache can name a collected xorb.
CREATE TABLE xet_state (
    id          BIGINT PRIMARY KEY,
    generation  BIGINT NOT NULL
);
INSERT INTO xet_state (id, generation) VALUES (1, 0);

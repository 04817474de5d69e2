//! sha256 on a helper thread, so hashing every output file overlaps the parallel encode instead
//! of sitting on the encoder's one sequential path.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Blocks queued before `update` waits: bounds the memory held for hashing (≤ 8 chunks).
const QUEUE: usize = 8;

/// A sha256 fed in order from the encoder and computed on its own thread.
pub struct BackgroundHash {
    tx: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Sha256>>,
}

impl BackgroundHash {
    pub fn new() -> Self {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let worker = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for block in rx {
                h.update(&block);
            }
            h
        });
        BackgroundHash {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    /// Hashes a block the caller no longer needs (no copy).
    pub fn update_owned(&mut self, block: Vec<u8>) {
        if let Some(tx) = &self.tx {
            // The worker only stops when we drop the sender, so a send cannot fail.
            let _ = tx.send(block);
        }
    }

    /// Hashes a copy of `block`.
    pub fn update(&mut self, block: &[u8]) {
        self.update_owned(block.to_vec());
    }

    /// The lowercase hex digest of everything fed so far.
    pub fn finish(mut self) -> String {
        drop(self.tx.take());
        let h = self
            .worker
            .take()
            .expect("finished once")
            .join()
            .expect("the hash thread does not panic");
        hex::encode(h.finalize())
    }
}

impl Default for BackgroundHash {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_sha256() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = BackgroundHash::new();
        for block in data.chunks(999) {
            h.update(block);
        }
        assert_eq!(h.finish(), hex::encode(Sha256::digest(&data)));
        assert_eq!(
            BackgroundHash::new().finish(),
            hex::encode(Sha256::digest(b""))
        );
    }
}

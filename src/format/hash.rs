//! sha256 on a helper thread, so hashing every output file overlaps the parallel encode instead
//! of sitting on the encoder's one sequential path.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Blocks queued before `update` waits: bounds the memory held for hashing (≤ 8 chunks).
const QUEUE: usize = 8;

/// Bytes to hash, owned by the hash or shared with the encoder: an input chunk is read once,
/// then hashed and encoded from the same buffer (copying and converting it took about a sixth
/// of the reading thread's time, on the encoder's one sequential path).
pub enum Block {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
    /// 16-bit codes whose in-memory bytes are the file's (little-endian targets only).
    #[cfg(target_endian = "little")]
    Codes(Arc<Vec<u16>>),
}

impl Block {
    fn bytes(&self) -> &[u8] {
        match self {
            Block::Owned(b) => b,
            Block::Shared(b) => b,
            #[cfg(target_endian = "little")]
            Block::Codes(c) => bytemuck::cast_slice(c),
        }
    }
}

/// A sha256 fed in order from the encoder and computed on its own thread.
pub struct BackgroundHash {
    tx: Option<SyncSender<Block>>,
    worker: Option<JoinHandle<Sha256>>,
}

impl BackgroundHash {
    pub fn new() -> Self {
        let (tx, rx) = sync_channel::<Block>(QUEUE);
        let worker = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for block in rx {
                h.update(block.bytes());
            }
            h
        });
        BackgroundHash {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    /// Hashes a block without copying it.
    pub fn update_block(&mut self, block: Block) {
        if let Some(tx) = &self.tx {
            // The worker only stops when we drop the sender, so a send cannot fail.
            let _ = tx.send(block);
        }
    }

    /// Hashes a block the caller no longer needs (no copy).
    pub fn update_owned(&mut self, block: Vec<u8>) {
        self.update_block(Block::Owned(block));
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
        for (i, block) in data.chunks(1000).enumerate() {
            match i % 3 {
                0 => h.update(block),
                1 => h.update_block(Block::Shared(Arc::new(block.to_vec()))),
                #[cfg(target_endian = "little")]
                _ if block.len() % 2 == 0 => h.update_block(Block::Codes(Arc::new(
                    block
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                ))),
                _ => h.update_owned(block.to_vec()),
            }
        }
        assert_eq!(h.finish(), hex::encode(Sha256::digest(&data)));
        assert_eq!(
            BackgroundHash::new().finish(),
            hex::encode(Sha256::digest(b""))
        );
    }
}

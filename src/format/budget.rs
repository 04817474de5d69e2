//! How many chunks decodes keep in flight, and the buffers they decode into.
//!
//! A decode keeps several chunks in flight so the cores stay busy across uneven chunks and, on a
//! remote source, round trips overlap. In a server that multiplies with the downloads running:
//! 16 downloads on 2 cores each held their own window of decoded chunks and scratch buffers,
//! ~90 MiB, though two threads can only decode two chunks at a time. Here every decode may keep
//! two chunks in flight and takes further ones from shares all decodes draw on, so a lone decode
//! still gets its window and many decodes together hold about two chunks each plus the shares.
//! Two, not one: a thread decodes two chunks together almost twice as fast as one after the
//! other (their table loops interleave), and with one chunk each, sixteen downloads on two cores
//! decoded nearly every chunk alone.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The in-flight chunks decodes may keep: `window` per decode at most (see
/// [`super::Blob::write_range_budgeted`]), each beyond a decode's first taken from `shares`.
#[derive(Debug)]
pub struct DecodeBudget {
    window: usize,
    shares: AtomicUsize,
    spare: Arc<Spare>,
}

impl DecodeBudget {
    /// A budget for decodes that share `shares` extra chunks in flight.
    pub fn shared(window: usize, shares: usize) -> DecodeBudget {
        DecodeBudget {
            window: window.max(1),
            shares: AtomicUsize::new(shares),
            spare: Arc::default(),
        }
    }

    /// A budget for one decode alone (the CLI, a library caller): only `window` limits it.
    pub fn alone(window: usize) -> DecodeBudget {
        DecodeBudget::shared(window, usize::MAX / 2)
    }

    /// Half the chunks one decode may keep in flight.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Shares free right now: all of them once every decode has ended (tests check this).
    pub fn free_shares(&self) -> usize {
        self.shares.load(Ordering::Relaxed)
    }

    /// Output buffers for a new decode, which draws on the spare ones its budget's decodes left.
    pub(super) fn outputs(&self) -> Arc<Outputs> {
        Arc::new(Outputs {
            free: Mutex::default(),
            keep: AtomicUsize::default(),
            spare: self.spare.clone(),
        })
    }

    /// Bytes of spare buffers held now.
    #[cfg(test)]
    pub(super) fn spare_bytes(&self) -> usize {
        self.spare.0.lock().unwrap().bytes
    }

    /// Takes `n` shares, all or none.
    fn try_take(&self, n: usize) -> bool {
        self.shares
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(n)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.shares.fetch_add(n, Ordering::AcqRel);
    }
}

/// Chunks a decode may keep in flight without a share: a pair, which one task decodes together.
const OWN: usize = 2;

/// One decode's hold on a [`DecodeBudget`]: the chunks it has in flight, of which all but the
/// first [`OWN`] hold a share. Shares go back as chunks are written, and all of them when it
/// drops (a decode that fails midway included).
pub(super) struct InFlight<'a> {
    budget: &'a DecodeBudget,
    /// At most this many in flight, shares or not.
    cap: usize,
    in_flight: usize,
    held: usize,
}

impl<'a> InFlight<'a> {
    pub(super) fn new(budget: &'a DecodeBudget, cap: usize) -> InFlight<'a> {
        InFlight {
            budget,
            cap: cap.max(1),
            in_flight: 0,
            held: 0,
        }
    }

    /// Whether a task of `n` chunks may start now, all of them or none: within the cap and
    /// with the shares it needs. A decode with nothing in flight always may, so every decode
    /// progresses. If so they count as in flight.
    pub(super) fn start(&mut self, n: usize) -> bool {
        let needed = (self.in_flight + n).saturating_sub(OWN + self.held);
        if self.in_flight == 0 {
            // Alone, a task runs anyway, with what shares there are.
            self.held += (0..needed).filter(|_| self.budget.try_take(1)).count();
        } else if self.in_flight + n > self.cap || (needed > 0 && !self.budget.try_take(needed)) {
            return false;
        } else {
            self.held += needed;
        }
        self.in_flight += n;
        true
    }

    /// A chunk was written: its share, if it needed one, goes back.
    pub(super) fn finish_one(&mut self) {
        self.in_flight -= 1;
        let needed = self.in_flight.saturating_sub(OWN);
        if self.held > needed {
            self.budget.give_back(self.held - needed);
            self.held = needed;
        }
    }

    /// Free output buffers worth keeping: one per chunk this decode may start now without
    /// asking for a share. A decode that had many chunks in flight and lost its shares to
    /// others frees the buffers it no longer uses.
    pub(super) fn buffers_to_keep(&self) -> usize {
        self.held + OWN
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// Buffers a decode hands out to be written (decoded chunks), reused across its chunks. A fresh
/// buffer per chunk costs a zero-fill and page faults every time (about a sixth of a CLI
/// decode); reused, a buffer's old bytes are overwritten whole (the CRC of every decoded chunk
/// is checked before it is written). A buffer is only made when none is free, so the pool never
/// holds more than the decode had in flight at its peak, plus what its sink still holds.
/// Shared (an `Arc`) with the [`Decoded`] pieces it hands out, which come back when dropped,
/// wherever that is: a server's body sends them without copying and drops them once sent.
/// Buffers it does not keep go to its budget's [`Spare`], for the decodes after it.
#[derive(Default)]
pub(super) struct Outputs {
    free: Mutex<Vec<Vec<u8>>>,
    /// Free buffers worth keeping (see [`InFlight::buffers_to_keep`]), set by the decode.
    keep: AtomicUsize,
    spare: Arc<Spare>,
}

impl Outputs {
    /// A buffer of `len` bytes whose contents are unspecified.
    pub(super) fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = take_fitting(&mut free, len);
        drop(free);
        if buf.capacity() < len && len >= POOLED_FROM {
            buf = self.spare.take(len).unwrap_or(buf);
        }
        sized(buf, len)
    }

    /// How many free buffers to keep from now on; more are freed as they come back.
    pub(super) fn keep(&self, n: usize) {
        self.keep.store(n, Ordering::Relaxed);
    }

    /// Returns `buf` to the pool, or to the spare ones when enough buffers are free already.
    fn give(&self, buf: Vec<u8>) {
        if !worth_pooling(&buf) {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep.load(Ordering::Relaxed) {
            free.push(buf);
        } else {
            drop(free);
            self.spare.give(buf);
        }
    }
}

impl Drop for Outputs {
    /// Once the decode has ended and its sink has let go of every piece.
    fn drop(&mut self) {
        let free = self.free.get_mut().unwrap_or_else(|e| e.into_inner());
        for buf in free.drain(..) {
            self.spare.give(buf);
        }
    }
}

/// At most this many bytes of spare buffers per budget: a window of 1.25 MiB chunks.
const SPARE_BYTES: usize = 16 << 20;

/// Output buffers that no decode holds, kept for the next one. Freed, their pages went back to
/// the kernel, and the next decode faulted them in and zeroed them again: 13% of a MiniLM BF16
/// decode in process on 2 threads (22.9 -> 19.9 ms with them kept), 14% of an INT8 one. A
/// server's downloads, each a decode, pass their buffers on this way. Holds at most
/// [`SPARE_BYTES`].
#[derive(Default)]
pub(super) struct Spare(Mutex<SpareBuffers>);

#[derive(Default)]
struct SpareBuffers {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spare {
    /// The smallest spare buffer that holds `len` bytes; else one too small, which the caller
    /// replaces (so buffers of a smaller kind of chunk do not linger while larger ones are
    /// made); else none.
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let buf = take_fitting(&mut spare.free, len);
        spare.bytes -= buf.capacity();
        (buf.capacity() > 0).then_some(buf)
    }

    /// Keeps `buf` if there is room, else frees it.
    fn give(&self, buf: Vec<u8>) {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if worth_pooling(&buf) && spare.bytes + buf.capacity() <= SPARE_BYTES {
            spare.bytes += buf.capacity();
            spare.free.push(buf);
        }
    }
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        write!(
            f,
            "{} spare buffers, {} bytes",
            spare.free.len(),
            spare.bytes
        )
    }
}

/// Bytes `range` of a decoded chunk, checked, in a buffer of its decode's [`Outputs`], to
/// which the buffer returns when this drops. Owned, so a sink may keep it past the call that
/// hands it over (a server's body queue) instead of copying the bytes out.
pub struct Decoded {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
    pool: Arc<Outputs>,
}

impl Decoded {
    /// `buf[range]`, returning to `pool`. `range` must lie inside `buf`.
    pub(super) fn new(buf: Vec<u8>, range: std::ops::Range<usize>, pool: Arc<Outputs>) -> Decoded {
        assert!(range.start <= range.end && range.end <= buf.len());
        Decoded { buf, range, pool }
    }
}

impl std::ops::Deref for Decoded {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

impl AsRef<[u8]> for Decoded {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

// Scratch buffers free on this thread, at most `SCRATCH_KEPT`.
thread_local! {
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A thread decodes two chunks at a time (see `Blob::decode_task`); two BF16 chunks hold at
/// most five at once: both INT8 values, then for one of them a scale chunk or the residual's
/// stored bytes, and a scale chunk's stored bytes.
const SCRATCH_KEPT: usize = 6;

/// A buffer of `len` bytes, unspecified contents, needed only while this thread decodes one
/// chunk: stored bytes, a BF16 chunk's INT8 values and scales. A thread decodes one task (two
/// chunks) at a time, so pool threads keep these per thread rather than per decode, where they
/// would multiply with the decodes in flight. Other threads (a caller decoding one chunk itself,
/// such as a server's blocking thread) get a fresh buffer and keep none.
pub(super) fn scratch(len: usize) -> Vec<u8> {
    let buf = match rayon::current_thread_index() {
        Some(_) => SCRATCH.with(|free| take_fitting(&mut free.borrow_mut(), len)),
        None => Vec::new(),
    };
    sized(buf, len)
}

/// Returns a [`scratch`] buffer.
pub(super) fn scratch_done(buf: Vec<u8>) {
    if rayon::current_thread_index().is_some() {
        SCRATCH.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < SCRATCH_KEPT && worth_pooling(&buf) {
                free.push(buf);
            }
        });
    }
}

/// Buffers smaller than this come from the allocator and go back to it. Taking a pooled one
/// for a few KiB (a norm, a chunk of scales) cut it down, and the next chunk to take it zeroed it
/// back up: ~13 MB of zeroing per MiniLM BF16 decode.
const POOLED_FROM: usize = 64 << 10;

/// Whether `buf` is worth keeping for another chunk (see [`POOLED_FROM`]).
fn worth_pooling(buf: &Vec<u8>) -> bool {
    buf.capacity() >= POOLED_FROM
}

/// The smallest free buffer that holds `len` bytes, else any (to grow), else a new one; a new
/// one for a small `len`.
fn take_fitting(free: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    if len < POOLED_FROM {
        return Vec::new();
    }
    let fit = (0..free.len())
        .filter(|&i| free[i].capacity() >= len)
        .min_by_key(|&i| free[i].capacity());
    match fit {
        Some(i) => free.swap_remove(i),
        None => free.pop().unwrap_or_default(),
    }
}

/// `buf` as `len` bytes. One too small is replaced, not grown: growing would copy its old
/// bytes, which nobody reads again.
fn sized(mut buf: Vec<u8>, len: usize) -> Vec<u8> {
    if buf.capacity() < len {
        buf = Vec::with_capacity(len);
        populate(&mut buf);
    }
    buf.resize(len, 0);
    buf
}

/// Maps the pages of `buf`'s spare capacity in one call. A fresh buffer otherwise takes a page
/// fault per 4 KiB on first write, and a cold decode spends much of its kernel time there: a
/// `qstore decode` of MiniLM's BF16 file faulted ~2,400 output and scratch pages. First touch
/// of 64 MiB on the VM this was measured on: 0.52 ns a byte by faults, 0.33 populated.
#[cfg(target_os = "linux")]
fn populate(buf: &mut Vec<u8>) {
    const PAGE: usize = 4096;
    let spare = buf.spare_capacity_mut();
    let start = spare.as_mut_ptr() as usize;
    let (from, to) = (
        start.next_multiple_of(PAGE),
        (start + spare.len()) / PAGE * PAGE,
    );
    if to > from {
        // SAFETY: [from, to) lies inside `buf`'s allocation. MADV_POPULATE_WRITE maps its pages
        // as a write would without writing, so no byte changes (these are uninitialised
        // anyway). Where it fails (kernels before 5.14, other page sizes) the pages fault in on
        // first write as before.
        unsafe {
            libc::madvise(
                from as *mut libc::c_void,
                to - from,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn populate(_: &mut Vec<u8>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_keeps_a_pair_without_shares_and_more_with_them() {
        let budget = DecodeBudget::shared(4, 3);
        let mut a = InFlight::new(&budget, 8);
        let mut b = InFlight::new(&budget, 8);
        assert!(a.start(2), "a pair needs no share");
        assert!(a.start(2), "two shares");
        assert!(
            !a.start(2),
            "one share left: a pair waits rather than split"
        );
        assert!(a.start(1));
        assert_eq!((a.held, budget.free_shares()), (3, 0));
        assert!(b.start(2), "every decode gets its pair");
        assert!(!b.start(1));
        // a writes two chunks: with three in flight it needs one share, so two go back.
        a.finish_one();
        a.finish_one();
        assert_eq!((a.held, a.buffers_to_keep()), (1, 3));
        assert!(b.start(2), "b takes the shares a gave back");
        assert_eq!(budget.free_shares(), 0);
        for _ in 0..3 {
            a.finish_one();
        }
        assert_eq!((a.held, a.buffers_to_keep()), (0, 2));
        assert_eq!(budget.free_shares(), 1);
        drop(b);
        assert_eq!(
            budget.free_shares(),
            3,
            "dropping a decode gives its shares back"
        );
        drop(a);
        assert_eq!(budget.free_shares(), 3);
    }

    #[test]
    fn the_cap_limits_a_decode_whatever_the_shares() {
        let budget = DecodeBudget::alone(4);
        let mut a = InFlight::new(&budget, 3);
        assert!(a.start(2) && a.start(1));
        assert!(!a.start(1));
        a.finish_one();
        assert!(!a.start(2), "a pair waits for room");
        assert!(a.start(1));
    }

    #[test]
    fn a_decode_with_nothing_in_flight_always_starts() {
        let budget = DecodeBudget::shared(1, 0);
        let mut a = InFlight::new(&budget, 1);
        assert!(a.start(2), "over the cap, but alone");
        assert!(!a.start(1));
        a.finish_one();
        a.finish_one();
        assert!(a.start(3), "more than a pair, without shares, but alone");
        assert_eq!(a.held, 0);
    }

    #[test]
    fn outputs_keep_only_what_they_are_told() {
        let outputs = std::sync::Arc::new(Outputs::default());
        outputs.keep(2);
        let pieces: Vec<_> = (0..4)
            .map(|i| Decoded::new(outputs.take(POOLED_FROM), i..i + 10, outputs.clone()))
            .collect();
        assert_eq!(pieces[3].len(), 10);
        drop(pieces);
        assert_eq!(outputs.free.lock().unwrap().len(), 2);
    }

    /// A piece returns its buffer when it drops, wherever that is: on another thread, after
    /// the decode that made it has ended.
    #[test]
    fn a_piece_returns_its_buffer_from_anywhere() {
        let outputs = std::sync::Arc::new(Outputs::default());
        outputs.keep(1);
        let mut buf = outputs.take(POOLED_FROM);
        buf[5] = 9;
        let ptr = buf.as_ptr();
        let piece = Decoded::new(buf, 5..6, outputs.clone());
        std::thread::spawn(move || assert_eq!(&*piece, &[9]))
            .join()
            .unwrap();
        let again = outputs.take(POOLED_FROM);
        assert_eq!(again.as_ptr(), ptr, "the buffer came back");
    }

    /// What one decode's outputs no longer hold, the next decode of its budget takes: the
    /// buffers it freed as it went and those it kept to the end.
    #[test]
    fn a_decode_leaves_its_buffers_to_the_next() {
        let budget = DecodeBudget::alone(4);
        let first = budget.outputs();
        first.keep(1);
        let (a, b) = (first.take(POOLED_FROM), first.take(2 * POOLED_FROM));
        let ptrs = [a.as_ptr(), b.as_ptr()];
        drop(Decoded::new(a, 0..10, first.clone()));
        drop(Decoded::new(b, 0..10, first.clone()));
        assert_eq!(first.free.lock().unwrap().len(), 1, "one kept, one spare");
        drop(first);
        let next = budget.outputs();
        let (c, d) = (next.take(POOLED_FROM + 1), next.take(POOLED_FROM - 1));
        assert_eq!(c.as_ptr(), ptrs[1], "the smallest that fits");
        assert_eq!(c.len(), POOLED_FROM + 1);
        assert!(
            !ptrs.contains(&d.as_ptr()),
            "a small buffer does not come from the pool"
        );
        let e = next.take(POOLED_FROM);
        assert_eq!(e.as_ptr(), ptrs[0]);
        let elsewhere = DecodeBudget::alone(4).outputs().take(POOLED_FROM);
        assert!(!ptrs.contains(&elsewhere.as_ptr()));
    }

    /// The spare buffers stay within [`SPARE_BYTES`], and one too small for what a decode
    /// needs is freed, not kept beside the larger one made instead.
    #[test]
    fn spare_buffers_are_bounded() {
        let spare = Spare::default();
        for _ in 0..SPARE_BYTES / (1 << 20) + 5 {
            spare.give(Vec::with_capacity(1 << 20));
        }
        let held = |spare: &Spare| {
            let s = spare.0.lock().unwrap();
            assert_eq!(s.bytes, s.free.iter().map(Vec::capacity).sum::<usize>());
            (s.free.len(), s.bytes)
        };
        assert_eq!(held(&spare), (SPARE_BYTES >> 20, SPARE_BYTES));
        let small = spare.take(2 << 20).expect("one too small, to replace");
        assert_eq!(small.capacity(), 1 << 20);
        assert_eq!(
            held(&spare),
            ((SPARE_BYTES >> 20) - 1, SPARE_BYTES - (1 << 20))
        );
        spare.give(Vec::with_capacity(SPARE_BYTES));
        assert_eq!(held(&spare).1, SPARE_BYTES - (1 << 20), "too large to keep");
        let empty = Spare::default();
        empty.give(vec![0; 10]);
        assert!(empty.take(10).is_none(), "small buffers are not kept");
    }

    #[test]
    fn a_failed_decode_gives_its_shares_back() {
        let budget = DecodeBudget::shared(4, 3);
        {
            let mut a = InFlight::new(&budget, 8);
            while a.start(1) {}
            assert_eq!(budget.free_shares(), 0);
        }
        assert_eq!(budget.free_shares(), 3);
    }

    #[test]
    fn sized_buffers_reuse_room_and_replace_small_ones() {
        let mut roomy = vec![7u8; 100];
        roomy.truncate(10);
        let ptr = roomy.as_ptr();
        let reused = sized(roomy, 50);
        assert_eq!(reused.as_ptr(), ptr, "kept: it has room");
        assert_eq!(reused.len(), 50);
        // Replaced, not grown: the old bytes are not carried over.
        let fresh = sized(vec![1u8; 10], 1 << 20);
        assert!(fresh.len() == 1 << 20 && fresh.iter().all(|&b| b == 0));
    }

    /// Populating maps a fresh buffer's pages before anything writes them. 64 MiB is above
    /// glibc's largest mmap threshold, so the allocation is fresh, unmapped memory.
    #[cfg(target_os = "linux")]
    #[test]
    fn populate_maps_the_pages_of_a_fresh_buffer() {
        const PAGE: usize = 4096;
        let resident = |buf: &Vec<u8>| {
            let start = (buf.as_ptr() as usize).next_multiple_of(PAGE);
            let pages = (buf.as_ptr() as usize + buf.capacity() - start) / PAGE;
            let mut vec = vec![0u8; pages];
            // SAFETY: [start, start + pages pages) lies in `buf`'s allocation; `vec` has a
            // byte per page.
            let rc = unsafe {
                libc::mincore(start as *mut libc::c_void, pages * PAGE, vec.as_mut_ptr())
            };
            assert_eq!(rc, 0);
            vec.iter().filter(|&&v| v & 1 == 1).count() as f64 / pages as f64
        };
        let untouched = Vec::<u8>::with_capacity(64 << 20);
        assert!(resident(&untouched) < 0.5, "the test needs fresh memory");
        let mut buf = Vec::<u8>::with_capacity(64 << 20);
        populate(&mut buf);
        assert_eq!(resident(&buf), 1.0);
    }

    #[test]
    fn scratch_is_kept_on_pool_threads_only() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            let a = scratch(2 * POOLED_FROM);
            let ptr = a.as_ptr();
            scratch_done(a);
            let b = scratch(POOLED_FROM);
            assert_eq!(b.as_ptr(), ptr, "reused on the pool thread");
            assert_eq!(b.len(), POOLED_FROM);
            scratch_done(vec![0; 10]);
            SCRATCH.with(|free| assert!(free.borrow().is_empty(), "too small to keep"));
            for _ in 0..SCRATCH_KEPT + 2 {
                scratch_done(vec![0; POOLED_FROM]);
            }
            SCRATCH.with(|free| assert_eq!(free.borrow().len(), SCRATCH_KEPT));
        });
        scratch_done(vec![0; POOLED_FROM]);
        SCRATCH.with(|free| assert!(free.borrow().is_empty(), "kept off the pool"));
    }
}

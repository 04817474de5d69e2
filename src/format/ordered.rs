//! Jobs run on the thread pool whose results come back in the order the jobs were sent.
//!
//! The encoder reads its input on one thread and must write chunks in input order. Sent as
//! batches of 8 MiB, two at a time, the pool idled at every batch's tail and whenever reading
//! the next batch took longer than encoding one (MiniLM: the pool busy for about half of the
//! encode's wall time). Small jobs sent as soon as their input is read keep the pool fed while
//! the sender reads and writes, and the sender bounds what is in flight by bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, Sender, channel};

/// Results of jobs on the rayon pool, taken back in sending order.
pub(super) struct OrderedJobs<R> {
    tx: Sender<(u64, std::thread::Result<R>)>,
    rx: Receiver<(u64, std::thread::Result<R>)>,
    /// Sequence number of the next job sent.
    sent: u64,
    /// Results that came back ahead of an older job's.
    early: BTreeMap<u64, std::thread::Result<R>>,
    /// The weight of each job not taken back yet, oldest first.
    weights: VecDeque<u64>,
    in_flight: u64,
}

impl<R: Send + 'static> OrderedJobs<R> {
    pub(super) fn new() -> Self {
        let (tx, rx) = channel();
        OrderedJobs {
            tx,
            rx,
            sent: 0,
            early: BTreeMap::new(),
            weights: VecDeque::new(),
            in_flight: 0,
        }
    }

    /// Runs `job` on the pool. `weight` (the bytes it holds) counts toward
    /// [`OrderedJobs::in_flight`] until its result is taken back.
    pub(super) fn send(&mut self, weight: u64, job: impl FnOnce() -> R + Send + 'static) {
        let (tx, seq) = (self.tx.clone(), self.sent);
        self.sent += 1;
        self.weights.push_back(weight);
        self.in_flight += weight;
        rayon::spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            // The receiver is gone only when the sender gave up after an error.
            let _ = tx.send((seq, result));
        });
    }

    /// The weight of the jobs sent and not taken back.
    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The oldest job's result if it is done, without waiting.
    pub(super) fn try_next(&mut self) -> Option<R> {
        while let Ok((seq, result)) = self.rx.try_recv() {
            self.early.insert(seq, result);
        }
        let result = self.early.remove(&self.oldest()?)?;
        Some(self.taken(result))
    }

    /// The oldest job's result, waiting for it; `None` when no job is left.
    pub(super) fn next(&mut self) -> Option<R> {
        let oldest = self.oldest()?;
        let result = loop {
            if let Some(result) = self.early.remove(&oldest) {
                break result;
            }
            let (seq, result) = self.rx.recv().expect("this holds a sender");
            self.early.insert(seq, result);
        };
        Some(self.taken(result))
    }

    fn oldest(&self) -> Option<u64> {
        (!self.weights.is_empty()).then(|| self.sent - self.weights.len() as u64)
    }

    /// Counts the oldest job as taken back; a job that panicked panics here, on the sender's
    /// thread, as it would have had the sender run it.
    fn taken(&mut self, result: std::thread::Result<R>) -> R {
        self.in_flight -= self.weights.pop_front().expect("a job was in flight");
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn results_come_back_in_sending_order_whatever_order_jobs_end_in() {
        let mut jobs = OrderedJobs::new();
        assert_eq!(jobs.next(), None);
        for i in 0..20u64 {
            // Early jobs sleep longest, so later ones end first.
            jobs.send(i, move || {
                std::thread::sleep(Duration::from_millis(20 - i));
                i
            });
        }
        assert_eq!(jobs.in_flight(), (0..20).sum::<u64>());
        let mut got = Vec::new();
        while let Some(i) = jobs.next() {
            got.push(i);
            if let Some(j) = jobs.try_next() {
                got.push(j);
            }
        }
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert_eq!(jobs.in_flight(), 0);
    }

    #[test]
    fn try_next_does_not_skip_an_unfinished_older_job() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let mut jobs = OrderedJobs::new();
        jobs.send(1, move || {
            wait.recv().unwrap();
            "old"
        });
        jobs.send(1, || "new");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(jobs.try_next(), None, "the older job is still running");
        assert_eq!(jobs.in_flight(), 2);
        release.send(()).unwrap();
        assert_eq!(jobs.next(), Some("old"));
        assert_eq!(jobs.next(), Some("new"));
    }

    #[test]
    fn a_job_that_panics_panics_on_the_sender_when_taken_back() {
        let mut jobs = OrderedJobs::new();
        jobs.send(1, || -> u8 { panic!("job failed") });
        jobs.send(1, || 2);
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| jobs.next()));
        assert!(taken.is_err());
        assert_eq!(jobs.next(), Some(2), "later jobs still come back");
    }
}

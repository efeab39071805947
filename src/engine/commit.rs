//! Group commit: one flusher per journal, so every run waiting for the disk at the same
//! moment is answered by one flush instead of queueing its own.
//!
//! A run appends its event (in memory), then asks [`GroupCommit::durable`] and waits. The
//! flusher thread takes every request queued by then, flushes the journal once, and answers
//! all of them; requests that arrive during that flush ride the next one. A step therefore
//! waits for at most the flush in flight plus its own, whatever the number of runs.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::journal::{Journal, JournalError};

/// One waiter's answer: `Err` holds the flush's error, said once per waiter.
type Answer = Result<(), String>;

/// A request to the flusher: answer someone when the flush covering their append is done,
/// or just flush soon (nobody waits).
enum Request {
    Wait(oneshot::Sender<Answer>),
    Soon,
}

/// The flusher of one journal. Dropping it flushes what was asked for and stops the thread.
pub struct GroupCommit {
    journal: Arc<dyn Journal>,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for a journal.
    pub fn start(journal: Arc<dyn Journal>) -> Self {
        let (requests, queue) = mpsc::channel();
        let flushed = Arc::clone(&journal);
        let thread = std::thread::Builder::new()
            .name("lazarus-journal-commit".into())
            .spawn(move || flush_loop(flushed.as_ref(), &queue))
            .ok();
        Self {
            journal,
            requests: thread.as_ref().map(|_| requests),
            thread,
        }
    }

    /// Waits until everything appended before this call is on disk.
    pub async fn durable(&self) -> Result<(), JournalError> {
        let (answer, answered) = oneshot::channel();
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(Request::Wait(answer)).is_ok());
        if !sent {
            // No flusher (the thread could not start, or is gone): flush here.
            return self.journal.flush();
        }
        match answered.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(JournalError::SharedFlush(message)),
            Err(_) => self.journal.flush(),
        }
    }

    /// Asks for a flush soon without waiting for it: a crash a moment later still finds
    /// what was appended, yet nobody is held up by the disk.
    pub fn soon(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(Request::Soon);
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the loop after it has answered everything queued; joining
        // means the journal's store is released when the engine is gone.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flush_loop(journal: &dyn Journal, queue: &mpsc::Receiver<Request>) {
    while let Ok(first) = queue.recv() {
        let mut waiters = Vec::new();
        let mut take = |request: Request| {
            if let Request::Wait(answer) = request {
                waiters.push(answer);
            }
        };
        take(first);
        while let Ok(more) = queue.try_recv() {
            take(more);
        }
        let answer: Answer = journal.flush().map_err(|e| e.to_string());
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::records::{Event, EventRecord, RunRecord};
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A journal whose flushes take 5 ms (so requests pile up) and remember which events
    /// each covered: those appended before it began. With `broken`, every flush fails.
    #[derive(Default)]
    struct Recording {
        broken: bool,
        flushes: AtomicUsize,
        appended: Mutex<Vec<i64>>,
        durable: Mutex<HashSet<i64>>,
    }

    impl Journal for Recording {
        fn create_run(&self, _: &RunRecord) -> Result<(), JournalError> {
            Ok(())
        }
        fn run(&self, _: &str) -> Result<Option<RunRecord>, JournalError> {
            Ok(None)
        }
        fn runs(&self) -> Result<Vec<RunRecord>, JournalError> {
            Ok(vec![])
        }
        fn append(&self, _: &str, event: &EventRecord) -> Result<(), JournalError> {
            self.appended.lock().unwrap().push(event.at_us);
            Ok(())
        }
        fn flush(&self) -> Result<(), JournalError> {
            if self.broken {
                return Err(JournalError::Store {
                    path: "/state/journal".into(),
                    message: "No space left on device".into(),
                });
            }
            let covered = self.appended.lock().unwrap().clone();
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.durable.lock().unwrap().extend(covered);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn events(&self, _: &str) -> Result<Vec<EventRecord>, JournalError> {
            Ok(vec![])
        }
        fn lock_holder(&self, _: &str) -> Result<Option<String>, JournalError> {
            Ok(None)
        }
        fn acquire_lock(&self, _: &str, _: &str) -> Result<(), JournalError> {
            Ok(())
        }
        fn release_lock(&self, _: &str, _: &str) -> Result<(), JournalError> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_flushes_and_each_append_is_durable_when_answered() {
        let journal = Arc::new(Recording::default());
        let commit = Arc::new(GroupCommit::start(journal.clone()));
        let mut tasks = Vec::new();
        for task in 0..50i64 {
            let (journal, commit) = (journal.clone(), commit.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..4 {
                    let mine = task * 10 + round;
                    let record = EventRecord {
                        at_us: mine,
                        event: Event::Succeeded,
                    };
                    journal.append("r", &record).unwrap();
                    commit.durable().await.unwrap();
                    assert!(
                        journal.durable.lock().unwrap().contains(&mine),
                        "event {mine} was answered before a flush covered it"
                    );
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let flushes = journal.flushes.load(Ordering::SeqCst);
        assert!(
            flushes < 100,
            "200 durable appends took {flushes} flushes: they were not grouped"
        );
    }

    #[tokio::test]
    async fn a_failed_flush_reaches_every_waiter() {
        let journal = Arc::new(Recording {
            broken: true,
            ..Recording::default()
        });
        let commit = GroupCommit::start(journal);
        let (a, b) = tokio::join!(commit.durable(), commit.durable());
        for result in [a, b] {
            let message = result.unwrap_err().to_string();
            assert!(message.contains("No space left on device"), "{message}");
            assert!(message.contains("/state/journal"), "{message}");
        }
    }
}

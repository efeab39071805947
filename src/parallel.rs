//! An ordered parallel pipeline: one thread reads items in order, several threads transform
//! them, and the caller consumes the results in the original order — with a fixed number
//! of items in flight, so memory stays bounded whatever the input size.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

/// Threads worth using for CPU-bound work on this machine.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Reads items with `source` (on its own thread) until it yields `None`, transforms each with
/// `work` on `threads` threads, and hands the results to `sink` in source order. At most
/// `in_flight` items exist between `source` and `sink` at any time. The first error from any
/// stage stops the pipeline and is returned.
pub fn ordered<T, R, E, S, W, K>(
    mut source: S,
    threads: usize,
    in_flight: usize,
    work: W,
    mut sink: K,
) -> Result<(), E>
where
    T: Send,
    R: Send,
    E: Send,
    S: FnMut() -> Result<Option<T>, E> + Send,
    W: Fn(T) -> Result<R, E> + Sync,
    K: FnMut(R) -> Result<(), E>,
{
    let threads = threads.max(1);
    let in_flight = in_flight.max(threads);
    let (permit_tx, permit_rx) = sync_channel::<()>(in_flight);
    let (job_tx, job_rx) = sync_channel::<(u64, T)>(in_flight);
    let (result_tx, result_rx) = sync_channel::<(u64, Result<R, E>)>(in_flight);
    let job_rx: Arc<Mutex<Receiver<(u64, T)>>> = Arc::new(Mutex::new(job_rx));
    std::thread::scope(|scope| {
        let reader_results = result_tx.clone();
        scope.spawn(move || {
            let mut seq = 0u64;
            loop {
                // One permit per item in flight; the sink returns them.
                if permit_tx.send(()).is_err() {
                    return;
                }
                match source() {
                    Ok(Some(item)) => {
                        if job_tx.send((seq, item)).is_err() {
                            return;
                        }
                        seq += 1;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = reader_results.send((seq, Err(e)));
                        return;
                    }
                }
            }
        });
        for _ in 0..threads {
            let jobs = Arc::clone(&job_rx);
            let results = result_tx.clone();
            let work = &work;
            scope.spawn(move || {
                loop {
                    let next = jobs
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .recv();
                    let Ok((seq, item)) = next else { return };
                    if results.send((seq, work(item))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(result_tx);
        // Only the workers may hold the job queue, so the reader stops when they do.
        drop(job_rx);
        let mut pending: BTreeMap<u64, Result<R, E>> = BTreeMap::new();
        let mut next = 0u64;
        let outcome = (|| {
            for (seq, result) in result_rx.iter() {
                pending.insert(seq, result);
                while let Some(result) = pending.remove(&next) {
                    sink(result?)?;
                    next += 1;
                    let _ = permit_rx.try_recv();
                }
            }
            Ok(())
        })();
        // Dropping the receivers makes every other stage stop at its next send.
        drop(result_rx);
        drop(permit_rx);
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_arrive_in_order_with_bounded_flight() {
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut n = 0u32;
        let mut out = Vec::new();
        ordered(
            || {
                n += 1;
                if n > 500 {
                    return Ok::<_, String>(None);
                }
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                Ok(Some(n))
            },
            4,
            8,
            |x| {
                if x % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(x * 2)
            },
            |x| {
                live.fetch_sub(1, Ordering::SeqCst);
                out.push(x);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (1..=500).map(|x| x * 2).collect::<Vec<_>>());
        assert!(
            peak.load(Ordering::SeqCst) <= 9,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn first_error_stops_everything() {
        let mut n = 0;
        let result = ordered(
            || {
                n += 1;
                Ok::<_, String>(Some(n))
            },
            3,
            6,
            |x| {
                if x == 40 {
                    Err(format!("bad {x}"))
                } else {
                    Ok(x)
                }
            },
            |_| Ok(()),
        );
        assert_eq!(result, Err("bad 40".to_string()));
    }
}

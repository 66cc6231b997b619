//! Log lines gathered in memory and written in batches by a thread of their own.
//!
//! Every GetToken writes an audit line. Written one `write(2)` each, those system calls
//! cost a cache hit a fifth of its throughput (`scripts/bench`, `RUST_LOG=info` against
//! `warn`); gathered for a few milliseconds, a busy server makes a few hundred writes a
//! second instead of tens of thousands. Lines stay in order, since every log line goes
//! through the same buffer.
//!
//! What it costs: a line reaches the output up to [`GATHER`] later, and a process killed
//! with SIGKILL loses the lines of its last few milliseconds (a clean exit, and a panic,
//! write everything out). If the output cannot keep up, a writer that finds more than
//! [`LIMIT`] waiting writes it out itself, so a blocked output slows callers as it always
//! did rather than growing memory without bound.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer thread waits for more lines after the first of a batch.
pub(crate) const GATHER: Duration = Duration::from_millis(5);
/// Bytes waiting beyond which a caller writes them out itself.
pub(crate) const LIMIT: usize = 1 << 20;

/// A [`MakeWriter`] whose lines are written to `W` in batches; cheap to clone.
pub(crate) struct BatchWriter<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
}

impl<W: Write + Send + 'static> Clone for BatchWriter<W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<W> {
    /// Lines not yet handed to the output.
    pending: Mutex<Pending>,
    /// Signalled when the first line of a batch arrives, and when the guard closes.
    arrived: Condvar,
    /// The output. Taken after `pending`, never the other way round.
    output: Mutex<W>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// Writes out what is waiting when dropped, and stops the writer thread.
pub(crate) struct FlushGuard<W: Write + Send + 'static> {
    writer: BatchWriter<W>,
    thread: Option<thread::JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the bytes as they were: still worth writing.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Write + Send + 'static> BatchWriter<W> {
    /// A writer to `output`, with the thread that writes its batches.
    pub(crate) fn new(output: W) -> io::Result<(Self, FlushGuard<W>)> {
        let writer = Self {
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                arrived: Condvar::new(),
                output: Mutex::new(output),
            }),
        };
        let shared = writer.shared.clone();
        let thread = thread::Builder::new()
            .name("tokenvend-log".into())
            .spawn(move || shared.run())?;
        let guard = FlushGuard {
            writer: writer.clone(),
            thread: Some(thread),
        };
        Ok((writer, guard))
    }

    /// Writes out everything waiting now.
    pub(crate) fn flush(&self) {
        self.shared.write_out(lock(&self.shared.pending));
    }
}

impl<W: Write + Send + 'static> Shared<W> {
    fn run(&self) {
        loop {
            let mut pending = lock(&self.pending);
            while pending.bytes.is_empty() && !pending.closed {
                pending = self
                    .arrived
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pending.closed {
                self.write_out(pending);
                return;
            }
            drop(pending);
            thread::sleep(GATHER);
            self.write_out(lock(&self.pending));
        }
    }

    /// Takes what is waiting and writes it. The output's lock is taken before the
    /// buffer's is released, so that two batches are written in the order they were taken.
    fn write_out(&self, mut pending: MutexGuard<'_, Pending>) {
        if pending.bytes.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut pending.bytes);
        let mut output = lock(&self.output);
        drop(pending);
        // A log line that cannot be written has nowhere to report its failure.
        let _ = output.write_all(&batch);
        let _ = output.flush();
    }
}

impl<W: Write + Send + 'static> Write for &BatchWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut pending = lock(&self.shared.pending);
        if pending.closed {
            drop(pending);
            lock(&self.shared.output).write_all(bytes)?;
            return Ok(bytes.len());
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(bytes);
        if pending.bytes.len() > LIMIT {
            self.shared.write_out(pending);
        } else if first {
            drop(pending);
            self.shared.arrived.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for BatchWriter<W> {
    type Writer = &'a Self;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl<W: Write + Send + 'static> Drop for FlushGuard<W> {
    fn drop(&mut self) {
        lock(&self.writer.shared.pending).closed = true;
        self.writer.shared.arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.writer.flush();
    }
}

#[cfg(test)]
mod tests;

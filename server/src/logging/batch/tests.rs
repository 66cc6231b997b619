use std::{
    io::{self, Write as _},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use super::*;

/// An output that records what was written, and in how many calls.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<(Vec<u8>, usize)>>);

impl Recording {
    fn text(&self) -> String {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(inner.0.clone()).expect("UTF-8")
    }

    fn writes(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

impl io::Write for Recording {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0.extend_from_slice(buf);
        inner.1 += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn lines_from_many_threads_arrive_whole_in_order_and_batched() {
    let output = Recording::default();
    let (writer, guard) = BatchWriter::new(output.clone()).expect("a writer thread");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let writer = writer.clone();
            thread::spawn(move || {
                for i in 0..2_000 {
                    let line = format!("thread {t} line {i:05} {}\n", "x".repeat(100));
                    (&writer).write_all(line.as_bytes()).expect("buffered");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a writer thread finished");
    }
    drop(guard);

    let text = output.text();
    assert_eq!(text.lines().count(), 8_000);
    for t in 0..4 {
        let prefix = format!("thread {t} line ");
        let numbers: Vec<usize> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| rest[..5].parse().expect("a whole line"))
            .collect();
        assert_eq!(numbers, (0..2_000).collect::<Vec<_>>(), "thread {t}");
    }
    assert!(
        output.writes() < 800,
        "8,000 lines took {} writes to the output",
        output.writes()
    );
}

#[test]
fn a_line_reaches_the_output_soon_without_a_flush() {
    let output = Recording::default();
    let (writer, _guard) = BatchWriter::new(output.clone()).expect("a writer thread");
    (&writer).write_all(b"one line\n").expect("buffered");
    let started = Instant::now();
    while output.text().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the line never arrived"
        );
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(output.text(), "one line\n");
}

#[test]
fn waiting_bytes_stay_bounded_when_the_output_is_slow() {
    /// An output that takes 20 ms per write.
    struct Slow(Recording);
    impl io::Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            thread::sleep(Duration::from_millis(20));
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let output = Recording::default();
    let (writer, guard) = BatchWriter::new(Slow(output.clone())).expect("a writer thread");
    let line = [b'y'; 1023]
        .iter()
        .chain(b"\n")
        .copied()
        .collect::<Vec<_>>();
    let mut most = 0;
    for _ in 0..(4 * LIMIT / line.len()) {
        (&writer).write_all(&line).expect("buffered");
        most = most.max(lock(&writer.shared.pending).bytes.len());
    }
    assert!(most <= LIMIT + line.len(), "{most} bytes waited");
    drop(guard);
    assert_eq!(output.text().len(), 4 * LIMIT);
}

#[test]
fn after_the_guard_is_dropped_lines_go_straight_out() {
    let output = Recording::default();
    let (writer, guard) = BatchWriter::new(output.clone()).expect("a writer thread");
    (&writer).write_all(b"before\n").expect("buffered");
    drop(guard);
    assert_eq!(output.text(), "before\n", "the guard writes out what waits");
    (&writer).write_all(b"after\n").expect("written");
    assert_eq!(output.text(), "before\nafter\n");
}

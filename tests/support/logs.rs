//! Everything the test binary logs, at `trace` for every crate, captured in memory so a
//! test can assert what reached (or never reached) a log line. The subscriber is global to
//! the binary: tests running at once share the capture, so each looks for values of its own.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED: OnceLock<Captured> = OnceLock::new();

/// The capture, installing the subscriber on first use.
pub struct Logs(Captured);

impl Logs {
    pub fn capture() -> Self {
        let captured = CAPTURED.get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            tracing_subscriber::fmt()
                .with_env_filter("trace")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            captured
        });
        Self(captured.clone())
    }

    /// All lines so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned()
    }

    /// The audit lines so far.
    pub fn audit(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("tokenvend::audit"))
            .map(str::to_owned)
            .collect()
    }
}

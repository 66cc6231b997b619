use std::{
    fmt,
    io::{self, Write},
    sync::{Arc, Mutex, PoisonError},
};

use tracing_subscriber::{Layer as _, fmt::MakeWriter, layer::SubscriberExt as _};

use super::*;

/// What a layer wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(bytes.clone()).expect("log lines are UTF-8")
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Captured {
    type Writer = Self;

    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

struct Shown(&'static str);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The two audit events, as `audit::served` and `audit::refused` write them, with
/// `caller` as the caller's name.
fn events(caller: &'static str) {
    tracing::info!(
        target: "tokenvend::audit",
        message = "token served",
        rpc = "GetToken",
        caller = %Shown(caller),
        profile = "orders-api",
        outcome = "served",
        source = "cache",
        token_sha256 = %Shown("0123456789abcdef"),
    );
    tracing::info!(
        target: "tokenvend::audit",
        rpc = "WatchToken",
        caller = %Shown(caller),
        profile = "odd \"name\" \\ here",
        outcome = "not_found",
        reason = %Shown("not in the profile's `allow` list"),
        "no token"
    );
}

fn ours(format: LogFormat, caller: &'static str) -> String {
    let out = Captured::default();
    let subscriber = tracing_subscriber::registry().with(AuditLines::new(format, out.clone()));
    tracing::subscriber::with_default(subscriber, || events(caller));
    out.text()
}

fn theirs(format: LogFormat, caller: &'static str) -> String {
    let out = Captured::default();
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(out.clone());
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || events(caller));
    out.text()
}

/// A line without its timestamp, which differs between two writers by a few microseconds.
fn untimed(line: &str) -> &str {
    let at = line.find('Z').expect("a timestamp ending in Z");
    &line[at + 1..]
}

const CALLER: &str = "spiffe://cluster.local/ns/orders/sa/api";

#[test]
fn text_lines_are_shaped_as_the_other_log_lines() {
    let (ours, theirs) = (
        ours(LogFormat::Text, CALLER),
        theirs(LogFormat::Text, CALLER),
    );
    assert_eq!(ours.lines().count(), 2, "{ours}");
    for (a, b) in ours.lines().zip(theirs.lines()) {
        assert_eq!(untimed(a), untimed(b));
        assert_eq!(a.len(), b.len(), "the timestamps are as long:\n{a}\n{b}");
    }
    assert!(ours.contains(" INFO tokenvend::audit: token served rpc=\"GetToken\" caller="));
}

#[test]
fn json_lines_are_shaped_as_the_other_log_lines() {
    let (ours, theirs) = (
        ours(LogFormat::Json, CALLER),
        theirs(LogFormat::Json, CALLER),
    );
    assert_eq!(ours.lines().count(), 2, "{ours}");
    for (a, b) in ours.lines().zip(theirs.lines()) {
        let mut a: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(a).expect("our line is JSON");
        let mut b: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(b).expect("their line is JSON");
        let (ta, tb) = (a.remove("timestamp"), b.remove("timestamp"));
        assert_eq!(a, b);
        let (ta, tb) = (ta.expect("a timestamp"), tb.expect("a timestamp"));
        assert_eq!(ta.as_str().map(str::len), tb.as_str().map(str::len));
        // The same key order, for people reading the raw lines.
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    }
}

#[test]
fn a_caller_name_cannot_forge_a_line() {
    let forged = "x\n2026-11-23T00:00:00.000000Z  INFO tokenvend::audit: token served \"\u{7}";
    let text = ours(LogFormat::Text, forged);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("caller=x\\n2026"), "{text}");
    let json = ours(LogFormat::Json, forged);
    assert_eq!(json.lines().count(), 2, "{json}");
    for line in json.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(value["caller"], forged);
    }
}

#[test]
fn c1_controls_are_escaped_and_other_letters_kept() {
    // U+0085 (next line) ends a line for some readers.
    let text = ours(LogFormat::Text, "caf\u{e9}\u{85}x \u{a0}\u{9f}");
    assert!(
        text.contains("caller=caf\u{e9}\\u{85}x \\u{a0}\\u{9f} "),
        "{text}"
    );
    for text in [CALLER, "caf\u{e9}", "\u{a0}\u{e9}"] {
        assert!(!has_control(text), "{text:?}");
    }
    for text in ["\u{0}", "a\u{7f}", "\u{80}", "\u{9f}", "\u{e9}\u{85}", "\t"] {
        assert!(has_control(text), "{text:?}");
    }
}

#[test]
fn dates_are_utc_and_gregorian() {
    for (secs, expected) in [
        (0, "1970-01-01T00:00:00"),
        (951_782_400, "2000-02-29T00:00:00"),
        (1_795_426_221, "2026-11-23T09:30:21"),
        (4_107_542_399, "2100-02-28T23:59:59"),
        (253_402_300_799, "9999-12-31T23:59:59"),
    ] {
        let mut text = String::new();
        date_time(&mut text, secs);
        assert_eq!(text, expected, "{secs}");
    }
}

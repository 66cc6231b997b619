//! Audit events as log lines, written by a layer of their own rather than by
//! `tracing_subscriber::fmt`. Every GetToken writes one, so its cost is the cost of a cache
//! hit: the general-purpose formatter spent about 15,000 instructions on it (callgrind),
//! several times what the rest of a hit costs. This layer writes the same line, in the same
//! text or JSON shape as the other log lines, with the date formatted once per second and
//! plain strings copied without a pass through `fmt`.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{fmt::MakeWriter, layer::Context};

use super::LogFormat;

/// A layer that writes each event it is given as one line, shaped as
/// `tracing_subscriber::fmt` would in `format` (without colours, span context or thread
/// names, which the server's log lines do not carry either).
pub struct AuditLines<W> {
    format: LogFormat,
    writer: W,
}

impl<W> AuditLines<W> {
    /// Lines in `format`, each written to a writer from `writer` in one `write_all`.
    pub fn new(format: LogFormat, writer: W) -> Self {
        Self { format, writer }
    }
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// The second a worker last wrote a line in, and that second as `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl<S, W> tracing_subscriber::Layer<S> for AuditLines<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let write = |line: &mut String| {
            line.clear();
            self.format_line(event, line);
            // A log line that cannot be written has nowhere to report its failure.
            let _ = self.writer.make_writer().write_all(line.as_bytes());
        };
        // The buffer is taken only for the line; if a field's Display logged (it does
        // not), the nested event would get a buffer of its own.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => write(&mut line),
            Err(_) => write(&mut String::new()),
        });
    }
}

impl<W> AuditLines<W> {
    fn format_line(&self, event: &Event<'_>, line: &mut String) {
        let meta = event.metadata();
        match self.format {
            LogFormat::Text => {
                timestamp(line);
                line.push_str(match *meta.level() {
                    Level::ERROR => " ERROR ",
                    Level::WARN => "  WARN ",
                    Level::INFO => "  INFO ",
                    Level::DEBUG => " DEBUG ",
                    Level::TRACE => " TRACE ",
                });
                line.push_str(meta.target());
                line.push(':');
                event.record(&mut TextFields { line });
            }
            LogFormat::Json => {
                line.push_str("{\"timestamp\":\"");
                timestamp(line);
                line.push_str("\",\"level\":\"");
                line.push_str(meta.level().as_str());
                line.push('"');
                event.record(&mut JsonFields {
                    line,
                    scratch: String::new(),
                });
                line.push_str(",\"target\":");
                json_string(line, meta.target());
                line.push('}');
            }
        }
        line.push('\n');
    }
}

/// `name=value` pairs as the text formatter writes them: the message bare, strings
/// quoted, `%`-values as they display. Unlike that formatter, a displayed value with a
/// control character in it is escaped, so that no caller-supplied name (a certificate's
/// SAN, a token's subject) can start a forged line.
struct TextFields<'a> {
    line: &'a mut String,
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.line.push(' ');
            self.line.push_str(value);
            return;
        }
        self.line.push(' ');
        self.line.push_str(field.name());
        self.line.push('=');
        if value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
        {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.line.push(' ');
        let start = self.line.len();
        if field.name() != "message" {
            self.line.push_str(field.name());
            self.line.push('=');
        }
        let _ = write!(self.line, "{value:?}");
        if has_control(&self.line[start..]) {
            let written = self.line.split_off(start);
            let _ = write!(self.line, "{}", written.escape_debug());
        }
    }
}

/// Whether `text` has a control character. The bytes are scanned first, since the
/// answer is almost always no: C0 and DEL are single bytes, and the C1 controls
/// (U+0080 to U+009F) all start with 0xC2.
fn has_control(text: &str) -> bool {
    text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) && text.contains(char::is_control)
}

/// Fields as members of the JSON object, after `timestamp` and `level`, as the JSON
/// formatter flattens them.
struct JsonFields<'a> {
    line: &'a mut String,
    scratch: String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        json_string(self.line, &self.scratch);
    }
}

/// `value` as a JSON string.
fn json_string(line: &mut String, value: &str) {
    line.push('"');
    let mut plain = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 | 0x7f => "",
            _ => continue,
        };
        line.push_str(&value[plain..i]);
        if escape.is_empty() {
            let _ = write!(line, "\\u{b:04x}");
        } else {
            line.push_str(escape);
        }
        plain = i + 1;
    }
    line.push_str(&value[plain..]);
    line.push('"');
}

/// Now, in UTC, as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn timestamp(line: &mut String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            *second = secs;
            text.clear();
            date_time(text, secs);
        }
        line.push_str(text);
    });
    let mut micros = now.subsec_micros();
    let mut digits = *b".000000Z";
    for digit in digits[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    line.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SS` (proleptic Gregorian, UTC).
fn date_time(out: &mut String, secs: u64) {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
}

/// The date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;

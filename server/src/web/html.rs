//! The admin page's HTML, written by hand: no template engine, no script. Every value that
//! did not come from this file goes through [`escape`] (or [`Text`], which escapes when
//! formatted), so that a profile name, a provider's error text or a query parameter can
//! never become markup.

use std::{
    fmt::{self, Display, Write as _},
    time::{Duration, SystemTime},
};

/// `text` with the characters HTML gives meaning to replaced by references; safe in
/// element content and in double- or single-quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business on the page.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A value escaped as it is formatted.
pub(crate) struct Text<'a>(pub &'a str);

impl Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// Text from outside (a provider's error), cut to `max` characters, then escaped.
pub(crate) fn shortened(text: &str, max: usize) -> String {
    let mut cut: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        cut.push('…');
    }
    escape(&cut)
}

/// A whole page around `body`, with the style sheet and nothing else loaded.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} · tokenvend</title>\n<link rel=\"stylesheet\" href=\"/admin.css\">\n</head>\n<body>\n<header><a href=\"/\">tokenvend</a></header>\n<main>\n{body}</main>\n</body>\n</html>\n",
        Text(title)
    )
}

/// A page that says one thing, for refusals and errors.
pub(crate) fn message(title: &str, message_html: &str) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1>\n<p id=\"message\">{message_html}</p>\n<p><a href=\"/\">Back to the profiles</a></p>\n",
            Text(title)
        ),
    )
}

/// A time left, as a person reads it: `4m 10s`, `2h 5m`, `3d 4h`.
pub(crate) fn duration(left: Duration) -> String {
    let s = left.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// A moment, in UTC to the second.
pub(crate) fn moment(at: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.replace('T', " ").replace('Z', " UTC")
}

/// A form that posts to `action` with the CSRF token and one button.
pub(crate) fn button_form(action: &str, csrf: &str, label: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">{}</button></form>",
        Text(action),
        Text(csrf),
        Text(label)
    );
    out
}

/// The style sheet at `/admin.css`: the CSP allows styles from this origin only.
pub(crate) const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#1b1f24;padding:.6rem 1.2rem}header a{color:#fff;font-weight:600;text-decoration:none}
main{padding:1rem 1.2rem;max-width:80rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #d0d7de;padding:.45rem .6rem;text-align:left;vertical-align:top;font-size:.92rem}
th{background:#eaeef2}
td.state{font-weight:600}
tr[data-state=valid] td.state{color:#1a7f37}tr[data-state=stale] td.state{color:#9a6700}
tr[data-state=failed] td.state,tr[data-state=needs-re-authorization] td.state{color:#cf222e}
td.error{max-width:28rem;word-break:break-word;color:#57606a}
#notice,#connected{background:#dafbe1;border:1px solid #4ac26b;padding:.6rem;border-radius:6px}
#message{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem;border-radius:6px}
form{display:inline;margin:0}button{cursor:pointer}
.who{float:right;color:#fff;font-size:.85rem}.who form{margin-left:.6rem}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert('x')</script> & "q""#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("a\u{0}b\u{1b}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(Text("<b>").to_string(), "&lt;b&gt;");
        let form = button_form("/authorize/a\"b", "t<", "Go");
        assert!(form.contains("action=\"/authorize/a&quot;b\""), "{form}");
        assert!(form.contains("value=\"t&lt;\""), "{form}");
    }

    #[test]
    fn outside_text_is_cut_before_it_is_escaped() {
        assert_eq!(shortened("<<<<", 2), "&lt;&lt;…");
        assert_eq!(shortened("ok", 10), "ok");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(250)), "4m 10s");
        assert_eq!(duration(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(duration(Duration::from_secs(100_000)), "1d 3h");
    }
}

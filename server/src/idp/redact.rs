//! Turning provider text (an `error_description`, an error code, a content type) into a
//! short excerpt that is safe to show: no secret of the request in any form it travelled
//! in, no control or invisible characters, a bounded length.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
};
use url::form_urlencoded;
use zeroize::Zeroizing;

/// The most characters of provider text an error carries.
pub(super) const MAX_EXCERPT_CHARS: usize = 200;

/// What stands in for a secret.
const REDACTED: &str = "<redacted>";

/// The values a request carried that must not come back out through an error, and the
/// encodings they travelled in.
///
/// Each value is matched with every byte allowed as itself or percent-encoded in either
/// hex case, and a space also as `+`: one pattern covers the raw value, its
/// `application/x-www-form-urlencoded` form (`~` as `%7E`), a lower-case re-encoding, and
/// any mix a provider's echo makes of them. The HTTP Basic credentials are matched as
/// Base64 (standard and URL-safe; the unpadded form is a prefix of the padded one).
///
/// The needles are the secrets themselves (and their Base64 forms), so they are wiped on
/// drop like every other copy of a secret.
#[derive(Default)]
pub(crate) struct Redactor {
    needles: Vec<Zeroizing<Vec<u8>>>,
}

impl Redactor {
    /// Adds a secret value (a client secret, a refresh token, a client assertion, a
    /// companion header value).
    pub(crate) fn secret(&mut self, value: &str) {
        if !value.is_empty() {
            self.needles.push(Zeroizing::new(value.as_bytes().to_vec()));
        }
    }

    /// Adds the HTTP Basic credentials of `id` and `secret`: Base64 of the form-urlencoded
    /// pair as RFC 6749 §2.3.1 has it, and of the plain pair as some clients send it.
    pub(crate) fn basic(&mut self, id: &str, secret: &str) {
        let encode = |s: &str| {
            Zeroizing::new(form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())
        };
        for pair in [
            Zeroizing::new(format!(
                "{}:{}",
                encode(id).as_str(),
                encode(secret).as_str()
            )),
            Zeroizing::new(format!("{id}:{secret}")),
        ] {
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                self.needles
                    .push(Zeroizing::new(engine.encode(pair.as_bytes()).into_bytes()));
            }
        }
    }

    /// A short, printable excerpt of `text` with every secret replaced.
    pub(crate) fn excerpt(&self, text: &str) -> String {
        // Redacted before it is cut, so that a cut cannot leave the start of a secret; only
        // a window is searched, so a megabyte of echo costs no more than its first lines.
        let longest = self.needles.iter().map(|n| n.len()).max().unwrap_or(0);
        let window = cut(text, (MAX_EXCERPT_CHARS + 1) * 4 + longest * 3);
        sanitize(&self.redact(window))
    }

    fn redact(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len().min(1024));
        let mut copied = 0;
        let mut at = 0;
        while at < bytes.len() {
            let end = self
                .needles
                .iter()
                .filter_map(|needle| matches_at(bytes, at, needle))
                .filter(|&end| text.is_char_boundary(end))
                .max();
            match end {
                Some(end) => {
                    out.push_str(&text[copied..at]);
                    out.push_str(REDACTED);
                    copied = end;
                    at = end;
                }
                None => at += 1,
            }
        }
        out.push_str(&text[copied..]);
        out
    }
}

/// Where a match of `needle` starting at `at` ends, if there is one: each byte of the
/// needle as itself, as `%XX` in any hex case, or (a space) as `+`. A `%` in the needle
/// read as `%25` or as itself is tried both ways.
fn matches_at(text: &[u8], at: usize, needle: &[u8]) -> Option<usize> {
    let Some((&want, rest)) = needle.split_first() else {
        return Some(at);
    };
    let byte = *text.get(at)?;
    if byte == b'%'
        && let Some(hex) = text.get(at + 1..at + 3)
        && std::str::from_utf8(hex)
            .ok()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            == Some(want)
        && let Some(end) = matches_at(text, at + 3, rest)
    {
        return Some(end);
    }
    if byte == want || (byte == b'+' && want == b' ') {
        return matches_at(text, at + 1, rest);
    }
    None
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Keeps letters and digits of any script, ASCII punctuation and spaces; everything else
/// (control characters, bidi overrides, zero-width and other invisible characters) becomes
/// `?`, so that a provider cannot forge log lines or hide text. Runs of whitespace become
/// one space, and the result is at most [`MAX_EXCERPT_CHARS`] characters.
pub(super) fn sanitize(text: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    let mut space = false;
    for c in text.trim().chars() {
        let c = if c.is_whitespace() {
            if space {
                continue;
            }
            ' '
        } else if c.is_ascii_graphic() || (!c.is_ascii() && c.is_alphanumeric()) {
            c
        } else {
            '?'
        };
        space = c == ' ';
        if chars == MAX_EXCERPT_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        chars += 1;
    }
    out
}

/// An RFC 9110 `token` (§5.6.2): what an authentication scheme or a media type is made of.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A content type as shown in an error: `type/subtype` if it is one, else a placeholder,
/// so that a provider cannot pass text (or an echo) through the header.
pub(super) fn media_type(text: &str) -> String {
    let valid = text.len() <= 80
        && text
            .split_once('/')
            .is_some_and(|(kind, sub)| is_token(kind) && is_token(sub));
    if valid {
        text.to_owned()
    } else {
        "unrecognised".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const SECRET: &str = "s3cr~t pa+ss/w=rd:%&?x~ü";

    fn redactor() -> Redactor {
        let mut r = Redactor::default();
        r.secret(SECRET);
        r.basic("my client", SECRET);
        r
    }

    fn form(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    /// Lower-cases the hex digits of every `%XX`, leaving the rest as it is.
    fn lower_hex(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            out.push('%');
            out.push_str(&rest[i + 1..i + 3].to_ascii_lowercase());
            rest = &rest[i + 3..];
        }
        out + rest
    }

    #[test]
    fn every_encoding_of_a_secret_is_redacted() {
        let encoded = form(SECRET);
        assert!(encoded.contains("%7E"), "{encoded}");
        let percent20 = encoded.replace('+', "%20");
        let all_percent: String = SECRET.bytes().map(|b| format!("%{b:02x}")).collect();
        let basic = format!("{}:{}", form("my client"), encoded);
        let plain_basic = format!("my client:{SECRET}");
        let forms = [
            SECRET.to_owned(),
            encoded.clone(),
            lower_hex(&encoded),
            percent20,
            all_percent,
            STANDARD.encode(&basic),
            STANDARD_NO_PAD.encode(&basic),
            URL_SAFE.encode(&basic),
            URL_SAFE_NO_PAD.encode(&basic),
            STANDARD.encode(&plain_basic),
            URL_SAFE_NO_PAD.encode(&plain_basic),
            form(&STANDARD.encode(&basic)),
        ];
        let r = redactor();
        for secret in forms {
            let text = format!("bad client_secret={secret}&x=1 rest");
            let excerpt = r.excerpt(&text);
            assert!(
                excerpt.starts_with("bad client_secret=<redacted>"),
                "{secret} -> {excerpt}"
            );
            assert!(!excerpt.contains(&secret), "{excerpt}");
        }
    }

    #[test]
    fn a_secret_past_the_cut_cannot_leave_its_start_behind() {
        let r = redactor();
        let text = format!("{}{}", "a".repeat(MAX_EXCERPT_CHARS - 3), form(SECRET));
        let excerpt = r.excerpt(&text);
        assert!(!excerpt.contains("s3c"), "{excerpt}");
        assert!(excerpt.chars().count() <= MAX_EXCERPT_CHARS + 1);
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let r = Redactor::default();
        let excerpt = r.excerpt("line\r\nforged: yes\u{202e}evil\u{200b}\t\t tail ünïcode");
        assert_eq!(excerpt, "line forged: yes?evil? tail ünïcode");
        let long = r.excerpt(&"x".repeat(100_000));
        assert_eq!(long.chars().count(), MAX_EXCERPT_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}

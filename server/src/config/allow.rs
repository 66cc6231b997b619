//! `allow:` patterns: an identity written out, or with `*` standing for one segment
//! (`system:serviceaccount:orders:*`, `spiffe://cluster.local/ns/orders/sa/*`).

use std::fmt;

/// Separators between the segments of an identity: `:` in ServiceAccount names, `/` in
/// SPIFFE IDs.
const SEPARATORS: [char; 2] = [':', '/'];

/// One `allow:` entry, parsed once at load so that a check allocates nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    /// One segment: at least one character, none of them a separator.
    Star,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// Why an `allow:` entry cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Empty, or with spaces.
    #[error("`{0}` is not an identity: it is empty or has spaces")]
    NotIdentity(String),
    /// A `*` that is part of a segment.
    #[error(
        "`{0}`: `*` stands for a whole segment between `:` or `/`, as in `system:serviceaccount:orders:*`"
    )]
    PartialStar(String),
}

impl Pattern {
    /// Parses an entry. A `*` must be a whole segment: `orders:*` is fine, `ord*` is not.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(PatternError::NotIdentity(text.to_owned()));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut previous: Option<char> = None;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '*' {
                let starts = previous.is_none_or(|p| SEPARATORS.contains(&p));
                let ends = chars.peek().is_none_or(|n| SEPARATORS.contains(n));
                if !starts || !ends {
                    return Err(PatternError::PartialStar(text.to_owned()));
                }
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal).into()));
                }
                parts.push(Part::Star);
            } else {
                literal.push(c);
            }
            previous = Some(c);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        Ok(Self {
            text: text.into(),
            parts,
        })
    }

    /// Whether an identity matches.
    pub fn matches(&self, identity: &str) -> bool {
        let mut rest = identity;
        for part in &self.parts {
            match part {
                Part::Literal(literal) => match rest.strip_prefix(&**literal) {
                    Some(after) => rest = after,
                    None => return false,
                },
                Part::Star => {
                    let end = rest.find(SEPARATORS).unwrap_or(rest.len());
                    if end == 0 {
                        return false;
                    }
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_exactly_one_segment() {
        let sa = Pattern::parse("system:serviceaccount:orders:*").unwrap();
        assert!(sa.matches("system:serviceaccount:orders:api"));
        assert!(!sa.matches("system:serviceaccount:orders:"));
        assert!(!sa.matches("system:serviceaccount:orders:api:x"));
        assert!(!sa.matches("system:serviceaccount:billing:api"));

        let spiffe = Pattern::parse("spiffe://cluster.local/ns/*/sa/api").unwrap();
        assert!(spiffe.matches("spiffe://cluster.local/ns/orders/sa/api"));
        assert!(!spiffe.matches("spiffe://cluster.local/ns/a/b/sa/api"));
        assert!(!spiffe.matches("spiffe://cluster.local/ns/orders/sa/apix"));
    }

    #[test]
    fn exact_entries_match_only_themselves() {
        let exact = Pattern::parse("system:serviceaccount:orders:api").unwrap();
        assert!(exact.matches("system:serviceaccount:orders:api"));
        assert!(!exact.matches("system:serviceaccount:orders:api2"));
        assert!(!exact.matches("system:serviceaccount:orders"));
    }

    #[test]
    fn partial_stars_and_blanks_are_refused() {
        for bad in ["", "orders:ap*", "a b", "**", "x:*y"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Resource patterns: `seats.departure.$id` binds `id`; a final `>` matches one or more parts.

use std::collections::BTreeMap;

/// Path parameters bound by a pattern (`$id` → `id`; a `>` tail is bound to `>`).
pub type PathParams = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
    Tail,
}

/// A parsed resource pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

/// Why a pattern is rejected at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty part in pattern {0:?}")]
    EmptyPart(String),
    #[error("`>` must be the last part of pattern {0:?}")]
    TailNotLast(String),
    #[error("invalid part {1:?} in pattern {0:?}")]
    InvalidPart(String, String),
    #[error("duplicate placeholder {1:?} in pattern {0:?}")]
    DuplicateParam(String, String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let tokens: Vec<&str> = text.split('.').collect();
        let mut parts = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(PatternError::EmptyPart(text.to_owned()));
            }
            let part = if *t == ">" {
                if i + 1 != tokens.len() {
                    return Err(PatternError::TailNotLast(text.to_owned()));
                }
                Part::Tail
            } else if let Some(name) = t.strip_prefix('$') {
                if !res_protocol::is_valid_rid_part(name) {
                    return Err(PatternError::InvalidPart(text.to_owned(), (*t).to_owned()));
                }
                if parts.iter().any(|p| matches!(p, Part::Param(n) if n == name)) {
                    return Err(PatternError::DuplicateParam(text.to_owned(), name.to_owned()));
                }
                Part::Param(name.to_owned())
            } else if res_protocol::is_valid_rid_part(t) {
                Part::Literal((*t).to_owned())
            } else {
                return Err(PatternError::InvalidPart(text.to_owned(), (*t).to_owned()));
            };
            parts.push(part);
        }
        Ok(Pattern { text: text.to_owned(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Matches a resource name (no query); returns the bound parameters.
    pub fn matches(&self, name: &str) -> Option<PathParams> {
        let tokens: Vec<&str> = name.split('.').collect();
        let mut params = PathParams::new();
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Tail => {
                    if i >= tokens.len() {
                        return None;
                    }
                    params.insert(">".to_owned(), tokens[i..].join("."));
                    return Some(params);
                }
                Part::Literal(l) => {
                    if tokens.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Part::Param(n) => {
                    let t = tokens.get(i)?;
                    params.insert(n.clone(), (*t).to_owned());
                }
            }
        }
        (tokens.len() == self.parts.len()).then_some(params)
    }

    /// Literal parts count first, so `a.b` wins over `a.$x` when both match.
    pub(crate) fn specificity(&self) -> usize {
        self.parts.iter().filter(|p| matches!(p, Part::Literal(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_placeholders_and_tail() {
        let p = Pattern::parse("seats.departure.$id").unwrap();
        assert_eq!(p.matches("seats.departure.42").unwrap()["id"], "42");
        assert!(p.matches("seats.departure").is_none());
        assert!(p.matches("seats.departure.42.x").is_none());
        assert!(p.matches("seats.other.42").is_none());
        let t = Pattern::parse("a.$x.>").unwrap();
        let m = t.matches("a.1.b.c").unwrap();
        assert_eq!((m["x"].as_str(), m[">"].as_str()), ("1", "b.c"));
        assert!(t.matches("a.1").is_none());
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(matches!(Pattern::parse("a..b"), Err(PatternError::EmptyPart(_))));
        assert!(matches!(Pattern::parse("a.>.b"), Err(PatternError::TailNotLast(_))));
        assert!(matches!(Pattern::parse("a.$x.$x"), Err(PatternError::DuplicateParam(..))));
        assert!(matches!(Pattern::parse("a.b*"), Err(PatternError::InvalidPart(..))));
    }
}

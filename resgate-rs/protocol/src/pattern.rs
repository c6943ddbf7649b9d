//! Resource name patterns used by `system.reset`: NATS-style wildcards over resource names,
//! where `*` matches exactly one part and a trailing `>` matches one or more parts.

/// A parsed, valid pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePattern {
    parts: Vec<String>,
    /// Ends with `>`.
    full_wildcard: bool,
}

impl ResourcePattern {
    /// Parses a pattern; `None` when it is not valid (empty parts, a `>` not last, wildcards
    /// mixed into a part, or a query).
    pub fn parse(pattern: &str) -> Option<Self> {
        if pattern.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        let mut full_wildcard = false;
        let mut split = pattern.split('.').peekable();
        while let Some(part) = split.next() {
            if part.is_empty() || full_wildcard {
                return None;
            }
            match part {
                ">" => {
                    if split.peek().is_some() {
                        return None;
                    }
                    full_wildcard = true;
                }
                "*" => parts.push(String::from("*")),
                _ => {
                    if !crate::rid::is_valid_rid_part(part) {
                        return None;
                    }
                    parts.push(part.to_owned());
                }
            }
        }
        Some(ResourcePattern { parts, full_wildcard })
    }

    /// Whether the resource name (no query) matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut name_parts = name.split('.');
        for p in &self.parts {
            match name_parts.next() {
                Some(n) if p == "*" || p == n => {}
                _ => return false,
            }
        }
        if self.full_wildcard { name_parts.next().is_some() } else { name_parts.next().is_none() }
    }
}

#[cfg(test)]
mod tests {
    use super::ResourcePattern;

    fn m(p: &str, n: &str) -> bool {
        ResourcePattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn matching() {
        assert!(m("test", "test"));
        assert!(!m("test", "test.model"));
        assert!(m("test.*", "test.model"));
        assert!(!m("test.*", "test.model.x"));
        assert!(m("test.>", "test.model.x"));
        assert!(!m("test.>", "test"));
        assert!(m("*.model", "test.model"));
        assert!(m(">", "a"));
        assert!(m("test.*.x.>", "test.a.x.b.c"));
    }

    #[test]
    fn invalid() {
        for p in ["", ".", "a.", "a..b", "a.>.b", "a.b*", "a.>b", "a.b?q"] {
            assert!(ResourcePattern::parse(p).is_none(), "{p:?}");
        }
    }
}

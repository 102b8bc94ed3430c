//! Repository names, tags and references, validated by the grammar of the OCI
//! distribution spec. Everything that later becomes part of a storage path
//! passes through these types first, so no request path reaches a backend
//! unvalidated.

use crate::digest::{Digest, DigestError};
use std::fmt;

/// Longest repository name accepted (registry:2's limit, from the spec's
/// recommendation that name plus host fit in 255 characters).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name such as `library/busybox`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name {0:?} is invalid: components must be lowercase letters and digits separated by '.', '_', '__' or '-', joined by '/'")]
    Repo(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("tag {0:?} is invalid: up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if s.is_empty() || !s.split('/').all(valid_component) {
            return Err(NameError::Repo(s.to_string()));
        }
        Ok(RepoName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::Tag(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// `*` matches any run of characters (including `/`).
/// (Repository patterns: mirrors' `allow`, token grants.)
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_patterns() {
        assert!(glob_match("mjpitz/*", "mjpitz/app"));
        assert!(glob_match("mjpitz/*", "mjpitz/a/b"));
        assert!(!glob_match("mjpitz/*", "other/app"));
        assert!(glob_match("library/busybox", "library/busybox"));
        assert!(!glob_match("library/busybox", "library/busybox2"));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("a*c", "abbbc"));
    }

    #[test]
    fn repo_names_follow_the_spec_grammar() {
        for ok in ["a", "library/busybox", "a.b/c_d/e__f/g-h/i---j", "0/1", "ghcr.io/x"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "../etc", "a/../b", "a/./b", "a b", "a:b"]
        {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RepoName::parse(&"a".repeat(256)), Err(NameError::TooLong));
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["latest", "v1.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(Reference::parse("v1"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(matches!(Reference::parse("sha256:zz"), Err(NameError::Digest(_))));
    }
}

#[cfg(test)]
mod properties {
    //! Whatever a client sends as a name, what is accepted follows the
    //! spec's grammar and can only name paths inside the registry layout.
    use super::*;
    use crate::registry::paths;
    use crate::storage::check_path;
    use proptest::prelude::*;

    const COMPONENT: &str = "[a-z0-9]{1,8}(([._]|__|-{1,3})[a-z0-9]{1,8}){0,3}";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn any_accepted_repository_name_stays_in_the_layout(s in "[a-zA-Z0-9._/%-]{0,300}|\\PC{0,64}") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert!(s.len() <= MAX_NAME_LEN);
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert!(check_path(&paths::repo_dir(&n)).is_ok());
                prop_assert!(!s.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('_')));
            }
        }

        #[test]
        fn names_of_the_spec_grammar_are_accepted(parts in proptest::collection::vec(COMPONENT, 1..5)) {
            let s = parts.join("/");
            prop_assume!(s.len() <= MAX_NAME_LEN);
            prop_assert!(RepoName::parse(&s).is_ok(), "{}", s);
        }

        #[test]
        fn tags_are_exactly_the_spec_grammar(s in "[a-zA-Z0-9._-]{0,130}|\\PC{0,20}") {
            let b = s.as_bytes();
            let grammar = (1..=128).contains(&b.len())
                && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
            prop_assert_eq!(Tag::parse(&s).is_ok(), grammar);
            if let Ok(t) = Tag::parse(&s) {
                let repo = RepoName::parse("r").unwrap();
                prop_assert!(check_path(&paths::tag_current_link(&repo, &t)).is_ok());
            }
        }

        #[test]
        fn references_are_a_tag_or_a_digest(s in "\\PC{0,80}|sha256:[0-9a-fA-F]{0,70}") {
            match Reference::parse(&s) {
                Ok(Reference::Tag(t)) => prop_assert_eq!(t.as_str(), s.as_str()),
                Ok(Reference::Digest(d)) => prop_assert_eq!(d.to_string(), s),
                Err(_) => {}
            }
        }
    }
}

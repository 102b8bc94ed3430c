//! containerd's filter syntax for Walk, over the fields containerd's
//! snapshot adaptor exposes: `name`, `parent`, `kind` and `labels.<key>`.
//!
//! A filter is selectors joined by `,` (all must match); Walk's filter list
//! matches when any filter does. A selector is a field path alone (the field
//! is present and non-empty) or `path==value` / `path!=value`. Path parts
//! and values may be double-quoted: `labels."containerd.io/snapshot.ref"`.
//! Regular-expression matches (`~=`) are refused with a clear error: no
//! containerd client sends them to a snapshotter.

use crate::error::{Error, Result};
use crate::store::{Info, Kind};

/// What is wrong with a filter's text; [`Filter::parse`] names the filter.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SyntaxError {
    #[error("unterminated quoted string")]
    UnterminatedString,
    #[error("unterminated escape")]
    UnterminatedEscape,
    #[error("expected a field name at {0}")]
    ExpectedField(usize),
    #[error("expected a value at {0}")]
    ExpectedValue(usize),
    #[error("regular-expression matches (~=) are not supported; use == or !=")]
    Regex,
    #[error("unexpected {0:?} at {1}")]
    Unexpected(char, usize),
}

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Filter(Vec<Selector>);

impl Filter {
    pub fn parse(s: &str) -> Result<Filter> {
        let bad = |why: SyntaxError| Error::InvalidArgument(format!("filter {s:?}: {why}"));
        let mut p = Parser { chars: s.chars().collect(), pos: 0 };
        let mut sels = Vec::new();
        loop {
            p.skip_ws();
            let mut path = vec![p.token().map_err(bad)?];
            while p.eat('.') {
                path.push(p.token().map_err(bad)?);
            }
            p.skip_ws();
            let op = if p.eat_str("==") {
                Op::Eq(p.value().map_err(bad)?)
            } else if p.eat_str("!=") {
                Op::Ne(p.value().map_err(bad)?)
            } else if p.eat_str("~=") {
                return Err(bad(SyntaxError::Regex));
            } else {
                Op::Present
            };
            sels.push(Selector { path, op });
            p.skip_ws();
            if p.done() {
                break;
            }
            if !p.eat(',') {
                return Err(bad(SyntaxError::Unexpected(p.chars[p.pos], p.pos)));
            }
        }
        Ok(Filter(sels))
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.0.iter().all(|sel| {
            let value = field(info, &sel.path);
            match &sel.op {
                Op::Present => value.is_some_and(|v| !v.is_empty()),
                Op::Eq(want) => value.as_deref() == Some(want.as_str()),
                Op::Ne(want) => value.as_deref() != Some(want.as_str()),
            }
        })
    }
}

fn field(info: &Info, path: &[String]) -> Option<String> {
    match path {
        [f] if f == "name" => Some(info.name.clone()),
        // No parent is the empty string, as containerd's own adaptor has it
        // (containerd walks with `parent==""` for a base layer).
        [f] if f == "parent" => Some(info.record.parent.clone().unwrap_or_default()),
        [f] if f == "kind" => Some(
            match info.record.kind {
                Kind::View => "view",
                Kind::Active => "active",
                Kind::Committed => "committed",
            }
            .to_string(),
        ),
        [f, rest @ ..] if f == "labels" && !rest.is_empty() => info.record.labels.get(&rest.join(".")).cloned(),
        _ => None,
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn done(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.chars.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        if self.chars.len() >= self.pos + n && self.chars[self.pos..self.pos + n].iter().copied().eq(s.chars()) {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn quoted(&mut self) -> Result<String, SyntaxError> {
        let mut out = String::new();
        loop {
            match self.chars.get(self.pos) {
                None => return Err(SyntaxError::UnterminatedString),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    let c = self.chars.get(self.pos).ok_or(SyntaxError::UnterminatedEscape)?;
                    out.push(*c);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(*c);
                    self.pos += 1;
                }
            }
        }
    }

    /// A field name: quoted, or letters, digits, `_` and `-`.
    fn token(&mut self) -> Result<String, SyntaxError> {
        if self.eat('"') {
            return self.quoted();
        }
        let start = self.pos;
        while self.chars.get(self.pos).is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '-') {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(SyntaxError::ExpectedField(start));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// A value: quoted, or everything up to the next `,`.
    fn value(&mut self) -> Result<String, SyntaxError> {
        self.skip_ws();
        if self.eat('"') {
            return self.quoted();
        }
        let start = self.pos;
        while self.chars.get(self.pos).is_some_and(|c| *c != ',') {
            self.pos += 1;
        }
        let v: String = self.chars[start..self.pos].iter().collect();
        let v = v.trim_end().to_string();
        if v.is_empty() {
            return Err(SyntaxError::ExpectedValue(start));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Record, Time};
    use std::collections::BTreeMap;

    fn info(name: &str, kind: Kind, parent: Option<&str>, labels: &[(&str, &str)]) -> Info {
        let t = Time { secs: 0, nanos: 0 };
        Info {
            name: name.into(),
            record: Record {
                id: 1,
                kind,
                parent: parent.map(Into::into),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                created: t,
                updated: t,
                size: 0,
                inodes: 0,
            },
        }
    }

    #[test]
    fn selectors() {
        let i = info("k1", Kind::Committed, Some("p"), &[("containerd.io/snapshot.ref", "sha256:ab"), ("x", "")]);
        let m = |f: &str| Filter::parse(f).unwrap().matches(&i);
        assert!(m(r#"labels."containerd.io/snapshot.ref"==sha256:ab"#));
        assert!(m(r#"labels."containerd.io/snapshot.ref""#));
        assert!(!m("labels.x"), "present means non-empty");
        assert!(m("kind==committed,parent==p"));
        assert!(!m("kind==committed,parent!=p"));
        assert!(m(r#"name=="k1""#));
        assert!(!m("labels.missing==a"));
        assert!(m("labels.missing!=a"));
        let base = info("k0", Kind::Committed, None, &[]);
        assert!(Filter::parse(r#"parent=="""#).unwrap().matches(&base));
        assert!(!Filter::parse(r#"parent=="p""#).unwrap().matches(&base));
    }

    #[test]
    fn errors_name_the_filter() {
        for bad in ["", "name==", "name~=a.*", "name==a,,", "\"open"] {
            let e = Filter::parse(bad).unwrap_err().to_string();
            assert!(e.contains("filter"), "{bad}: {e}");
        }
        let e = |f: &str| Filter::parse(f).unwrap_err().to_string();
        assert_eq!(e(""), r#"filter "": expected a field name at 0"#);
        assert_eq!(e("name=="), r#"filter "name==": expected a value at 6"#);
        assert_eq!(
            e("name~=a.*"),
            r#"filter "name~=a.*": regular-expression matches (~=) are not supported; use == or !="#
        );
        assert_eq!(e("name==a,,"), r#"filter "name==a,,": expected a field name at 8"#);
        assert_eq!(e("name x"), r#"filter "name x": unexpected 'x' at 5"#);
        assert_eq!(e("\"open"), r#"filter "\"open": unterminated quoted string"#);
        assert_eq!(e("\"open\\"), r#"filter "\"open\\": unterminated escape"#);
        assert!(matches!(Filter::parse("a.").unwrap_err(), Error::InvalidArgument(_)));
    }
}

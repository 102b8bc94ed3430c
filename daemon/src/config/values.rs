//! Value types of the config file, read the way registry:2 reads them:
//! scalars may be written as strings or numbers, booleans as `true` or
//! `"true"`, durations in Go's notation (`168h`, `1h30m`), sizes with
//! units (`20GiB`). Each type's error says what a good value looks like;
//! the loader adds the key.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A scalar read as text (`5000` and `"5000"` alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Text {
    /// The text, `None` when empty.
    pub fn non_empty(this: &Option<Text>) -> Option<String> {
        this.as_ref().map(|t| t.0.clone()).filter(|s| !s.is_empty())
    }
}

/// `true`/`false`, or those words as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v.to_ascii_lowercase().as_str() {
                    "true" => Ok(Flag(true)),
                    "false" => Ok(Flag(false)),
                    _ => Err(E::custom(format!("expected true or false, got {v:?}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Flag, E> {
                Err(E::custom(format!("expected true or false, got {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Flag, E> {
                Err(E::custom(format!("expected true or false, got {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads `Option<Flag>` as a plain bool with a default.
pub fn flag(v: Option<Flag>, default: bool) -> bool {
    v.map_or(default, |f| f.0)
}

/// A Go duration: `168h`, `1h30m`, `90s`, `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(s) = Text::deserialize(d)?;
        parse_go_duration(&s)
            .map(GoDuration)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not a duration such as 168h, 30m or 90s")))
    }
}

/// Parses a Go duration such as `168h`, `1h30m`, `90s` or `500ms`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * unit);
    }
    Some(total)
}

/// A size: `20GiB`, `512MiB`, `10G`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(s) = Text::deserialize(d)?;
        parse_size(&s)
            .map(ByteSize)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not a size such as 20GiB, 512MiB or 1048576")))
    }
}

/// Parses sizes such as `20GiB`, `512MiB`, `10G`, `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = (s[..split].trim(), s[split..].trim());
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (value >= 0.0).then_some((value * mult) as u64)
}

/// One string or a list of them (`cacerts: /ca.pem` or `[/a.pem, /b.pem]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Text),
            Many(Vec<Text>),
        }
        match OneOrMany::deserialize(d).map_err(|_| de::Error::custom("expected a list of strings"))? {
            OneOrMany::One(t) => Ok(List(vec![t.0])),
            OneOrMany::Many(v) => Ok(List(v.into_iter().map(|t| t.0).collect())),
        }
    }
}

impl List {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.iter().map(PathBuf::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_registry2_writes_them() {
        let text: Text = yaml_serde::from_str("5000").unwrap();
        assert_eq!(text.0, "5000");
        assert!(yaml_serde::from_str::<Flag>("\"TRUE\"").unwrap().0);
        assert!(yaml_serde::from_str::<Flag>("maybe").unwrap_err().to_string().contains("true or false"));
        assert_eq!(yaml_serde::from_str::<GoDuration>("1h30m").unwrap().0, Duration::from_secs(5400));
        assert!(yaml_serde::from_str::<GoDuration>("7d").is_err());
        assert_eq!(yaml_serde::from_str::<ByteSize>("2GiB").unwrap().0, 2 << 30);
        assert_eq!(yaml_serde::from_str::<List>("/a").unwrap().0, vec!["/a"]);
        assert_eq!(yaml_serde::from_str::<List>("[/a, /b]").unwrap().0, vec!["/a", "/b"]);
        assert_eq!(parse_size("20GiB"), Some(20 << 30));
        assert_eq!(parse_size("10G"), Some(10_000_000_000));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("168h"), Some(Duration::from_secs(168 * 3600)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}

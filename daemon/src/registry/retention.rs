//! Tag retention (`storage.retention.policies`), read as zot reads it: in a
//! repository matched by a policy with `keeptags`, a tag stays when some
//! rule whose patterns match it (no patterns: every tag) is satisfied by
//! at least one of its criteria (a rule with no criteria keeps every tag it
//! matches); the other tags are removed, and what they alone reached is
//! then collected. The first policy whose `repositories` match applies;
//! repositories no policy matches keep every tag.
//!
//! A tag counts as pulled when it was last pushed if it was not pulled
//! since, so that a fresh push is not removed by a `pulledwithin` rule
//! before anyone could pull it. Push times are the storage's (the tag link's last write), pull
//! times the nodes' (see [`super::pulls`]).

use std::time::{Duration, SystemTime};

/// Every policy, in the order they are tried.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Globs over repository names: `*` within one path segment, `**`
    /// across segments, `?` one character.
    pub repositories: Vec<String>,
    /// Remove referrers (signatures, SBOMs) whose subject is gone.
    pub delete_referrers: bool,
    /// `None`: every tag stays.
    pub keep_tags: Option<Vec<KeepRule>>,
}

#[derive(Debug, Clone, Default)]
pub struct KeepRule {
    /// Regular expressions a tag must match in whole; empty: every tag.
    pub patterns: Vec<regex_lite::Regex>,
    pub most_recently_pushed: Option<usize>,
    pub most_recently_pulled: Option<usize>,
    pub pushed_within: Option<Duration>,
    pub pulled_within: Option<Duration>,
}

/// What retention knows of one tag.
#[derive(Debug, Clone)]
pub struct TagFacts {
    pub name: String,
    pub pushed: SystemTime,
    pub pulled: Option<SystemTime>,
}

impl TagFacts {
    fn last_pulled(&self) -> SystemTime {
        self.pulled.map_or(self.pushed, |p| p.max(self.pushed))
    }
}

impl Retention {
    /// The policy for `repo`, if one matches.
    pub fn policy_for(&self, repo: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.repositories.iter().any(|g| glob_matches(g, repo)))
    }

    /// Whether referrers whose subject is gone are collected in `repo`
    /// (yes unless its policy says `deletereferrers: false`).
    pub fn delete_referrers(&self, repo: &str) -> bool {
        self.policy_for(repo).is_none_or(|p| p.delete_referrers)
    }
}

impl Policy {
    /// The tags this policy removes from `tags`, in their given order.
    pub fn tags_to_remove<'a>(&self, tags: &'a [TagFacts], now: SystemTime) -> Vec<&'a TagFacts> {
        let Some(rules) = &self.keep_tags else { return Vec::new() };
        let mut keep = vec![false; tags.len()];
        for rule in rules {
            let matched: Vec<usize> = (0..tags.len()).filter(|&i| rule.matches(&tags[i].name)).collect();
            let no_criteria = rule.most_recently_pushed.is_none()
                && rule.most_recently_pulled.is_none()
                && rule.pushed_within.is_none()
                && rule.pulled_within.is_none();
            let within = |t: SystemTime, d: Duration| now.duration_since(t).map_or(true, |age| age <= d);
            let top = |n: Option<usize>, key: &dyn Fn(&TagFacts) -> SystemTime| -> Vec<usize> {
                let Some(n) = n else { return Vec::new() };
                let mut ranked = matched.clone();
                // Newest first; equal times by name, so the choice is stable.
                ranked.sort_by(|&a, &b| key(&tags[b]).cmp(&key(&tags[a])).then(tags[a].name.cmp(&tags[b].name)));
                ranked.truncate(n);
                ranked
            };
            for i in top(rule.most_recently_pushed, &|t| t.pushed)
                .into_iter()
                .chain(top(rule.most_recently_pulled, &|t| t.last_pulled()))
            {
                keep[i] = true;
            }
            for &i in &matched {
                let t = &tags[i];
                if no_criteria
                    || rule.pushed_within.is_some_and(|d| within(t.pushed, d))
                    || rule.pulled_within.is_some_and(|d| within(t.last_pulled(), d))
                {
                    keep[i] = true;
                }
            }
        }
        tags.iter().zip(keep).filter(|(_, k)| !k).map(|(t, _)| t).collect()
    }
}

impl KeepRule {
    fn matches(&self, tag: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|re| re.find(tag).is_some_and(|m| m.len() == tag.len()))
    }
}

/// Whether repository name `name` matches `glob` (see [`Policy::repositories`]).
pub fn glob_matches(glob: &str, name: &str) -> bool {
    fn go(g: &[u8], n: &[u8]) -> bool {
        match g {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => {
                // `**/` also matches nothing at all (`a/**/b` matches `a/b`).
                let rest_skip = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=n.len()).any(|i| go(rest, &n[i..])) || go(rest_skip, n)
            }
            [b'*', rest @ ..] => (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != b'/').any(|i| go(rest, &n[i..])),
            [b'?', rest @ ..] => n.first().is_some_and(|&c| c != b'/') && go(rest, &n[1..]),
            [c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(glob.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn tag(name: &str, pushed_hours_ago: u64, pulled_hours_ago: Option<u64>, now: SystemTime) -> TagFacts {
        TagFacts {
            name: name.into(),
            pushed: now - HOUR * pushed_hours_ago as u32,
            pulled: pulled_hours_ago.map(|h| now - HOUR * h as u32),
        }
    }

    fn removed(p: &Policy, tags: &[TagFacts], now: SystemTime) -> Vec<String> {
        p.tags_to_remove(tags, now).into_iter().map(|t| t.name.clone()).collect()
    }

    fn policy(rules: Vec<KeepRule>) -> Policy {
        Policy { repositories: vec!["**".into()], delete_referrers: true, keep_tags: Some(rules) }
    }

    fn re(p: &str) -> regex_lite::Regex {
        regex_lite::Regex::new(p).unwrap()
    }

    #[test]
    fn globs_match_segments_and_trees() {
        assert!(glob_matches("infra/*", "infra/db"));
        assert!(!glob_matches("infra/*", "infra/db/x"));
        assert!(glob_matches("tmp/**", "tmp/a/b"));
        assert!(glob_matches("**", "docker.io/library/alpine"));
        assert!(glob_matches("docker.io/**/alpine", "docker.io/alpine"));
        assert!(glob_matches("app?", "app1"));
        assert!(!glob_matches("app", "apps"));
        assert!(!glob_matches("*", "a/b"));
    }

    #[test]
    fn each_rule_keeps_what_it_says() {
        let now = SystemTime::now();
        let tags = vec![
            tag("v1", 50, None, now),
            tag("v2", 30, Some(1), now),
            tag("v3", 45, Some(40), now),
            tag("latest", 2, None, now),
            tag("dev-1", 100, None, now),
        ];
        let count = |pushed, pulled| KeepRule {
            most_recently_pushed: pushed,
            most_recently_pulled: pulled,
            ..Default::default()
        };
        // Push order: latest (2h), v2 (30h), v3 (45h), v1 (50h), dev-1 (100h).
        assert_eq!(removed(&policy(vec![count(Some(2), None)]), &tags, now), ["v1", "v3", "dev-1"]);
        assert_eq!(removed(&policy(vec![count(Some(3), None)]), &tags, now), ["v1", "dev-1"]);
        // Pull order: v2 (1h), latest (pushed 2h, never pulled), v3 (40h), v1 (pushed 50h).
        assert_eq!(removed(&policy(vec![count(None, Some(2))]), &tags, now), ["v1", "v3", "dev-1"]);
        let within = |pushed, pulled| KeepRule { pushed_within: pushed, pulled_within: pulled, ..Default::default() };
        assert_eq!(removed(&policy(vec![within(Some(HOUR * 24), None)]), &tags, now), ["v1", "v2", "v3", "dev-1"]);
        assert_eq!(removed(&policy(vec![within(None, Some(HOUR * 24))]), &tags, now), ["v1", "v3", "dev-1"]);
        // Either criterion of a rule keeps a tag.
        assert_eq!(removed(&policy(vec![within(Some(HOUR * 24), Some(HOUR * 24))]), &tags, now), ["v1", "v3", "dev-1"]);
        // A pull older than the last push counts from the push.
        let repushed = [tag("v9", 1, Some(30), now)];
        assert!(removed(&policy(vec![within(None, Some(HOUR * 24))]), &repushed, now).is_empty());
        // Patterns: whole-tag matches; a rule with no criteria keeps all it matches.
        let semver = KeepRule { patterns: vec![re(r"v\d+")], ..Default::default() };
        assert_eq!(removed(&policy(vec![semver.clone()]), &tags, now), ["latest", "dev-1"]);
        assert_eq!(removed(&policy(vec![semver, within(Some(HOUR * 24), None)]), &tags, now), ["dev-1"]);
        let counted = KeepRule { patterns: vec![re("v.*")], most_recently_pushed: Some(1), ..Default::default() };
        assert_eq!(removed(&policy(vec![counted]), &tags, now), ["v1", "v3", "latest", "dev-1"]);
        // A policy without keeptags keeps every tag.
        let none = Policy { keep_tags: None, ..policy(vec![]) };
        assert!(removed(&none, &tags, now).is_empty());
        // keeptags: [] keeps nothing.
        assert_eq!(removed(&policy(vec![]), &tags, now).len(), 5);
    }

    #[test]
    fn the_first_matching_policy_applies() {
        let r = Retention {
            policies: vec![
                Policy { repositories: vec!["infra/*".into()], delete_referrers: false, keep_tags: None },
                policy(vec![]),
            ],
        };
        assert!(!r.delete_referrers("infra/db"));
        assert!(r.delete_referrers("app"));
        assert!(Retention::default().delete_referrers("app"));
        assert!(Retention::default().policy_for("app").is_none());
    }
}

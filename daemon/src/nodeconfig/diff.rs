//! The `--dry-run` diff, with secrets masked: registries.yaml and
//! containerd's config may hold registry credentials, and a diff ends up in
//! terminals, CI logs and Ansible output.

use std::io::Write;
use std::path::Path;

/// Keys whose values are never printed (compared without case, quotes
/// and `_`).
const SECRET_KEYS: [&str; 8] =
    ["password", "auth", "identitytoken", "token", "secret", "secretkey", "accesskey", "authorization"];

/// `text` with the value of every `key: value` / `key = value` line whose
/// key names a secret replaced by `***`.
pub(super) fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let masked = body.find([':', '=']).and_then(|i| {
            let key: String = body[..i]
                .trim()
                .trim_start_matches("- ")
                .trim_matches(['"', '\''])
                .chars()
                .filter(|c| *c != '_')
                .collect::<String>()
                .to_ascii_lowercase();
            let value = body[i + 1..].trim();
            (SECRET_KEYS.contains(&key.as_str()) && !value.is_empty()).then(|| format!("{} ***", &body[..=i]))
        });
        match masked {
            Some(m) => {
                out.push_str(&m);
                out.push_str(&line[body.len()..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Writes a unified diff of one file's change, secrets masked.
pub(super) fn write(out: &mut dyn Write, path: &Path, before: &str, after: &str) -> std::io::Result<()> {
    let (old, new) = (mask_secrets(before), mask_secrets(after));
    let d = similar::TextDiff::from_lines(&old, &new);
    let label = path.display().to_string();
    write!(out, "{}", d.unified_diff().context_radius(3).header(&label, &label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_a_diff() {
        let yaml = "configs:\n  registry.example.com:\n    auth:\n      username: u\n      password: hunter2\n      identity_token: abc\n";
        let masked = mask_secrets(yaml);
        assert!(!masked.contains("hunter2") && !masked.contains("abc"), "{masked}");
        assert!(masked.contains("username: u") && masked.contains("    auth:\n"), "{masked}");
        let toml = "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r\".auth]\n  password = \"s3cret\"\n  auth = 'dTpw'\n";
        let masked = mask_secrets(toml);
        assert!(!masked.contains("s3cret") && !masked.contains("dTpw"), "{masked}");
        let mut out = Vec::new();
        write(&mut out, Path::new("/r.yaml"), "", yaml).unwrap();
        let shown = String::from_utf8(out).unwrap();
        assert!(!shown.contains("hunter2") && shown.contains("+      password: ***"), "{shown}");
    }
}

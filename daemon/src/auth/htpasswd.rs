//! Apache htpasswd files with bcrypt entries (`htpasswd -B`), re-read when
//! the file changes. Other hash kinds (MD5, SHA1, crypt, plain) are refused
//! at load with a message naming the line, because they are weak and
//! registry:2 never accepted them either.

use super::AuthError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// How long a successful login is remembered: clients send their
/// credentials with every request, and one bcrypt check costs ~250 ms of
/// CPU at the usual cost 12.
const REMEMBER: Duration = Duration::from_secs(300);
const MAX_REMEMBERED: usize = 4096;

#[derive(Debug)]
pub struct Htpasswd {
    path: PathBuf,
    users: RwLock<(HashMap<String, String>, Option<SystemTime>)>,
    last_check: Mutex<Instant>,
    /// A bcrypt hash (at the users' cost) of a random password: unknown
    /// users are checked against it, so a wrong user name costs as much
    /// time as a wrong password.
    dummy: String,
    /// Recent successful logins, by a salted hash of user and password
    /// (never the password itself); emptied when the file changes.
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    salt: [u8; 16],
}

/// The cost of a bcrypt hash (`$2y$NN$…`).
fn cost_of(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

/// Parses htpasswd text; errors name the line and the user.
pub fn parse(text: &str, path: &Path) -> Result<HashMap<String, String>, AuthError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let Some((user, hash)) = line.split_once(':') else {
            return Err(AuthError::NotUserHash { path: path.to_path_buf(), line: n });
        };
        if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
            return Err(AuthError::NotBcrypt { path: path.to_path_buf(), line: n, user: user.to_string() });
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthError::ReadHtpasswd { path: path.to_path_buf(), source })?;
        let users = parse(&text, path)?;
        let cost = users.values().find_map(|h| cost_of(h)).unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost)?;
        Ok(Htpasswd {
            path: path.to_path_buf(),
            users: RwLock::new((users, mtime(path))),
            last_check: Mutex::new(Instant::now()),
            dummy,
            remembered: Mutex::default(),
            salt: *uuid::Uuid::new_v4().as_bytes(),
        })
    }

    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(self.salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether these credentials logged in successfully a moment ago (then
    /// [`verify`](Self::verify) answers without bcrypt).
    pub fn remembers(&self, user: &str, password: &str) -> bool {
        self.maybe_reload();
        let key = self.key(user, password);
        self.remembered.lock().unwrap().get(&key).is_some_and(|t| t.elapsed() < REMEMBER)
    }

    fn maybe_reload(&self) {
        {
            let mut last = self.last_check.lock().unwrap();
            if last.elapsed() < RELOAD_CHECK {
                return;
            }
            *last = Instant::now();
        }
        let stamp = mtime(&self.path);
        if self.users.read().unwrap().1 == stamp {
            return;
        }
        match std::fs::read_to_string(&self.path)
            .map_err(|source| AuthError::ReadHtpasswd { path: self.path.clone(), source })
            .and_then(|t| parse(&t, &self.path))
        {
            Ok(users) => {
                let n = users.len();
                *self.users.write().unwrap() = (users, stamp);
                self.remembered.lock().unwrap().clear();
                tracing::info!(path = %self.path.display(), users = n, "htpasswd file reloaded");
            }
            Err(e) => {
                self.users.write().unwrap().1 = stamp;
                tracing::error!("htpasswd file not reloaded, keeping the previous users: {e}");
            }
        }
    }

    /// Checks a user's password. Unless the same credentials succeeded a
    /// moment ago, this is a bcrypt verification (so callers run it on the
    /// blocking pool), which takes the same time whether or not the user
    /// exists.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if self.remembers(user, password) {
            return true;
        }
        let hash = self.users.read().unwrap().0.get(user).cloned();
        let known = hash.is_some();
        crate::metrics::get().password_checks.inc();
        let ok = bcrypt::verify(password, hash.as_deref().unwrap_or(&self.dummy)).unwrap_or(false);
        if known && ok {
            let mut remembered = self.remembered.lock().unwrap();
            if remembered.len() >= MAX_REMEMBERED {
                remembered.retain(|_, t| t.elapsed() < REMEMBER);
                if remembered.len() >= MAX_REMEMBERED {
                    remembered.clear();
                }
            }
            remembered.insert(self.key(user, password), Instant::now());
        }
        known && ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_only_and_verification() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&p, format!("# users\nalice:{hash}\n")).unwrap();
        let h = Htpasswd::load(&p).unwrap();
        assert!(h.verify("alice", "s3cret"));
        assert!(!h.verify("alice", "wrong"));
        assert!(!h.verify("bob", "s3cret"));

        std::fs::write(&p, "carol:$apr1$abc$def\n").unwrap();
        let e = Htpasswd::load(&p).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("carol") && e.contains("htpasswd -B"), "{e}");
        std::fs::write(&p, "no-colon-here\n").unwrap();
        assert!(Htpasswd::load(&p).unwrap_err().to_string().contains(":1:"));
    }

    #[test]
    fn successful_logins_are_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let h = Htpasswd::load(&p).unwrap();
        assert!(!h.remembers("alice", "pw"));
        assert!(!h.verify("alice", "nope"));
        assert!(!h.remembers("alice", "nope"), "failures are not remembered");
        assert!(h.verify("alice", "pw"));
        assert!(h.remembers("alice", "pw"));
        assert!(!h.remembers("alice", "pw2") && !h.remembers("alic", "epw"));
        // A changed file (new password) forgets every remembered login.
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("new", 4).unwrap())).unwrap();
        let t = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        assert!(!h.remembers("alice", "pw"));
        assert!(!h.verify("alice", "pw"));
        assert!(h.verify("alice", "new"));
    }

    #[test]
    fn unknown_users_cost_a_real_verification() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("x", 5).unwrap())).unwrap();
        let h = Htpasswd::load(&p).unwrap();
        assert_eq!(cost_of(&h.dummy), Some(5));
        assert!(bcrypt::verify("anything", &h.dummy).is_ok());
    }
}

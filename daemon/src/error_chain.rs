//! Error messages with their causes: a leaf module, so that every layer can
//! say *why* (a TLS failure three layers down in an HTTP client) without
//! importing the crate's start-up error type.

/// An error with its sources, `a: b: c`, for messages that must say why
/// (a TLS failure three layers down in an HTTP client).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

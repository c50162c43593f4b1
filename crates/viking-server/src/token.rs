//! The cluster token: every API request carries it as a bearer token.
//!
//! Given with `--token`, or made at first start and kept in
//! `<data-dir>/token` with mode 0600.

use std::path::Path;

use anyhow::Context;

/// The token file's name inside the data directory.
pub const TOKEN_FILE: &str = "token";

/// Read the token file, or create it with a fresh random token.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::identity::write_private(data_dir, TOKEN_FILE, &token)?;
    Ok(token)
}

/// Compare tokens in constant time (the `subtle` crate; only the length
/// may show).
pub fn matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_made_once_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let t1 = load_or_create(d.path()).unwrap();
        let t2 = load_or_create(d.path()).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 48);
        let mode = std::fs::metadata(d.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches(&t1, &t2));
        assert!(!matches(&t1, "nope"));
    }
}

//! The dashboard's login cookie: `EXPIRY.MAC`, where MAC is
//! HMAC-SHA256 under the cluster token of `viking-ui-session:EXPIRY`
//! (unix seconds). Every server of the cluster checks it without state of
//! its own, a restart keeps it valid, and the cookie does not hold the
//! token: whoever steals it can read the dashboard until it expires, not
//! call the API. Pure: the time is a parameter.

use ring::hmac;

/// The cookie's name.
pub const COOKIE: &str = "viking_session";

/// How long a login lasts: twelve hours.
pub const LIFETIME_SECS: u64 = 12 * 3600;

fn key(token: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes())
}

fn message(expiry: u64) -> String {
    format!("viking-ui-session:{expiry}")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// A session value that expires `LIFETIME_SECS` after `now`.
pub fn issue(token: &str, now: u64) -> String {
    let expiry = now + LIFETIME_SECS;
    let tag = hmac::sign(&key(token), message(expiry).as_bytes());
    format!("{expiry}.{}", hex(tag.as_ref()))
}

/// Whether `value` is a session this cluster's token issued that has not
/// expired at `now` (the MAC compared in constant time).
pub fn valid(token: &str, value: &str, now: u64) -> bool {
    let Some((expiry, mac)) = value.split_once('.') else {
        return false;
    };
    let (Ok(expiry), Some(mac)) = (expiry.parse::<u64>(), unhex(mac)) else {
        return false;
    };
    expiry > now
        && expiry <= now + LIFETIME_SECS
        && hmac::verify(&key(token), message(expiry).as_bytes(), &mac).is_ok()
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` value for a session (or, with `None`, one that
/// removes it): only for the dashboard's paths, not readable by scripts,
/// never sent by another site, `Secure` over TLS.
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let (v, age) = match value {
        Some(v) => (v, LIFETIME_SECS),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={v}; Path=/ui; Max-Age={age}; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_token() {
        let s = issue("tok", 1000);
        assert!(valid("tok", &s, 1000));
        assert!(valid("tok", &s, 1000 + LIFETIME_SECS - 1));
        assert!(!valid("tok", &s, 1000 + LIFETIME_SECS));
        assert!(!valid("other", &s, 1000));
        assert!(!s.contains("tok"));
        // A later expiry with the old MAC, a bad MAC, garbage.
        let (_, mac) = s.split_once('.').unwrap();
        assert!(!valid(
            "tok",
            &format!("{}.{mac}", 1000 + LIFETIME_SECS + 5),
            1000
        ));
        assert!(!valid("tok", "1.00", 0));
        assert!(!valid("tok", "x", 0));
        assert!(!valid("tok", "", 0));
        assert!(!valid("tok", "99999999999.zz", 0));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; viking_session=5.ab".parse().unwrap(),
        );
        assert_eq!(from_headers(&h).as_deref(), Some("5.ab"));
        assert!(set_cookie(Some("v"), true).contains("HttpOnly; SameSite=Strict; Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}

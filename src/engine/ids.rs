//! Bounds on what clients name: ids, keys and step indexes. Checked before
//! any lookup, so an oversized id is refused as what it is instead of being
//! echoed into an error message larger than the client's metadata limit.

use super::EngineError;

/// Longest session or job id accepted in a request. Ours are 32 and 36
/// characters; 128 leaves room for ids from other servers' snapshots.
pub const MAX_ID_LEN: usize = 128;

/// Longest client session key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Largest step index a session may reach: i64::MAX, so every index fits
/// the signed 64-bit fields of other protocols (KServe/Triton) and JSON
/// readers that parse numbers as i64.
pub const MAX_STEP_INDEX: u64 = i64::MAX as u64;

/// How much of a client-chosen string an error message repeats.
const ECHO_CHARS: usize = 64;

/// `s` as it may appear in an error message: at most 64 characters, with
/// the full length said when it was cut.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(ECHO_CHARS) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// A session or job id: 1..=128 characters of `[A-Za-z0-9._-]`.
pub fn check_id(what: &'static str, id: &str) -> Result<(), EngineError> {
    let rule = if id.is_empty() {
        Some("it is required")
    } else if id.len() > MAX_ID_LEN {
        Some("ids are at most 128 characters")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("ids use only [A-Za-z0-9._-]")
    } else {
        None
    };
    refuse(what, id, rule)
}

/// A client key: 1..=256 bytes without control characters.
pub fn check_key(what: &'static str, key: &str) -> Result<(), EngineError> {
    let rule = if key.len() > MAX_KEY_LEN {
        Some("keys are at most 256 bytes")
    } else if key.chars().any(char::is_control) {
        Some("keys have no control characters")
    } else {
        None
    };
    refuse(what, key, rule)
}

/// Ok without a broken rule; otherwise the error naming it.
fn refuse(what: &'static str, value: &str, rule: Option<&'static str>) -> Result<(), EngineError> {
    match rule {
        None => Ok(()),
        Some(rule) => Err(EngineError::BadId {
            what,
            value: value.to_string(),
            len: value.len(),
            rule,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_strings_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(100);
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(64)), "{c}");
        assert!(c.ends_with("… (200 bytes)"), "{c}");
        assert!(c.chars().count() < 90);
    }

    #[test]
    fn ids_are_bounded_in_length_and_alphabet() {
        assert!(check_id("session_id", "0123abcdef").is_ok());
        assert!(check_id("job_id", "job-0f.x_Y").is_ok());
        for bad in ["", "a b", "a/b", "ü", &"a".repeat(129)] {
            let e = check_id("session_id", bad).unwrap_err();
            assert!(matches!(e, EngineError::BadId { .. }), "{bad:?}: {e}");
            assert!(e.to_string().len() < 200, "{e}");
        }
        assert!(check_id("session_id", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn keys_are_bounded_and_free_of_control_characters() {
        assert!(check_key("session_key", "user 42 / tab").is_ok());
        assert!(check_key("session_key", &"k".repeat(257)).is_err());
        assert!(check_key("session_key", "a\nb").is_err());
    }
}

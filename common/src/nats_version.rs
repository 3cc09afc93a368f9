//! The oldest NATS server Parley runs on, and the check that refuses anything older.
//!
//! Parley needs JetStream priority groups, which arrived in NATS 2.11. An older server accepts
//! the connection and most requests, and then fails later and obscurely; so every role reads the
//! version the server announces when it connects ([`crate::nats::connect`]) and stops at once,
//! naming both versions, when it is too old.

use std::fmt;

/// The oldest server version Parley accepts, as people write it.
pub const REQUIRED: &str = "2.11";

/// [`REQUIRED`] as numbers.
const REQUIRED_VERSION: Version = Version {
    major: 2,
    minor: 11,
    patch: 0,
};

/// A NATS server version: the numbers of `2.11.0`, `v2.15.1` or `2.11.0-RC.1`.
///
/// A pre-release or build suffix is dropped: a release candidate of 2.11 already has the
/// features of 2.11, so for the floor `2.11.0-RC.1` counts as 2.11.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// Reads `[v]MAJOR.MINOR[.PATCH][-pre][+build]`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let numbers = text.split(['-', '+']).next().unwrap_or_default();
        let (major, minor, patch) = match numbers.split('.').collect::<Vec<_>>()[..] {
            [major, minor] => (major, minor, "0"),
            [major, minor, patch] => (major, minor, patch),
            _ => return None,
        };
        // Digits only: `u64::from_str` would take a leading `+`.
        let number = |part: &str| -> Option<u64> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (major, minor, patch) = (number(major)?, number(minor)?, number(patch)?);
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

/// Refuses a server older than [`REQUIRED`]. `found` is the version the server announced in its
/// `INFO`; one that cannot be read is refused too, since nothing shows it has what Parley needs.
pub fn check(found: &str) -> Result<(), NatsTooOld> {
    match Version::parse(found) {
        Some(v) if v >= REQUIRED_VERSION => Ok(()),
        _ => Err(NatsTooOld {
            found: found.to_owned(),
            required: REQUIRED,
        }),
    }
}

/// The NATS server is older than Parley supports. The binary exits 64 on it, as on a bad
/// setting: it is a deployment mistake, and restarting will not help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTooOld {
    /// The version the server announced.
    pub found: String,
    /// The oldest version Parley accepts ([`REQUIRED`]).
    pub required: &'static str,
}

impl fmt::Display for NatsTooOld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NATS server {} is too old: Parley needs NATS {} or newer (JetStream priority groups)",
            self.found, self.required
        )
    }
}

impl std::error::Error for NatsTooOld {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, patch: u64) -> Option<Version> {
        Some(Version {
            major,
            minor,
            patch,
        })
    }

    #[test]
    fn versions_parse_with_or_without_a_v_a_patch_or_a_suffix() {
        assert_eq!(Version::parse("2.9.10"), v(2, 9, 10));
        assert_eq!(Version::parse("v2.15.1"), v(2, 15, 1));
        assert_eq!(Version::parse("2.11.0-RC.1"), v(2, 11, 0));
        assert_eq!(Version::parse("2.12.0-beta+build.5"), v(2, 12, 0));
        assert_eq!(Version::parse("2.11"), v(2, 11, 0));
        assert_eq!(Version::parse(" 2.11.3\n"), v(2, 11, 3));
    }

    #[test]
    fn anything_else_is_not_a_version() {
        for bad in [
            "",
            "v",
            "2",
            "2.",
            "2.x.1",
            "2.11.1.4",
            "+2.11.0",
            "2.+11",
            "two.eleven",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions_order_by_number_not_by_text() {
        assert!(Version::parse("2.9.10") < Version::parse("2.11.0"));
        assert!(Version::parse("2.10.99") < Version::parse("2.11.0"));
        assert!(Version::parse("2.11.0") < Version::parse("2.11.10"));
        assert!(Version::parse("2.15.1") < Version::parse("3.0.0"));
    }

    #[test]
    fn servers_from_2_11_on_pass_the_check() {
        for ok in [
            "2.11.0",
            "2.11.0-RC.1",
            "v2.11.10",
            "2.12.1",
            "v2.15.1",
            "3.0.0",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn older_or_unreadable_servers_are_refused_naming_both_versions() {
        for old in ["2.9.10", "2.10.22", "v2.10.99-RC.2", "1.4.1", "nightly", ""] {
            let err = check(old).unwrap_err();
            assert_eq!(err.found, old);
            assert_eq!(err.required, "2.11");
        }
        assert_eq!(
            check("2.9.10").unwrap_err().to_string(),
            "NATS server 2.9.10 is too old: Parley needs NATS 2.11 or newer \
             (JetStream priority groups)"
        );
    }
}

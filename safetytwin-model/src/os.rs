//! The host's distribution and release, from its `os-release` file: what the twin's image must
//! match (a bookworm host needs a bookworm twin; its packages' versions exist only there).

use std::fmt;

/// Longest field accepted.
const MAX_FIELD: usize = 64;

/// The distribution and release of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID` (`debian`).
    pub id: String,
    /// `VERSION_ID` (`12`; empty on a rolling release).
    pub version_id: String,
    /// `VERSION_CODENAME` (`bookworm`; empty when the file has none).
    pub codename: String,
}

impl fmt::Display for OsRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)?;
        if !self.version_id.is_empty() {
            write!(f, " {}", self.version_id)?;
        }
        if !self.codename.is_empty() {
            write!(f, " ({})", self.codename)?;
        }
        Ok(())
    }
}

/// Why an `os-release` field is not one the model may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsError(pub &'static str);

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "os-release {} is empty, too long or not [a-z0-9._~+-]",
            self.0
        )
    }
}

impl std::error::Error for OsError {}

/// Checks every field: `id` non-empty, all of `[a-z0-9._~+-]` (os-release(5) allows no more),
/// short. The codename names an image and a build flag.
pub fn check(os: &OsRelease) -> Result<(), OsError> {
    let ok = |s: &str| {
        s.len() <= MAX_FIELD
            && !s.starts_with('-')
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._~+-".contains(&c))
    };
    for (name, value) in [
        ("ID", &os.id),
        ("VERSION_ID", &os.version_id),
        ("VERSION_CODENAME", &os.codename),
    ] {
        if !ok(value) || (name == "ID" && value.is_empty()) {
            return Err(OsError(name));
        }
    }
    Ok(())
}

/// Reads an `os-release` file (`KEY=value` lines, values optionally quoted); `None` when it
/// has no valid `ID`.
pub fn parse(text: &str) -> Option<OsRelease> {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        match key.trim() {
            "ID" => os.id = value.to_owned(),
            "VERSION_ID" => os.version_id = value.to_owned(),
            "VERSION_CODENAME" => os.codename = value.to_owned(),
            _ => {}
        }
    }
    check(&os).ok().map(|()| os)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debian_and_refuses_what_it_cannot_name() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                      VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\n\
                      ID=debian\n";
        let os = parse(debian).unwrap();
        assert_eq!(
            os,
            OsRelease {
                id: "debian".into(),
                version_id: "12".into(),
                codename: "bookworm".into(),
            }
        );
        assert_eq!(os.to_string(), "debian 12 (bookworm)");
        assert_eq!(parse("NAME=x\n"), None);
        assert_eq!(parse("ID=debian\nVERSION_CODENAME=\"--release\"\n"), None);
        assert_eq!(parse("ID=\"Debian; rm\"\n"), None);
    }
}

//! Path patterns, shared by the daemon (files whose content never leaves the host) and the
//! replayer (files never applied to the twin), so both read a pattern the same way.

/// `*` matches any run of bytes other than `/`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len())
            .take_while(|&i| i == 0 || text[i - 1] != b'/')
            .any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// Whether absolute `path` matches `pattern`: `*` matches within one path component, a
/// trailing `/**` matches everything below a directory, and a pattern without `/` matches the
/// file name in any directory.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if let Some(dir) = pattern.strip_suffix("/**") {
        path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
    } else if pattern.contains('/') {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

/// Whether any of `patterns` matches `path`.
pub fn any_matches(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| path_matches(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(path_matches(
            "/etc/ssh/ssh_host_*_key",
            "/etc/ssh/ssh_host_rsa_key"
        ));
        assert!(!path_matches(
            "/etc/ssh/ssh_host_*_key",
            "/etc/ssh/ssh_host_rsa_key.pub"
        ));
        assert!(!path_matches("/etc/*", "/etc/a/b"));
        assert!(path_matches(
            "/etc/ssl/private/**",
            "/etc/ssl/private/a/b.pem"
        ));
        assert!(!path_matches("/etc/ssl/private/**", "/etc/ssl/private"));
        assert!(path_matches("*.key", "/srv/x/server.key"));
        assert!(!path_matches("*.key", "/srv/x.key/readme"));
        assert!(any_matches(&["/etc/fstab".into()], "/etc/fstab"));
        assert!(!any_matches(&[], "/etc/fstab"));
    }
}

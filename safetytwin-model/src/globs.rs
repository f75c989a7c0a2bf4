//! Path patterns, shared by the daemon (files whose content never leaves the host) and the
//! replayer (files never applied to the twin), so both read a pattern the same way.
//!
//! A secret's pattern also covers the names tools give its copies ([`secret_matches`]): one
//! rule strips backup, editor and package-manager decorations from the file name and compares
//! without case, so `/etc/shadow` covers `shadow-`, `.shadow.swp` and `shadow.dpkg-old`, and
//! `*.key` covers `Server.KEY.bak`, without a longer list to keep in step.

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

/// Suffixes that backup tools, editors and package managers append to a file's name.
const COPY_SUFFIXES: &[&str] = &[
    "~",
    "-",
    ".bak",
    ".backup",
    ".old",
    ".orig",
    ".save",
    ".sav",
    ".tmp",
    ".temp",
    ".new",
    ".copy",
    ".dist",
    ".dpkg-old",
    ".dpkg-dist",
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-bak",
    ".ucf-old",
    ".ucf-dist",
    ".ucf-new",
    ".rpmsave",
    ".rpmnew",
    ".rpmorig",
    ".pacsave",
    ".pacnew",
];

/// How many decorations are peeled off one name (`.shadow.bak.swp` has two).
const MAX_PEEL: usize = 4;

/// `name` without one decoration, if it has one: a suffix of [`COPY_SUFFIXES`], a numbered
/// backup (`.1`, `.~1~`, `-20241201`), vim's `.name.swp` (`.swo`, `.swx` … any `.sw?`),
/// emacs' `#name#` and `.#name`. Names are lower case here.
fn peel(name: &str) -> Option<&str> {
    if let Some(inner) = name.strip_prefix('#').and_then(|n| n.strip_suffix('#')) {
        return Some(inner);
    }
    if let Some(inner) = name.strip_prefix(".#") {
        return Some(inner);
    }
    if let Some((stem, ext)) = name.rsplit_once('.') {
        let swap = ext.len() == 3 && ext.starts_with("sw");
        if swap {
            return Some(stem.strip_prefix('.').unwrap_or(stem));
        }
        let numbered = ext
            .strip_prefix('~')
            .and_then(|e| e.strip_suffix('~'))
            .unwrap_or(ext);
        if !numbered.is_empty() && numbered.bytes().all(|b| b.is_ascii_digit()) {
            return Some(stem);
        }
    }
    if let Some((stem, digits)) = name.rsplit_once('-')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(stem);
    }
    COPY_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|stem| !stem.is_empty())
}

/// Whether `path` is a secret by `pattern`: the path itself, or a copy of a matching file by
/// one of the names tools give copies, in any letter case.
pub fn secret_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.to_lowercase();
    let path = path.to_lowercase();
    let (dir, mut name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
    for _ in 0..=MAX_PEEL {
        if path_matches(&pattern, &format!("{dir}/{name}")) {
            return true;
        }
        match peel(name) {
            Some(inner) => name = inner,
            None => return false,
        }
    }
    false
}

/// Whether any of `patterns` makes `path` a secret ([`secret_matches`]).
pub fn any_secret_matches(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| secret_matches(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_a_secret_are_secrets() {
        for copy in [
            "/etc/shadow",
            "/etc/shadow-",
            "/etc/shadow.bak",
            "/etc/shadow~",
            "/etc/.shadow.swp",
            "/etc/.shadow.swo",
            "/etc/.shadow.swx",
            "/etc/#shadow#",
            "/etc/.#shadow",
            "/etc/shadow.dpkg-old",
            "/etc/shadow.dpkg-dist",
            "/etc/shadow.orig",
            "/etc/shadow.save",
            "/etc/shadow.old",
            "/etc/shadow.1",
            "/etc/shadow.~2~",
            "/etc/shadow-20241201",
            "/etc/shadow.bak.swp",
            "/etc/SHADOW",
        ] {
            assert!(secret_matches("/etc/shadow", copy), "{copy}");
        }
        for key in [
            "/srv/a.KEY",
            "/srv/Server.Key",
            "/srv/.site.key.swp",
            "/srv/x.key.orig",
        ] {
            assert!(secret_matches("*.key", key), "{key}");
        }
        assert!(secret_matches(
            "/etc/ssh/ssh_host_*_key",
            "/etc/ssh/ssh_host_rsa_key.bak"
        ));
        for other in [
            "/etc/shadow.d/x",
            "/etc/shadowsocks.json",
            "/etc/gshadow.conf",
            "/srv/etc/shadow",
            "/etc/ssh/ssh_host_rsa_key.pub",
            "/etc/ssh/ssh_host_rsa_key.pub~",
            "/srv/keys.conf",
            "/srv/key",
        ] {
            assert!(
                !secret_matches("/etc/shadow", other)
                    && !secret_matches("*.key", other)
                    && !secret_matches("/etc/ssh/ssh_host_*_key", other),
                "{other}"
            );
        }
    }

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

//! The one definition of a path the model may hold: absolute, normalized, printable, bounded.
//!
//! Paths come from the wire (a daemon is trusted only for its own host) and end up as file names
//! in an export directory, as tar entries and `rm` arguments in the twin, and on an operator's
//! terminal. Every layer that takes a path from outside checks it here, so `/etc//passwd`,
//! `/etc/./x`, `/etc/../root` and escape sequences never reach any of them, and two spellings of
//! one file cannot exist side by side in a model.

use std::fmt;

/// Longest path the kernel accepts (`PATH_MAX`, terminating NUL included).
pub const PATH_MAX: usize = 4096;
/// Longest file name the kernel accepts (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Why a path is not one the model may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Empty.
    Empty,
    /// Does not start with `/`.
    NotAbsolute,
    /// `//`, or a trailing `/`.
    EmptyComponent,
    /// A `.` or `..` component.
    DotComponent,
    /// NUL, another control character or DEL.
    ControlCharacter,
    /// Longer than `PATH_MAX - 1` bytes.
    TooLong(usize),
    /// A component longer than `NAME_MAX` bytes.
    NameTooLong(usize),
    /// Not under any of the trees the daemon declared.
    OutsideTrees,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => f.write_str("empty path"),
            PathError::NotAbsolute => f.write_str("not absolute"),
            PathError::EmptyComponent => f.write_str("not normalized (empty component)"),
            PathError::DotComponent => f.write_str("not normalized (`.` or `..` component)"),
            PathError::ControlCharacter => f.write_str("contains a control character"),
            PathError::TooLong(n) => write!(f, "{n} bytes, over PATH_MAX"),
            PathError::NameTooLong(n) => write!(f, "a {n}-byte component, over NAME_MAX"),
            PathError::OutsideTrees => f.write_str("outside the declared trees"),
        }
    }
}

impl std::error::Error for PathError {}

/// Checks that `path` is absolute and normalized (no empty, `.` or `..` component, no trailing
/// `/` except for `/` itself), free of control characters and within the kernel's limits.
pub fn check(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() >= PATH_MAX {
        return Err(PathError::TooLong(path.len()));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    if rest.is_empty() {
        return Ok(());
    }
    for name in rest.split('/') {
        match name {
            "" => return Err(PathError::EmptyComponent),
            "." | ".." => return Err(PathError::DotComponent),
            n if n.len() > NAME_MAX => return Err(PathError::NameTooLong(n.len())),
            _ => {}
        }
    }
    Ok(())
}

/// Whether checked `path` is `tree` or lies below it (`/etc` holds `/etc/x`, not `/etcx`).
pub fn beneath(path: &str, tree: &str) -> bool {
    tree == "/"
        || path
            .strip_prefix(tree)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// [`check`], then that `path` is beneath one of `trees`.
pub fn check_within<S: AsRef<str>>(path: &str, trees: &[S]) -> Result<(), PathError> {
    check(path)?;
    if trees.iter().any(|t| beneath(path, t.as_ref())) {
        Ok(())
    } else {
        Err(PathError::OutsideTrees)
    }
}

/// Checks a symlink's target. Unlike a path, a target is never resolved by anyone downstream
/// (an export writes it last and walks no link; the twin gets it as the host had it), and real
/// ones are relative with `..` (`../foo.service`) or point outside the watched trees
/// (`/usr/share/zoneinfo/UTC`), so only what no kernel would store or no terminal should see is
/// refused: empty, control characters, over `PATH_MAX`.
pub fn check_link_target(target: &str) -> Result<(), PathError> {
    if target.is_empty() {
        Err(PathError::Empty)
    } else if target.len() >= PATH_MAX {
        Err(PathError::TooLong(target.len()))
    } else if target.chars().any(char::is_control) {
        Err(PathError::ControlCharacter)
    } else {
        Ok(())
    }
}

/// The components of checked `path`, root excluded.
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_absolute_paths_pass() {
        for ok in [
            "/",
            "/etc",
            "/etc/passwd",
            "/etc/a b/ünï.conf",
            "/etc/.hidden",
            "/etc/..x",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn every_other_spelling_is_refused() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("etc/passwd", PathError::NotAbsolute),
            ("/etc//passwd", PathError::EmptyComponent),
            ("/etc/", PathError::EmptyComponent),
            ("/etc/./passwd", PathError::DotComponent),
            ("/etc/..", PathError::DotComponent),
            ("/etc/../root/.ssh", PathError::DotComponent),
            ("/etc/a\0b", PathError::ControlCharacter),
            ("/etc/\x1b[2Jx", PathError::ControlCharacter),
            ("/etc/a\nb", PathError::ControlCharacter),
            ("/etc/\u{7f}", PathError::ControlCharacter),
            ("/etc/\u{9b}31m", PathError::ControlCharacter),
        ];
        for (path, want) in cases {
            assert_eq!(check(path).as_ref(), Err(want), "{path:?}");
        }
        let long = format!("/{}", "a/".repeat(PATH_MAX / 2));
        assert!(matches!(check(&long), Err(PathError::TooLong(_))));
        let name = format!("/etc/{}", "n".repeat(NAME_MAX + 1));
        assert_eq!(check(&name), Err(PathError::NameTooLong(NAME_MAX + 1)));
    }

    #[test]
    fn trees_hold_their_own_paths_only() {
        let trees = ["/etc", "/usr/lib/systemd/system"];
        assert_eq!(check_within("/etc", &trees), Ok(()));
        assert_eq!(check_within("/etc/ssh/sshd_config", &trees), Ok(()));
        assert_eq!(
            check_within("/etcetera/x", &trees),
            Err(PathError::OutsideTrees)
        );
        assert_eq!(
            check_within("/root/.ssh/id", &trees),
            Err(PathError::OutsideTrees)
        );
        assert_eq!(
            check_within("/etc/../root", &trees),
            Err(PathError::DotComponent)
        );
        assert!(beneath("/anything", "/"));
        assert_eq!(check_link_target("../../usr/lib/x.service"), Ok(()));
        assert_eq!(check_link_target(""), Err(PathError::Empty));
        assert_eq!(
            check_link_target("a\x1b[2J"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(
            components("/etc/ssh/x").collect::<Vec<_>>(),
            ["etc", "ssh", "x"]
        );
    }
}

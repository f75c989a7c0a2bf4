//! The host's accounts: users from `/etc/passwd`, groups from `/etc/group`, and of
//! `/etc/shadow` only whether each user's password is set, empty or locked. A hash never
//! enters the model: the parser of the shadow file keeps one word per user.
//!
//! Names become arguments of `useradd`/`groupadd` in the twin and lines on an operator's
//! terminal; a line whose name could be read as an option, or whose fields are not what the
//! shadow utilities write, is refused here (and at the wire's edge) and counted.

use std::{collections::BTreeMap, fmt};

use crate::paths;

/// Longest account name accepted (`useradd` allows 32; NSS sources may hold longer).
pub const MAX_NAME: usize = 64;
/// Longest GECOS field accepted.
pub const MAX_GECOS: usize = 1024;
/// Most members of one group accepted.
pub const MAX_MEMBERS: usize = 65_536;

/// What the shadow file says of a user's password; never the hash itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// A hash is set: the user can log in with a password.
    Set,
    /// Locked (`!…` or `*`): no password login.
    Locked,
    /// Empty: login without a password.
    Empty,
    /// No shadow entry (or no shadow file was read).
    Unknown,
}

impl Password {
    /// Every state, in the order above.
    pub const ALL: [Password; 4] = [
        Password::Set,
        Password::Locked,
        Password::Empty,
        Password::Unknown,
    ];

    /// Its name in JSON and on the terminal.
    pub fn as_str(self) -> &'static str {
        match self {
            Password::Set => "set",
            Password::Locked => "locked",
            Password::Empty => "empty",
            Password::Unknown => "unknown",
        }
    }

    /// The state of a shadow file's password field.
    fn of_field(field: &str) -> Password {
        match field {
            "" => Password::Empty,
            f if f.starts_with(['!', '*']) => Password::Locked,
            _ => Password::Set,
        }
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Full name and such (the GECOS field).
    pub gecos: String,
    /// Home directory.
    pub home: String,
    /// Login shell (empty: the system's default).
    pub shell: String,
    /// Whether a password is set, locked or empty.
    pub password: Password,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Supplementary members, by login name, in the file's order.
    pub members: Vec<String>,
}

/// Why an account field is not one the model may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountError {
    /// A user, group or member name that is empty, too long, starts with `-`, or holds a
    /// character outside `[A-Za-z0-9_.-]` (a trailing `$`, for machine accounts, allowed).
    Name(String),
    /// A GECOS field with `:`, a control character, or over [`MAX_GECOS`] bytes.
    Gecos,
    /// A home directory or shell that is not an absolute, normalized path.
    Path(String),
    /// More than [`MAX_MEMBERS`] members.
    Members(usize),
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountError::Name(n) => {
                write!(f, "not an account name: {:?}", crate::escape::escape(n))
            }
            AccountError::Gecos => f.write_str("GECOS field with ':' or a control character"),
            AccountError::Path(p) => write!(
                f,
                "home or shell not an absolute normalized path: {:?}",
                crate::escape::escape(p)
            ),
            AccountError::Members(n) => write!(f, "{n} group members, over {MAX_MEMBERS}"),
        }
    }
}

impl std::error::Error for AccountError {}

/// Checks an account name: what `useradd` accepts (with a relaxed length), and never an option.
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let body = name.strip_suffix('$').unwrap_or(name);
    let ok = !body.is_empty()
        && name.len() <= MAX_NAME
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Name(name.chars().take(MAX_NAME).collect()))
    }
}

fn check_path(p: &str) -> Result<(), AccountError> {
    paths::check(p).map_err(|_| AccountError::Path(p.chars().take(256).collect()))
}

/// Checks every field of `u`.
pub fn check_user(u: &User) -> Result<(), AccountError> {
    check_name(&u.name)?;
    if u.gecos.len() > MAX_GECOS || u.gecos.chars().any(|c| c == ':' || c.is_control()) {
        return Err(AccountError::Gecos);
    }
    check_path(&u.home)?;
    if !u.shell.is_empty() {
        check_path(&u.shell)?;
    }
    Ok(())
}

/// Checks every field of `g`.
pub fn check_group(g: &Group) -> Result<(), AccountError> {
    check_name(&g.name)?;
    if g.members.len() > MAX_MEMBERS {
        return Err(AccountError::Members(g.members.len()));
    }
    g.members.iter().try_for_each(|m| check_name(m))
}

/// The accounts read from the three files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Groups by name.
    pub groups: BTreeMap<String, Group>,
    /// Lines left out: malformed, refused by the checks, NIS `+`/`-` entries, or a name seen
    /// twice (the first one counts, as for NSS).
    pub refused: usize,
}

/// The non-empty, non-comment lines of an account file, split at `:`.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// Reads `/etc/passwd`, `/etc/group` and, when readable, `/etc/shadow` (only the password
/// field's state is kept).
pub fn parse(passwd: &str, group: &str, shadow: Option<&str>) -> Accounts {
    let mut out = Accounts::default();
    let mut passwords = BTreeMap::new();
    for f in records(shadow.unwrap_or("")) {
        if f.len() >= 2 {
            passwords
                .entry(f[0])
                .or_insert_with(|| Password::of_field(f[1]));
        }
    }
    for f in records(passwd) {
        let user = match f[..] {
            [name, _, uid, gid, gecos, home, shell] => match (uid.parse(), gid.parse()) {
                (Ok(uid), Ok(gid)) => Some(User {
                    name: name.to_owned(),
                    uid,
                    gid,
                    gecos: gecos.to_owned(),
                    home: home.to_owned(),
                    shell: shell.to_owned(),
                    password: passwords.get(name).copied().unwrap_or(Password::Unknown),
                }),
                _ => None,
            },
            _ => None,
        };
        match user {
            Some(u) if check_user(&u).is_ok() && !out.users.contains_key(&u.name) => {
                out.users.insert(u.name.clone(), u);
            }
            _ => out.refused += 1,
        }
    }
    for f in records(group) {
        let group = match f[..] {
            [name, _, gid, members] => gid.parse().ok().map(|gid| Group {
                name: name.to_owned(),
                gid,
                members: members
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
            _ => None,
        };
        match group {
            Some(g) if check_group(&g).is_ok() && !out.groups.contains_key(&g.name) => {
                out.groups.insert(g.name.clone(), g);
            }
            _ => out.refused += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice Liddell,,,:/home/alice:/bin/bash
svc:x:999:999::/nonexistent:
";
    const GROUP: &str = "\
root:x:0:
sudo:x:27:alice,bob
alice:x:1000:
";
    const SHADOW: &str = "\
root:$y$j9T$abcdefgh$ijklmnopqrstuvwxyz:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
alice:!$y$j9T$locked$hash:19000:0:99999:7:::
svc::19000::::::
";

    #[test]
    fn users_groups_and_password_states_never_a_hash() {
        let a = parse(PASSWD, GROUP, Some(SHADOW));
        assert_eq!(a.refused, 0);
        let states: Vec<_> = a
            .users
            .values()
            .map(|u| (&u.name[..], u.password))
            .collect();
        assert_eq!(
            states,
            [
                ("alice", Password::Locked),
                ("daemon", Password::Locked),
                ("root", Password::Set),
                ("svc", Password::Empty),
            ]
        );
        assert_eq!(a.users["alice"].home, "/home/alice");
        assert_eq!(a.users["svc"].shell, "");
        assert_eq!(a.groups["sudo"].members, ["alice", "bob"]);
        assert!(a.groups["root"].members.is_empty());
        assert!(
            !format!("{a:?}").contains("$y$"),
            "a hash reached the model"
        );
    }

    #[test]
    fn without_shadow_every_password_is_unknown() {
        let a = parse(PASSWD, GROUP, None);
        assert!(a.users.values().all(|u| u.password == Password::Unknown));
    }

    /// Lines a hostile or damaged file could hold: each is left out and counted, and the
    /// well-formed lines around them still count.
    #[test]
    fn hostile_lines_are_refused_and_counted() {
        let passwd = "\
-oops:x:5:5::/home/x:/bin/sh
+nis::::::
evil:x:6:6:\u{1b}[2J:/home/evil:/bin/sh
rel:x:7:7::home/rel:/bin/sh
dots:x:8:8::/home/../root:/bin/sh
short:x:9
nan:x:a:1::/:/bin/sh
root:x:0:0:root:/root:/bin/bash
root:x:0:0:second root:/tmp:/bin/sh
";
        let group = "sudo:x:27:alice,-rf\nok:x:5:a$\n";
        let a = parse(passwd, group, None);
        assert_eq!(a.users.keys().collect::<Vec<_>>(), ["root"]);
        assert_eq!(a.users["root"].home, "/root");
        assert_eq!(a.groups.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(a.refused, 9);
    }

    #[test]
    fn names_that_could_be_options_are_refused() {
        for bad in [
            "",
            "-r",
            "a b",
            "a:b",
            "a/b",
            "$",
            "-$",
            &"x".repeat(MAX_NAME + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "root",
            "_apt",
            "systemd-network",
            "host$",
            "a.b",
            "Debian-exim",
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}

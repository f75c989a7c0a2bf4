//! Secrets by content: whether the bytes the daemon read from a file hold a private key, a
//! password hash or a VPN key, whatever the file is called. Pure: the daemon reads each dirty
//! file once at cut (within `--max-content`) and asks [`find`] before any byte leaves it.
//!
//! Binary files are scanned too: an editor's swap file is binary and holds the text it edits
//! (vim separates lines with NUL), so a line ends at `\n`, `\r` or NUL. The rules look for the
//! *shape* of a secret, not for a keyword, so a public key, a certificate or a comment that
//! mentions `PrivateKey` stays readable; a false positive only costs the twin a file's content.

/// What was found (the first match; the scan stops there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// A PEM-style `-----BEGIN … KEY-----` block that is not a public key: RSA, EC, DSA,
    /// PKCS#8 (also encrypted), OpenSSH, PGP private key blocks, OpenVPN static keys.
    KeyBlock,
    /// A PuTTY private key file (`PuTTY-User-Key-File-N:`).
    PuttyKey,
    /// A crypt(3)-style password hash (`$1$`, `$2b$`, `$5$`, `$6$`, `$y$`, `$argon2id$` …), or a
    /// `name:hash` line of shadow, passwd or htpasswd form (DES crypt, `{SHA}`).
    PasswordHash,
    /// A WireGuard `PrivateKey`/`PresharedKey`, an OpenVPN inline `<key>`, `<tls-auth>`,
    /// `<tls-crypt>`, `<secret>` … block, or a strongSwan `: PSK`/`: RSA` … secret.
    VpnKey,
}

/// The first secret in `bytes`, if any.
pub fn find(bytes: &[u8]) -> Option<Secret> {
    bytes
        .split(|b| matches!(b, b'\n' | b'\r' | 0))
        // Nothing shorter than `<key>` is a secret; binary files are mostly such runs.
        .filter(|line| line.len() >= MIN_LINE)
        .find_map(in_line)
}

/// The shortest line any rule matches.
const MIN_LINE: usize = b"<key>".len();

fn in_line(line: &[u8]) -> Option<Secret> {
    if key_block(line) {
        Some(Secret::KeyBlock)
    } else if trim(line).starts_with(b"PuTTY-User-Key-File-") {
        Some(Secret::PuttyKey)
    } else if crypt_hash(line) || account_hash(line) {
        Some(Secret::PasswordHash)
    } else if wireguard(line) || openvpn_inline(line) || strongswan(line) {
        Some(Secret::VpnKey)
    } else {
        None
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// Offsets of every occurrence of `needle` in `hay`, ASCII case-insensitive. The first byte is
/// tested on its own so the scan is one tight loop over the bytes.
fn occurrences<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle[0].to_ascii_lowercase();
    hay.iter()
        .enumerate()
        .filter(move |&(i, b)| {
            b.to_ascii_lowercase() == first
                && hay
                    .get(i..i + needle.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        })
        .map(|(i, _)| i)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    occurrences(hay, needle).next().is_some()
}

/// `-----BEGIN <label>-----` (or RFC 4716's `---- BEGIN <label> ----`) whose label names a key
/// that is not public. Certificates, CSRs, CRLs and parameters carry no `KEY` in their label.
fn key_block(line: &[u8]) -> bool {
    // Anchored on `BEGIN `, with the label looked for in a bounded window, so a line of dashes
    // or of repeated `BEGIN`s stays linear.
    let starts = line
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'B' && line[i..].starts_with(b"BEGIN "));
    starts.map(|(i, _)| i).any(|i| {
        let before = &line[..i];
        if !(before.ends_with(b"-----") || before.ends_with(b"---- ")) {
            return false;
        }
        let rest = &line[i + b"BEGIN ".len()..];
        let window = &rest[..rest.len().min(MAX_LABEL + 4)];
        occurrences(window, b"----").next().is_some_and(|end| {
            let label = &window[..end];
            contains(label, b"KEY") && !contains(label, b"PUBLIC")
        })
    })
}

/// Longest PEM label looked at (the longest real one, `OpenVPN tls-crypt-v2 client key`, is 31).
const MAX_LABEL: usize = 80;

/// The algorithm ids of crypt(3), libxcrypt, Apache and passlib hashes.
const CRYPT_IDS: &[&[u8]] = &[
    b"1",
    b"2",
    b"2a",
    b"2b",
    b"2x",
    b"2y",
    b"3",
    b"5",
    b"6",
    b"7",
    b"y",
    b"gy",
    b"md5",
    b"sha1",
    b"apr1",
    b"sm3",
    b"argon2i",
    b"argon2d",
    b"argon2id",
    b"scrypt",
    b"pbkdf2",
    b"pbkdf2-sha256",
    b"pbkdf2-sha512",
];

fn crypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'+' | b'=' | b',' | b'-')
}

/// `$id$` followed by at least two `$`-separated fields, the last one at least 20 characters
/// long (the digest: 22 for MD5-crypt, 31 for bcrypt, 43 for yescrypt, 86 for SHA-512-crypt).
/// A shell's `"$1$2"` has neither.
fn crypt_hash(line: &[u8]) -> bool {
    // Each `$` looks at most at a short id and a few fields, so `$1$1$1…` stays linear.
    line.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'$')
        .any(|(i, _)| {
            let rest = &line[i + 1..];
            let Some(id_len) = rest.iter().take(16).position(|&b| b == b'$') else {
                return false;
            };
            if !CRYPT_IDS.contains(&&rest[..id_len]) {
                return false;
            }
            let mut count = 0;
            let mut last = 0;
            for field in rest[id_len + 1..].split(|&b| b == b'$').take(6) {
                let run = field.iter().take_while(|&&b| crypt_char(b)).count();
                if run == 0 {
                    break;
                }
                count += 1;
                last = run;
                if run < field.len() {
                    break;
                }
            }
            count >= 2 && last >= 20
        })
}

/// `name:hash` as in shadow, passwd and htpasswd, for the forms [`crypt_hash`] cannot see:
/// traditional DES crypt (13 characters) and LDAP-style `{SHA}`/`{SSHA}` digests. A locked
/// account's `!` prefix does not hide the hash.
fn account_hash(line: &[u8]) -> bool {
    // A name is at most 64 bytes: a long line without a colon early on is not looked through.
    let Some(colon) = line.iter().take(65).position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    let name_ok = (1..=64).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if !name_ok {
        return false;
    }
    let field = &line[colon + 1..];
    let field = &field[field.iter().take_while(|&&b| b == b'!').count()..];
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let (hash, after) = (&field[..end], &field[end..]);
    let des = hash.len() == 13
        && hash
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'))
        && (after.is_empty() || after.starts_with(b":"));
    let scheme = trim(field);
    let ldap = scheme.starts_with(b"{")
        && scheme.iter().position(|&b| b == b'}').is_some_and(|close| {
            let body = &scheme[close + 1..];
            (2..=16).contains(&close)
                && body.len() >= 20
                && body
                    .iter()
                    .take(20)
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        });
    des || ldap
}

/// `PrivateKey = <44 base64 characters>` or `PresharedKey = …` (wg-quick, systemd-networkd),
/// even commented out: the value's shape decides, so a comment that only mentions the key
/// stays readable.
fn wireguard(line: &[u8]) -> bool {
    // Anchored on `=`: the key name is what precedes it, the value what follows.
    line.iter().enumerate().any(|(i, &b)| {
        if b != b'=' {
            return false;
        }
        let name = line[..i].trim_ascii_end();
        let named = [&b"privatekey"[..], b"presharedkey"].iter().any(|key| {
            name.len() >= key.len() && name[name.len() - key.len()..].eq_ignore_ascii_case(key)
        });
        if !named {
            return false;
        }
        let value = line[i + 1..].trim_ascii_start();
        value.len() >= 44
            && value[..43]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
            && value[43] == b'='
    })
}

/// The start of an OpenVPN inline block that holds a secret.
fn openvpn_inline(line: &[u8]) -> bool {
    const TAGS: &[&[u8]] = &[
        b"<key>",
        b"<tls-auth>",
        b"<tls-crypt>",
        b"<tls-crypt-v2>",
        b"<secret>",
        b"<pkcs12>",
        b"<auth-user-pass>",
        b"<http-proxy-user-pass>",
    ];
    let line = trim(line);
    TAGS.iter().any(|t| line.eq_ignore_ascii_case(t))
}

/// An `ipsec.secrets` entry: `[selectors] : TYPE secret` with the colon standing alone.
fn strongswan(line: &[u8]) -> bool {
    const TYPES: &[&[u8]] = &[
        b"PSK", b"RSA", b"ECDSA", b"ED25519", b"ED448", b"BLISS", b"PKCS8", b"PRIVATE", b"P12",
        b"EAP", b"XAUTH", b"NTLM", b"PIN", b"PPK",
    ];
    let line = trim(line);
    if line.starts_with(b"#") {
        return false;
    }
    line.iter().enumerate().any(|(i, &b)| {
        if b != b':' || (i > 0 && !line[i - 1].is_ascii_whitespace()) {
            return false;
        }
        let rest = &line[i + 1..];
        if !rest.first().is_some_and(u8::is_ascii_whitespace) {
            return false;
        }
        let rest = rest.trim_ascii_start();
        // The longest type is 7 bytes: no need to walk a long word to its end.
        let word = rest
            .iter()
            .take(8)
            .position(u8::is_ascii_whitespace)
            .unwrap_or(rest.len().min(8));
        TYPES.contains(&&rest[..word]) && !rest[word..].trim_ascii().is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Option<Secret> {
        find(text.as_bytes())
    }

    #[test]
    fn private_key_blocks_of_every_flavour() {
        for label in [
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "DSA PRIVATE KEY",
            "PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "PGP PRIVATE KEY BLOCK",
            "OpenVPN Static key V1",
        ] {
            let text =
                format!("header\n-----BEGIN {label}-----\nMIIEvQIBADANBg\n-----END {label}-----\n");
            assert_eq!(found(&text), Some(Secret::KeyBlock), "{label}");
        }
        assert_eq!(
            found("---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nP2/56w=="),
            Some(Secret::KeyBlock)
        );
        assert_eq!(
            found("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n"),
            Some(Secret::PuttyKey)
        );
    }

    #[test]
    fn password_hashes() {
        for line in [
            "root:$6$rounds=5000$saltsalt$Xr4bGhJ0b2ltYhZ3.8wL0y1hmFh0u7d2i0QnEUyXgW1s0Z3/aPb8e:19000:0:99999:7:::",
            "alice:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7:19000::::::",
            "bob:!$1$saltsalt$qjQvgQ8pU1oW0J6n3jL7k/:19000:0:99999:7:::",
            "web:$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "svc:$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "user:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",
            "password_hash = \"$5$saltsalt$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF2x5nTB4\"",
            "old:aZ3.xY9/bQ1cD:19000:0:99999:7:::",
            "htuser:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "userPassword: {SSHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
        ] {
            assert_eq!(found(line), Some(Secret::PasswordHash), "{line}");
        }
    }

    #[test]
    fn vpn_keys() {
        for text in [
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
            "[Peer]\npresharedkey=yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "# PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "client\n<key>\nMIIE\n</key>\n",
            "  <tls-crypt>\n",
            "<TLS-AUTH>",
            "<secret>",
            ": PSK \"v+NkxY9LLZvwj4qCC2o/gGrWDF2d21jL\"",
            "moon.strongswan.org : RSA moonKey.pem",
            "carol@strongswan.org : EAP \"Ar3etTnp\"",
        ] {
            assert_eq!(found(text), Some(Secret::VpnKey), "{text}");
        }
    }

    #[test]
    fn a_vim_swap_file_is_scanned_through_its_nul_separated_lines() {
        let mut swap = b"b0VIM 9.0\0\0\0root\0host\0/etc/shadow\0\0\0U3210#\"! ".to_vec();
        swap.extend_from_slice(&[0xff, 0xfe, 0, 0, 0x10]);
        swap.extend_from_slice(b"daemon:*:19000:0:99999:7:::\0");
        swap.extend_from_slice(
            b"root:$6$abcdefgh$0123456789abcdefghijABCDEFGHIJ./0123456789:19000::::::\0",
        );
        assert_eq!(find(&swap), Some(Secret::PasswordHash));
    }

    #[test]
    fn hostile_input_is_scanned_in_linear_time() {
        const SIZE: usize = 256 * 1024;
        let fill = |unit: &str| unit.repeat(SIZE / unit.len()).into_bytes();
        for input in [
            fill("$"),
            fill("$1$"),
            fill("$1$a"),
            fill("-"),
            fill("-----BEGIN "),
            fill("---- BEGIN ----"),
            fill("privatekey = "),
            fill(" : PSK"),
            fill("a:"),
            fill("{"),
            vec![0; SIZE],
        ] {
            let started = std::time::Instant::now();
            let _ = find(&input);
            // Debug builds on a loaded machine: quadratic would take minutes.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}… took {:?}",
                String::from_utf8_lossy(&input[..16]),
                started.elapsed()
            );
        }
    }

    #[test]
    fn near_misses_stay_readable() {
        for text in [
            "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----\n",
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n",
            "-----BEGIN RSA PUBLIC KEY-----\n",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n",
            "---- BEGIN SSH2 PUBLIC KEY ----\n",
            "-----BEGIN CERTIFICATE REQUEST-----\n-----BEGIN X509 CRL-----\n-----BEGIN DH PARAMETERS-----",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host",
            "# Put the PrivateKey of this peer in /etc/wireguard/private.key\n",
            "PrivateKey = <your key here>\n",
            "PrivateKeyFile = /etc/wireguard/wg0.key\n",
            "[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n",
            "root:x:0:0:root:/root:/bin/bash\nsudo:x:27:alice\n",
            "daemon:*:19000:0:99999:7:::\nnobody:!:19000::::::\n",
            "echo \"$1$2$3\"\nprintf '$6$%s' \"$salt\"\n",
            "cert client.crt\nkey client.key\ntls-auth ta.key 1\n<ca>\n-----BEGIN CERTIFICATE-----\n</ca>\n",
            "# : PSK \"commented out\"\n",
            "Note: RSA\n",
            "plain: text with a $ sign and a colon\n",
        ] {
            assert_eq!(found(text), None, "{text}");
        }
        assert_eq!(find(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F']), None);
    }
}

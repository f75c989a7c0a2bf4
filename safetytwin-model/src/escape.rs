//! The one way text from outside reaches a terminal: paths, argv, unit and host names come from
//! a monitored host (any process there can name a file `\x1b]0;owned\x07` or `\r/etc/ok`), and
//! printed raw they would move the cursor, rewrite earlier lines or retitle the operator's
//! terminal. Both binaries' text output goes through [`escape`]; JSON output needs nothing, as
//! serde_json already writes every control character as `\uXXXX`.

use std::{borrow::Cow, fmt};

/// Whether `c` must not reach a terminal as it is: C0 controls (ESC, CR, LF, BEL, TAB …), DEL,
/// C1 controls (U+0080–U+009F, which some terminals take as CSI and friends), the bidirectional
/// overrides and isolates that reorder what is shown ("Trojan Source"), and the Unicode line
/// and paragraph separators. The backslash is escaped too, so the output reads back
/// unambiguously: `\x1b` printed always means an escaped ESC, never the four characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every character a terminal would act on written visibly: `\r`, `\n`, `\t`, `\\`,
/// `\xHH` for the other ASCII controls, `\u{HHHH}` beyond. Borrows when nothing needs escaping,
/// which is nearly always.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(Escaped(s).to_string())
}

/// Formats its text through [`escape`], for `format!("{}", Escaped(path))` without an
/// intermediate `String`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, needs_escape)
    }
}

/// Writes `s` with each character `escape` selects in its visible form.
fn write_escaped(out: &mut impl fmt::Write, s: &str, escape: fn(char) -> bool) -> fmt::Result {
    for c in s.chars() {
        if !escape(c) {
            out.write_char(c)?;
            continue;
        }
        match c {
            '\r' => out.write_str("\\r")?,
            '\n' => out.write_str("\\n")?,
            '\t' => out.write_str("\\t")?,
            '\\' => out.write_str("\\\\")?,
            c if c.is_ascii() => write!(out, "\\x{:02x}", c as u32)?,
            c => write!(out, "\\u{{{:04x}}}", c as u32)?,
        }
    }
    Ok(())
}

/// One log line as tracing-subscriber wrote it, made safe for a terminal and a log file.
/// tracing-subscriber already writes ESC, BEL, BS, FF, DEL and C1 in fields and messages as
/// `\x1b` and the like (and emits ESC itself for its colours, which must survive), but leaves
/// CR, LF, TAB and the other C0 controls: a path holding `\n` would start a forged line of
/// its own. Those are escaped here, except the line's own final newline.
pub fn escape_log_line(line: &str) -> Cow<'_, str> {
    let (body, end) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let forges = |c: char| c.is_control() && c != '\x1b';
    if !body.chars().any(forges) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    // Writing to a String cannot fail.
    let _ = write_escaped(&mut out, body, forges);
    out.push_str(end);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_terminal_escapes_are_shown_not_obeyed() {
        let hostile = "/etc/\x1b[2J\rok\x07\u{9b}31m\u{202e}txt.exe\n";
        let shown = escape(hostile);
        assert_eq!(
            shown,
            "/etc/\\x1b[2J\\rok\\x07\\u{009b}31m\\u{202e}txt.exe\\n"
        );
        // Whatever the input, the output holds nothing a terminal acts on.
        assert!(!shown.chars().any(|c| needs_escape(c) && c != '\\'));
    }

    #[test]
    fn local_plain_text_is_borrowed_and_unchanged() {
        for s in [
            "/etc/nginx/nginx.conf",
            "nginx.service",
            "→ /usr/lib/x",
            "ünïcödé",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(t) if t == s));
        }
    }

    #[test]
    fn local_backslash_is_escaped_so_output_is_unambiguous() {
        // A file literally named `\x1b` must not print like an escaped ESC.
        assert_eq!(escape("/tmp/\\x1b"), "/tmp/\\\\x1b");
        assert_ne!(escape("/tmp/\\x1b"), escape("/tmp/\x1b"));
    }

    #[test]
    fn local_log_lines_cannot_forge_lines() {
        let line = "\x1b[2mINFO\x1b[0m stored path=/etc/x\n2026-12-02 ERROR forged\r\n";
        assert_eq!(
            escape_log_line(line),
            "\x1b[2mINFO\x1b[0m stored path=/etc/x\\n2026-12-02 ERROR forged\\r\n"
        );
        let plain = "INFO daemon connected host=web-1\n";
        assert!(matches!(escape_log_line(plain), Cow::Borrowed(l) if l == plain));
    }

    #[test]
    fn local_every_control_character_is_escaped() {
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let s = c.to_string();
            let out = escape(&s);
            assert!(out.starts_with('\\') && out.len() > 1, "{c:?} -> {out:?}");
            assert!(
                out.chars().all(|c| c.is_ascii_graphic()),
                "{c:?} -> {out:?}"
            );
        }
    }
}

//! Text from outside (an image's names and paths, a peer's messages) made fit for one line of a
//! log or a terminal.

/// `s` with control characters (newlines, escapes, C1 controls), the Unicode line and
/// paragraph separators and bidirectional overrides written as escapes.
pub fn printable(s: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    s.chars().map(|c| if unsafe_char(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A path from /proc/PID/mountinfo, whose space, tab, newline and backslash are written as
/// octal escapes ("\\040").
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape_mountinfo("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(super::unescape_mountinfo("/plain\\x"), "/plain\\x");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::printable("a\nb\u{1b}[2J\u{202e}c\u{2028}"), "a\\nb\\u{1b}[2J\\u{202e}c\\u{2028}");
        assert_eq!(super::printable("plain / text"), "plain / text");
    }
}

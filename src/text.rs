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

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::printable("a\nb\u{1b}[2J\u{202e}c\u{2028}"), "a\\nb\\u{1b}[2J\\u{202e}c\\u{2028}");
        assert_eq!(super::printable("plain / text"), "plain / text");
    }
}

//! Splitting one statement (comment already removed) into tokens, and
//! reading number literals.
//!
//! Whitespace only separates tokens: `a+1`, `a + 1` and `RW|WB` are all one
//! expression, because no operator is unary and two terms side by side are
//! two arguments.

use alloc::vec::Vec;

use crate::Failure;

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `[A-Za-z_][A-Za-z0-9_]*`
    Ident,
    /// A digit followed by letters, digits and `_` (checked when read).
    Number,
    Plus,
    Minus,
    Pipe,
    Arrow,
    At,
    Equals,
    Bang,
    Colon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
}

impl Token<'_> {
    /// Whether this is the identifier `word`.
    pub fn is(&self, word: &str) -> bool {
        self.kind == Kind::Ident && self.text == word
    }
}

/// The longest statement accepted, in bytes (comment excluded).
pub const MAX_STATEMENT_LEN: usize = 512;

/// Splits `line` into tokens.
pub(crate) fn lex(line: &str) -> Result<Vec<Token<'_>>, Failure> {
    let bytes = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        let kind = match b {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c => {
                i += 1;
                continue;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                i = word_end(bytes, i);
                Kind::Ident
            }
            b'0'..=b'9' => {
                i = word_end(bytes, i);
                Kind::Number
            }
            b'-' if bytes.get(i + 1) == Some(&b'>') => {
                i += 2;
                Kind::Arrow
            }
            _ => {
                i += 1;
                match b {
                    b'+' => Kind::Plus,
                    b'-' => Kind::Minus,
                    b'|' => Kind::Pipe,
                    b'@' => Kind::At,
                    b'=' => Kind::Equals,
                    b'!' => Kind::Bang,
                    b':' => Kind::Colon,
                    _ => {
                        // Everything consumed so far was ASCII, so `start`
                        // is a character boundary.
                        let c = line.get(start..).and_then(|s| s.chars().next());
                        let shown = match c {
                            Some(c) if !c.is_control() => alloc::format!("`{c}`"),
                            Some(c) => alloc::format!("{:?}", c),
                            None => alloc::format!("byte {b:#x}"),
                        };
                        return Err(Failure::new(
                            "a name, number or one of + - | -> @ = ! :",
                            shown,
                        )
                        .because("unexpected character"));
                    }
                }
            }
        };
        let text = line.get(start..i).unwrap_or_default();
        tokens.push(Token { kind, text });
    }
    Ok(tokens)
}

fn word_end(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b) = bytes.get(i) {
        if b.is_ascii_alphanumeric() || *b == b'_' {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// Why a number literal could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NumberError {
    Malformed,
    TooLarge,
}

/// Reads a decimal or `0x` hex literal with optional `_` separators.
pub(crate) fn parse_number(text: &str) -> Result<u64, NumberError> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix).ok_or(NumberError::Malformed)?;
        any = true;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(NumberError::TooLarge)?;
    }
    if any {
        Ok(value)
    } else {
        Err(NumberError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(line: &str) -> Vec<Kind> {
        lex(line).unwrap().iter().map(|t| t.kind).collect()
    }

    #[test]
    fn tokens() {
        use Kind::*;
        assert_eq!(
            kinds("call X a+1 RW|WB->ok x2=0"),
            [
                Ident, Ident, Ident, Plus, Number, Ident, Pipe, Ident, Arrow, Ident, Ident, Equals,
                Number
            ]
        );
        assert_eq!(kinds("a@0x18 - 1"), [Ident, At, Number, Minus, Number]);
        assert_eq!(kinds("requires: !fwb"), [Ident, Colon, Bang, Ident]);
        assert!(lex("a $ b").is_err());
        assert!(lex("é").is_err());
        assert!(lex("a\u{0}").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("1_000"), Ok(1000));
        assert_eq!(parse_number("0x8010_0000"), Ok(0x8010_0000));
        assert_eq!(parse_number("0XfF"), Ok(255));
        assert_eq!(parse_number("0xffff_ffff_ffff_ffff"), Ok(u64::MAX));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_number("18446744073709551616"),
            Err(NumberError::TooLarge)
        );
        assert_eq!(
            parse_number("0x1_0000_0000_0000_0000"),
            Err(NumberError::TooLarge)
        );
        assert_eq!(parse_number("0x"), Err(NumberError::Malformed));
        assert_eq!(parse_number("0x_"), Err(NumberError::Malformed));
        assert_eq!(parse_number("12ab"), Err(NumberError::Malformed));
        assert_eq!(parse_number("0xg"), Err(NumberError::Malformed));
    }
}

//! A parser for the Python literal of a `.npy` header, for the headers the
//! canonical fast path in `npy.rs` declines (other spellings, escapes,
//! structured dtypes).
//!
//! It replaces `ndarray-npy`'s parser (`py_literal`, a PEG grammar) when
//! reading: that parser recurses once per level of nesting and backtracks
//! (a `{` is parsed as a dictionary, then again as a set; each level may be
//! parsed three times), so a 64 KiB header nested a few levels deep takes
//! seconds, and a deeper one minutes or a stack overflow. This one reads
//! each byte once, and its recursion is bounded by `MAX_HEADER_DEPTH`
//! (checked again here, whatever the caller checked).
//!
//! It accepts what numpy writes and the common spellings of it: strings and
//! bytes with `'` or `"` and backslash escapes, decimal integers (with a
//! sign, and `_` between digits), `True`, `False`, `None`, tuples, lists,
//! dictionaries and sets. Anything else (floats, hexadecimal integers,
//! `\N{...}` escapes, triple quotes) is a syntax error: no header of an
//! array this crate can read needs it.

/// Deepest nesting of brackets accepted in a `.npy` header. numpy's own
/// headers nest 2 levels (the dictionary and the shape tuple); a structured
/// dtype 3 (its list of fields, a field's tuple), one more for a subarray
/// field (`[('a', '<i4', (2, 3))]`) and 2 more per level of nested fields.
pub(crate) const MAX_HEADER_DEPTH: usize = 8;

/// A parsed Python literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lit {
    Str(String),
    Bytes(Vec<u8>),
    /// An integer, `None` when it does not fit in an `i128`.
    Int(Option<i128>),
    Bool(bool),
    None,
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
    Set(Vec<Lit>),
}

impl Lit {
    /// Python's `repr`, ASCII only (used to name a dtype that is not a
    /// string, such as a structured dtype's list of fields).
    pub(crate) fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        use std::fmt::Write as _;
        let seq = |out: &mut String, items: &[Lit], open: &str, close: &str| {
            out.push_str(open);
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                x.write_repr(out);
            }
            if open == "(" && items.len() == 1 {
                out.push(',');
            }
            out.push_str(close);
        };
        match self {
            Lit::Str(s) => {
                out.push('\'');
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\'' => out.push_str("\\'"),
                        ' '..='~' => out.push(c),
                        c if (c as u32) < 0x100 => {
                            let _ = write!(out, "\\x{:02x}", c as u32);
                        }
                        c if (c as u32) < 0x10000 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => {
                            let _ = write!(out, "\\U{:08x}", c as u32);
                        }
                    }
                }
                out.push('\'');
            }
            Lit::Bytes(b) => {
                out.push_str("b'");
                for &c in b {
                    match c {
                        b'\\' => out.push_str("\\\\"),
                        b'\'' => out.push_str("\\'"),
                        b' '..=b'~' => out.push(c as char),
                        c => {
                            let _ = write!(out, "\\x{c:02x}");
                        }
                    }
                }
                out.push('\'');
            }
            Lit::Int(Some(n)) => {
                let _ = write!(out, "{n}");
            }
            Lit::Int(None) => out.push_str("<integer out of range>"),
            Lit::Bool(true) => out.push_str("True"),
            Lit::Bool(false) => out.push_str("False"),
            Lit::None => out.push_str("None"),
            Lit::Tuple(v) => seq(out, v, "(", ")"),
            Lit::List(v) => seq(out, v, "[", "]"),
            Lit::Set(v) => seq(out, v, "{", "}"),
            Lit::Dict(v) => {
                out.push('{');
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    x.write_repr(out);
                }
                out.push('}');
            }
        }
    }
}

/// Parses `text` as one Python literal (surrounding spaces allowed).
/// Errors are reasons.
pub(crate) fn parse(text: &str) -> Result<Lit, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.error("unexpected text after the literal"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Spaces, tabs and form feeds (no newline: as in `py_literal`).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\x0c')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string(false).map(|b| match b {
                Str::Text(s) => Lit::Str(s),
                Str::Bytes(b) => Lit::Bytes(b),
            }),
            Some(b'b' | b'B') if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                self.i += 1;
                self.string(true).map(|b| match b {
                    Str::Text(s) => Lit::Bytes(s.into_bytes()),
                    Str::Bytes(b) => Lit::Bytes(b),
                })
            }
            Some(b'(' | b'[' | b'{') => {
                if depth >= MAX_HEADER_DEPTH {
                    return Err(
                        self.error(&format!("nested more than {MAX_HEADER_DEPTH} levels deep"))
                    );
                }
                self.collection(depth + 1)
            }
            Some(b'0'..=b'9' | b'+' | b'-') => self.integer(),
            _ => {
                for (word, v) in [
                    ("True", Lit::Bool(true)),
                    ("False", Lit::Bool(false)),
                    ("None", Lit::None),
                ] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                Err(self.error("expected a value"))
            }
        }
    }

    /// A tuple, list, dictionary or set; `depth` counts this one.
    fn collection(&mut self, depth: usize) -> Result<Lit, String> {
        let open = self.peek().unwrap_or(b'(');
        self.i += 1;
        let close = match open {
            b'(' => b')',
            b'[' => b']',
            _ => b'}',
        };
        let mut items = Vec::new();
        let mut pairs = Vec::new();
        let mut dict = None;
        let mut trailing_comma = false;
        loop {
            self.ws();
            if self.eat(close) {
                break;
            }
            let v = self.value(depth)?;
            self.ws();
            if open == b'{' {
                let is_pair = self.eat(b':');
                if *dict.get_or_insert(is_pair) != is_pair {
                    return Err(self.error("a dictionary or a set, not both"));
                }
                if is_pair {
                    self.ws();
                    let x = self.value(depth)?;
                    pairs.push((v, x));
                    self.ws();
                } else {
                    items.push(v);
                }
            } else {
                items.push(v);
            }
            trailing_comma = self.eat(b',');
            if !trailing_comma {
                self.ws();
                if self.eat(close) {
                    break;
                }
                return Err(self.error("expected ',' or a closing bracket"));
            }
        }
        Ok(match open {
            // `(x)` is no tuple; `()` and `(x,)` are.
            b'(' if items.len() == 1 && !trailing_comma => {
                return Err(self.error("a parenthesised value is not a tuple"))
            }
            b'(' => Lit::Tuple(items),
            b'[' => Lit::List(items),
            _ if dict == Some(false) => Lit::Set(items),
            _ => Lit::Dict(pairs),
        })
    }

    /// A decimal integer with optional signs (`-4`, `+4`, `1_000`).
    fn integer(&mut self) -> Result<Lit, String> {
        let mut negative = false;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            negative ^= c == b'-';
            self.i += 1;
            self.ws();
        }
        let start = self.i;
        let mut n: Option<i128> = Some(0);
        let mut digits = 0;
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' => {
                    n = n
                        .and_then(|n| n.checked_mul(10))
                        .and_then(|n| n.checked_add(i128::from(c - b'0')));
                    digits += 1;
                }
                b'_' if digits > 0 && matches!(self.s.get(self.i + 1), Some(b'0'..=b'9')) => {}
                b'.' | b'e' | b'E' | b'j' | b'J' | b'x' | b'X' | b'o' | b'O' | b'b' | b'B' => {
                    return Err(self.error("only decimal integers are supported"))
                }
                _ => break,
            }
            self.i += 1;
        }
        if digits == 0 {
            return Err(self.error("expected a number"));
        }
        // Python 3 refuses leading zeros (`03`), but not `0` or `000`.
        let body = &self.s[start..self.i];
        if body.len() > 1 && body[0] == b'0' && body.iter().any(|&c| matches!(c, b'1'..=b'9')) {
            return Err(self.error("leading zeros in an integer"));
        }
        Ok(Lit::Int(if negative { n.map(|n| -n) } else { n }))
    }

    /// A quoted string or bytes body, the opening quote at the cursor.
    fn string(&mut self, bytes: bool) -> Result<Str, String> {
        let q = self.peek().unwrap_or(b'\'');
        if self.s.get(self.i + 1) == Some(&q) && self.s.get(self.i + 2) == Some(&q) {
            return Err(self.error("triple-quoted strings are not supported"));
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.i += 1;
            match c {
                _ if c == q => break,
                b'\n' | b'\r' => return Err(self.error("newline in a string")),
                b'\\' => self.escape(&mut out, bytes)?,
                _ if bytes && !c.is_ascii() => {
                    return Err(self.error("non-ASCII character in bytes"))
                }
                _ => out.push(c),
            }
        }
        if bytes {
            return Ok(Str::Bytes(out));
        }
        // The text is UTF-8 and escapes push UTF-8: this cannot fail.
        String::from_utf8(out)
            .map(Str::Text)
            .map_err(|_| self.error("invalid UTF-8 in a string"))
    }

    /// The escape after a backslash (already consumed).
    fn escape(&mut self, out: &mut Vec<u8>, bytes: bool) -> Result<(), String> {
        let Some(c) = self.peek() else {
            return Err(self.error("unterminated string"));
        };
        self.i += 1;
        let simple = match c {
            b'\\' => Some(b'\\'),
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let code = match c {
            b'\n' => return Ok(()),
            b'0'..=b'7' => {
                let mut n = u32::from(c - b'0');
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            self.i += 1;
                        }
                        _ => break,
                    }
                }
                n
            }
            b'x' => self.hex(2)?,
            b'u' if !bytes => self.hex(4)?,
            b'U' if !bytes => self.hex(8)?,
            b'N' if !bytes => return Err(self.error("\\N{...} escapes are not supported")),
            _ => {
                // Python keeps an unknown escape as it is.
                out.push(b'\\');
                self.i -= 1;
                return Ok(());
            }
        };
        if bytes {
            out.push(u8::try_from(code).map_err(|_| self.error("escape out of range"))?);
        } else {
            let ch = char::from_u32(code).ok_or_else(|| self.error("invalid character escape"))?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
        Ok(())
    }

    fn hex(&mut self, n: usize) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.i..self.i + n)
            .filter(|d| d.bytes().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("bad hexadecimal escape"))?;
        self.i += n;
        u32::from_str_radix(digits, 16).map_err(|_| self.error("bad hexadecimal escape"))
    }
}

enum Str {
    Text(String),
    Bytes(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_numpy_writes() {
        let v = parse(
            "{'descr': [('a', '<i4', (2, 3)), ('b', '|S3')], 'fortran_order': True, 'shape': (), }",
        )
        .unwrap();
        let Lit::Dict(d) = &v else { panic!("{v:?}") };
        assert_eq!(d.len(), 3);
        assert_eq!(d[1], (Lit::Str("fortran_order".into()), Lit::Bool(true)));
        assert_eq!(d[2].1, Lit::Tuple(vec![]));
        assert_eq!(d[0].1.repr(), "[('a', '<i4', (2, 3)), ('b', '|S3')]");
        assert_eq!(parse("(3,)").unwrap(), Lit::Tuple(vec![Lit::Int(Some(3))]));
        assert_eq!(parse(" ( 3 , 4 , ) ").unwrap().repr(), "(3, 4)");
        assert_eq!(parse("(1,)").unwrap().repr(), "(1,)");
        assert_eq!(parse("-1_000").unwrap(), Lit::Int(Some(-1000)));
        assert_eq!(parse("{1, 2}").unwrap().repr(), "{1, 2}");
        assert_eq!(parse("{}").unwrap(), Lit::Dict(vec![]));
        assert_eq!(
            parse(r"'a\'b\x41\u00e9\n\q'").unwrap(),
            Lit::Str("a'bA\u{e9}\n\\q".into())
        );
        assert_eq!(parse(r#"b"\xff\"""#).unwrap(), Lit::Bytes(vec![0xff, b'"']));
        assert_eq!(
            parse("99999999999999999999999999999999999999999").unwrap(),
            Lit::Int(None)
        );
        assert_eq!(parse("'\u{e9}'").unwrap().repr(), r"'\xe9'");
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in [
            "(3)",
            "[1, 2",
            "{1: 2, 3}",
            "{1, 2: 3}",
            "1.5",
            "0x10",
            "03",
            "'''a'''",
            "'a",
            "'a\nb'",
            r"'\N{DIGIT ONE}'",
            "(1,) (2,)",
            "Truth",
            "(,)",
            "b'\u{e9}'",
            "{'a': 1,, }",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_bounded_by_itself() {
        let ok = format!(
            "{}{}",
            "(".repeat(MAX_HEADER_DEPTH),
            ",)".repeat(MAX_HEADER_DEPTH)
        );
        let ok = ok.replacen(",)", ")", 1);
        assert!(parse(&ok).is_ok(), "{ok}");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse(&deep).unwrap_err();
        assert!(e.contains("nested"), "{e}");
    }
}

//! Lexical rules of RFC 3261 §25.1 shared by the header parsers.
//!
//! Header values keep their line folding (CRLF followed by SP/HT); every
//! scanner here treats CR and LF as linear white space, so folded values are
//! parsed in place without an unfolding copy.

/// Byte offset of the first `b` in `s` (memchr: no per-byte `char`
/// decoding or comparison calls).
pub fn find(s: &str, b: u8) -> Option<usize> {
    memchr::memchr(b, s.as_bytes())
}

/// Byte offset of the last `b` in `s`.
pub fn rfind(s: &str, b: u8) -> Option<usize> {
    memchr::memrchr(b, s.as_bytes())
}

/// Byte offset of the first `a` or `b` in `s`.
pub fn find2(s: &str, a: u8, b: u8) -> Option<usize> {
    memchr::memchr2(a, b, s.as_bytes())
}

/// `token` characters: alphanum and `-.!%*_+`'~`.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Whether `s` is a non-empty token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Linear white space, including the CRLF of a fold.
#[inline]
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `s` without leading and trailing linear white space.
pub fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|c| !is_lws(*c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_lws(*c)).map_or(start, |i| i + 1);
    // Both ends sit next to ASCII white space, so they are char boundaries.
    s.get(start..end).unwrap_or_default()
}

/// Whether `s` contains a fold or any white space.
pub fn has_lws(s: &str) -> bool {
    s.bytes().any(is_lws)
}

/// Splits a list header value at top-level commas (outside quoted strings
/// and angle brackets). Empty elements are returned as empty strings so the
/// caller can reject them.
pub fn split_list(value: &str) -> ListIter<'_> {
    ListIter { rest: Some(value) }
}

/// Iterator of [`split_list`].
#[derive(Debug, Clone)]
pub struct ListIter<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for ListIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let bytes = s.as_bytes();
        let mut in_quote = false;
        let mut in_angle = false;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'\\' if in_quote => i += 1,
                b'"' => in_quote = !in_quote,
                b'<' if !in_quote => in_angle = true,
                b'>' if !in_quote => in_angle = false,
                b',' if !in_quote && !in_angle => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(trim(&s[..i]));
                }
                _ => {}
            }
            i += 1;
        }
        self.rest = None;
        Some(trim(s))
    }
}

/// Length of the quoted string at the start of `s` (which begins with `"`),
/// including both quotes; `None` when it is not terminated.
pub fn quoted_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The content of a quoted string with its `\` escapes removed.
pub fn unquote(quoted: &str) -> String {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One `;name[=value]` parameter, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// Parameter name as written (compare case-insensitively).
    pub name: &'a str,
    /// Value as written (a quoted string keeps its quotes), if any.
    pub value: Option<&'a str>,
}

/// Parameters in order, borrowed from the message. Only the validated text
/// is kept; lookups scan it again, so parsing allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params<'a> {
    raw: &'a str,
}

impl<'a> Params<'a> {
    /// The parameters as written, starting at the first `;` (or empty).
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// Every parameter in order.
    pub fn iter(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        ParamIter { rest: self.raw }.map_while(Result::ok)
    }

    /// The first parameter named `name` (case-insensitive): `Some(None)`
    /// when present without a value.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    /// Whether a parameter named `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Why a parameter list is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    /// `;;` or `;=x`.
    EmptyName,
    /// A name with a character outside `token`.
    BadName,
    /// A quoted value without its closing quote.
    UnterminatedQuote,
    /// `name=` with nothing after it.
    EmptyValue,
}

/// Scans `*( SEMI param )`.
struct ParamIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Result<Param<'a>, ParamError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = trim(self.rest);
        if rest.is_empty() {
            return None;
        }
        let item = next_param(rest);
        match item {
            Ok((param, after)) => {
                self.rest = after;
                Some(Ok(param))
            }
            Err(e) => {
                self.rest = "";
                Some(Err(e))
            }
        }
    }
}

fn next_param(rest: &str) -> Result<(Param<'_>, &str), ParamError> {
    let after_semi = rest.strip_prefix(';').ok_or(ParamError::BadName)?;
    let after = trim_start(after_semi);
    let name_len = after.bytes().take_while(|b| is_token_byte(*b)).count();
    if name_len == 0 {
        return Err(ParamError::EmptyName);
    }
    let name = &after[..name_len];
    let tail = trim_start(&after[name_len..]);
    if let Some(v) = tail.strip_prefix('=') {
        let v = trim_start(v);
        let (value, rest_after) = if v.starts_with('"') {
            let n = quoted_len(v).ok_or(ParamError::UnterminatedQuote)?;
            (&v[..n], &v[n..])
        } else {
            let end = find(v, b';').unwrap_or(v.len());
            (trim(&v[..end]), &v[end..])
        };
        if value.is_empty() {
            return Err(ParamError::EmptyValue);
        }
        Ok((
            Param {
                name,
                value: Some(value),
            },
            rest_after,
        ))
    } else {
        if !tail.is_empty() && !tail.starts_with(';') {
            return Err(ParamError::BadName);
        }
        Ok((Param { name, value: None }, tail))
    }
}

/// Validates `*( SEMI param )` at the start of `s`, where `s` starts at the
/// first `;` (or is empty). Values run to the next `;` or the end; a value
/// may be a quoted string containing `;`.
pub fn parse_params(s: &str) -> Result<Params<'_>, ParamError> {
    let raw = trim(s);
    for item in (ParamIter { rest: raw }) {
        item?;
    }
    Ok(Params { raw })
}

/// `s` without leading linear white space.
pub fn trim_start(s: &str) -> &str {
    let start = s.bytes().position(|c| !is_lws(c)).unwrap_or(s.len());
    s.get(start..).unwrap_or_default()
}

/// Parses a decimal number of at most `max`, digits only.
pub fn parse_u64(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n <= max)
}

/// Decodes `%XX` escapes; `None` when an escape is malformed.
pub fn percent_decode(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !s.contains('%') {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_respect_quotes_and_angles() {
        let v = "\"a, b\" <sip:x@y;p=1,2>, <sip:z>;q=0.5 ,sip:w";
        let items: Vec<_> = split_list(v).collect();
        assert_eq!(
            items,
            ["\"a, b\" <sip:x@y;p=1,2>", "<sip:z>;q=0.5", "sip:w"]
        );
        assert_eq!(split_list("a,,b").collect::<Vec<_>>(), ["a", "", "b"]);
    }

    #[test]
    fn params_with_lws_quotes_and_flags() {
        let p = parse_params(" ;   tag    = 1918181833n").unwrap();
        assert_eq!(p.get("TAG"), Some(Some("1918181833n")));
        let p =
            parse_params("; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33").unwrap();
        assert_eq!(p.get("newparam"), Some(Some("newvalue")));
        assert_eq!(p.get("secondparam"), Some(None));
        assert_eq!(p.get("q"), Some(Some("0.33")));
        let p = parse_params(";x=\"a;b\";lr").unwrap();
        assert_eq!(p.get("x"), Some(Some("\"a;b\"")));
        assert!(p.has("lr"));
        assert_eq!(parse_params(";;"), Err(ParamError::EmptyName));
        assert_eq!(
            parse_params(";x=\"open"),
            Err(ParamError::UnterminatedQuote)
        );
        assert_eq!(parse_params(";x="), Err(ParamError::EmptyValue));
    }

    #[test]
    fn quoting() {
        assert_eq!(quoted_len("\"J Rosenberg \\\\\\\"\"  <sip:x>"), Some(18));
        assert_eq!(unquote("\"J Rosenberg \\\\\\\"\""), "J Rosenberg \\\"");
        assert_eq!(quoted_len("\"open"), None);
    }

    #[test]
    fn numbers_and_escapes() {
        assert_eq!(parse_u64("0068", 255), Some(68));
        assert_eq!(parse_u64("300", 255), None);
        assert_eq!(parse_u64("-1", 255), None);
        assert_eq!(parse_u64("36893488147419103232", u64::MAX), None);
        assert_eq!(
            percent_decode("sips%3Auser%40example.com").unwrap(),
            "sips:user@example.com"
        );
        assert_eq!(percent_decode("null-%00-null").unwrap(), "null-\0-null");
        assert!(percent_decode("%Z%45").is_none());
    }
}

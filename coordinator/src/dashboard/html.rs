//! Building HTML safely: [`Html`] takes markup only as `&'static str` (text
//! written in this crate) and everything else through [`Html::text`], which
//! escapes it. Names of jobs, nodes, labels and errors come from users and
//! agents; none can reach a page unescaped, because there is no method that
//! would let it.

use std::fmt::{self, Display, Write};

/// A fragment of HTML under construction (or finished).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Html(String);

/// Writes what it is given with `&`, `<`, `>`, `"` and `'` escaped, so the
/// result is safe both as element text and inside a quoted attribute.
struct Escaper<'a>(&'a mut String);

impl Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// `text` escaped for HTML text or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Writing into a String cannot fail.
    let _ = Escaper(&mut out).write_str(text);
    out
}

/// `text` percent-encoded for a URL query value: everything but ASCII
/// letters, digits and `-._~` is encoded (RFC 3986 unreserved characters).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space); None when an
/// escape is malformed or the bytes are not UTF-8.
pub fn decode_query_value(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `key` in a URL query string (`a=1&b=2`), decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| decode_query_value(v)).flatten()
    })
}

impl Html {
    /// An empty fragment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends markup written in this crate.
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Appends `value` as text, escaped.
    pub fn text(&mut self, value: impl Display) -> &mut Self {
        let _ = write!(Escaper(&mut self.0), "{value}");
        self
    }

    /// Appends a finished fragment (itself built through these methods).
    pub fn append(&mut self, fragment: &Html) -> &mut Self {
        self.0.push_str(&fragment.0);
        self
    }

    /// Appends `<tag attr="value">`, the value escaped; `tag` and `attr`
    /// are this crate's.
    pub fn open_with(
        &mut self,
        tag: &'static str,
        attr: &'static str,
        value: impl Display,
    ) -> &mut Self {
        self.raw("<").raw(tag).raw(" ").raw(attr).raw("=\"");
        self.text(value).raw("\">")
    }

    /// Appends `<td data-k="key">text</td>`: a table cell that tests and
    /// scripts find by its key.
    pub fn cell(&mut self, key: &'static str, value: impl Display) -> &mut Self {
        self.raw("<td data-k=\"").raw(key).raw("\">");
        self.text(value).raw("</td>")
    }

    /// Appends `<td data-k="key">` followed by `fragment` and `</td>`.
    pub fn cell_html(&mut self, key: &'static str, fragment: &Html) -> &mut Self {
        self.raw("<td data-k=\"").raw(key).raw("\">");
        self.append(fragment).raw("</td>")
    }

    /// Appends `<a href="path?key=value">text</a>`, value percent-encoded
    /// and the whole escaped.
    pub fn link_with_query(
        &mut self,
        path: &'static str,
        key: &'static str,
        value: &str,
        text: impl Display,
    ) -> &mut Self {
        self.raw("<a href=\"").raw(path).raw("?").raw(key).raw("=");
        self.text(query_value(value)).raw("\">");
        self.text(text).raw("</a>")
    }

    /// The markup.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The markup, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_markup_is_not() {
        let mut h = Html::new();
        h.raw("<b>")
            .text("<script>alert('x')</script> & \"q\"")
            .raw("</b>");
        assert_eq!(
            h.as_str(),
            "<b>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;</b>"
        );
        assert_eq!(escape("a<b"), "a&lt;b");
    }

    #[test]
    fn attributes_and_cells_escape_their_values() {
        let mut h = Html::new();
        h.open_with("tr", "data-row", "n\"1><x")
            .cell("name", "<i>")
            .raw("</tr>");
        assert_eq!(
            h.as_str(),
            "<tr data-row=\"n&quot;1&gt;&lt;x\"><td data-k=\"name\">&lt;i&gt;</td></tr>"
        );
    }

    #[test]
    fn query_values_round_trip_and_links_are_encoded() {
        for value in ["web", "a b&c=d", "ünï/?#\"<>"] {
            let encoded = query_value(value);
            assert!(encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            assert_eq!(decode_query_value(&encoded).as_deref(), Some(value));
        }
        assert_eq!(decode_query_value("%zz"), None);
        assert_eq!(decode_query_value("%4"), None);
        assert_eq!(decode_query_value("%+1"), None);
        assert_eq!(
            query_param(Some("x=1&job=a%20b"), "job").as_deref(),
            Some("a b")
        );
        assert_eq!(query_param(Some("job"), "job").as_deref(), Some(""));
        assert_eq!(query_param(None, "job"), None);
        let mut h = Html::new();
        h.link_with_query("/allocs", "job", "a&b", "a&b");
        assert_eq!(h.as_str(), "<a href=\"/allocs?job=a%26b\">a&amp;b</a>");
    }
}

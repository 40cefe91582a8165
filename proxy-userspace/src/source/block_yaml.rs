//! A fast reader for the YAML that manifests are written in: block
//! mappings and sequences by indentation (kubectl's style), one-line flow
//! collections (`{name: a, port: 80}`, `[10.0.0.1]`), plain and quoted
//! scalars. It decodes straight into serde types, several times faster
//! than the general YAML parser, and declines anything outside that
//! subset (anchors, tags, block scalars, multi-line scalars or flow
//! collections, escapes beyond the common ones, numbers in other forms than
//! plain decimals): a declined document goes to the general parser, so
//! the subset only decides speed, never what a document means.
//!
//! Scalars are typed as the general parser types them (YAML 1.2's core
//! schema): `null`, `~` and nothing are null, `true`/`false` booleans,
//! plain decimals integers; a plain scalar that could read as any other
//! number is declined rather than guessed.

use std::{borrow::Cow, fmt};

use serde::{
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
    forward_to_deserialize_any, Deserialize, Deserializer,
};

/// Why a document was left to the general parser: outside the subset, or
/// not of the type asked for.
#[derive(Debug)]
pub struct Declined(String);

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Declined {}

impl de::Error for Declined {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

fn declined<T>(why: &str) -> Result<T, Declined> {
    Err(Declined(why.to_string()))
}

/// `document` (one YAML document, without `---` markers) decoded as `T`.
pub fn from_str<'de, T: Deserialize<'de>>(document: &'de str) -> Result<T, Declined> {
    let mut reader = Reader::new(document)?;
    let value = T::deserialize(BlockValue {
        reader: &mut reader,
        inline: None,
        parent: None,
        compact_sequence: false,
    })?;
    if reader.peek().is_some() {
        return declined("lines after the document's value");
    }
    Ok(value)
}

/// A line with content: its indentation and its text, trimmed.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

impl Line<'_> {
    fn is_item(&self) -> bool {
        is_item(self.text)
    }
}

/// Whether `text` is a block sequence's item (`- …` or `-`).
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// The document's lines with content, and how far they are read.
struct Reader<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(document: &'a str) -> Result<Self, Declined> {
        let mut lines = Vec::new();
        for line in document.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let text = line.trim_start_matches(' ');
            let text = text.trim_end_matches(' ');
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            if text.contains('\t') || text.contains(" #") {
                return declined("tabs or a comment after content");
            }
            let indent = line.len() - line.trim_start_matches(' ').len();
            if text.starts_with('%') || (indent == 0 && text.starts_with("...")) {
                return declined("a directive or document marker");
            }
            lines.push(Line { indent, text });
        }
        Ok(Self { lines, at: 0 })
    }

    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }
}

/// `key: rest` split at the key's colon, if `text` is a mapping entry.
fn split_key(text: &str) -> Option<(Scalar<'_>, &str)> {
    if text.starts_with(['"', '\'']) {
        let mut flow = Flow::new(text);
        let key = flow.quoted().ok()?;
        let rest = &text[flow.pos..];
        let rest = rest.strip_prefix(':')?;
        return (rest.is_empty() || rest.starts_with(' ')).then(|| (key, rest.trim_start()));
    }
    let (key, rest) = match text.find(": ") {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text.strip_suffix(':')?, ""),
    };
    let key = key.trim_end();
    plain_allowed(key).then_some((Scalar::Plain(key), rest.trim_start()))
}

/// Whether `text` may be a plain scalar here: it does not start with an
/// indicator (`- ` starts an item, `{` a flow mapping, `&` an anchor, `|` a
/// block scalar, …) and holds no `: ` (which would make it a mapping).
fn plain_allowed(text: &str) -> bool {
    let Some(first) = text.bytes().next() else {
        return false;
    };
    let dash_item = first == b'-' && (text.len() == 1 || text.as_bytes()[1] == b' ');
    !b"?:,[]{}#&*!|>'\"%@`".contains(&first)
        && !dash_item
        && !text.contains(": ")
        && !text.ends_with(':')
}

/// A scalar as written: plain (typed by its text) or quoted (a string).
enum Scalar<'a> {
    Plain(&'a str),
    Quoted(Cow<'a, str>),
}

/// What a plain scalar reads as.
enum Typed<'a> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Text(&'a str),
}

const NULLS: &[&str] = &["", "~", "null", "Null", "NULL"];

/// Types a plain scalar by YAML 1.2's core schema, declining the number
/// forms this reader does not decode (hexadecimal, octal, floats, signs).
fn typed(text: &str) -> Result<Typed<'_>, Declined> {
    if NULLS.contains(&text) {
        return Ok(Typed::Null);
    }
    match text {
        "true" | "True" | "TRUE" => return Ok(Typed::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Typed::Bool(false)),
        _ => {}
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.len() > 1 && digits.starts_with('0') {
            return declined("a number with leading zeros");
        }
        return if text.starts_with('-') {
            text.parse()
                .map(Typed::Signed)
                .or_else(|_| declined("a number out of range"))
        } else {
            text.parse()
                .map(Typed::Unsigned)
                .or_else(|_| declined("a number out of range"))
        };
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let numberish = text.starts_with('+')
        || unsigned.starts_with('.')
        || ["0x", "0o", "0b"].iter().any(|p| unsigned.starts_with(p));
    if numberish || text.parse::<f64>().is_ok() {
        return declined("a number in a form this reader leaves alone");
    }
    Ok(Typed::Text(text))
}

impl<'a> Scalar<'a> {
    fn is_null(&self) -> bool {
        matches!(self, Self::Plain(text) if NULLS.contains(text))
    }

    fn visit_any<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined>
    where
        'a: 'de,
    {
        match self {
            Self::Plain(text) => match typed(text)? {
                Typed::Null => visitor.visit_unit(),
                Typed::Bool(value) => visitor.visit_bool(value),
                Typed::Unsigned(value) => visitor.visit_u64(value),
                Typed::Signed(value) => visitor.visit_i64(value),
                Typed::Text(text) => visitor.visit_borrowed_str(text),
            },
            Self::Quoted(text) => Self::visit_quoted(text, visitor),
        }
    }

    /// The text as written, whatever it would type as (asked for a string,
    /// the general parser hands over the text too).
    fn visit_text<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined>
    where
        'a: 'de,
    {
        match self {
            Self::Plain(text) => visitor.visit_borrowed_str(text),
            Self::Quoted(text) => Self::visit_quoted(text, visitor),
        }
    }

    fn visit_quoted<'de, V: Visitor<'de>>(
        text: Cow<'a, str>,
        visitor: V,
    ) -> Result<V::Value, Declined>
    where
        'a: 'de,
    {
        match text {
            Cow::Borrowed(text) => visitor.visit_borrowed_str(text),
            Cow::Owned(text) => visitor.visit_string(text),
        }
    }
}

/// A value in block context: text after `key: ` or `- ` on its line, or
/// (`inline` is `None`) the block on the lines below, if any.
struct BlockValue<'r, 'de> {
    reader: &'r mut Reader<'de>,
    inline: Option<&'de str>,
    /// Indentation of the line whose value this is (`None`: the document).
    parent: Option<usize>,
    /// Whether a sequence may sit at the parent's own indentation, as a
    /// mapping value's may (`ports:` then `- port: 80` below it).
    compact_sequence: bool,
}

/// What a block value's lines hold.
enum Block {
    Sequence(usize),
    Mapping(usize),
}

impl BlockValue<'_, '_> {
    /// The block below, or `None` when the value is empty (null).
    fn block(&self) -> Result<Option<Block>, Declined> {
        let Some(line) = self.reader.peek() else {
            return Ok(None);
        };
        let deeper = self.parent.is_none_or(|parent| line.indent > parent);
        let compact = self.compact_sequence && Some(line.indent) == self.parent && line.is_item();
        if !deeper && !compact {
            return Ok(None);
        }
        if line.is_item() {
            Ok(Some(Block::Sequence(line.indent)))
        } else if split_key(line.text).is_some() {
            Ok(Some(Block::Mapping(line.indent)))
        } else {
            declined("a scalar over several lines")
        }
    }
}

/// Runs `read` on the one-line value `text` and checks that it read all of it.
fn inline<'de, T>(
    text: &'de str,
    read: impl FnOnce(Inline<'_, 'de>) -> Result<T, Declined>,
) -> Result<T, Declined> {
    if text.starts_with(['{', '[', '"', '\'']) {
        let mut flow = Flow::new(text);
        let value = read(Inline::Flow(&mut flow))?;
        flow.skip_spaces();
        if flow.pos != text.len() {
            return declined("text after a flow value or quoted scalar");
        }
        Ok(value)
    } else if plain_allowed(text) {
        read(Inline::Scalar(ScalarValue(Scalar::Plain(text))))
    } else {
        declined("not a plain scalar")
    }
}

impl<'de> Deserializer<'de> for BlockValue<'_, 'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        if let Some(text) = self.inline {
            return inline(text, |value| value.deserialize_any(visitor));
        }
        match self.block()? {
            None => visitor.visit_unit(),
            Some(Block::Sequence(indent)) => visitor.visit_seq(BlockSequence {
                reader: self.reader,
                indent,
            }),
            Some(Block::Mapping(indent)) => visitor.visit_map(BlockMapping {
                reader: self.reader,
                indent,
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.inline {
            Some(text) => inline(text, |value| value.deserialize_option(visitor)),
            None if self.block()?.is_none() => visitor.visit_none(),
            None => visitor.visit_some(self),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.inline {
            Some(text) => inline(text, |value| value.deserialize_str(visitor)),
            None if self.block()?.is_none() => visitor.visit_borrowed_str(""),
            None => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Declined> {
        declined("an enum")
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

/// A block mapping's entries, each a line at `indent`.
struct BlockMapping<'r, 'de> {
    reader: &'r mut Reader<'de>,
    indent: usize,
    /// The text after the current key's colon (empty: a block or null).
    value: Option<&'de str>,
}

impl<'de> MapAccess<'de> for BlockMapping<'_, 'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Declined> {
        let Some(line) = self.reader.peek() else {
            return Ok(None);
        };
        if line.indent < self.indent {
            return Ok(None);
        }
        if line.indent > self.indent || line.is_item() {
            return declined("a line that belongs to no mapping entry");
        }
        let Some((key, rest)) = split_key(line.text) else {
            return declined("a mapping line without a key");
        };
        self.reader.at += 1;
        self.value = Some(rest);
        seed.deserialize(ScalarValue(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        let inline = self.value.take().filter(|text| !text.is_empty());
        seed.deserialize(BlockValue {
            reader: self.reader,
            inline,
            parent: Some(self.indent),
            compact_sequence: true,
        })
    }
}

/// A block sequence's items, each a line at `indent` starting with `-`.
struct BlockSequence<'r, 'de> {
    reader: &'r mut Reader<'de>,
    indent: usize,
}

impl<'de> SeqAccess<'de> for BlockSequence<'_, 'de> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Declined> {
        let Some(line) = self.reader.peek() else {
            return Ok(None);
        };
        if line.indent > self.indent {
            return declined("a line that belongs to no sequence item");
        }
        if line.indent < self.indent || !line.is_item() {
            return Ok(None);
        }
        let after_dash = &line.text[1..];
        let body = after_dash.trim_start_matches(' ');
        let mut inline = None;
        if body.is_empty() {
            self.reader.at += 1;
        } else if is_item(body) || split_key(body).is_some() {
            // `- key: value` or `- - item`: the item's block starts on this
            // line, at the column after the dash.
            self.reader.lines[self.reader.at] = Line {
                indent: self.indent + 1 + (after_dash.len() - body.len()),
                text: body,
            };
        } else {
            self.reader.at += 1;
            inline = Some(body);
        }
        seed.deserialize(BlockValue {
            reader: self.reader,
            inline,
            parent: Some(self.indent),
            compact_sequence: false,
        })
        .map(Some)
    }
}

/// A value that is one scalar: a key, or a flow mapping's missing value.
struct ScalarValue<'de>(Scalar<'de>);

impl<'de> Deserializer<'de> for ScalarValue<'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.0.visit_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        if self.0.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.0.visit_text(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.0.visit_text(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.0.visit_text(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Declined> {
        declined("an enum")
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

/// A one-line value in block context: a flow collection or quoted scalar
/// (read by [`Flow`]), or a plain scalar running to the end of the line.
enum Inline<'f, 'de> {
    Flow(&'f mut Flow<'de>),
    Scalar(ScalarValue<'de>),
}

macro_rules! either {
    ($inline:expr, $method:ident($($arg:expr),*)) => {
        match $inline {
            Inline::Flow(flow) => flow.$method($($arg),*),
            Inline::Scalar(scalar) => scalar.$method($($arg),*),
        }
    };
}

impl<'de> Deserializer<'de> for Inline<'_, 'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        either!(self, deserialize_any(visitor))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        either!(self, deserialize_option(visitor))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        either!(self, deserialize_str(visitor))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        either!(self, deserialize_str(visitor))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        either!(self, deserialize_str(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        either!(self, deserialize_newtype_struct(name, visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Declined> {
        declined("an enum")
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

/// A cursor over one line's flow value: `{…}`, `[…]`, quoted or plain
/// scalars inside them.
struct Flow<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Flow<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Declined> {
        if self.peek() != Some(byte) {
            return declined("an unexpected character in a flow collection");
        }
        self.pos += 1;
        Ok(())
    }

    /// The scalar at the cursor (spaces before it skipped). A plain one
    /// ends before `,`, `]`, `}` or a `: ` that ends a key.
    fn scalar(&mut self) -> Result<Scalar<'a>, Declined> {
        self.skip_spaces();
        if matches!(self.peek(), Some(b'"' | b'\'')) {
            return self.quoted();
        }
        let start = self.pos;
        while let Some(byte) = self.peek() {
            if byte == b':' {
                match self.text.as_bytes().get(self.pos + 1) {
                    None | Some(b' ') => break,
                    // The general parser refuses `a:}` and the like.
                    Some(b',' | b'?' | b'[' | b']' | b'{' | b'}') => {
                        return declined("a colon before a flow indicator");
                    }
                    Some(_) => {}
                }
            }
            if matches!(byte, b',' | b']' | b'}' | b'[' | b'{') {
                break;
            }
            self.pos += 1;
        }
        let text = self.text[start..self.pos].trim_end_matches(' ');
        if !plain_allowed(text) {
            return declined("not a plain scalar");
        }
        Ok(Scalar::Plain(text))
    }

    /// A quoted scalar at the cursor, on this line. Quotes and backslashes
    /// are ASCII, so every cut below is at a character boundary.
    fn quoted(&mut self) -> Result<Scalar<'a>, Declined> {
        let bytes = self.text.as_bytes();
        let quote = bytes[self.pos];
        self.pos += 1;
        let mut piece = self.pos;
        let mut owned: Option<String> = None;
        loop {
            let Some(&byte) = bytes.get(self.pos) else {
                return declined("a quoted scalar over several lines");
            };
            let unescaped =
                if byte == quote && quote == b'\'' && bytes.get(self.pos + 1) == Some(&b'\'') {
                    '\''
                } else if byte == quote {
                    let last = &self.text[piece..self.pos];
                    self.pos += 1;
                    return Ok(Scalar::Quoted(match owned {
                        Some(mut text) => {
                            text.push_str(last);
                            Cow::Owned(text)
                        }
                        None => Cow::Borrowed(last),
                    }));
                } else if byte == b'\\' && quote == b'"' {
                    match bytes.get(self.pos + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        _ => return declined("an escape this reader leaves alone"),
                    }
                } else {
                    self.pos += 1;
                    continue;
                };
            let text = owned.get_or_insert_with(String::new);
            text.push_str(&self.text[piece..self.pos]);
            text.push(unescaped);
            self.pos += 2;
            piece = self.pos;
        }
    }
}

impl<'de> Deserializer<'de> for &mut Flow<'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.skip_spaces();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                visitor.visit_map(FlowMapping {
                    flow: self,
                    first: true,
                })
            }
            Some(b'[') => {
                self.pos += 1;
                visitor.visit_seq(FlowSequence {
                    flow: self,
                    first: true,
                })
            }
            _ => {
                let scalar = self.scalar()?;
                self.end_of_value()?;
                scalar.visit_any(visitor)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.skip_spaces();
        let start = self.pos;
        if !matches!(self.peek(), Some(b'{' | b'[')) && self.scalar()?.is_null() {
            self.end_of_value()?;
            return visitor.visit_none();
        }
        self.pos = start;
        visitor.visit_some(self)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.skip_spaces();
        if matches!(self.peek(), Some(b'{' | b'[')) {
            return self.deserialize_any(visitor);
        }
        let scalar = self.scalar()?;
        self.end_of_value()?;
        scalar.visit_text(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Declined> {
        declined("an enum")
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

impl Flow<'_> {
    /// A scalar value must be followed by the end of its collection entry:
    /// `a: b` inside a flow sequence (an implicit mapping) is declined.
    fn end_of_value(&mut self) -> Result<(), Declined> {
        self.skip_spaces();
        match self.peek() {
            None | Some(b',' | b']' | b'}') => Ok(()),
            Some(_) => declined("an implicit mapping in a flow collection"),
        }
    }

    /// Before an entry after the first: `,` and spaces; declines a
    /// trailing comma.
    fn separator(&mut self, first: &mut bool, close: u8) -> Result<bool, Declined> {
        self.skip_spaces();
        if self.peek() == Some(close) {
            self.pos += 1;
            return Ok(false);
        }
        if !std::mem::take(first) {
            self.expect(b',')?;
            self.skip_spaces();
            if matches!(self.peek(), Some(b',' | b']' | b'}')) {
                return declined("an empty entry in a flow collection");
            }
        }
        Ok(true)
    }
}

struct FlowMapping<'f, 'de> {
    flow: &'f mut Flow<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for FlowMapping<'_, 'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Declined> {
        if !self.flow.separator(&mut self.first, b'}')? {
            return Ok(None);
        }
        let key = self.flow.scalar()?;
        self.flow.skip_spaces();
        self.flow.expect(b':')?;
        seed.deserialize(ScalarValue(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        self.flow.skip_spaces();
        if matches!(self.flow.peek(), Some(b',' | b'}')) {
            return seed.deserialize(ScalarValue(Scalar::Plain("")));
        }
        seed.deserialize(&mut *self.flow)
    }
}

struct FlowSequence<'f, 'de> {
    flow: &'f mut Flow<'de>,
    first: bool,
}

impl<'de> SeqAccess<'de> for FlowSequence<'_, 'de> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Declined> {
        if !self.flow.separator(&mut self.first, b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.flow).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde_norway::Value;

    use super::*;
    use crate::source::objects::{EndpointSlice, Service};

    const KUBECTL: &[&str] = &[
        include_str!("../../../tests/fixtures/kubectl-clusterip-x.yaml"),
        include_str!("../../../tests/fixtures/kubectl-clusterip-echo.yaml"),
        include_str!("../../../tests/fixtures/kubectl-nodeport-web.yaml"),
        include_str!("../../../tests/fixtures/kubectl-nodeport-web-30080.yaml"),
        include_str!("../../../tests/fixtures/kubectl-loadbalancer-web-lb.yaml"),
    ];

    /// A slice as the bench and people write it: flow collections inside
    /// block ones, compact sequences, quoted scalars.
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
        metadata: {name: x-1, namespace: 'db', labels: {kubernetes.io/service-name: \"x\"}}\n\
        addressType: IPv4\nports: [{name: h, port: 80, protocol: TCP}]\nendpoints:\n\
        - {addresses: [10.0.0.1, 10.0.0.9], conditions: {ready: true}}\n\
        - addresses:\n  - 10.0.0.2\n  conditions:\n    ready: false\n    terminating: true\n  nodeName: n1\n\
        -   addresses: [ 10.0.0.3 ]\n    conditions: {}\n";

    /// Whether this reader took `text`; panics if it read it otherwise
    /// than the general parser, or took what the general parser refuses.
    fn agrees(text: &str) -> bool {
        let general = serde_norway::from_str::<Value>(text);
        let Ok(fast) = from_str::<Value>(text) else {
            return false;
        };
        match general {
            Ok(general) => assert_eq!(fast, general, "read differently:\n{text}"),
            Err(e) => panic!("taken, but the general parser refuses it ({e}):\n{text}"),
        }
        true
    }

    #[test]
    fn reads_kubectl_output_as_the_general_parser_does() {
        for text in KUBECTL.iter().chain([&SLICE]) {
            assert!(agrees(text), "declined:\n{text}");
        }
        let service: Service = from_str(KUBECTL[2]).unwrap();
        let general: Service = serde_norway::from_str(KUBECTL[2]).unwrap();
        assert_eq!(format!("{service:?}"), format!("{general:?}"));
        let slice: EndpointSlice = from_str(SLICE).unwrap();
        let general: EndpointSlice = serde_norway::from_str(SLICE).unwrap();
        assert_eq!(format!("{slice:?}"), format!("{general:?}"));
        assert_eq!(slice.endpoints.len(), 3);
    }

    #[test]
    fn types_scalars_as_the_general_parser_does_or_declines() {
        let taken = [
            "",
            "~",
            "null",
            "Null",
            "NULL",
            "true",
            "True",
            "TRUE",
            "false",
            "FALSE",
            "tRUE",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "0",
            "-0",
            "7",
            "-5",
            "80",
            "65535",
            "18446744073709551615",
            "-9223372036854775808",
            "10.96.0.1",
            "1.2.3",
            "12:30",
            "80-8080",
            "2001:db8::1",
            "a#b",
            "http://x:80/y",
            "-foo",
            "a b",
            "ClusterIP",
            "'it''s'",
            "'a\\b'",
            "\"q\\\"uote\\\\ \\/ \\n\\t\\r\"",
            "\"\"",
            "''",
            "'80'",
            "\"null\"",
            "ü-ñ",
            "'ü''x'",
            "{}",
            "[]",
            "[a, 'b', \"c\"]",
            "{a: 1, b: , c: [x]}",
            "{a: }",
            "[{a: [b, {c: d}]}]",
            "{'k': v}",
            "{url: http://x}",
        ];
        for scalar in taken {
            for text in [format!("key: {scalar}\n"), format!("- {scalar}\n")] {
                assert!(agrees(&text), "declined: {text:?}");
            }
        }
        let declined = [
            "0x1F",
            "0o17",
            "012",
            "+5",
            "1.5",
            ".5",
            "1e3",
            ".inf",
            "-.inf",
            ".nan",
            "NaN",
            "inf",
            "99999999999999999999",
            "-9223372036854775809",
            "&a x",
            "*a",
            "!!str 80",
            "|",
            ">-",
            "\"\\u00e9\"",
            "'open",
            "\"open",
            "[a, b",
            "{a: 1",
            "[a, ]",
            "[a: b]",
            "{a, b}",
            "@x",
            "`x`",
            "%x",
            "a: b",
            "? x",
        ];
        for scalar in declined {
            let text = format!("key: {scalar}\n");
            assert!(from_str::<Value>(&text).is_err(), "taken: {text:?}");
        }
    }

    #[test]
    fn reads_block_structure_as_the_general_parser_does_or_declines() {
        let taken = [
            "a:\n  b:\n    c: 1\n  d: 2\ne: 3\n",
            "a:\n- 1\n- 2\nb: 3\n",
            "a:\n  - 1\n  - 2\n",
            "- a: 1\n  b: 2\n- c: 3\n",
            "- - 1\n  - 2\n- - 3\n",
            "-\n  a: 1\n- \n",
            "a:\n  b:\n  - x: 1\n    y:\n    - 2\n  c: 3\n",
            "# comment\na: 1 \r\n\n   # indented comment\nb: 2\n",
            "\"quoted key\": 1\n'single': 2\nkey with spaces: 3\n",
            "a:\nb: ~\n",
            "- \n- x\n",
        ];
        for text in taken {
            assert!(agrees(text), "declined: {text:?}");
        }
        let declined = [
            "a: 1\n  b: 2\n",
            "a: |\n  text\n",
            "a: plain\n  continued\n",
            "a: 1\n- 2\n",
            "a:\n\t- 1\n",
            "a: 1 # trailing comment\n",
            "a: &anchor 1\nb: *anchor\n",
            "a: {b: 1,\n  c: 2}\n",
            "%YAML 1.2\na: 1\n",
            "a: 1\n...\n",
            "a: 1\n  - 2\n",
            "- 1\n  - 2\n",
        ];
        for text in declined {
            assert!(from_str::<Value>(text).is_err(), "taken: {text:?}");
        }
    }

    /// A small deterministic generator (xorshift), enough to mutate texts.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn a_mutated_document_is_read_as_the_general_parser_reads_it_or_declined() {
        const PIECES: &[&str] = &[
            " ", "  ", "-", "- ", ":", ": ", "{", "}", "[", "]", ",", "'", "\"", "#", " #", "\n",
            "\n  ", "a", "0", "1.5", "\\", "\t", "~", "null", "&x", "*x", "!", "|", "?",
        ];
        let corpus: Vec<&str> = KUBECTL.iter().copied().chain([SLICE]).collect();
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let (mut taken, mut tried) = (0, 0);
        for _ in 0..10_000 {
            let mut text = corpus[random.below(corpus.len())].to_string();
            for _ in 0..1 + random.below(3) {
                let mut at = random.below(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match random.below(3) {
                    0 => text.insert_str(at, PIECES[random.below(PIECES.len())]),
                    1 => {
                        let mut end = (at + 1 + random.below(4)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, "");
                    }
                    _ => {
                        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                        text.insert_str(line_start, ["  ", " ", "- "][random.below(3)]);
                    }
                }
            }
            tried += 1;
            taken += usize::from(agrees(&text));
        }
        // Most mutations keep a document in the subset: the comparison ran.
        assert!(taken * 4 > tried, "only {taken} of {tried} taken");
    }
}

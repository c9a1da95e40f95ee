//! YAML in: user-supplied documents read the way cloud-init's `yaml.safe_load` reads them.
//!
//! The text is parsed by libyaml (its Rust translation, `unsafe-libyaml`, behind the safe
//! [`crate::libyaml`] reader). libyaml is the YAML 1.1 parser behind PyYAML's C loader, and
//! PyYAML's pure-Python parser, which cloud-init uses, is a port of it; where the two still
//! differ (tabs, a `?` or a tag before `,` in brackets, block scalar headers, byte-order marks)
//! this module refuses what PyYAML refuses. The parser's events are built into JSON values by
//! the rules of PyYAML's `SafeLoader`:
//! - a plain scalar without a tag is resolved by YAML 1.1: `yes`/`on`/`off` are booleans,
//!   `0755` is octal, `12:30` is the base-60 number 750, `1e3` (no exponent sign) is a string,
//!   `~`, `null` and nothing are null; quoted scalars keep strings, and the `!` tag asks for
//!   resolution by content;
//! - the standard tags (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!binary`,
//!   `!!timestamp`, `!!seq`, `!!map`, `!!set`, `!!omap`, `!!pairs`) are honoured; any other tag
//!   is refused, as `safe_load` refuses it;
//! - `<<` merge keys, anchors and aliases work; an undefined alias, a repeated anchor and a
//!   list or mapping used as a key are refused;
//! - values are built as PyYAML builds them: `!!omap`/`!!pairs` lists become `[key, value]`
//!   pairs, `!!set` values are null, and a value that resolves to a date, integer or boolean
//!   PyYAML then cannot build (`2024-02-30`, `0x_`) is refused, as is `!!binary` that is not
//!   base64.
//!
//! Stricter than PyYAML on purpose: a key repeated in one mapping is an error (PyYAML keeps the
//! last value without a word; keys Python takes for one, such as `1`, `1.0` and `true`, count
//! as repeated), and so are a second document (as in `safe_load`), a document whose anchors
//! and aliases would make more than [`MAX_VALUES`] values or nest deeper than [`MAX_DEPTH`]
//! levels, and one that refers to itself (PyYAML shares such nodes; JSON values cannot).
//!
//! Values that JSON cannot hold are mapped: timestamps and `!!binary` stay the strings written,
//! integers beyond 64 bits become floats, and `.inf`/`.nan` become null.
//!
//! FIXME: libyaml reads `[{1: []}, ? ]]` and `[? ], x]` (an empty explicit key in brackets,
//! then a stray `]`: libyaml's `?` swallows the first `]`), which PyYAML refuses; random runs
//! of the comparison with PyYAML find such a text about once in 200,000. It matters only for
//! flow YAML with `?` keys, which cloud-config does not use.

use std::collections::HashMap;

use crate::libyaml::{Event, Mark, ParseError, Parser};
use serde_json::{Map, Number, Value};

/// The most values a document may hold once its aliases are expanded.
pub const MAX_VALUES: usize = 1 << 20;

/// The deepest nesting of lists and mappings a document may have, aliases expanded. PyYAML,
/// which builds nodes recursively, fails past about 490 levels under Python's default
/// recursion limit (less when called from deep inside cloud-init); this keeps well clear.
pub const MAX_DEPTH: usize = 400;

/// Why a document was refused: what, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// 1-based line of the offending token.
    pub line: u64,
    /// 1-based column of the offending token.
    pub column: u64,
    /// What is wrong, in words.
    pub message: String,
    /// Whether libyaml's parser refused the text (else the loading rules here did).
    pub syntax: bool,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for LoadError {}

fn error_at(mark: Mark, message: impl Into<String>) -> LoadError {
    LoadError {
        line: mark.line + 1,
        column: mark.column + 1,
        message: message.into(),
        syntax: false,
    }
}

/// Reads the single YAML document in `text` (none gives `Value::Null`).
pub fn load(text: &str) -> Result<Value, LoadError> {
    // A byte-order mark may open the text (PyYAML skips it there); anywhere else PyYAML takes
    // it for part of a key or value, where libyaml skips one at the start of any line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(at) = text.find('\u{feff}') {
        return Err(error_at(
            mark_of(text, at),
            "a byte-order mark (U+FEFF) inside the text; cloud-init's reader would take it for \
             part of a name or value",
        ));
    }
    check_directives(text)?;
    let mut parser = Parser::new(text);
    let mut builder = Builder::default();
    let has_tab = text.contains('\t');
    let mut documents = 0usize;
    loop {
        let (event, mark) = parser.next().map_err(|e| parse_error(text, e))?;
        match event {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(error_at(
                        mark,
                        "a second document starts here; cloud-init reads exactly one",
                    ));
                }
                builder.anchors.clear();
            }
            Event::Alias { anchor } => {
                let Some(anchored) = builder.anchors.get(&anchor) else {
                    let message = if builder.defined.contains(&anchor) {
                        "an alias (`*name`) is inside the node it names (a value that contains itself)".to_owned()
                    } else {
                        "an alias (`*name`) names no anchor (`&name`) defined before it; an unquoted \
                         value that starts with `*` is read as an alias, so quote it"
                            .to_owned()
                    };
                    return Err(error_at(mark, message));
                };
                builder.expanded += anchored.size;
                if builder.expanded > MAX_VALUES {
                    return Err(error_at(
                        mark,
                        format!("anchors and aliases take the document past {MAX_VALUES} values"),
                    ));
                }
                if builder.stack.len() + anchored.height > MAX_DEPTH {
                    return Err(too_deep(mark));
                }
                let kind = anchored.plain.clone().map_or(Kind::Other, Kind::Plain);
                let node = Node {
                    value: anchored.value.clone(),
                    size: anchored.size,
                    height: anchored.height,
                    kind,
                };
                builder.complete(node, mark)?;
            }
            Event::Scalar { anchor, tag, value, plain_implicit, plain, block, span } => {
                check_tag_end(text, tag.as_deref(), builder.flow, mark)?;
                let content = content_start(text, span.start);
                if block {
                    check_block_header(text, content, mark)?;
                }
                if !plain && has_tab {
                    builder.tab_safe.push(content..span.end);
                }
                if builder.flow > 0 && plain && value.contains('?') {
                    // PyYAML's scanner ends a plain scalar at `?` inside brackets or braces
                    // (libyaml's does not), and the `?` left over is then out of place.
                    return Err(error_at(
                        mark,
                        "`?` inside an unquoted value in brackets or braces; quote the value",
                    ));
                }
                // The tag `!` means "resolve by content", also on a node that is only `!`
                // (where libyaml does not set `plain_implicit`).
                let plain_implicit = plain_implicit || tag.as_deref() == Some("!");
                let resolved = scalar(&value, tag.as_deref(), plain_implicit, mark)?;
                let value_len = value.len();
                // PyYAML resolves what libyaml marks `plain_implicit` (plain, or tagged `!`).
                let kind = if plain_implicit {
                    Kind::Plain(value)
                } else if tag.as_deref() == Some(MERGE_TAG) {
                    Kind::Plain("<<".to_owned())
                } else {
                    Kind::Other
                };
                builder.define(anchor.as_deref(), mark)?;
                // A value counts one, and one more per 64 bytes of text, so that aliases of a
                // long string cannot grow the document past the budget either.
                let size = 1 + value_len / 64;
                let node = Node { value: resolved, size, height: 0, kind };
                builder.finish(anchor, node, mark)?;
            }
            Event::SequenceStart { anchor, tag, flow } => {
                check_tag_end(text, tag.as_deref(), builder.flow, mark)?;
                collection_tag(tag.as_deref(), &["seq", "omap", "pairs"], mark)?;
                builder.define(anchor.as_deref(), mark)?;
                if builder.stack.len() >= MAX_DEPTH {
                    return Err(too_deep(mark));
                }
                builder.flow += usize::from(flow);
                let items = Vec::new();
                let pairs = tag.as_deref().is_some_and(|t| {
                    t.strip_prefix(STANDARD).is_some_and(|t| t == "omap" || t == "pairs")
                });
                builder.stack.push(Frame::Seq {
                    anchor,
                    items,
                    size: 1,
                    height: 0,
                    mark,
                    flow,
                    pairs,
                });
            }
            Event::MappingStart { anchor, tag, flow } => {
                check_tag_end(text, tag.as_deref(), builder.flow, mark)?;
                collection_tag(tag.as_deref(), &["map", "set"], mark)?;
                builder.define(anchor.as_deref(), mark)?;
                if builder.stack.len() >= MAX_DEPTH {
                    return Err(too_deep(mark));
                }
                builder.flow += usize::from(flow);
                let set = tag.as_deref().and_then(|t| t.strip_prefix(STANDARD)) == Some("set");
                builder.stack.push(Frame::Map(Box::new(MapFrame {
                    set,
                    seen: std::collections::HashSet::new(),
                    height: 0,
                    flow,
                    anchor,
                    mark,
                    entries: Map::new(),
                    merges: Vec::new(),
                    key: None,
                    size: 1,
                })));
            }
            Event::SequenceEnd => {
                let Some(Frame::Seq { anchor, items, size, height, mark: start, flow, pairs }) =
                    builder.stack.pop()
                else {
                    return Err(error_at(mark, "unbalanced end of a list"));
                };
                builder.flow -= usize::from(flow);
                let items = if pairs { key_value_pairs(items, start)? } else { items };
                let (value, height) = (Value::Array(items), height + 1);
                let node = Node { value, size, height, kind: Kind::Other };
                builder.finish(anchor, node, start)?;
            }
            Event::MappingEnd => {
                let Some(Frame::Map(frame)) = builder.stack.pop() else {
                    return Err(error_at(mark, "unbalanced end of a mapping"));
                };
                let MapFrame {
                    anchor, mark: start, entries, merges, size, height, flow, set, ..
                } = *frame;
                builder.flow -= usize::from(flow);
                let mut value = if merges.is_empty() {
                    entries
                } else {
                    // PyYAML: merged entries first (later merge keys, and earlier mappings of
                    // one merge list, take precedence), the mapping's own entries over them.
                    // A key Python takes for one already there keeps that one's spelling.
                    let mut merged = Map::new();
                    let mut spelling: HashMap<String, String> = HashMap::new();
                    for (key, v) in merges.into_iter().chain([entries]).flatten() {
                        let key = spelling.entry(key_identity(&key)).or_insert(key).clone();
                        merged.insert(key, v);
                    }
                    merged
                };
                if set {
                    value.values_mut().for_each(|v| *v = Value::Null);
                }
                let value = Value::Object(value);
                let node = Node { value, size, height: height + 1, kind: Kind::Other };
                builder.finish(anchor, node, start)?;
            }
        }
    }
    if has_tab {
        check_tabs(text, &builder.tab_safe)?;
    }
    Ok(builder.root.unwrap_or(Value::Null))
}

/// Refuses a tag written with `%` escapes (libyaml hands a decoded NUL on as the end of the
/// tag), and a tag followed directly by `,` inside brackets or braces: libyaml ends the tag
/// there, PyYAML reads the comma as part of the tag's name (and then knows no such tag).
fn check_tag_end(text: &str, tag: Option<&str>, flow: usize, mark: Mark) -> Result<(), LoadError> {
    if tag.is_none() {
        return Ok(());
    }
    let bytes = text.as_bytes();
    let mut at = mark.index;
    while at < bytes.len() && matches!(bytes[at], b'!' | b'&') {
        let is_tag = bytes[at] == b'!';
        let start = at;
        let verbatim = bytes[at..].starts_with(b"!<");
        if verbatim {
            // `!<...>` may hold commas; it ends at `>`.
            at += bytes[at..].iter().position(|&b| b == b'>').map_or(bytes.len() - at, |p| p + 1);
        }
        while at < bytes.len() && !matches!(bytes[at], b' ' | b'\t' | b'\r' | b'\n' | b',') {
            at += 1;
        }
        if is_tag && bytes[start..at].contains(&b'%') {
            return Err(error_at(mark, "a tag written with `%` escapes; spell it out"));
        }
        if is_tag && flow > 0 && bytes.get(at) == Some(&b',') {
            return Err(error_at(mark, "a tag directly before `,`; put a space between them"));
        }
        while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\r' | b'\n') {
            at += 1;
        }
    }
    Ok(())
}

/// Refuses a block scalar header (`|`, `>-`, `|2`, ...) followed by anything but a space or
/// a line break: libyaml reads `|#x` as a header and a comment, PyYAML refuses it.
fn check_block_header(text: &str, at: usize, mark: Mark) -> Result<(), LoadError> {
    let after = text.get(at + 1..).unwrap_or_default();
    let indicators =
        after.bytes().take(2).take_while(|b| matches!(b, b'+' | b'-' | b'0'..=b'9')).count();
    let rest = &after[indicators..];
    let is_break = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    // PyYAML: a space or the line's end right after the indicators; then only spaces, and a
    // comment or the line's end (a tab there stops it).
    let ok = match rest.chars().next() {
        None => true,
        Some(c) if is_break(c) => true,
        Some(' ') => {
            let rest = rest.trim_start_matches(' ');
            rest.is_empty() || rest.starts_with('#') || rest.starts_with(is_break)
        }
        Some(_) => false,
    };
    if ok {
        return Ok(());
    }
    Err(error_at(
        mark,
        "a block scalar's `|` or `>` (and its indicators) must be followed by spaces and a \
         comment or the line's end",
    ))
}

/// Refuses directive lines PyYAML refuses and libyaml takes: a comment right after `%YAML 1.1`
/// (`%YAML 1.1#c`), and a `%TAG` prefix written with `%` escapes (libyaml passes a decoded NUL
/// on as the end of the tag).
fn check_directives(text: &str) -> Result<(), LoadError> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        let Some(directive) = line.strip_prefix('%') else { continue };
        let body = directive.trim_end_matches(['\n', '\r']);
        let (body, comment) = match body.find('#') {
            Some(i) => (&body[..i], true),
            None => (body, false),
        };
        let glued = comment && !body.ends_with([' ', '\t']);
        if glued || (body.starts_with("TAG") && body[3..].contains('%')) {
            return Err(error_at(
                mark_of(text, at),
                "a directive PyYAML refuses (a comment glued to it, or `%` escapes in a tag prefix)",
            ));
        }
    }
    Ok(())
}

/// Where a scalar's content (its opening quote or block header) starts: past its tag and
/// anchor, if any, and the blanks after them.
fn content_start(text: &str, mut at: usize) -> usize {
    let is_break = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    loop {
        let rest = &text[at..];
        let Some(c) = rest.chars().next() else { return at };
        match c {
            // A property: up to the next blank or line break.
            '!' | '&' => {
                let end = rest.find(|c: char| c == ' ' || c == '\t' || is_break(c));
                at += end.unwrap_or(rest.len());
            }
            ' ' | '\t' => at += 1,
            c if is_break(c) => at += c.len_utf8(),
            // A comment between the properties and the content: to the line's end.
            '#' => at += rest.find(is_break).unwrap_or(rest.len()),
            _ => return at,
        }
    }
}

/// Refuses a tab outside quotes, block scalars and comments. libyaml takes a tab there for a
/// space; PyYAML's pure-Python scanner, the one cloud-init runs, stops at it ("found character
/// '\t' that cannot start any token"), between tokens and inside unquoted values alike.
fn check_tabs(text: &str, tab_safe: &[std::ops::Range<usize>]) -> Result<(), LoadError> {
    // The ranges come in document order and do not overlap, so one pass over both suffices.
    let mut ranges = tab_safe.iter().peekable();
    let mut comment = false;
    let mut previous = '\n';
    for (at, c) in text.char_indices() {
        while ranges.peek().is_some_and(|r| r.end <= at) {
            ranges.next();
        }
        let safe = ranges.peek().is_some_and(|r| r.contains(&at));
        match c {
            '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => comment = false,
            '#' if !safe
                && matches!(
                    previous,
                    ' ' | '\t' | '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'
                ) =>
            {
                comment = true
            }
            '\t' if !comment && !safe => {
                return Err(error_at(
                    mark_of(text, at),
                    "a tab outside quotes, a block scalar or a comment; cloud-init's reader \
                     refuses it there (use spaces, or quote the value)",
                ));
            }
            _ => {}
        }
        previous = c;
    }
    Ok(())
}

/// The tag a plain `<<` resolves to.
const MERGE_TAG: &str = "tag:yaml.org,2002:merge";
/// The prefix of the standard tags (`!!int` is `tag:yaml.org,2002:int`).
const STANDARD: &str = "tag:yaml.org,2002:";

/// A scalar's text as PyYAML's patterns see it: without one final line break (Python's `$`
/// matches before it), unless that is all there is.
fn word(text: &str) -> &str {
    match text.strip_suffix('\n') {
        Some(core) if !core.is_empty() && !core.ends_with('\n') => core,
        _ => text,
    }
}

/// A tag this reader does not know, not named: an unquoted password starting with `!` is read
/// as one.
fn unknown_tag(mark: Mark) -> LoadError {
    error_at(
        mark,
        "a tag cloud-init's reader has no meaning for; an unquoted value that starts with `!` is \
         read as a tag, so quote it",
    )
}

fn too_deep(mark: Mark) -> LoadError {
    error_at(
        mark,
        format!(
            "lists and mappings nest more than {MAX_DEPTH} levels deep here; cloud-init's YAML \
             reader gives up on deep nesting"
        ),
    )
}

fn parse_error(text: &str, error: ParseError) -> LoadError {
    let mark = match error.offset {
        Some(offset) => mark_of(text, offset),
        None => error.mark,
    };
    let message = match error.context {
        Some((context, at)) if at != mark && (at.line, at.column) != (0, 0) => format!(
            "{} ({context} that starts at line {}, column {})",
            error.problem,
            at.line + 1,
            at.column + 1
        ),
        Some((context, _)) => format!("{} {context}", error.problem),
        None => error.problem,
    };
    // libyaml, unlike PyYAML, takes a block scalar's indentation from its first line's leading
    // blanks, tab included, when the header does not give it.
    let hint = "; give the block its indentation in the header (`|2` for two spaces) and the tab \
                is kept as text";
    let message = if message.contains("found a tab character where an indentation space") {
        message + hint
    } else {
        message
    };
    LoadError { syntax: true, ..error_at(mark, message) }
}

/// The 0-based line and column of byte `offset`, counting YAML's line breaks.
fn mark_of(text: &str, offset: usize) -> Mark {
    let mut mark = Mark { line: 0, column: 0, index: offset };
    let mut chars = text[..offset.min(text.len())].chars().peekable();
    while let Some(c) = chars.next() {
        let crlf = c == '\r' && chars.peek() == Some(&'\n');
        if matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') && !crlf {
            mark.line += 1;
            mark.column = 0;
        } else if !crlf {
            mark.column += 1;
        }
    }
    mark
}

/// A finished node: its value, how many values it holds, and what a mapping key needs to know.
struct Node {
    value: Value,
    size: usize,
    /// How many levels of lists and mappings it holds (0 for a scalar).
    height: usize,
    kind: Kind,
}

enum Kind {
    /// A scalar PyYAML resolves by its text (plain, or tagged `!`): the text as written.
    Plain(String),
    /// Any other node.
    Other,
}

enum Frame {
    Seq {
        anchor: Option<String>,
        items: Vec<Value>,
        size: usize,
        /// The greatest height of the items so far.
        height: usize,
        mark: Mark,
        flow: bool,
        /// Tagged `!!omap` or `!!pairs`: a list of one-entry mappings, read as pairs.
        pairs: bool,
    },
    Map(Box<MapFrame>),
}

struct MapFrame {
    anchor: Option<String>,
    mark: Mark,
    entries: Map<String, Value>,
    /// Merge sources, lowest precedence first.
    merges: Vec<Map<String, Value>>,
    /// The key read, waiting for its value: `None` as the key of a merge.
    key: Option<(Option<(String, String)>, Mark)>,
    size: usize,
    /// The greatest height of the keys and values so far.
    height: usize,
    /// Tagged `!!set`: the keys count, the values are null.
    set: bool,
    /// The keys so far, by what Python would take for the same key (`1`, `1.0` and `true`
    /// are one key to it).
    seen: std::collections::HashSet<String>,
    /// Written in braces.
    flow: bool,
}

/// What an alias stands for.
struct Anchored {
    value: Value,
    size: usize,
    height: usize,
    plain: Option<String>,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Anchored values with their sizes, heights and (for a scalar resolved by content) text.
    anchors: HashMap<String, Anchored>,
    /// Anchors whose node has started: defined, and usable once finished.
    defined: std::collections::HashSet<String>,
    expanded: usize,
    /// Byte ranges of quoted and block scalars, where a tab is content.
    tab_safe: Vec<std::ops::Range<usize>>,
    /// How many brackets and braces the current node is inside.
    flow: usize,
    root: Option<Value>,
}

impl Builder {
    /// Records that `anchor` is defined here; PyYAML refuses a second definition.
    fn define(&mut self, anchor: Option<&str>, mark: Mark) -> Result<(), LoadError> {
        if let Some(anchor) = anchor {
            if !self.defined.insert(anchor.to_owned()) {
                return Err(error_at(mark, "an anchor (`&name`) is defined twice"));
            }
        }
        Ok(())
    }

    /// Stores a finished anchored node and hands it to its parent.
    fn finish(&mut self, anchor: Option<String>, node: Node, mark: Mark) -> Result<(), LoadError> {
        if let Some(anchor) = anchor {
            // The copy kept for aliases counts against the same budget as what they expand.
            self.expanded += node.size;
            if self.expanded > MAX_VALUES {
                return Err(error_at(
                    mark,
                    format!("anchors and aliases take the document past {MAX_VALUES} values"),
                ));
            }
            // An alias of an anchored `=` key stays the `value` key: PyYAML makes it a string
            // only once it builds that key's mapping, which may come after the alias's.
            let plain = match &node.kind {
                Kind::Plain(text) => Some(text.clone()),
                Kind::Other => None,
            };
            let anchored =
                Anchored { value: node.value.clone(), size: node.size, height: node.height, plain };
            self.anchors.insert(anchor, anchored);
        }
        self.complete(node, mark)
    }

    /// Hands a finished node to the collection it is in (or makes it the document).
    fn complete(&mut self, node: Node, mark: Mark) -> Result<(), LoadError> {
        let is_value = !matches!(self.stack.last(), Some(Frame::Map(f)) if f.key.is_none());
        if let (true, Kind::Plain(text)) = (is_value, &node.kind) {
            if matches!(word(text), "=" | "<<") {
                // YAML 1.1's `value` and `merge` keys: PyYAML reads them as keys but has no
                // way to build either as a value.
                return Err(error_at(
                    mark,
                    format!("a plain `{text}` cannot be a value; quote it"),
                ));
            }
        }
        match self.stack.last_mut() {
            None => self.root = Some(node.value),
            Some(Frame::Seq { items, size, height, .. }) => {
                *size += node.size;
                *height = (*height).max(node.height);
                items.push(node.value);
            }
            Some(Frame::Map(frame)) => {
                frame.size += node.size;
                frame.height = frame.height.max(node.height);
                match frame.key.take() {
                    None => {
                        let identity = value_identity(&node.value);
                        frame.key = Some((map_key(node, mark)?.map(|k| (k, identity)), mark));
                    }
                    Some((None, key_mark)) => {
                        frame.merges.extend(merge_sources(node.value, key_mark)?);
                    }
                    Some((Some((key, identity)), key_mark)) => {
                        // Also refused: keys Python tells apart that JSON spells alike
                        // (`1` and `'1'`), which one JSON object cannot hold.
                        if !frame.seen.insert(identity) || frame.entries.contains_key(&key) {
                            return Err(error_at(
                                key_mark,
                                format!("key {key:?} appears twice in one mapping"),
                            ));
                        }
                        frame.entries.insert(key, node.value);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A mapping key as a string (`None` for the merge key `<<`). A key that resolves to a number,
/// boolean or null is spelt as JSON spells it (`0x1F` is `31`, `yes` is `true`), as Python's
/// `json.dumps` spells such keys of what PyYAML read.
fn map_key(node: Node, mark: Mark) -> Result<Option<String>, LoadError> {
    if matches!(&node.kind, Kind::Plain(text) if word(text) == "<<") {
        return Ok(None);
    }
    match node.value {
        Value::Array(_) | Value::Object(_) => {
            Err(error_at(mark, "a list or mapping is used as a key (PyYAML refuses such keys)"))
        }
        Value::String(text) => Ok(Some(text)),
        other => Ok(Some(other.to_string())),
    }
}

/// What Python takes a key for, by its value: `1`, `1.0` and `true` are one key to it; strings
/// are equal only as the same string.
fn value_identity(value: &Value) -> String {
    match value {
        Value::Bool(b) => format!("n:{}", u8::from(*b)),
        Value::Number(n) => format!("n:{}", n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => format!("s:{s}"),
        _ => "null".to_owned(),
    }
}

/// The mappings a merge key's value contributes, lowest precedence first.
fn merge_sources(value: Value, mark: Mark) -> Result<Vec<Map<String, Value>>, LoadError> {
    let refuse = || error_at(mark, "a merge key (<<) takes a mapping or a list of mappings");
    match value {
        Value::Object(map) => Ok(vec![map]),
        Value::Array(items) => {
            let mut maps = items
                .into_iter()
                .map(|item| match item {
                    Value::Object(map) => Ok(map),
                    _ => Err(refuse()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            maps.reverse();
            Ok(maps)
        }
        _ => Err(refuse()),
    }
}

/// What Python takes a mapping key spelt `key` (as [`map_key`] spells keys) for, as a string:
/// `1`, `1.0` and `true` are the same key to it, `0`, `0.0` and `false` another.
fn key_identity(key: &str) -> String {
    // Only these first characters can start a number, boolean or null.
    let maybe_not_a_string =
        key.chars().next().is_none_or(|c| "+-.0123456789~nNyYtTfFoO".contains(c));
    if !maybe_not_a_string {
        return format!("s:{key}");
    }
    let value = resolve(key, Mark::default()).unwrap_or(Value::Null);
    match value {
        Value::Bool(b) => format!("n:{}", u8::from(b)),
        Value::Number(n) => format!("n:{}", n.as_f64().unwrap_or(f64::NAN)),
        Value::Null if !matches!(key, "" | "~" | "null" | "Null" | "NULL") => format!("s:{key}"),
        Value::Null => "null".to_owned(),
        _ => format!("s:{key}"),
    }
}

/// The items of an `!!omap` or `!!pairs` list as `[key, value]` pairs (Python's tuples), each
/// item having to be a mapping of one entry.
fn key_value_pairs(items: Vec<Value>, mark: Mark) -> Result<Vec<Value>, LoadError> {
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(map) if map.len() == 1 => {
                let (k, v) = map.into_iter().next().expect("one entry");
                Ok(Value::Array(vec![Value::String(k), v]))
            }
            _ => Err(error_at(mark, "an !!omap or !!pairs list must hold one-entry mappings")),
        })
        .collect()
}

/// Refuses a collection tag `safe_load` has no constructor for.
fn collection_tag(tag: Option<&str>, standard: &[&str], mark: Mark) -> Result<(), LoadError> {
    match tag {
        None | Some("!") => Ok(()),
        Some(tag) if tag.strip_prefix(STANDARD).is_some_and(|t| standard.contains(&t)) => Ok(()),
        Some(_) => Err(error_at(mark, "this tag cannot be on a list or mapping")),
    }
}

/// The value of a scalar, by its tag or (when `implicit`) by YAML 1.1's resolution rules.
fn scalar(text: &str, tag: Option<&str>, implicit: bool, mark: Mark) -> Result<Value, LoadError> {
    if implicit {
        return resolve(text, mark);
    }
    let Some(tag) = tag.filter(|t| *t != "!") else {
        return Ok(Value::String(text.to_owned()));
    };
    // The value itself is not quoted: it may be a password.
    let wrong = |kind: &str| error_at(mark, format!("the value tagged {tag} is not {kind}"));
    match tag.strip_prefix(STANDARD) {
        Some("str") => Ok(Value::String(text.to_owned())),
        Some("binary") if base64_ok(text) => Ok(Value::String(text.to_owned())),
        Some("binary") => Err(wrong("base64")),
        Some("timestamp") if timestamp(text) == Some(true) => Ok(Value::String(text.to_owned())),
        Some("timestamp") => Err(wrong("a date or time")),
        Some("null") => Ok(Value::Null),
        Some("bool") => match text.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(Value::Bool(true)),
            "no" | "false" | "off" => Ok(Value::Bool(false)),
            _ => Err(wrong("a boolean")),
        },
        Some("int") => int(text).ok_or_else(|| wrong("an integer")),
        Some("float") => float(text).ok_or_else(|| wrong("a number")),
        _ => Err(unknown_tag(mark)),
    }
}

/// YAML 1.1 implicit resolution of a scalar PyYAML resolves by content, and construction of
/// what it resolves to. PyYAML's patterns end in `$`, which in Python also matches before one
/// final line break: a block scalar tagged `!` whose text is `12` and a newline is the integer
/// 12, while `true` and a newline resolves to a boolean that cannot be built.
fn resolve(text: &str, mark: Mark) -> Result<Value, LoadError> {
    // PyYAML picks the patterns to try by the text's first character: a text that is only a
    // line break matches none of them.
    if text == "\n" {
        return Ok(Value::String(text.to_owned()));
    }
    let core = text.strip_suffix('\n').filter(|c| !c.ends_with('\n')).unwrap_or(text);
    let newline = core.len() != text.len();
    let refuse = |what: &str| {
        error_at(mark, format!("this value looks like {what} to cloud-init's reader, which then cannot read it; quote it"))
    };
    match core {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" if !newline => {
            return Ok(Value::Bool(true))
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" if !newline => {
            return Ok(Value::Bool(false))
        }
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" | "no" | "No"
        | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Err(refuse("a boolean"))
        }
        // `=` resolves to the `value` tag, which safe_load cannot construct as a value (the
        // caller refuses it there; as a key PyYAML makes it a string).
        _ => {}
    }
    if is_int(core) {
        return int(core).ok_or_else(|| refuse("an integer"));
    }
    if is_float(core) {
        // Python's float() takes the line break but not `.inf` or `.nan`, which PyYAML spots
        // only without one.
        let special = core.trim_start_matches(['+', '-']).starts_with('.')
            && !core.as_bytes()[core.len() - 1].is_ascii_digit();
        if newline && special {
            return Err(refuse("a number"));
        }
        return float(core).ok_or_else(|| refuse("a number"));
    }
    match timestamp(core) {
        Some(true) => Ok(Value::String(text.to_owned())),
        Some(false) => Err(refuse("a date or time")),
        None => Ok(Value::String(text.to_owned())),
    }
}

/// Whether `text` has the form of a YAML 1.1 timestamp (`None` if not) and, if so, whether it
/// is a date and time Python's `datetime` accepts.
fn timestamp(text: &str) -> Option<bool> {
    let b = text.as_bytes();
    let num = |s: &[u8]| -> Option<u32> {
        (!s.is_empty() && s.iter().all(u8::is_ascii_digit))
            .then(|| s.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let year = num(b.get(..4)?)?;
    let rest = b.get(4..)?;
    let (month, rest) = dash_field(rest)?;
    let (day, rest) = dash_field(rest)?;
    let short = |n: &[u8]| n.len() == 2;
    let valid_date = |m: u32, d: u32| {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        year >= 1 && (1..=12).contains(&m) && d >= 1 && d <= days[(m - 1) as usize]
    };
    if rest.is_empty() {
        // The date-only form needs two-digit month and day.
        return (short(month) && short(day))
            .then(|| valid_date(num(month).unwrap_or(0), num(day).unwrap_or(0)));
    }
    // [Tt] or [ \t]+, then H?H:MM:SS(.f*)?, then ([ \t]*(Z|[-+]H?H(:MM)?))?
    let rest = match rest[0] {
        b'T' | b't' => &rest[1..],
        b' ' | b'\t' => {
            let skip = rest.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
            &rest[skip..]
        }
        _ => return None,
    };
    let hour_len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=2).contains(&hour_len) {
        return None;
    }
    let hour = num(&rest[..hour_len])?;
    let rest = &rest[hour_len..];
    let (minute, rest) = colon_two(rest)?;
    let (second, mut rest) = colon_two(rest)?;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &rest[1 + n..];
    }
    let skip = rest.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
    let zone = &rest[skip..];
    let zone_ok = match zone {
        [] if skip == 0 => true,
        [] => return None,
        [b'Z'] => true,
        [b'+' | b'-', tz @ ..] => {
            let h = tz.iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=2).contains(&h) {
                return None;
            }
            // Python's timezone() takes offsets strictly under 24 hours.
            match &tz[h..] {
                [] => num(&tz[..h])? < 24,
                [b':', m1, m2] if m1.is_ascii_digit() && m2.is_ascii_digit() => {
                    num(&tz[..h])? * 60 + num(&[*m1, *m2])? < 24 * 60
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    let time_ok = hour < 24 && minute < 60 && second < 60;
    Some(zone_ok && time_ok && valid_date(num(month)?, num(day)?))
}

/// `-` and one or two digits: the digits and what follows.
fn dash_field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = b.strip_prefix(b"-")?;
    let n = rest.iter().take(2).take_while(|c| c.is_ascii_digit()).count();
    (n > 0).then(|| (&rest[..n], &rest[n..]))
}

/// `:` and exactly two digits: their value and what follows.
fn colon_two(b: &[u8]) -> Option<(u32, &[u8])> {
    match b {
        [b':', t, u, rest @ ..] if t.is_ascii_digit() && u.is_ascii_digit() => {
            Some((u32::from(t - b'0') * 10 + u32::from(u - b'0'), rest))
        }
        _ => None,
    }
}

/// Whether `text` is base64 as Python's lenient decoder (which `!!binary` uses) takes it:
/// ASCII, characters outside the alphabet ignored, the padding complete.
fn base64_ok(text: &str) -> bool {
    if !text.is_ascii() {
        return false;
    }
    // CPython's a2b_base64 (not strict): characters outside the alphabet are skipped, and a
    // pad that completes a group ends the input; data left in a group is an error.
    let (mut group, mut pads) = (0, 0);
    for b in text.bytes() {
        if b == b'=' {
            pads += 1;
            if group >= 2 && group + pads >= 4 {
                return true;
            }
        } else if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' {
            pads = 0;
            group = (group + 1) % 4;
        }
    }
    group == 0
}

fn to_float(v: Value) -> Value {
    v.as_f64().and_then(Number::from_f64).map_or(Value::Null, Value::Number)
}

/// Splits an optional sign off.
fn sign(text: &str) -> (bool, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

fn all(text: &str, ok: impl Fn(u8) -> bool) -> bool {
    !text.is_empty() && text.bytes().all(ok)
}

/// PyYAML's int pattern: `0b…`, `0…` (octal), decimal, `0x…`, and base 60 (`1:30`).
fn is_int(text: &str) -> bool {
    let (_, t) = sign(text);
    let digit_ = |b: u8| b.is_ascii_digit() || b == b'_';
    if let Some(bits) = t.strip_prefix("0b") {
        return all(bits, |b| matches!(b, b'0' | b'1' | b'_'));
    }
    if let Some(hex) = t.strip_prefix("0x") {
        return all(hex, |b| b.is_ascii_hexdigit() || b == b'_');
    }
    if t == "0" {
        return true;
    }
    if let Some(oct) = t.strip_prefix('0') {
        return all(oct, |b| matches!(b, b'0'..=b'7' | b'_'));
    }
    let mut parts = t.split(':');
    let head = parts.next().unwrap_or("");
    let head_ok =
        head.as_bytes().first().is_some_and(|b| matches!(b, b'1'..=b'9')) && all(head, digit_);
    head_ok && parts.all(is_sexagesimal_digit)
}

/// One `:[0-5]?[0-9]` group of a base-60 number.
fn is_sexagesimal_digit(part: &str) -> bool {
    match part.as_bytes() {
        [d] => d.is_ascii_digit(),
        [t, d] => matches!(t, b'0'..=b'5') && d.is_ascii_digit(),
        _ => false,
    }
}

/// PyYAML's float pattern (an exponent needs its sign; `.5` but not `-.5`; base 60; inf, nan).
fn is_float(text: &str) -> bool {
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (_, t) = sign(text);
    if matches!(t, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let digits_ = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let exponent_ok = |s: &str| match s.as_bytes() {
        [] => true,
        [b'e' | b'E', b'-' | b'+', rest @ ..] => {
            !rest.is_empty() && rest.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if let Some(frac) = text.strip_prefix('.') {
        // `\.[0-9][0-9_]*(exp)?`, no sign.
        let end = frac.find(['e', 'E']).unwrap_or(frac.len());
        return frac.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && digits_(&frac[..end])
            && exponent_ok(&frac[end..]);
    }
    let Some((whole, frac)) = t.split_once('.') else {
        return false;
    };
    if !whole.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    if whole.contains(':') {
        // `[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*`
        let mut parts = whole.split(':');
        return digits_(parts.next().unwrap_or(""))
            && parts.all(is_sexagesimal_digit)
            && digits_(frac);
    }
    let end = frac.find(['e', 'E']).unwrap_or(frac.len());
    digits_(whole) && digits_(&frac[..end]) && exponent_ok(&frac[end..])
}

/// The integer a text stands for, as PyYAML's constructor reads it (`None`: it cannot).
/// Past 64 bits it becomes a float: PyYAML's integers have no bound, JSON's do.
fn int(text: &str) -> Option<Value> {
    let cleaned: String = text.chars().filter(|&c| c != '_').collect();
    let (negative, t) = sign(&cleaned);
    // (exact value while it fits, the value as a float)
    let digits = |s: &str, radix: u32| -> Option<(Option<u128>, f64)> {
        // Python's int(), which PyYAML calls, allows spaces around the digits.
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        s.chars().try_fold((Some(0u128), 0f64), |(exact, approx), c| {
            let d = c.to_digit(radix)?;
            let exact =
                exact.and_then(|e| e.checked_mul(u128::from(radix))?.checked_add(u128::from(d)));
            Some((exact, approx * f64::from(radix) + f64::from(d)))
        })
    };
    let (exact, approx) = if t == "0" {
        (Some(0), 0.0)
    } else if let Some(bits) = t.strip_prefix("0b") {
        digits(bits, 2)?
    } else if let Some(hex) = t.strip_prefix("0x") {
        digits(hex, 16)?
    } else if let Some(octal) = t.strip_prefix('0') {
        // Python's int(text, 8), which PyYAML calls here on the whole text, also takes a `0o`
        // prefix, and spaces only at the ends.
        let octal = octal.strip_prefix(['o', 'O']).unwrap_or(octal);
        if octal.starts_with(char::is_whitespace) {
            return None;
        }
        digits(octal, 8)?
    } else if t.contains(':') {
        t.split(':').try_fold((Some(0u128), 0f64), |(exact, approx), part| {
            let (e, a) = digits(part, 10)?;
            let exact = exact.zip(e).and_then(|(x, e)| x.checked_mul(60)?.checked_add(e));
            Some((exact, approx * 60.0 + a))
        })?
    } else {
        let (exact, _) = digits(t, 10)?;
        // Decimal text converts to the correctly rounded float, as Python's float(int) does.
        (exact, t.trim().parse::<f64>().ok()?)
    };
    let number = exact.and_then(|magnitude| {
        if negative {
            i64::try_from(magnitude)
                .ok()
                .map(|m| Number::from(-m))
                .or_else(|| (magnitude == 1 << 63).then(|| Number::from(i64::MIN)))
        } else {
            u64::try_from(magnitude).ok().map(Number::from)
        }
    });
    Some(match number {
        Some(n) => Value::Number(n),
        None => to_float(Value::from(if negative { -approx } else { approx })),
    })
}

/// The float a matching text stands for (non-finite ones become null).
fn float(text: &str) -> Option<Value> {
    let cleaned: String =
        text.chars().filter(|&c| c != '_').collect::<String>().to_ascii_lowercase();
    let (negative, t) = sign(&cleaned);
    let magnitude: f64 = if t == ".inf" || t == ".nan" {
        return Some(Value::Null);
    } else if t.contains(':') {
        // Python's float(), which PyYAML calls on each part, allows spaces around it.
        t.split(':')
            .try_fold(0f64, |acc, part| Some(acc * 60.0 + part.trim().parse::<f64>().ok()?))?
    } else {
        t.trim().parse().ok()?
    };
    Some(to_float(Value::from(if negative { -magnitude } else { magnitude })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_plain_scalars_resolve_as_pyyaml_resolves_them() {
        let doc = load(
            "a: 1e3\nb: 1.0e+3\nc: .5\nd: -.5\ne: 1_000\nf: 0o17\ng: 017\nh: 12:30\ni: 1:2.5\n\
             j: 0b101\nk: +12\nl: 2001-12-14\nm: .inf\nn: y\no: 'yes'\np: ~\nq: 00\nr: 09\n\
             s: 1:60\nt: 190:20:30\nu: 0x_1F\nv: ! 12\nw: !!str 12\nx: on\n",
        )
        .expect("valid");
        let expect = serde_json::json!({
            "a": "1e3", "b": 1000.0, "c": 0.5, "d": "-.5", "e": 1000, "f": "0o17", "g": 15,
            "h": 750, "i": 62.5, "j": 5, "k": 12, "l": "2001-12-14", "m": null, "n": "y",
            "o": "yes", "p": null, "q": 0, "r": "09", "s": "1:60", "t": 685230, "u": 31,
            "v": 12, "w": "12", "x": true,
        });
        assert_eq!(doc, expect);
    }

    #[test]
    fn merge_keys_follow_pyyaml_precedence() {
        let doc = load("<<: {a: 1, c: 1}\n<<: {a: 2}\nb: 3\nc: 4\n").expect("valid");
        assert_eq!(doc, serde_json::json!({"a": 2, "b": 3, "c": 4}));
        let doc = load("<<: [{a: 1}, {a: 2, b: 2}]\n").expect("valid");
        assert_eq!(doc, serde_json::json!({"a": 1, "b": 2}));
        let doc = load("x: &a {p: 1, q: 1}\ny:\n  <<: *a\n  p: 2\n").expect("valid");
        assert_eq!(doc, serde_json::json!({"x": {"p": 1, "q": 1}, "y": {"p": 2, "q": 1}}));
    }

    #[test]
    fn refusals_name_their_line() {
        for (text, line, what) in [
            ("a: 1\na: 2\n", 2, "twice"),
            ("a: 1\n---\nb: 2\n", 2, "second document"),
            ("a: *y\n", 1, "no anchor"),
            ("a: &x 1\nb: &x 2\n", 2, "defined twice"),
            ("a: &x [*x]\n", 1, "contains itself"),
            ("a: =\n", 1, "plain `=`"),
            ("- <<\n", 1, "plain `<<`"),
            ("? [a, b]\n: c\n", 1, "used as a key"),
            ("a: !foo x\n", 1, "a tag cloud-init"),
            ("a: !!int x\n", 1, "not an integer"),
            ("<<: 1\n", 1, "merge key"),
            ("a: [1, 2\n", 2, ""),
        ] {
            let error = load(text).expect_err(text);
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.message.contains(what), "{text:?}: {error}");
        }
    }

    #[test]
    fn nesting_is_bounded_also_through_aliases() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(load(&deep(MAX_DEPTH)).is_ok());
        for text in [
            deep(MAX_DEPTH + 1),
            deep(1_000_000),
            format!("a: &a {}\nb: [*a]\n", deep(MAX_DEPTH - 1)),
        ] {
            let error = load(&text).expect_err("too deep");
            assert!(error.message.contains("nest more than"), "{error}");
        }
    }

    #[test]
    fn a_tab_opening_a_block_scalar_is_refused_with_the_way_round_it() {
        let refused = load("a: |\n  \tcc x\n  all: x\n").expect_err("libyaml refuses it");
        assert!(refused.message.contains("`|2`"), "{refused}");
        let read = load("a: |2\n  \tcc x\n  all: x\n").expect("with the indentation given");
        assert_eq!(read, serde_json::json!({"a": "\tcc x\nall: x\n"}));
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let error = load(&text).expect_err("a billion laughs");
        assert!(error.message.contains("anchors and aliases take"), "{error}");
    }
}

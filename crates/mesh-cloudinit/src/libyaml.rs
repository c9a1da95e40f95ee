//! A safe event reader over libyaml's parser (the `unsafe-libyaml` translation of the C
//! library): the unsafe calls are all here, and what leaves is owned Rust data.
//!
//! (`libyaml-safer`, a safe port, was tried first; it panics on a tag followed by `,` inside
//! brackets, a `TODO` in its scanner that the comparison with PyYAML hit at once.)

use std::ffi::CStr;
use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_sys;

/// A position in the text, 0-based as libyaml counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub line: u64,
    pub column: u64,
    /// Byte offset in the text.
    pub index: usize,
}

impl From<unsafe_sys::yaml_mark_t> for Mark {
    fn from(mark: unsafe_sys::yaml_mark_t) -> Self {
        Mark { line: mark.line, column: mark.column, index: mark.index as usize }
    }
}

/// One parser event, with what the loader uses of it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    StreamStart,
    StreamEnd,
    DocumentStart,
    DocumentEnd,
    Alias {
        anchor: String,
    },
    Scalar {
        anchor: Option<String>,
        tag: Option<String>,
        value: String,
        plain_implicit: bool,
        plain: bool,
        /// Literal (`|`) or folded (`>`).
        block: bool,
        /// Byte range of the scalar in the text (with its quotes or block header).
        span: std::ops::Range<usize>,
    },
    SequenceStart {
        anchor: Option<String>,
        tag: Option<String>,
        flow: bool,
    },
    SequenceEnd,
    MappingStart {
        anchor: Option<String>,
        tag: Option<String>,
        flow: bool,
    },
    MappingEnd,
}

/// What libyaml reported when it stopped: its problem, the context, and where.
#[derive(Debug)]
pub(crate) struct ParseError {
    pub problem: String,
    /// What the parser was reading, and where that began (an opening quote or bracket).
    pub context: Option<(String, Mark)>,
    pub mark: Mark,
    /// For an error in the input bytes themselves (a control character), their offset: the
    /// reader reports no mark for those.
    pub offset: Option<usize>,
}

/// libyaml's parser reading one string.
pub(crate) struct Parser<'a> {
    parser: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    /// The text the parser points into; it must outlive the parser.
    _text: std::marker::PhantomData<&'a [u8]>,
    done: bool,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut parser = Box::new(MaybeUninit::<unsafe_sys::yaml_parser_t>::uninit());
        let raw = parser.as_mut_ptr();
        // SAFETY: `raw` points to writable memory for a parser, which initialize fills in (it
        // fails only when out of memory, which aborts before). The input pointer and length
        // describe `text`, borrowed for 'a, as long as the parser lives.
        unsafe {
            if unsafe_sys::yaml_parser_initialize(raw).fail {
                std::alloc::handle_alloc_error(
                    std::alloc::Layout::new::<unsafe_sys::yaml_parser_t>(),
                );
            }
            unsafe_sys::yaml_parser_set_input_string(raw, text.as_ptr(), text.len() as u64);
        }
        Parser { parser, _text: std::marker::PhantomData, done: false }
    }

    /// The next event; after an error or the stream's end, `Ok(StreamEnd)` again.
    pub(crate) fn next(&mut self) -> Result<(Event, Mark), ParseError> {
        if self.done {
            return Ok((Event::StreamEnd, Mark::default()));
        }
        let raw = self.parser.as_mut_ptr();
        let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new` and is not used after an error.
        if unsafe { unsafe_sys::yaml_parser_parse(raw, event.as_mut_ptr()) }.fail {
            self.done = true;
            // SAFETY: after a failed parse, the parser's error fields are set; the strings
            // they point to are static.
            let parser = unsafe { &*raw };
            let text = |p: *const std::ffi::c_char| {
                // SAFETY: non-null pointers here are NUL-terminated static strings.
                (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            };
            let reader = parser.error == unsafe_sys::YAML_READER_ERROR;
            return Err(ParseError {
                problem: text(parser.problem).unwrap_or_else(|| "cannot be parsed".to_owned()),
                context: text(parser.context).map(|c| (c, parser.context_mark.into())),
                mark: parser.problem_mark.into(),
                offset: reader.then_some(parser.problem_offset as usize),
            });
        }
        // SAFETY: a successful parse filled in `event`; its union member is the one its type
        // names, and every string it holds is NUL-terminated (the scalar's value also has
        // its length). The event is deleted once copied.
        unsafe {
            let event = event.assume_init_mut();
            let mark = Mark::from(event.start_mark);
            let data = &event.data;
            let out = match event.type_ {
                unsafe_sys::YAML_STREAM_START_EVENT | unsafe_sys::YAML_NO_EVENT => {
                    Event::StreamStart
                }
                unsafe_sys::YAML_STREAM_END_EVENT => {
                    self.done = true;
                    Event::StreamEnd
                }
                unsafe_sys::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
                unsafe_sys::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
                unsafe_sys::YAML_ALIAS_EVENT => {
                    Event::Alias { anchor: string(data.alias.anchor).unwrap_or_default() }
                }
                unsafe_sys::YAML_SCALAR_EVENT => {
                    let s = &data.scalar;
                    let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                    Event::Scalar {
                        anchor: string(s.anchor),
                        tag: string(s.tag),
                        value: String::from_utf8_lossy(bytes).into_owned(),
                        plain_implicit: s.plain_implicit,
                        plain: s.style == unsafe_sys::YAML_PLAIN_SCALAR_STYLE,
                        block: matches!(
                            s.style,
                            unsafe_sys::YAML_LITERAL_SCALAR_STYLE
                                | unsafe_sys::YAML_FOLDED_SCALAR_STYLE
                        ),
                        span: event.start_mark.index as usize..event.end_mark.index as usize,
                    }
                }
                unsafe_sys::YAML_SEQUENCE_START_EVENT => {
                    let s = &data.sequence_start;
                    Event::SequenceStart {
                        anchor: string(s.anchor),
                        tag: string(s.tag),
                        flow: s.style == unsafe_sys::YAML_FLOW_SEQUENCE_STYLE,
                    }
                }
                unsafe_sys::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
                unsafe_sys::YAML_MAPPING_START_EVENT => {
                    let s = &data.mapping_start;
                    Event::MappingStart {
                        anchor: string(s.anchor),
                        tag: string(s.tag),
                        flow: s.style == unsafe_sys::YAML_FLOW_MAPPING_STYLE,
                    }
                }
                unsafe_sys::YAML_MAPPING_END_EVENT => Event::MappingEnd,
                // The enum is marked non-exhaustive; libyaml has no other event.
                _ => Event::StreamStart,
            };
            unsafe_sys::yaml_event_delete(event);
            Ok((out, mark))
        }
    }
}

/// A NUL-terminated string from an event (`None` for a null pointer).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that lives for the call.
unsafe fn string(p: *const u8) -> Option<String> {
    // SAFETY: as the caller promises.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p.cast()) }.to_string_lossy().into_owned())
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialised in `new` and is deleted once, here.
        unsafe { unsafe_sys::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_a_small_document() {
        let mut parser = Parser::new("a: &x [b, 'c']\nd: *x\n");
        let mut events = Vec::new();
        loop {
            let (event, _) = parser.next().expect("valid");
            let end = event == Event::StreamEnd;
            events.push(event);
            if end {
                break;
            }
        }
        assert_eq!(events.len(), 13, "{events:?}");
        assert!(matches!(&events[3], Event::Scalar { value, plain: true, .. } if value == "a"));
        assert!(
            matches!(&events[4], Event::SequenceStart { anchor: Some(a), flow: true, .. } if a == "x")
        );
        assert!(
            matches!(&events[6], Event::Scalar { value, plain: false, plain_implicit: false, .. } if value == "c")
        );
        assert!(matches!(&events[9], Event::Alias { anchor } if anchor == "x"));
    }

    #[test]
    fn a_tag_before_a_comma_in_brackets_is_no_crash() {
        let mut parser = Parser::new("[!x, a]\n");
        while let Ok((event, _)) = parser.next() {
            if event == Event::StreamEnd {
                break;
            }
        }
    }

    #[test]
    fn errors_say_where() {
        let mut parser = Parser::new("a: [1, 2\n");
        let error = loop {
            match parser.next() {
                Ok((Event::StreamEnd, _)) => panic!("accepted"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(error.mark.line, 1, "{error:?}");
        assert!(!error.problem.is_empty());
    }
}

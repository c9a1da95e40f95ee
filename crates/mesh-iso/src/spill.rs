//! Records that may be too many for memory: an external sort and an append-only log, both
//! held in memory while small and moved to an unnamed temporary file (in
//! [`std::env::temp_dir`]) once they grow past a limit.
//!
//! A directory can hold millions of entries, and every step of writing it wants them in
//! some order (by name, by 8.3 name, by Joliet name). [`Sorter`] sorts up to its memory
//! limit in memory, then writes sorted runs to its temporary file and merges them back,
//! so a directory of any size is sorted in bounded memory; below the limit it is a plain
//! in-memory sort and touches no file. [`Log`] keeps the records the writer prepares once
//! and reads several times.
//!
//! Records are written with a small hand-made encoding ([`Encoder`], [`Decoder`]): fixed
//! little-endian numbers and length-prefixed byte strings, each record prefixed with its
//! length. Temporary files are read with positioned reads, so any number of readers can
//! share one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes read from a temporary file at a time by one reader.
const READ_CHUNK: usize = 64 * 1024;
/// Most sorted runs merged at once; more are first merged into longer runs, so that a
/// merge holds at most this many read buffers whatever the input size.
const FAN_IN: usize = 16;
/// Bytes a [`Log`] keeps in memory before it moves to a temporary file.
const LOG_IN_MEMORY: usize = 1 << 20;

/// A value that can be spilled to a temporary file and read back.
pub(crate) trait Spill: Sized {
    /// Bytes the value holds on the heap, beyond its own size.
    fn heap_size(&self) -> usize;
    /// Appends the value's encoding.
    fn encode(&self, e: &mut Encoder);
    /// Reads a value back from its encoding.
    fn decode(d: &mut Decoder<'_>) -> io::Result<Self>;
}

/// Builds one record's encoding.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A byte string of at most 64 KiB, length first.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        let len = u16::try_from(b.len()).expect("spilled strings are names, targets and paths");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// The bytes encoded so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Appends `value` as a record: its length, then its encoding.
    fn record<T: Spill>(&mut self, value: &T) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        value.encode(self);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads one record's encoding; running out of bytes or finding an invalid value is
/// [`io::ErrorKind::InvalidData`].
#[derive(Debug)]
pub(crate) struct Decoder<'b> {
    buf: &'b [u8],
}

impl<'b> Decoder<'b> {
    /// Reads from the start of `buf`.
    pub(crate) fn new(buf: &'b [u8]) -> Self {
        Decoder { buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> io::Result<&'b [u8]> {
        if self.buf.len() < n {
            return Err(damaged());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("took 4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }

    pub(crate) fn i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }

    pub(crate) fn bytes(&mut self) -> io::Result<&'b [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("took 2 bytes"));
        self.take(usize::from(len))
    }

    /// A string borrowed from the buffer.
    pub(crate) fn str(&mut self) -> io::Result<&'b str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| damaged())
    }

    pub(crate) fn string(&mut self) -> io::Result<String> {
        self.str().map(str::to_owned)
    }
}

/// The error for a record that does not decode.
pub(crate) fn damaged() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "damaged record in a temporary file")
}

/// A byte range of a temporary file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: u64,
    pub len: u64,
}

/// Reads the records of a span of a shared temporary file, a buffer at a time.
#[derive(Debug)]
struct FileRecords {
    file: Arc<File>,
    /// Next byte of the file to read, and the end of the span.
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    at: usize,
}

impl FileRecords {
    fn new(file: Arc<File>, span: Span) -> Self {
        FileRecords { file, pos: span.offset, end: span.offset + span.len, buf: Vec::new(), at: 0 }
    }

    /// Makes at least `n` unread bytes available in `buf`, if the span holds them.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.buf.len() - self.at >= n {
            return Ok(true);
        }
        self.buf.drain(..self.at);
        self.at = 0;
        while self.buf.len() < n {
            let left = self.end - self.pos;
            if left == 0 {
                return Ok(false);
            }
            let want = (n - self.buf.len()).max(READ_CHUNK).min(left as usize);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            self.file.read_exact_at(&mut self.buf[old..], self.pos)?;
            self.pos += want as u64;
        }
        Ok(true)
    }

    /// The next record's bytes, or `None` at the end of the span.
    fn next(&mut self) -> io::Result<Option<&[u8]>> {
        if !self.fill(4)? {
            return if self.buf.len() == self.at { Ok(None) } else { Err(damaged()) };
        }
        let len = u32::from_le_bytes(self.buf[self.at..self.at + 4].try_into().expect("4"));
        let len = len as usize;
        if !self.fill(4 + len)? {
            return Err(damaged());
        }
        let record = &self.buf[self.at + 4..self.at + 4 + len];
        self.at += 4 + len;
        Ok(Some(record))
    }

    fn next_value<T: Spill>(&mut self) -> io::Result<Option<T>> {
        match self.next()? {
            None => Ok(None),
            Some(bytes) => {
                let mut d = Decoder { buf: bytes };
                let value = T::decode(&mut d)?;
                if !d.buf.is_empty() {
                    return Err(damaged());
                }
                Ok(Some(value))
            }
        }
    }
}

/// Sorts values of any number in bounded memory: up to `limit` bytes in memory, beyond
/// that in sorted runs on a temporary file, merged when the values are read back.
///
/// Values must be totally ordered with no two equal (every sort key here ends in an entry
/// index), so the order read back does not depend on where the runs were cut.
#[derive(Debug)]
pub(crate) struct Sorter<T> {
    limit: usize,
    values: Vec<T>,
    /// Heap bytes of `values`.
    heap: usize,
    file: Option<Arc<File>>,
    /// Bytes written to `file`.
    file_len: u64,
    runs: Vec<Span>,
}

impl<T: Spill + Ord> Sorter<T> {
    /// A sorter that keeps up to about `limit` bytes of values in memory.
    pub(crate) fn new(limit: usize) -> Self {
        Sorter { limit, values: Vec::new(), heap: 0, file: None, file_len: 0, runs: Vec::new() }
    }

    pub(crate) fn push(&mut self, value: T) -> io::Result<()> {
        // What the values would hold with this one: their vector, doubled if it is full
        // (it keeps its capacity across spills), and their heap bytes.
        let size = std::mem::size_of::<T>();
        let full = self.values.len() == self.values.capacity();
        let vector = self.values.capacity() * size * if full { 2 } else { 1 };
        let after = vector.max(4 * size) + self.heap + value.heap_size();
        if !self.values.is_empty() && after > self.limit {
            self.spill()?;
        }
        self.heap += value.heap_size();
        self.values.push(value);
        Ok(())
    }

    /// Sorts the values in memory and writes them out as one run.
    fn spill(&mut self) -> io::Result<()> {
        self.values.sort_unstable();
        let mut e = Encoder::default();
        for v in &self.values {
            e.record(v);
        }
        self.values.clear();
        self.heap = 0;
        let span = self.append(&e.buf)?;
        self.runs.push(span);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<Span> {
        let file = match &self.file {
            Some(f) => f,
            None => self.file.insert(Arc::new(tempfile::tempfile()?)),
        };
        file.write_all_at(bytes, self.file_len)?;
        let span = Span { offset: self.file_len, len: bytes.len() as u64 };
        self.file_len += bytes.len() as u64;
        Ok(span)
    }

    /// The values in order.
    pub(crate) fn finish(mut self) -> io::Result<Sorted<T>> {
        let Some(file) = self.file.clone() else {
            self.values.sort_unstable();
            return Ok(Sorted { inner: Inner::Memory(self.values.into_iter()), peeked: None });
        };
        if !self.values.is_empty() {
            self.spill()?;
        }
        self.values = Vec::new();
        // Merges the oldest runs into one until few enough are left to merge at once.
        while self.runs.len() > FAN_IN {
            let group: Vec<Span> = self.runs.drain(..FAN_IN).collect();
            let mut merge = Merge::<T>::new(&file, &group)?;
            let mut e = Encoder::default();
            let start = self.file_len;
            while let Some(v) = merge.next()? {
                e.record(&v);
                if e.buf.len() >= READ_CHUNK {
                    self.append(&e.buf)?;
                    e.buf.clear();
                }
            }
            self.append(&e.buf)?;
            self.runs.push(Span { offset: start, len: self.file_len - start });
        }
        Ok(Sorted { inner: Inner::Merge(Merge::new(&file, &self.runs)?), peeked: None })
    }
}

/// The values of a [`Sorter`], in order.
#[derive(Debug)]
pub(crate) struct Sorted<T> {
    inner: Inner<T>,
    /// A value taken from `inner` by `peek` and not yet by `next`.
    peeked: Option<T>,
}

#[derive(Debug)]
enum Inner<T> {
    Memory(std::vec::IntoIter<T>),
    Merge(Merge<T>),
}

impl<T: Spill + Ord> Sorted<T> {
    /// The next value, or `None` after the last.
    pub(crate) fn next(&mut self) -> io::Result<Option<T>> {
        if let Some(v) = self.peeked.take() {
            return Ok(Some(v));
        }
        match &mut self.inner {
            Inner::Memory(values) => Ok(values.next()),
            Inner::Merge(merge) => merge.next(),
        }
    }

    /// The value `next` returns next, left in place.
    pub(crate) fn peek(&mut self) -> io::Result<Option<&T>> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked.as_ref())
    }
}

/// A k-way merge of sorted runs.
#[derive(Debug)]
struct Merge<T> {
    runs: Vec<FileRecords>,
    /// The smallest unread value of each run that has one, with the run's index.
    heads: BinaryHeap<Reverse<(T, usize)>>,
}

impl<T: Spill + Ord> Merge<T> {
    fn new(file: &Arc<File>, spans: &[Span]) -> io::Result<Self> {
        let mut runs: Vec<FileRecords> =
            spans.iter().map(|&s| FileRecords::new(Arc::clone(file), s)).collect();
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some(v) = run.next_value()? {
                heads.push(Reverse((v, i)));
            }
        }
        Ok(Merge { runs, heads })
    }

    fn next(&mut self) -> io::Result<Option<T>> {
        let Some(Reverse((value, i))) = self.heads.pop() else {
            return Ok(None);
        };
        if let Some(v) = self.runs[i].next_value()? {
            self.heads.push(Reverse((v, i)));
        }
        Ok(Some(value))
    }
}

/// An append-only log of records, read back by span: in memory up to 1 MiB, then in a
/// temporary file.
#[derive(Debug, Default)]
pub(crate) struct Log {
    file: Option<Arc<File>>,
    /// Bytes already in `file`.
    file_len: u64,
    /// The bytes after those, not yet written out.
    tail: Vec<u8>,
}

impl Log {
    /// The log's length in bytes: where the next record goes.
    pub(crate) fn len(&self) -> u64 {
        self.file_len + self.tail.len() as u64
    }

    /// Appends `value`.
    pub(crate) fn push<T: Spill>(&mut self, value: &T) -> io::Result<()> {
        let mut e = Encoder { buf: std::mem::take(&mut self.tail) };
        e.record(value);
        self.tail = e.buf;
        let limit = if self.file.is_some() { READ_CHUNK } else { LOG_IN_MEMORY };
        if self.tail.len() >= limit {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        let file = match &self.file {
            Some(f) => f,
            None => self.file.insert(Arc::new(tempfile::tempfile()?)),
        };
        file.write_all_at(&self.tail, self.file_len)?;
        self.file_len += self.tail.len() as u64;
        self.tail.clear();
        Ok(())
    }

    /// Writes out what is still in memory if the log has moved to its file: after this,
    /// every span can be read.
    pub(crate) fn seal(&mut self) -> io::Result<()> {
        if self.file.is_some() && !self.tail.is_empty() {
            self.write_out()?;
        }
        Ok(())
    }

    /// The records of `span`, which must lie in the sealed part of the log.
    pub(crate) fn read<T: Spill>(&self, span: Span) -> LogRecords<'_, T> {
        let source = match &self.file {
            Some(file) => Source::File(FileRecords::new(Arc::clone(file), span)),
            None => {
                let (start, end) = (span.offset as usize, (span.offset + span.len) as usize);
                Source::Memory(&self.tail[start..end])
            }
        };
        LogRecords { source, _values: std::marker::PhantomData }
    }
}

/// The records of a span of a [`Log`].
#[derive(Debug)]
pub(crate) struct LogRecords<'l, T> {
    source: Source<'l>,
    _values: std::marker::PhantomData<fn() -> T>,
}

#[derive(Debug)]
enum Source<'l> {
    Memory(&'l [u8]),
    File(FileRecords),
}

impl<T: Spill> LogRecords<'_, T> {
    /// The next record, or `None` after the last.
    pub(crate) fn next(&mut self) -> io::Result<Option<T>> {
        match &mut self.source {
            Source::File(records) => records.next_value(),
            Source::Memory(rest) => {
                if rest.is_empty() {
                    return Ok(None);
                }
                let mut d = Decoder { buf: rest };
                let len = d.u32()? as usize;
                let mut d = Decoder { buf: d.take(len)? };
                let value = T::decode(&mut d)?;
                *rest = &rest[4 + len..];
                Ok(Some(value))
            }
        }
    }
}

impl Spill for String {
    fn heap_size(&self) -> usize {
        self.capacity()
    }

    fn encode(&self, e: &mut Encoder) {
        e.str(self);
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        d.string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct pseudo-random names, some long.
    fn names(n: usize) -> Vec<String> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{:x}-{i}{}", state % 100_000, "x".repeat((state % 40) as usize))
            })
            .collect()
    }

    fn sorted(limit: usize, input: &[String]) -> Vec<String> {
        let mut sorter = Sorter::new(limit);
        for s in input {
            sorter.push(s.clone()).expect("push");
        }
        let mut out = Vec::new();
        let mut sorted = sorter.finish().expect("finish");
        while let Some(s) = sorted.next().expect("next") {
            out.push(s);
        }
        out
    }

    #[test]
    fn spilled_sorts_merge_to_the_in_memory_order() {
        let input = names(5000);
        let mut want = input.clone();
        want.sort();
        assert_eq!(sorted(usize::MAX, &input), want);
        // Runs of a few values each: several rounds of merging FAN_IN runs.
        assert_eq!(sorted(256, &input), want);
        assert_eq!(sorted(1, &input), want);
        assert_eq!(sorted(1, &[]), Vec::<String>::new());
    }

    #[test]
    fn a_log_reads_back_spans_in_memory_and_from_its_file() {
        let input = names(3000);
        for big in [false, true] {
            let mut log = Log::default();
            let mut spans = Vec::new();
            for chunk in input.chunks(7) {
                let start = log.len();
                for s in chunk {
                    let s = if big { s.repeat(30) } else { s.clone() };
                    log.push(&s).expect("push");
                }
                spans.push(Span { offset: start, len: log.len() - start });
            }
            log.seal().expect("seal");
            assert_eq!(log.file.is_some(), big);
            for (chunk, span) in input.chunks(7).zip(spans).rev() {
                let mut records = log.read::<String>(span);
                for s in chunk {
                    let want = if big { s.repeat(30) } else { s.clone() };
                    assert_eq!(records.next().expect("read"), Some(want));
                }
                assert_eq!(records.next().expect("read"), None);
            }
        }
    }
}

//! Mapping of POSIX names to the identifiers of the primary volume (ISO 9660 level 1:
//! d-characters, 8.3) and of the Joliet volume (UCS-2, at most 64 characters).

use std::io;

use crate::spill::{self, Decoder, Encoder, Sorted, Sorter, Spill};

/// Longest Joliet identifier, in UCS-2 characters.
pub(crate) const JOLIET_MAX_CHARS: usize = 64;

/// An ASCII string of at most `N` bytes stored inline, so the name of every entry of a
/// large tree costs no allocation. Ordered by its bytes, shorter first on a common prefix,
/// which is the ECMA-119 order for space-padded d-characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Short<const N: usize> {
    buf: [u8; N],
    len: u8,
}

impl<const N: usize> Short<N> {
    /// The first `N` characters of `s`, which must be ASCII.
    fn new(s: &str) -> Self {
        debug_assert!(s.is_ascii());
        let len = s.len().min(N);
        let mut buf = [0u8; N];
        buf[..len].copy_from_slice(&s.as_bytes()[..len]);
        Short { buf, len: len as u8 }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).expect("built from ASCII")
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Reads back what `encode` wrote, checking that it is d-characters that fit.
    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        let b = d.bytes()?;
        if b.len() > N || !b.iter().all(|&c| matches!(c, b'A'..=b'Z' | b'0'..=b'9' | b'_')) {
            return Err(spill::damaged());
        }
        let mut buf = [0u8; N];
        buf[..b.len()].copy_from_slice(b);
        Ok(Short { buf, len: b.len() as u8 })
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> PartialOrd for Short<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for Short<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Bytes compare like the ASCII strings they hold.
        self.buf[..usize::from(self.len)].cmp(&other.buf[..usize::from(other.len)])
    }
}

impl<const N: usize> std::fmt::Debug for Short<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A primary-volume name: the parts of an 8.3 identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PrimaryName {
    /// Name part, 1 to 8 d-characters.
    pub base: Short<8>,
    /// Extension, 0 to 3 d-characters; always empty for directories.
    pub ext: Short<3>,
    /// Directories carry no `.` separator and no `;1` version.
    pub is_dir: bool,
}

impl PrimaryName {
    /// The file identifier as recorded: `BASE.EXT;1` for files, `BASE` for directories.
    pub(crate) fn identifier(&self) -> Vec<u8> {
        let mut id = Vec::with_capacity(self.base.len() + self.ext.len() + 3);
        id.extend_from_slice(self.base.as_str().as_bytes());
        if !self.is_dir {
            id.push(b'.');
            id.extend_from_slice(self.ext.as_str().as_bytes());
            id.extend_from_slice(b";1");
        }
        id
    }

    /// What `visible` is made of, without building the string: two names
    /// show the same exactly when their keys are equal (d-characters hold no `.`).
    fn visible_key(&self) -> u64 {
        // The eleven zero-padded places, each one of 38 values (padding or a d-character),
        // as the digits of a base-38 number: 38^11 < 2^64.
        self.base.buf.iter().chain(&self.ext.buf).fold(0u64, |key, &b| {
            let digit = match b {
                0 => 0,
                b'A'..=b'Z' => 1 + u64::from(b - b'A'),
                b'0'..=b'9' => 27 + u64::from(b - b'0'),
                _ => {
                    debug_assert_eq!(b, b'_', "names hold only d-characters");
                    37
                }
            };
            key * 38 + digit
        })
    }

    /// What is kept of the name part in front of a suffix of `digits` digits: the part of
    /// the name that the candidates `STEM_N` of this name share with other names.
    fn stem(&self, digits: u8) -> Short<8> {
        let keep = self.base.len().min(7 - usize::from(digits));
        Short::new(&self.base.as_str()[..keep])
    }

    /// If this name is what [`PrimaryName::with_suffix`] makes of some name, its suffix
    /// as (number of digits, stem, number).
    fn as_suffixed(&self) -> Option<(u8, Short<8>, u32)> {
        let base = self.base.as_str();
        let at = base.rfind('_')?;
        let digits = &base[at + 1..];
        if digits.is_empty()
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let n = digits.parse().ok()?;
        Some((digits.len() as u8, Short::new(&base[..at]), n))
    }

    /// This name with its name part cut to make room for `_n`.
    fn with_suffix(&self, n: u32) -> PrimaryName {
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut rest = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let digits = &digits[at..];
        let keep = self.base.len().min(8usize.saturating_sub(1 + digits.len()));
        let mut base = [0u8; 8];
        base[..keep].copy_from_slice(&self.base.buf[..keep]);
        let mut len = keep;
        for &b in std::iter::once(&b'_').chain(digits).take(8 - keep) {
            base[len] = b;
            len += 1;
        }
        PrimaryName { base: Short { buf: base, len: len as u8 }, ..*self }
    }

    /// The name a reader that strips versions and trailing dots shows (Linux with `norock`
    /// shows `BASE.EXT` or `BASE`); two entries of a directory must never share it.
    #[cfg(test)]
    pub(crate) fn visible(&self) -> String {
        if self.ext.is_empty() {
            self.base.as_str().to_owned()
        } else {
            format!("{}.{}", self.base.as_str(), self.ext.as_str())
        }
    }
}

/// Maps one character to a d-character (`A-Z`, `0-9`, `_`).
fn d_char(c: char) -> char {
    match c {
        'a'..='z' => c.to_ascii_uppercase(),
        'A'..='Z' | '0'..='9' | '_' => c,
        _ => '_',
    }
}

fn d_string(s: &str, max: usize) -> String {
    s.chars().map(d_char).take(max).collect()
}

/// The 8.3 name `name` maps to before collisions are resolved.
pub(crate) fn primary_natural(name: &str, is_dir: bool) -> PrimaryName {
    // A leading dot (`.bashrc`) is not an empty name with a long extension: keep the
    // word as the name part.
    let stripped = name.trim_start_matches('.');
    let (base, ext) = match (is_dir, stripped.rfind('.')) {
        (false, Some(dot)) => (&stripped[..dot], &stripped[dot + 1..]),
        _ => (stripped, ""),
    };
    let mut base = d_string(base, 8);
    if base.is_empty() {
        base.push('_');
    }
    PrimaryName { base: Short::new(&base), ext: Short::new(&d_string(ext, 3)), is_dir }
}

impl Spill for PrimaryName {
    fn heap_size(&self) -> usize {
        0
    }

    fn encode(&self, e: &mut Encoder) {
        e.str(self.base.as_str());
        e.str(self.ext.as_str());
        e.u8(u8::from(self.is_dir));
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        let base = Short::decode(d)?;
        let ext = Short::decode(d)?;
        let is_dir = d.u8()? != 0;
        if base.len == 0 || (is_dir && ext.len != 0) {
            return Err(spill::damaged());
        }
        Ok(PrimaryName { base, ext, is_dir })
    }
}

/// Why a directory's entries could not all be named.
#[derive(Debug)]
pub(crate) enum NameError {
    /// Sorting them in a temporary file failed.
    Sort(io::Error),
    /// More names collide than suffixes up to `_9999999` can tell apart.
    Exhausted,
}

impl From<io::Error> for NameError {
    fn from(e: io::Error) -> Self {
        NameError::Sort(e)
    }
}

/// Assigns unique 8.3 names to the entries of one directory, in bounded memory.
///
/// Entries are pushed in a deterministic order (their index) with their natural names
/// ([`primary_natural`]). An entry whose natural name is unique keeps it; of those that
/// share one, the first keeps it and each other gets the natural name part cut to make room
/// for `_N`, with the smallest `N` such that the name collides with no natural name of the
/// directory nor with a suffixed name handed out before, in index order.
///
/// That rule is computed without holding the directory: a suffixed name `STEM_N` can only
/// meet names with the same extension and stem, so the entries that need a suffix are
/// sorted by (extension, stem, index) and handed the free numbers of their group in order;
/// the one-digit numbers of a group run out after nine, and the rest move on to the
/// two-digit numbers of a shorter stem, and so on. Natural names that look like suffixed
/// ones are sorted the same way, to be skipped.
#[derive(Debug)]
pub(crate) struct PrimaryNamer {
    by_key: Sorter<ByKey>,
    limit: usize,
}

/// An entry by its natural name, to find the entries that share one.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ByKey {
    key: u64,
    index: u32,
    natural: PrimaryName,
}

/// An entry waiting for a suffix of a given number of digits, by the candidates it shares
/// with others: same extension, same stem.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Waiting {
    ext: Short<3>,
    stem: Short<8>,
    index: u32,
    natural: PrimaryName,
}

/// A natural name that has the form of a suffixed name, so number `n` of the suffixes of
/// `digits` digits after `stem` (with extension `ext`) is taken.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Taken {
    digits: u8,
    ext: Short<3>,
    stem: Short<8>,
    n: u32,
}

/// An entry that does not keep its natural name, and the name it gets.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rename {
    index: u32,
    name: PrimaryName,
}

impl Spill for ByKey {
    fn heap_size(&self) -> usize {
        0
    }

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.key);
        e.u32(self.index);
        self.natural.encode(e);
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        Ok(ByKey { key: d.u64()?, index: d.u32()?, natural: PrimaryName::decode(d)? })
    }
}

impl Spill for Waiting {
    fn heap_size(&self) -> usize {
        0
    }

    fn encode(&self, e: &mut Encoder) {
        e.str(self.ext.as_str());
        e.str(self.stem.as_str());
        e.u32(self.index);
        self.natural.encode(e);
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        Ok(Waiting {
            ext: Short::decode(d)?,
            stem: Short::decode(d)?,
            index: d.u32()?,
            natural: PrimaryName::decode(d)?,
        })
    }
}

impl Spill for Taken {
    fn heap_size(&self) -> usize {
        0
    }

    fn encode(&self, e: &mut Encoder) {
        e.u8(self.digits);
        e.str(self.ext.as_str());
        e.str(self.stem.as_str());
        e.u32(self.n);
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        Ok(Taken { digits: d.u8()?, ext: Short::decode(d)?, stem: Short::decode(d)?, n: d.u32()? })
    }
}

impl Spill for Rename {
    fn heap_size(&self) -> usize {
        0
    }

    fn encode(&self, e: &mut Encoder) {
        e.u32(self.index);
        self.name.encode(e);
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        Ok(Rename { index: d.u32()?, name: PrimaryName::decode(d)? })
    }
}

/// Most digits of a suffix: `_1234567` fills the name part, with nothing of the name kept.
const MAX_SUFFIX_DIGITS: u8 = 7;

impl PrimaryNamer {
    /// A namer whose sorts each keep up to about `limit` bytes in memory.
    pub(crate) fn new(limit: usize) -> Self {
        PrimaryNamer { by_key: Sorter::new(limit), limit }
    }

    /// Adds entry `index` (indexes must be distinct) with its natural name.
    pub(crate) fn push(&mut self, index: u32, natural: PrimaryName) -> io::Result<()> {
        self.by_key.push(ByKey { key: natural.visible_key(), index, natural })
    }

    /// Names the entries: returns those that do not keep their natural names.
    pub(crate) fn finish(self) -> Result<Renames, NameError> {
        let limit = self.limit;
        let mut by_key = self.by_key.finish()?;
        let mut waiting = Sorter::new(limit);
        let mut taken = Sorter::new(limit);
        let mut renames = Sorter::new(limit);
        let mut colliders = 0u64;
        let mut last_key = None;
        while let Some(entry) = by_key.next()? {
            if last_key == Some(entry.key) {
                let (ext, stem) = (entry.natural.ext, entry.natural.stem(1));
                waiting.push(Waiting { ext, stem, index: entry.index, natural: entry.natural })?;
                colliders += 1;
                continue;
            }
            last_key = Some(entry.key);
            if let Some((digits, stem, n)) = entry.natural.as_suffixed() {
                taken.push(Taken { digits, ext: entry.natural.ext, stem, n })?;
            }
        }
        drop(by_key);
        if colliders == 0 {
            return Ok(Renames { sorted: None });
        }

        let mut taken = taken.finish()?;
        for digits in 1..=MAX_SUFFIX_DIGITS {
            let mut group = None;
            let mut next_n = 0;
            let (first, last) =
                (10u32.pow(u32::from(digits) - 1), 10u32.pow(u32::from(digits)) - 1);
            let mut arrivals = std::mem::replace(&mut waiting, Sorter::new(limit)).finish()?;
            let mut moved_on = 0u64;
            while let Some(w) = arrivals.next()? {
                let here = (digits, w.ext, w.stem);
                if group != Some(here) {
                    group = Some(here);
                    next_n = first;
                    while taken.peek()?.is_some_and(|t| (t.digits, t.ext, t.stem) < here) {
                        taken.next()?;
                    }
                }
                // Numbers taken by natural names are skipped.
                while let Some((key, n)) = taken.peek()?.map(|t| ((t.digits, t.ext, t.stem), t.n)) {
                    if key != here || n > next_n {
                        break;
                    }
                    if n == next_n {
                        next_n += 1;
                    }
                    taken.next()?;
                }
                if next_n <= last {
                    renames.push(Rename { index: w.index, name: w.natural.with_suffix(next_n) })?;
                    next_n += 1;
                } else if digits == MAX_SUFFIX_DIGITS {
                    return Err(NameError::Exhausted);
                } else {
                    let stem = w.natural.stem(digits + 1);
                    waiting.push(Waiting { stem, ..w })?;
                    moved_on += 1;
                }
            }
            if moved_on == 0 {
                break;
            }
        }
        Ok(Renames { sorted: Some(renames.finish()?) })
    }
}

/// The entries of a directory that do not keep their natural 8.3 names, by index.
#[derive(Debug)]
pub(crate) struct Renames {
    sorted: Option<Sorted<Rename>>,
}

impl Renames {
    /// The name of entry `index` if it is not its natural name. Calls must come in
    /// ascending order of index.
    pub(crate) fn name_of(&mut self, index: u32) -> io::Result<Option<PrimaryName>> {
        let Some(sorted) = &mut self.sorted else {
            return Ok(None);
        };
        while sorted.peek()?.is_some_and(|r| r.index < index) {
            sorted.next()?;
        }
        if sorted.peek()?.is_some_and(|r| r.index == index) {
            return Ok(sorted.next()?.map(|r| r.name));
        }
        Ok(None)
    }
}

/// Assigns unique 8.3 names to `entries` (`(name, is_dir)`), in order, with sorts that
/// keep up to `limit` bytes in memory.
#[cfg(test)]
pub(crate) fn assign_primary_with<'n>(
    entries: impl IntoIterator<Item = (&'n str, bool)>,
    limit: usize,
) -> Vec<PrimaryName> {
    let natural: Vec<PrimaryName> =
        entries.into_iter().map(|(name, is_dir)| primary_natural(name, is_dir)).collect();
    let mut namer = PrimaryNamer::new(limit);
    for (i, name) in natural.iter().enumerate() {
        namer.push(i as u32, *name).expect("sort");
    }
    let Ok(mut renames) = namer.finish() else {
        panic!("names can be assigned");
    };
    natural
        .into_iter()
        .enumerate()
        .map(|(i, name)| renames.name_of(i as u32).expect("sort").unwrap_or(name))
        .collect()
}

/// Assigns unique 8.3 names to `entries` (`(name, is_dir)`), in order.
#[cfg(test)]
pub(crate) fn assign_primary<'n>(
    entries: impl IntoIterator<Item = (&'n str, bool)>,
) -> Vec<PrimaryName> {
    assign_primary_with(entries, usize::MAX)
}

/// The Joliet identifier (UCS-2 big-endian bytes) of `name`, in a vector of its own.
#[cfg(test)]
pub(crate) fn joliet_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    joliet_name_into(name, &mut out);
    out
}

/// Appends the Joliet identifier (UCS-2 big-endian bytes) of `name` to `out`.
pub(crate) fn joliet_name_into(name: &str, out: &mut Vec<u8>) {
    out.extend(joliet_units(name).flat_map(u16::to_be_bytes));
}

/// The UCS-2 units of a Joliet identifier, mapped from the name as they are read.
#[derive(Debug, Clone)]
struct JolietUnits<'n> {
    head: std::iter::Take<std::str::Chars<'n>>,
    /// The kept extension of a cut name; empty otherwise.
    tail: std::str::Chars<'n>,
}

impl Iterator for JolietUnits<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        let c = self.head.next().or_else(|| self.tail.next())?;
        Some(match c {
            '\0'..='\u{1f}' | '*' | '/' | ':' | ';' | '?' | '\\' => '_' as u16,
            c if (c as u32) > 0xFFFF => '_' as u16,
            c => c as u16,
        })
    }
}

/// The Joliet identifier of `name` as UCS-2 units, computed on demand so that a directory
/// can be sorted by identifier without holding them.
///
/// Characters Joliet forbids (controls, `* / : ; ? \`) and characters outside the Basic
/// Multilingual Plane become `_`. Names longer than 64 characters are cut; a short
/// extension (up to 16 characters with its dot) is kept.
fn joliet_units(name: &str) -> JolietUnits<'_> {
    let whole = |take| JolietUnits { head: name.chars().take(take), tail: "".chars() };
    if name.len() <= JOLIET_MAX_CHARS {
        // No more characters than bytes: nothing to cut, no need to count.
        return whole(JOLIET_MAX_CHARS);
    }
    let count = name.chars().count();
    if count <= JOLIET_MAX_CHARS {
        return whole(count);
    }
    // Mapping never makes or removes a dot, and gives one unit per character.
    let dot = name.char_indices().enumerate().filter(|(_, (_, c))| *c == '.').last();
    match dot {
        Some((d, (at, _))) if d > 0 && count - d <= 16 => JolietUnits {
            head: name.chars().take(JOLIET_MAX_CHARS - (count - d)),
            tail: name[at..].chars(),
        },
        _ => whole(JOLIET_MAX_CHARS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn id(name: &str, is_dir: bool) -> String {
        String::from_utf8(primary_natural(name, is_dir).identifier()).expect("ascii")
    }

    #[test]
    fn natural_primary_names_follow_level_1_rules() {
        assert_eq!(id("build.sh", false), "BUILD.SH;1");
        assert_eq!(id("README", false), "README.;1");
        assert_eq!(id("a-very-long-name.tar.gz", false), "A_VERY_L.GZ;1");
        assert_eq!(id(".bashrc", false), "BASHRC.;1");
        assert_eq!(id("scripts", true), "SCRIPTS");
        assert_eq!(id("my.dir.name", true), "MY_DIR_N");
        assert_eq!(id("...", false), "_.;1");
        assert_eq!(id("données.json", false), "DONN_ES.JSO;1");
    }

    #[test]
    fn identifiers_use_only_d_characters() {
        for name in ["ü∂ß", "a b", "x+y=z", "(1)", "~tmp", "ÅÄÖ.tXt"] {
            let n = primary_natural(name, false);
            let ok = |s: &str| {
                s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            };
            assert!(ok(n.base.as_str()) && ok(n.ext.as_str()), "{name:?} -> {n:?}");
            assert!((1..=8).contains(&n.base.len()) && n.ext.len() <= 3);
        }
    }

    #[test]
    fn collisions_get_deterministic_suffixes() {
        let names = assign_primary([
            ("longfilename1.txt", false),
            ("longfilename2.txt", false),
            ("LONGFI_1.TXT", false),
            ("longfilename3.txt", false),
        ]);
        let shown: Vec<String> = names.iter().map(PrimaryName::visible).collect();
        // The literal LONGFI_1.TXT keeps its name; the second collider skips to _2.
        assert_eq!(shown, ["LONGFILE.TXT", "LONGFI_2.TXT", "LONGFI_1.TXT", "LONGFI_3.TXT"]);
    }

    #[test]
    fn files_without_extension_and_dirs_share_one_namespace() {
        let names = assign_primary([("foo", true), ("foo", false), ("FOO.", false)]);
        let shown: BTreeSet<String> = names.iter().map(PrimaryName::visible).collect();
        assert_eq!(shown.len(), 3, "{names:?}");
    }

    /// The plain search (`_1`, `_2`, ... for every collider, built with `format!`) that
    /// `assign_primary` must agree with.
    fn assign_primary_reference(entries: &[(&str, bool)]) -> Vec<PrimaryName> {
        let natural: Vec<PrimaryName> =
            entries.iter().map(|(name, is_dir)| primary_natural(name, *is_dir)).collect();
        let mut taken: BTreeSet<String> = natural.iter().map(PrimaryName::visible).collect();
        let mut claimed = BTreeSet::new();
        natural
            .into_iter()
            .map(|name| {
                if claimed.insert(name.visible()) {
                    return name;
                }
                let mut n = 1u32;
                loop {
                    let suffix = format!("_{n}");
                    let keep = 8 - suffix.len();
                    let base =
                        format!("{}{suffix}", &name.base.as_str()[..name.base.len().min(keep)]);
                    let candidate = PrimaryName { base: Short::new(&base), ..name };
                    if taken.insert(candidate.visible()) {
                        claimed.insert(candidate.visible());
                        return candidate;
                    }
                    n += 1;
                }
            })
            .collect()
    }

    #[test]
    fn resumed_suffix_search_gives_the_names_of_the_plain_search() {
        let mut owned: Vec<(String, bool)> = Vec::new();
        for i in 0..300 {
            owned.push((format!("same-prefix-{i}.log"), false));
            owned.push((format!("SAME_PR_{}.LOG", i % 37), false));
            owned.push((format!("same-pre{}", i % 13), i % 2 == 0));
            owned.push((format!("x{i}"), false));
            owned.push((format!("shorter{}.c", i % 150), false));
        }
        owned.push(("SAME_P_1.LOG".to_owned(), false));
        let entries: Vec<(&str, bool)> = owned.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        assert_eq!(assign_primary(entries.iter().copied()), assign_primary_reference(&entries));
        for n in [1, 9, 10, 99, 100, 123_456, 9_999_999] {
            let name = primary_natural("abcdefghij.txt", false);
            let expected = {
                let suffix = format!("_{n}");
                format!("{}{suffix}", &"ABCDEFGH"[..8 - suffix.len()])
            };
            assert_eq!(name.with_suffix(n).base.as_str(), expected);
        }
        assert_eq!(primary_natural("ab", true).with_suffix(12).base.as_str(), "AB_12");
    }

    #[test]
    fn names_sorted_in_spilled_runs_are_the_names_of_the_plain_search() {
        // Thousands of colliders that run through the one- to four-digit suffixes of
        // shorter and shorter stems, natural names shaped like suffixed ones at each width
        // (which must be skipped), and names that only meet at a shorter stem.
        let mut owned: Vec<(String, bool)> = Vec::new();
        for i in 0..2500 {
            owned.push((format!("same-prefix-{i}.log"), false));
            owned.push((format!("same-pre-other-{i}.log"), i % 3 == 0));
        }
        for taken in
            ["SAME_P_1.LOG", "SAME_P_7.LOG", "SAME__10.LOG", "SAME__11.LOG", "SAME_100.LOG"]
        {
            owned.push((taken.to_owned(), false));
        }
        owned.push(("SAM_1000.LOG".to_owned(), false));
        owned.sort();
        let entries: Vec<(&str, bool)> = owned.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let want = assign_primary_reference(&entries);
        assert_eq!(assign_primary(entries.iter().copied()), want);
        for limit in [1, 64, 4096] {
            assert_eq!(assign_primary_with(entries.iter().copied(), limit), want, "{limit}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Names crowded onto a few stems, some shaped like suffixed names (`aaaaa_12`).
        #[test]
        fn streaming_names_agree_with_the_plain_search(
            names in proptest::collection::btree_set(
                "(a{4,9}|ab|a|_)[ab0-9_]{0,4}(\\.[ab]{0,1})?", 0..600),
            dirs in proptest::collection::vec(proptest::bool::ANY, 600),
            limit in proptest::sample::select(vec![1usize, 100, 1000, usize::MAX]),
        ) {
            let entries: Vec<(&str, bool)> =
                names.iter().zip(&dirs).map(|(n, d)| (n.as_str(), *d)).collect();
            proptest::prop_assert_eq!(
                assign_primary_with(entries.iter().copied(), limit),
                assign_primary_reference(&entries)
            );
        }
    }

    #[test]
    fn many_collisions_stay_unique_and_valid() {
        let owned: Vec<String> = (0..1500).map(|i| format!("same-prefix-{i}.log")).collect();
        let entries: Vec<(&str, bool)> = owned.iter().map(|s| (s.as_str(), false)).collect();
        let names = assign_primary(entries.iter().copied());
        let shown: BTreeSet<String> = names.iter().map(PrimaryName::visible).collect();
        assert_eq!(shown.len(), 1500);
        assert!(names.iter().all(|n| n.base.len() <= 8));
    }

    fn joliet(name: &str) -> String {
        let units: Vec<u16> =
            joliet_name(name).chunks(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
        String::from_utf16(&units).expect("valid UCS-2")
    }

    #[test]
    fn joliet_keeps_names_that_fit() {
        assert_eq!(joliet("build.sh"), "build.sh");
        assert_eq!(joliet("Données été.txt"), "Données été.txt");
        assert_eq!(joliet("a:b?c*d;e\\f"), "a_b_c_d_e_f");
        assert_eq!(joliet("smile😀"), "smile_");
        let exact = "x".repeat(64);
        assert_eq!(joliet(&exact), exact);
    }

    /// The identifier built whole, as a vector of units, the way it is specified.
    fn joliet_reference(name: &str) -> Vec<u8> {
        let units: Vec<u16> = name
            .chars()
            .map(|c| match c {
                '\0'..='\u{1f}' | '*' | '/' | ':' | ';' | '?' | '\\' => '_' as u16,
                c if (c as u32) > 0xFFFF => '_' as u16,
                c => c as u16,
            })
            .collect();
        let cut = if units.len() <= JOLIET_MAX_CHARS {
            units
        } else {
            let dot = units.iter().rposition(|&u| u == '.' as u16).filter(|&d| d > 0);
            match dot {
                Some(d) if units.len() - d <= 16 => {
                    let ext = &units[d..];
                    let mut out = units[..JOLIET_MAX_CHARS - ext.len()].to_vec();
                    out.extend_from_slice(ext);
                    out
                }
                _ => units[..JOLIET_MAX_CHARS].to_vec(),
            }
        };
        cut.iter().flat_map(|u| u.to_be_bytes()).collect()
    }

    proptest::proptest! {
        #[test]
        fn joliet_units_agree_with_the_whole_identifier(
            name in "[a-z.:?é\u{3000}😀]{0,3}(\\.[a-z😀]{0,20}){0,3}[a-z.]{0,70}",
            other in "[a-zé\u{3000}]{0,5}[a-z.:?é😀]{0,80}",
        ) {
            proptest::prop_assert_eq!(joliet_name(&name), joliet_reference(&name));
            let order = joliet_reference(&name).cmp(&joliet_reference(&other));
            proptest::prop_assert_eq!(joliet_units(&name).cmp(joliet_units(&other)), order);
        }
    }

    #[test]
    fn joliet_cuts_long_names_keeping_the_extension() {
        let long = format!("{}.tar.gz", "n".repeat(80));
        let cut = joliet(&long);
        assert_eq!(cut.chars().count(), 64);
        assert!(cut.ends_with(".gz"), "{cut}");
        let no_ext = "m".repeat(70);
        assert_eq!(joliet(&no_ext), "m".repeat(64));
    }
}

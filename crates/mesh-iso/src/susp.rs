//! System Use Sharing Protocol (SUSP, IEEE P1281) and Rock Ridge (RRIP, IEEE P1282)
//! entries, and the packing of entries into a directory record plus continuation areas.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use crate::raw::{both_u32, SECTOR};

/// Length of a CE (continuation area) entry.
pub(crate) const CE_LEN: usize = 28;
/// Largest payload of a single SUSP entry after its 5-byte header (signature, length,
/// version, flags) for NM and SL.
const MAX_FLAGGED_BODY: usize = 255 - 5;

/// POSIX file type bits for PX.
pub(crate) const S_IFDIR: u32 = 0o040000;
/// Regular file type bits.
pub(crate) const S_IFREG: u32 = 0o100000;
/// Symbolic link type bits.
pub(crate) const S_IFLNK: u32 = 0o120000;

fn header(sig: &[u8; 2], len: usize) -> Vec<u8> {
    debug_assert!(len <= 255);
    let mut e = Vec::with_capacity(len);
    e.extend_from_slice(sig);
    e.push(len as u8);
    e.push(1);
    e
}

/// SP: marks the root's `.` record as using SUSP (must come first there).
pub(crate) fn sp() -> Vec<u8> {
    let mut e = header(b"SP", 7);
    e.extend_from_slice(&[0xBE, 0xEF, 0]);
    e
}

/// ER: names the extension in use (Rock Ridge, as RRIP_1991A).
pub(crate) fn er() -> Vec<u8> {
    const ID: &[u8] = b"RRIP_1991A";
    const DES: &[u8] = b"ROCK RIDGE INTERCHANGE PROTOCOL: POSIX NAMES, MODES, LINKS AND TIMES";
    const SRC: &[u8] = b"SEE IEEE P1282 FOR THE SPECIFICATION";
    let mut e = header(b"ER", 8 + ID.len() + DES.len() + SRC.len());
    e.extend_from_slice(&[ID.len() as u8, DES.len() as u8, SRC.len() as u8, 1]);
    e.extend_from_slice(ID);
    e.extend_from_slice(DES);
    e.extend_from_slice(SRC);
    e
}

/// PX: POSIX mode (type and permissions), link count, owner, group and serial number.
pub(crate) fn px(mode: u32, nlink: u32, uid: u32, gid: u32, serial: u32) -> Vec<u8> {
    let mut e = header(b"PX", 44);
    for v in [mode, nlink, uid, gid, serial] {
        both_u32(&mut e, v);
    }
    e
}

/// TF: modification, access and attribute-change times, all set to `time`.
pub(crate) fn tf(time: i64) -> Vec<u8> {
    const MODIFY: u8 = 0x02;
    const ACCESS: u8 = 0x04;
    const ATTRIBUTES: u8 = 0x08;
    let mut e = header(b"TF", 5 + 3 * 7);
    e.push(MODIFY | ACCESS | ATTRIBUTES);
    let stamp = crate::raw::dir_time(time);
    for _ in 0..3 {
        e.extend_from_slice(&stamp);
    }
    e
}

/// NM: the full name, split over several entries (CONTINUE flag) when longer than one
/// entry can hold.
pub(crate) fn nm(name: &str) -> Vec<Vec<u8>> {
    const CONTINUE: u8 = 0x01;
    let bytes = name.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(MAX_FLAGGED_BODY).collect();
    let last = chunks.len().saturating_sub(1);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut e = header(b"NM", 5 + chunk.len());
            e.push(if i < last { CONTINUE } else { 0 });
            e.extend_from_slice(chunk);
            e
        })
        .collect()
}

/// SL: a symbolic link target as component records, packed into as many SL entries as
/// needed. Relative, absolute and dangling targets are all representable; repeated and
/// trailing slashes are not (RRIP has no component for them) and are dropped.
///
/// Readers disagree on what an entry boundary between two whole components means (Linux
/// inserts a `/`, libarchive does not), so every boundary falls inside a component that
/// carries the component-continue flag: a long name is cut there, and where the next
/// component is `.`, `..` or there is no room left, an empty continued component closes
/// the entry. Both readings then give the same target.
pub(crate) fn sl(target: &str) -> Vec<Vec<u8>> {
    const COMPONENT_CONTINUE: u8 = 0x01;
    const CURRENT: u8 = 0x02;
    const PARENT: u8 = 0x04;
    const ROOT: u8 = 0x08;
    const ENTRY_CONTINUE: u8 = 0x01;
    // Room for component records in one entry, keeping 2 bytes for a closing empty
    // continued component.
    const ROOM: usize = MAX_FLAGGED_BODY - 2;

    let mut components: Vec<(u8, &[u8])> = Vec::new();
    if target.starts_with('/') {
        components.push((ROOT, &[]));
    }
    for part in target.split('/').filter(|p| !p.is_empty()) {
        components.push(match part {
            "." => (CURRENT, &[]),
            ".." => (PARENT, &[]),
            _ => (0, part.as_bytes()),
        });
    }

    let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
    for (flags, mut content) in components {
        loop {
            let body = bodies.last_mut().expect("bodies starts non-empty");
            let space = ROOM - body.len();
            if 2 + content.len() <= space {
                body.extend_from_slice(&[flags, content.len() as u8]);
                body.extend_from_slice(content);
                break;
            }
            if flags == 0 && space >= 3 {
                let (head, tail) = content.split_at(space - 2);
                body.extend_from_slice(&[COMPONENT_CONTINUE, head.len() as u8]);
                body.extend_from_slice(head);
                content = tail;
            } else {
                body.extend_from_slice(&[COMPONENT_CONTINUE, 0]);
            }
            bodies.push(Vec::new());
        }
    }

    let last = bodies.len() - 1;
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut e = header(b"SL", 5 + body.len());
            e.push(if i < last { ENTRY_CONTINUE } else { 0 });
            e.extend_from_slice(&body);
            e
        })
        .collect()
}

/// CE: the rest of the entries continue at `offset` bytes into block `lba`.
pub(crate) fn ce(lba: u32, offset: u32, len: u32) -> Vec<u8> {
    let mut e = header(b"CE", CE_LEN);
    both_u32(&mut e, lba);
    both_u32(&mut e, offset);
    both_u32(&mut e, len);
    e
}

/// RE: this directory record is a relocated directory (hidden from Rock Ridge readers).
pub(crate) fn re() -> Vec<u8> {
    header(b"RE", 4)
}

/// CL: this placeholder file stands for the relocated directory at `lba`.
pub(crate) fn cl(lba: u32) -> Vec<u8> {
    let mut e = header(b"CL", 12);
    both_u32(&mut e, lba);
    e
}

/// PL: the `..` of a relocated directory; its real parent is at `lba`.
pub(crate) fn pl(lba: u32) -> Vec<u8> {
    let mut e = header(b"PL", 12);
    both_u32(&mut e, lba);
    e
}

/// Bytes of continuation areas kept in memory before they go to a temporary file.
const SPILL_AT: usize = 1 << 20;

/// The continuation areas of one image: a byte region of whole sectors written after the
/// primary directories. An area never crosses a sector boundary (Linux reads each one
/// from a single block).
///
/// Areas are only ever appended, so what is already packed is final and need not stay in
/// memory: while measuring it is dropped once counted, and while writing it goes to a
/// temporary file once it grows past 1 MiB, so that a tree with many long names or link
/// targets does not hold them all.
#[derive(Debug)]
pub(crate) struct ContinuationAreas {
    /// First block of the region (0 while sizes are being measured).
    base_lba: u32,
    /// Only counting: packed bytes are dropped, not kept.
    measuring: bool,
    /// Bytes of the region no longer in `bytes`.
    moved: usize,
    /// The region from byte `moved` on.
    bytes: Vec<u8>,
    /// Where the moved bytes went, while writing.
    spill: Option<File>,
}

impl ContinuationAreas {
    /// Areas to be written, starting at block `base_lba`.
    pub(crate) fn new(base_lba: u32) -> Self {
        ContinuationAreas { base_lba, measuring: false, moved: 0, bytes: Vec::new(), spill: None }
    }

    /// Areas only measured: positions are relative to block 0, bytes are dropped.
    pub(crate) fn measuring() -> Self {
        ContinuationAreas { measuring: true, ..ContinuationAreas::new(0) }
    }

    /// Number of sectors used so far.
    pub(crate) fn sectors(&self) -> u32 {
        (self.moved + self.bytes.len()).div_ceil(SECTOR) as u32
    }

    /// Moves the bytes packed so far out of memory once they are many.
    fn release(&mut self) -> io::Result<()> {
        if self.bytes.len() < SPILL_AT {
            return Ok(());
        }
        if !self.measuring {
            let file = match &mut self.spill {
                Some(f) => f,
                None => self.spill.insert(tempfile::tempfile()?),
            };
            file.write_all(&self.bytes)?;
        }
        self.moved += self.bytes.len();
        self.bytes.clear();
        Ok(())
    }

    /// The whole region: the spilled part (rewound), then the rest padded to whole sectors.
    pub(crate) fn into_parts(mut self) -> io::Result<(Option<File>, Vec<u8>)> {
        let len = self.sectors() as usize * SECTOR - self.moved;
        self.bytes.resize(len, 0);
        if let Some(file) = &mut self.spill {
            file.seek(SeekFrom::Start(0))?;
        }
        Ok((self.spill, self.bytes))
    }

    /// The whole region in memory.
    #[cfg(test)]
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        use std::io::Read;
        let (spill, tail) = self.into_parts().expect("rewind");
        let mut all = Vec::new();
        if let Some(mut f) = spill {
            f.read_to_end(&mut all).expect("read spill");
        }
        all.extend(tail);
        all
    }

    /// Packs `entries` into a directory record's system use field of `avail` bytes,
    /// moving what does not fit into continuation areas; returns the inline bytes. Fails
    /// only if the areas cannot be moved to their temporary file.
    pub(crate) fn pack(&mut self, entries: Vec<Vec<u8>>, avail: usize) -> io::Result<Vec<u8>> {
        let total: usize = entries.iter().map(Vec::len).sum();
        if total <= avail {
            return Ok(entries.concat());
        }

        let mut inline = Vec::new();
        let mut rest = entries.into_iter().peekable();
        while let Some(e) = rest.peek() {
            if inline.len() + e.len() + CE_LEN > avail {
                break;
            }
            inline.extend_from_slice(e);
            rest.next();
        }
        let (lba, offset, len) = self.place(rest.collect());
        inline.extend_from_slice(&ce(lba, offset, len));
        self.release()?;
        Ok(inline)
    }

    /// Stores `entries` as a chain of areas (each but the last ending in a CE pointing to
    /// the next) and returns the location and length of the first.
    fn place(&mut self, entries: Vec<Vec<u8>>) -> (u32, u32, u32) {
        let mut chunks: Vec<Vec<u8>> = vec![Vec::new()];
        for e in entries {
            let current = chunks.last_mut().expect("chunks starts non-empty");
            if current.len() + e.len() + CE_LEN > SECTOR {
                chunks.push(e);
            } else {
                current.extend_from_slice(&e);
            }
        }

        // Positions first: a CE must know where, and how long, the next area is.
        let mut positions = Vec::with_capacity(chunks.len());
        let mut pos = self.moved + self.bytes.len();
        for (i, chunk) in chunks.iter().enumerate() {
            let len = chunk.len() + if i + 1 < chunks.len() { CE_LEN } else { 0 };
            if pos % SECTOR + len > SECTOR {
                pos = pos.next_multiple_of(SECTOR);
            }
            positions.push((pos, len));
            pos += len;
        }

        for (i, chunk) in chunks.iter().enumerate() {
            let (at, _) = positions[i];
            self.bytes.resize(at - self.moved, 0);
            self.bytes.extend_from_slice(chunk);
            if let Some(&(next, next_len)) = positions.get(i + 1) {
                let (lba, offset) = self.locate(next);
                self.bytes.extend_from_slice(&ce(lba, offset, next_len as u32));
            }
        }
        let (first, first_len) = positions[0];
        let (lba, offset) = self.locate(first);
        (lba, offset, first_len as u32)
    }

    fn locate(&self, pos: usize) -> (u32, u32) {
        (self.base_lba + (pos / SECTOR) as u32, (pos % SECTOR) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn px_and_tf_have_their_fixed_lengths() {
        let p = px(S_IFREG | 0o755, 1, 1000, 100, 7);
        assert_eq!(&p[..4], b"PX\x2c\x01");
        assert_eq!(&p[4..12], &[0xED, 0x81, 0, 0, 0, 0, 0x81, 0xED]);
        assert_eq!(p.len(), 44);
        let t = tf(0);
        assert_eq!(t.len(), 26);
        assert_eq!(t[4], 0x0E);
        assert_eq!(&t[5..12], &[70, 1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn long_names_split_into_continued_nm_entries() {
        let name = "n".repeat(255);
        let entries = nm(&name);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][4], 1);
        assert_eq!(entries[0].len(), 255);
        assert_eq!(entries[1][4], 0);
        assert_eq!(&entries[1][5..], b"nnnnn");
    }

    #[test]
    fn symlink_components_cover_root_dot_and_dotdot() {
        let e = sl("/a/./../b");
        assert_eq!(e.len(), 1);
        assert_eq!(&e[0][..5], &[b'S', b'L', e[0].len() as u8, 1, 0]);
        assert_eq!(&e[0][5..], &[8, 0, 0, 1, b'a', 2, 0, 4, 0, 0, 1, b'b']);
        let rel = sl("../x");
        assert_eq!(&rel[0][5..], &[4, 0, 0, 1, b'x']);
    }

    /// Decodes SL entries the way Linux does: a `/` between components unless the
    /// earlier one carries the continue flag.
    fn decode(entries: &[Vec<u8>]) -> String {
        let mut out = String::new();
        let mut continued = true;
        for e in entries {
            let mut body = &e[5..];
            while body.len() >= 2 {
                let (flags, len) = (body[0], body[1] as usize);
                if !continued && !out.ends_with('/') {
                    out.push('/');
                }
                match flags & !1 {
                    0 => out.push_str(std::str::from_utf8(&body[2..2 + len]).expect("utf8")),
                    2 => out.push('.'),
                    4 => out.push_str(".."),
                    8 => out.push('/'),
                    _ => panic!("unexpected flags {flags}"),
                }
                continued = flags & 1 == 1;
                body = &body[2 + len..];
            }
        }
        out
    }

    #[test]
    fn long_symlink_targets_break_entries_only_inside_continued_components() {
        let parts: Vec<String> =
            (0..12).map(|i| format!("component-{i}-{}", "x".repeat(40))).collect();
        let mut targets = vec![parts.join("/"), format!("{}/{}", "a".repeat(300), "b".repeat(10))];
        let dots = (0..200).map(|_| "..").collect::<Vec<_>>().join("/");
        targets.push(format!("/{dots}/end"));
        for target in targets {
            let e = sl(&target);
            assert!(e.len() >= 2, "{target} needs several entries");
            assert!(e.iter().all(|x| x.len() <= 255));
            for (i, entry) in e.iter().enumerate() {
                let last = i + 1 == e.len();
                assert_eq!(entry[4], u8::from(!last), "entry continue flag");
                if !last {
                    // The last component record of a non-final entry is continued.
                    let mut body = &entry[5..];
                    let mut flags = 0;
                    while body.len() >= 2 {
                        flags = body[0];
                        body = &body[2 + body[1] as usize..];
                    }
                    assert_eq!(flags & 1, 1, "entry {i} of {target:.20} ends mid-component");
                }
            }
            assert_eq!(decode(&e), target);
        }
    }

    #[test]
    fn packing_spills_into_a_continuation_area_within_a_sector() {
        let mut areas = ContinuationAreas::new(100);
        let small = areas.pack(vec![px(0, 1, 0, 0, 1)], 200).expect("in memory");
        assert_eq!(small.len(), 44);
        assert_eq!(areas.sectors(), 0);

        let mut entries = vec![px(0, 1, 0, 0, 1), tf(0)];
        entries.extend(nm(&"x".repeat(255)));
        let inline = areas.pack(entries, 200).expect("in memory");
        assert_eq!(&inline[..2], b"PX");
        assert_eq!(&inline[44..46], b"TF");
        let ce_entry = &inline[70..];
        assert_eq!(&ce_entry[..2], b"CE");
        assert_eq!(&ce_entry[4..8], &100u32.to_le_bytes());
        assert_eq!(&ce_entry[12..16], &0u32.to_le_bytes());
        assert_eq!(&ce_entry[20..24], &265u32.to_le_bytes());
        assert_eq!(areas.sectors(), 1);
    }

    #[test]
    fn long_chains_link_areas_with_ce_entries() {
        let mut areas = ContinuationAreas::new(10);
        let target = (0..20).map(|_| "c".repeat(200)).collect::<Vec<_>>().join("/");
        let inline = areas.pack(sl(&target), 100).expect("in memory");
        assert_eq!(&inline[..2], b"CE");
        let bytes = areas.into_bytes();
        assert_eq!(bytes.len() % SECTOR, 0);
        assert!(bytes.len() >= 2 * SECTOR);
        // The first area ends in a CE pointing at the start of the next sector.
        let first_len = u32::from_le_bytes(inline[20..24].try_into().expect("4 bytes")) as usize;
        let tail = &bytes[first_len - CE_LEN..first_len];
        assert_eq!(&tail[..2], b"CE");
        assert_eq!(&tail[4..8], &11u32.to_le_bytes());
        assert_eq!(&tail[12..16], &0u32.to_le_bytes());
    }

    #[test]
    fn areas_past_the_memory_limit_go_to_a_file_and_come_back_whole() {
        let mut areas = ContinuationAreas::new(1000);
        let mut measured = ContinuationAreas::measuring();
        let mut pointers = Vec::new();
        let mut i = 0;
        while areas.spill.is_none() || i < 10_000 {
            let name = format!("{i:0>250}");
            let entries = || {
                let mut e = vec![px(0, 1, 0, 0, i), tf(0)];
                e.extend(nm(&name));
                e
            };
            let inline = areas.pack(entries(), 150).expect("spill file");
            measured.pack(entries(), 150).expect("no file while measuring");
            let ce = &inline[inline.len() - CE_LEN..];
            let field = |at: usize| u32::from_le_bytes(ce[at..at + 4].try_into().expect("4"));
            pointers.push((field(4), field(12), name));
            i += 1;
        }
        assert!(measured.spill.is_none() && measured.bytes.len() < SPILL_AT);
        assert_eq!(measured.sectors(), areas.sectors());

        let bytes = areas.into_bytes();
        assert_eq!(bytes.len() % SECTOR, 0);
        for (lba, offset, name) in pointers {
            let at = (lba - 1000) as usize * SECTOR + offset as usize;
            // The area holds the NM entries: header, flags, then the name.
            assert_eq!(&bytes[at..at + 2], b"NM");
            assert_eq!(&bytes[at + 5..at + 5 + 10], &name.as_bytes()[..10]);
        }
    }
}

//! System Use Sharing Protocol (SUSP, IEEE P1281) and Rock Ridge (RRIP, IEEE P1282)
//! entries, and the packing of entries into a directory record plus continuation areas.

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
pub(crate) fn sl(target: &str) -> Vec<Vec<u8>> {
    const COMPONENT_CONTINUE: u8 = 0x01;
    const CURRENT: u8 = 0x02;
    const PARENT: u8 = 0x04;
    const ROOT: u8 = 0x08;
    const ENTRY_CONTINUE: u8 = 0x01;
    // A component record is a flags byte, a length byte and the content.
    const MAX_CONTENT: usize = MAX_FLAGGED_BODY - 2;

    let mut records: Vec<Vec<u8>> = Vec::new();
    if target.starts_with('/') {
        records.push(vec![ROOT, 0]);
    }
    for part in target.split('/').filter(|p| !p.is_empty()) {
        match part {
            "." => records.push(vec![CURRENT, 0]),
            ".." => records.push(vec![PARENT, 0]),
            _ => {
                let pieces: Vec<&[u8]> = part.as_bytes().chunks(MAX_CONTENT).collect();
                let last = pieces.len() - 1;
                for (i, piece) in pieces.iter().enumerate() {
                    let flags = if i < last { COMPONENT_CONTINUE } else { 0 };
                    let mut r = vec![flags, piece.len() as u8];
                    r.extend_from_slice(piece);
                    records.push(r);
                }
            }
        }
    }

    // Group records into entries of at most MAX_FLAGGED_BODY bytes of records each.
    let mut groups: Vec<Vec<u8>> = vec![Vec::new()];
    for r in records {
        let current = groups.last_mut().expect("groups starts non-empty");
        if !current.is_empty() && current.len() + r.len() > MAX_FLAGGED_BODY {
            groups.push(r);
        } else {
            current.extend_from_slice(&r);
        }
    }
    let last = groups.len() - 1;
    groups
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

/// The continuation areas of one image: a byte region of whole sectors written after the
/// primary directories. An area never crosses a sector boundary (Linux reads each one
/// from a single block).
#[derive(Debug)]
pub(crate) struct ContinuationAreas {
    /// First block of the region (0 while sizes are being measured).
    base_lba: u32,
    bytes: Vec<u8>,
}

impl ContinuationAreas {
    pub(crate) fn new(base_lba: u32) -> Self {
        ContinuationAreas { base_lba, bytes: Vec::new() }
    }

    /// Number of sectors used so far.
    pub(crate) fn sectors(&self) -> u32 {
        self.bytes.len().div_ceil(SECTOR) as u32
    }

    /// The region padded to whole sectors.
    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        let len = self.sectors() as usize * SECTOR;
        self.bytes.resize(len, 0);
        self.bytes
    }

    /// Packs `entries` into a directory record's system use field of `avail` bytes,
    /// moving what does not fit into continuation areas; returns the inline bytes.
    pub(crate) fn pack(&mut self, entries: Vec<Vec<u8>>, avail: usize) -> Vec<u8> {
        let total: usize = entries.iter().map(Vec::len).sum();
        if total <= avail {
            return entries.concat();
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
        inline
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
        let mut pos = self.bytes.len();
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
            self.bytes.resize(at, 0);
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

    #[test]
    fn long_symlink_targets_span_entries_and_components() {
        let target = format!("{}/{}", "a".repeat(300), "b".repeat(10));
        let e = sl(&target);
        assert!(e.len() >= 2);
        assert!(e.iter().all(|x| x.len() <= 255));
        assert_eq!(e[0][4], 1, "first entry continues");
        assert_eq!(e.last().expect("entries")[4], 0);
        // First component record is cut with the component-continue flag.
        assert_eq!(e[0][5], 1);
        assert_eq!(e[0][6] as usize, 248);
    }

    #[test]
    fn packing_spills_into_a_continuation_area_within_a_sector() {
        let mut areas = ContinuationAreas::new(100);
        let small = areas.pack(vec![px(0, 1, 0, 0, 1)], 200);
        assert_eq!(small.len(), 44);
        assert_eq!(areas.sectors(), 0);

        let mut entries = vec![px(0, 1, 0, 0, 1), tf(0)];
        entries.extend(nm(&"x".repeat(255)));
        let inline = areas.pack(entries, 200);
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
        let inline = areas.pack(sl(&target), 100);
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
}

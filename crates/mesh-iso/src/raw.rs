//! Byte-level encoders for the ECMA-119 structures: numbers, dates, volume descriptors,
//! directory records and path table records.
//!
//! Everything here is a pure function of its arguments, so the layout can be unit-tested
//! field by field against the offsets of the standard.

/// Size of a logical sector (and logical block) in bytes; the only size we write.
pub(crate) const SECTOR: usize = 2048;

/// The largest data length one directory record may describe while keeping the next extent
/// of a multi-extent file sector-aligned: 4 GiB minus one sector.
pub(crate) const MAX_EXTENT: u64 = 0xFFFF_F800;

/// Directory record flag: the entry is a directory.
pub(crate) const FLAG_DIRECTORY: u8 = 0x02;
/// Directory record flag: more records of the same file follow (multi-extent).
pub(crate) const FLAG_MULTI_EXTENT: u8 = 0x80;

/// Appends a 16-bit number in both byte orders (ECMA-119 7.2.3).
pub(crate) fn both_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Appends a 32-bit number in both byte orders (ECMA-119 7.3.3).
pub(crate) fn both_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
    buf.extend_from_slice(&v.to_be_bytes());
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// Converts Unix seconds to a UTC civil time (proleptic Gregorian calendar).
pub(crate) fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);

    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);

    Civil {
        year,
        month: month as u8,
        day: day as u8,
        hour: (rem / 3600) as u8,
        minute: (rem % 3600 / 60) as u8,
        second: (rem % 60) as u8,
    }
}

/// The 7-byte recording date of a directory record (ECMA-119 9.1.5), in UTC.
///
/// The year is stored as an offset from 1900 in one byte, so times outside 1900..=2155
/// are clamped to the nearest representable instant.
pub(crate) fn dir_time(secs: i64) -> [u8; 7] {
    // 1900-01-01T00:00:00Z and 2155-12-31T23:59:59Z.
    let clamped = secs.clamp(-2_208_988_800, 5_869_583_999);
    let c = civil_from_unix(clamped);
    [(c.year - 1900) as u8, c.month, c.day, c.hour, c.minute, c.second, 0]
}

/// The 17-byte volume descriptor date (ECMA-119 8.4.26.1): ASCII digits, then a zero
/// offset from GMT.
pub(crate) fn volume_time(secs: i64) -> [u8; 17] {
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    let clamped = secs.clamp(-62_135_596_800, 253_402_300_799);
    let c = civil_from_unix(clamped);
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(text.as_bytes());
    out
}

/// The "not specified" volume descriptor date: sixteen ASCII zeros and a zero offset.
pub(crate) fn volume_time_unset() -> [u8; 17] {
    let mut out = [b'0'; 17];
    out[16] = 0;
    out
}

/// What goes into one directory record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirRecord<'a> {
    /// File identifier bytes (already mapped: d-characters, UCS-2, or 0x00 / 0x01).
    pub name: &'a [u8],
    /// First logical block of the extent.
    pub lba: u32,
    /// Data length in bytes.
    pub size: u32,
    /// Recording time, Unix seconds.
    pub time: i64,
    /// File flags.
    pub flags: u8,
    /// System use bytes (SUSP entries); padded to an even record length here.
    pub system_use: &'a [u8],
}

impl DirRecord<'_> {
    /// Length of the encoded record, always even.
    pub(crate) fn len(&self) -> usize {
        let base = 33 + self.name.len() + usize::from(self.name.len() % 2 == 0);
        let total = base + self.system_use.len();
        total + total % 2
    }

    /// Appends the record (ECMA-119 9.1) to `buf`.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        let len = self.len();
        debug_assert!(len <= 255, "directory record of {len} bytes");
        let start = buf.len();
        buf.push(len as u8);
        buf.push(0); // no extended attribute record
        both_u32(buf, self.lba);
        both_u32(buf, self.size);
        buf.extend_from_slice(&dir_time(self.time));
        buf.push(self.flags);
        buf.push(0); // file unit size: not interleaved
        buf.push(0); // interleave gap
        both_u16(buf, 1); // volume sequence number
        buf.push(self.name.len() as u8);
        buf.extend_from_slice(self.name);
        if self.name.len() % 2 == 0 {
            buf.push(0);
        }
        buf.extend_from_slice(self.system_use);
        buf.resize(start + len, 0);
    }
}

/// Appends one path table record (ECMA-119 9.4) in the chosen byte order.
pub(crate) fn path_table_record(
    buf: &mut Vec<u8>,
    name: &[u8],
    lba: u32,
    parent: u16,
    big_endian: bool,
) {
    buf.push(name.len() as u8);
    buf.push(0);
    if big_endian {
        buf.extend_from_slice(&lba.to_be_bytes());
        buf.extend_from_slice(&parent.to_be_bytes());
    } else {
        buf.extend_from_slice(&lba.to_le_bytes());
        buf.extend_from_slice(&parent.to_le_bytes());
    }
    buf.extend_from_slice(name);
    if name.len() % 2 == 1 {
        buf.push(0);
    }
}

/// Which of the two volume descriptors we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VolumeKind {
    /// The primary volume descriptor (type 1), identifiers in bytes.
    Primary,
    /// The Joliet supplementary volume descriptor (type 2), identifiers in UCS-2.
    Joliet,
}

/// The fields of a primary or Joliet volume descriptor that vary between images.
#[derive(Debug, Clone)]
pub(crate) struct VolumeFields<'a> {
    pub kind: VolumeKind,
    /// Volume identifier, already encoded (ASCII for primary, UCS-2 BE for Joliet).
    pub volume_id: &'a [u8],
    pub volume_sectors: u32,
    pub path_table_size: u32,
    pub path_table_l: u32,
    pub path_table_m: u32,
    /// The 34-byte directory record of the root.
    pub root_record: &'a [u8],
    pub time: i64,
}

/// Fills an identifier field with `text`, padded with spaces in the field's encoding.
fn put_text(sector: &mut [u8], at: usize, len: usize, text: &[u8], kind: VolumeKind) {
    let field = &mut sector[at..at + len];
    match kind {
        VolumeKind::Primary => field.fill(b' '),
        VolumeKind::Joliet => {
            for pair in field.chunks_mut(2) {
                pair[0] = 0;
                if pair.len() == 2 {
                    pair[1] = b' ';
                }
            }
        }
    }
    let n = text.len().min(len);
    field[..n].copy_from_slice(&text[..n]);
}

/// Encodes an ASCII string as UCS-2 big-endian.
pub(crate) fn ucs2_ascii(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Encodes a primary or Joliet volume descriptor (ECMA-119 8.4, Joliet specification).
pub(crate) fn volume_descriptor(f: &VolumeFields<'_>) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    s[0] = match f.kind {
        VolumeKind::Primary => 1,
        VolumeKind::Joliet => 2,
    };
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;

    let text = |t: &str| match f.kind {
        VolumeKind::Primary => t.as_bytes().to_vec(),
        VolumeKind::Joliet => ucs2_ascii(t),
    };
    put_text(&mut s, 8, 32, &[], f.kind); // system identifier
    put_text(&mut s, 40, 32, f.volume_id, f.kind);

    let mut nums = Vec::with_capacity(64);
    both_u32(&mut nums, f.volume_sectors);
    s[80..88].copy_from_slice(&nums);
    if f.kind == VolumeKind::Joliet {
        // UCS-2 level 3.
        s[88..91].copy_from_slice(b"%/E");
    }
    nums.clear();
    both_u16(&mut nums, 1); // volume set size
    both_u16(&mut nums, 1); // volume sequence number
    both_u16(&mut nums, SECTOR as u16);
    both_u32(&mut nums, f.path_table_size);
    s[120..140].copy_from_slice(&nums);
    s[140..144].copy_from_slice(&f.path_table_l.to_le_bytes());
    s[148..152].copy_from_slice(&f.path_table_m.to_be_bytes());
    s[156..190].copy_from_slice(f.root_record);

    put_text(&mut s, 190, 128, &[], f.kind); // volume set
    put_text(&mut s, 318, 128, &[], f.kind); // publisher
    put_text(&mut s, 446, 128, &[], f.kind); // data preparer
    put_text(&mut s, 574, 128, &text("MESH-ISO"), f.kind); // application
    put_text(&mut s, 702, 37, &[], f.kind); // copyright file
    put_text(&mut s, 739, 37, &[], f.kind); // abstract file
    put_text(&mut s, 776, 37, &[], f.kind); // bibliographic file

    let stamp = volume_time(f.time);
    s[813..830].copy_from_slice(&stamp); // creation
    s[830..847].copy_from_slice(&stamp); // modification
    s[847..864].copy_from_slice(&volume_time_unset()); // expiration
    s[864..881].copy_from_slice(&volume_time_unset()); // effective
    s[881] = 1; // file structure version
    s
}

/// The volume descriptor set terminator (ECMA-119 8.3).
pub(crate) fn terminator() -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    s[0] = 255;
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_instants() {
        assert_eq!(
            civil_from_unix(0),
            Civil { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 }
        );
        // 2000-02-29T12:34:56Z, a leap day in a century leap year.
        assert_eq!(
            civil_from_unix(951_827_696),
            Civil { year: 2000, month: 2, day: 29, hour: 12, minute: 34, second: 56 }
        );
        // 1969-12-31T23:59:59Z: negative times round towards the past.
        assert_eq!(
            civil_from_unix(-1),
            Civil { year: 1969, month: 12, day: 31, hour: 23, minute: 59, second: 59 }
        );
    }

    #[test]
    fn dir_time_encodes_years_since_1900_and_clamps() {
        assert_eq!(dir_time(951_827_696), [100, 2, 29, 12, 34, 56, 0]);
        assert_eq!(dir_time(i64::MIN), [0, 1, 1, 0, 0, 0, 0]);
        assert_eq!(dir_time(i64::MAX), [255, 12, 31, 23, 59, 59, 0]);
    }

    #[test]
    fn volume_time_is_digits_then_zero_offset() {
        assert_eq!(&volume_time(951_827_696), b"2000022912345600\0");
        assert_eq!(&volume_time_unset(), b"0000000000000000\0");
    }

    #[test]
    fn dir_record_layout_follows_ecma_119_9_1() {
        let rec = DirRecord {
            name: b"README.;1",
            lba: 0x1234,
            size: 0x0102_0304,
            time: 0,
            flags: 0,
            system_use: b"XY",
        };
        let mut buf = Vec::new();
        rec.encode(&mut buf);
        // 33 + 9 (odd name: no pad) + 2 = 44.
        assert_eq!(buf.len(), 44);
        assert_eq!(rec.len(), 44);
        assert_eq!(buf[0], 44);
        assert_eq!(&buf[2..10], &[0x34, 0x12, 0, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(&buf[10..18], &[4, 3, 2, 1, 1, 2, 3, 4]);
        assert_eq!(&buf[18..25], &[70, 1, 1, 0, 0, 0, 0]);
        assert_eq!(buf[25], 0);
        assert_eq!(&buf[28..32], &[1, 0, 0, 1]);
        assert_eq!(buf[32], 9);
        assert_eq!(&buf[33..42], b"README.;1");
        assert_eq!(&buf[42..44], b"XY");
    }

    #[test]
    fn dir_record_pads_even_names_and_odd_totals() {
        let rec = DirRecord { name: b"AB", lba: 0, size: 0, time: 0, flags: 2, system_use: b"Z" };
        let mut buf = Vec::new();
        rec.encode(&mut buf);
        // 33 + 2 + 1 pad + 1 system use = 37, padded to 38.
        assert_eq!(buf.len(), 38);
        assert_eq!(buf[0], 38);
        assert_eq!(&buf[35..38], &[0, b'Z', 0]);
    }

    #[test]
    fn root_record_is_34_bytes() {
        let rec = DirRecord { name: &[0], lba: 20, size: 2048, time: 0, flags: 2, system_use: &[] };
        assert_eq!(rec.len(), 34);
    }

    #[test]
    fn path_table_records_in_both_orders() {
        let mut le = Vec::new();
        path_table_record(&mut le, b"DIR", 0x0102_0304, 1, false);
        assert_eq!(le, [3, 0, 4, 3, 2, 1, 1, 0, b'D', b'I', b'R', 0]);
        let mut be = Vec::new();
        path_table_record(&mut be, &[0], 20, 1, true);
        assert_eq!(be, [1, 0, 0, 0, 0, 20, 0, 1, 0, 0]);
    }

    #[test]
    fn primary_descriptor_fields_sit_at_their_offsets() {
        let root = [0u8; 34];
        let pvd = volume_descriptor(&VolumeFields {
            kind: VolumeKind::Primary,
            volume_id: b"cidata",
            volume_sectors: 200,
            path_table_size: 10,
            path_table_l: 19,
            path_table_m: 20,
            root_record: &root,
            time: 0,
        });
        assert_eq!(&pvd[0..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..72], b"cidata                          ");
        assert_eq!(&pvd[80..88], &[200, 0, 0, 0, 0, 0, 0, 200]);
        assert_eq!(&pvd[128..132], &[0, 8, 8, 0]);
        assert_eq!(&pvd[140..144], &[19, 0, 0, 0]);
        assert_eq!(&pvd[148..152], &[0, 0, 0, 20]);
        assert_eq!(&pvd[813..830], b"1970010100000000\0");
        assert_eq!(pvd[881], 1);
    }

    #[test]
    fn joliet_descriptor_has_escape_and_ucs2_label() {
        let root = [0u8; 34];
        let label = ucs2_ascii("cidata");
        let svd = volume_descriptor(&VolumeFields {
            kind: VolumeKind::Joliet,
            volume_id: &label,
            volume_sectors: 1,
            path_table_size: 10,
            path_table_l: 21,
            path_table_m: 22,
            root_record: &root,
            time: 0,
        });
        assert_eq!(svd[0], 2);
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&svd[40..52], &[0, b'c', 0, b'i', 0, b'd', 0, b'a', 0, b't', 0, b'a']);
        assert_eq!(&svd[52..54], &[0, b' ']);
    }
}

//! Varlena headers and TOAST compression as PostgreSQL lays them out (`src/include/varatt.h`,
//! `access/common/toast_compression.c`).
//!
//! Why compress here: storing a harvested row of ~2 KB makes PostgreSQL compress its item with
//! lz4 (TOAST), on the backend thread, which is the bottleneck of a harvest. An inline datum that
//! is already compressed is stored as it is, exactly as when a compressed value is copied from
//! another table, so the helper thread compresses instead. Reading it back is PostgreSQL's own
//! `lz4_decompress_datum`. No PostgreSQL calls here.

/// The longest datum PostgreSQL takes (`MaxAllocSize`, 1 GB - 1): every value built here is
/// checked against it before it is built, and [`header`] refuses anything longer.
pub const MAX_VARLENA: usize = 0x3FFF_FFFF;

/// `SET_VARSIZE` of a 4-byte varlena header. Panics past [`MAX_VARLENA`]: callers check first,
/// so this only stops a bug from writing a header PostgreSQL would misread.
pub fn header(len: u32) -> [u8; 4] {
    assert!(len as usize <= MAX_VARLENA, "varlena of {len} bytes exceeds PostgreSQL's 1 GB limit");
    #[cfg(target_endian = "little")]
    {
        (len << 2).to_le_bytes()
    }
    #[cfg(target_endian = "big")]
    {
        (len & 0x3FFF_FFFF).to_be_bytes()
    }
}

/// `SET_VARSIZE_COMPRESSED`: a 4-byte header flagged "compressed inline".
fn compressed_header(len: u32) -> [u8; 4] {
    assert!(len as usize <= MAX_VARLENA, "varlena of {len} bytes exceeds PostgreSQL's 1 GB limit");
    #[cfg(target_endian = "little")]
    {
        ((len << 2) | 0x02).to_le_bytes()
    }
    #[cfg(target_endian = "big")]
    {
        ((len & 0x3FFF_FFFF) | 0x4000_0000).to_be_bytes()
    }
}

/// `VARHDRSZ_COMPRESSED`: the header and `va_tcinfo`.
const COMPRESSED_HEADER: usize = 8;
/// `TOAST_LZ4_COMPRESSION_ID`, stored above `VARLENA_EXTSIZE_BITS`.
const LZ4_METHOD: u32 = 1 << 30;

/// PostgreSQL's TOAST threshold (`TOAST_TUPLE_THRESHOLD` with 8 kB pages): rows larger than
/// this get their biggest attribute compressed.
pub const TOAST_TUPLE_THRESHOLD: usize = 2032;

/// The lz4-compressed inline form of the 4-byte-header varlena `datum`, when PostgreSQL would
/// keep it: `toast_compress_datum` keeps a compressed value only if it saves more than 2 bytes.
/// `scratch` is reused between calls (a page compresses a thousand items). Without memory for
/// it, the datum stays uncompressed (PostgreSQL then compresses it).
pub fn lz4_compressed(datum: &[u8], scratch: &mut Vec<u8>) -> Option<Vec<u8>> {
    let payload = datum.get(4..)?;
    if payload.len() >= 1 << 30 {
        return None;
    }
    let bound = lz4_flex::block::get_maximum_output_size(payload.len());
    if scratch.len() < bound {
        scratch.try_reserve_exact(bound - scratch.len()).ok()?;
        scratch.resize(bound, 0);
    }
    let n = lz4_flex::block::compress_into(payload, &mut scratch[..bound]).ok()?;
    if n + COMPRESSED_HEADER + 2 >= payload.len() {
        return None;
    }
    let total = COMPRESSED_HEADER + n;
    let mut out = Vec::new();
    out.try_reserve_exact(total).ok()?;
    out.extend_from_slice(&compressed_header(total as u32));
    out.extend_from_slice(&(payload.len() as u32 | LZ4_METHOD).to_ne_bytes());
    out.extend_from_slice(&scratch[..n]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_datums_decompress_to_the_original() {
        let text = "{\"observateurs\": \"Martin Dupont, Lucie Bernard\", \"nom_cite\": \"Rana temporaria\"}".repeat(30);
        let mut datum = header((text.len() + 4) as u32).to_vec();
        datum.extend_from_slice(text.as_bytes());
        let c = lz4_compressed(&datum, &mut Vec::new()).expect("repetitive text compresses");
        assert!(c.len() < datum.len() / 4);
        let word = |at: usize| u32::from_ne_bytes(c[at..at + 4].try_into().unwrap());
        #[cfg(target_endian = "little")]
        {
            assert_eq!(word(0) & 0x03, 0x02, "VARATT_IS_4B_C");
            assert_eq!((word(0) >> 2) as usize, c.len(), "VARSIZE is the compressed size");
        }
        assert_eq!(word(4) & 0x3FFF_FFFF, text.len() as u32, "VARDATA_COMPRESSED_GET_EXTSIZE");
        assert_eq!(word(4) >> 30, 1, "TOAST_LZ4_COMPRESSION_ID");
        let back = lz4_flex::block::decompress(&c[8..], text.len()).unwrap();
        assert_eq!(back, text.as_bytes());
    }

    #[test]
    fn incompressible_data_stays_as_it_is() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut datum = header(2004).to_vec();
        datum.extend((0..2000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        assert_eq!(lz4_compressed(&datum, &mut Vec::new()), None);
        assert_eq!(lz4_compressed(&header(4), &mut Vec::new()), None, "empty payload");
    }
}

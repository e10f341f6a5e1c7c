//! Reading one entry of the checkpoint's zip archive, within a size bound.

use std::io::{Cursor, Read};

/// Largest `data.pkl` accepted (ResNet-18's is 15 KB).
pub(super) const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// How much larger than the whole archive one entry may decompress to. torch.save stores
/// entries uncompressed (ratio 1); this only bounds what a deflate bomb can allocate.
const MAX_EXPANSION: u64 = 16;

/// Reads one zip entry, refusing more than `limit` bytes, and more than [`MAX_EXPANSION`]
/// times the archive's size (so a deflate bomb cannot grow).
pub(super) fn read_entry(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    archive_len: usize,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let archive_len = archive_len as u64;
    let limit = limit.min(archive_len.saturating_mul(MAX_EXPANSION));
    let entry = archive
        .by_name(name)
        .map_err(|e| format!("zip entry '{name}': {e}"))?;
    let mut data = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("zip entry '{name}' cannot be read: {e}"))?;
    if data.len() as u64 > limit {
        return Err(format!("zip entry '{name}' is larger than {limit} bytes"));
    }
    Ok(data)
}

//! Binary PPM (`P6`, 8-bit) frames read one after another from a pipe.
//!
//! ffmpeg writes its decoded frames this way (`-f image2pipe -c:v ppm`): raw RGB24 samples, as
//! `-f rawvideo -pix_fmt rgb24` would, but each frame carries its own width and height, so no
//! probing is needed first and a camera that changes resolution mid-stream is read correctly.

use image::RgbImage;
use std::io::{self, BufRead};

/// Reads the next frame; `Ok(None)` at a clean end of stream (between frames). A frame over
/// `max_pixels` is an error (the stream cannot be resynchronised after it).
pub fn read_frame(r: &mut impl BufRead, max_pixels: u64) -> io::Result<Option<RgbImage>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("PPM frame: {why}"));
    let mut magic = [0u8; 2];
    r.read_exact(&mut magic)?;
    if &magic != b"P6" {
        return Err(bad(format!("starts with {magic:?}, expected P6")));
    }
    let width = header_number(r)?;
    let height = header_number(r)?;
    let maxval = header_number(r)?;
    if maxval != 255 {
        return Err(bad(format!(
            "maximum sample value {maxval}, expected 255 (rgb24)"
        )));
    }
    if width == 0 || height == 0 || width * height > max_pixels {
        return Err(bad(format!(
            "{width}x{height} is empty or over the limit of {max_pixels} pixels"
        )));
    }
    let mut data = vec![0u8; (width * height * 3) as usize];
    r.read_exact(&mut data)?;
    Ok(RgbImage::from_raw(width as u32, height as u32, data))
}

/// A header number: skips whitespace and `#` comments before it, consumes one whitespace after.
fn header_number(r: &mut impl BufRead) -> io::Result<u64> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "PPM frame: bad header");
    let mut byte = [0u8; 1];
    loop {
        r.read_exact(&mut byte)?;
        match byte[0] {
            b'#' => {
                let mut comment = Vec::new();
                r.read_until(b'\n', &mut comment)?;
            }
            b if b.is_ascii_whitespace() => {}
            b'0'..=b'9' => break,
            _ => return Err(bad()),
        }
    }
    let mut value = u64::from(byte[0] - b'0');
    loop {
        r.read_exact(&mut byte)?;
        match byte[0] {
            d @ b'0'..=b'9' => {
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(d - b'0')))
                    .filter(|&v| v < 1 << 20)
                    .ok_or_else(bad)?;
            }
            b if b.is_ascii_whitespace() => return Ok(value),
            _ => return Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_changing_size_then_a_clean_end() {
        let mut s = b"P6\n2 1\n255\n\x01\x02\x03\x04\x05\x06".to_vec();
        s.extend_from_slice(b"P6 # comment\n1 2 255\n\x07\x08\x09\x0a\x0b\x0c");
        let mut r = std::io::Cursor::new(s);
        let a = read_frame(&mut r, 100).unwrap().unwrap();
        assert_eq!(
            (a.dimensions(), a.as_raw().as_slice()),
            ((2, 1), &[1u8, 2, 3, 4, 5, 6][..])
        );
        let b = read_frame(&mut r, 100).unwrap().unwrap();
        assert_eq!(
            (b.dimensions(), b.get_pixel(0, 1).0),
            ((1, 2), [10, 11, 12])
        );
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn truncated_oversized_and_foreign_frames_are_errors() {
        let cut = b"P6\n2 2\n255\n\x01\x02";
        let err = read_frame(&mut &cut[..], 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let big = b"P6\n2000 2000\n255\n";
        assert!(read_frame(&mut &big[..], 1000)
            .unwrap_err()
            .to_string()
            .contains("limit"));
        assert!(read_frame(&mut &b"P5\n1 1\n255\n\0"[..], 10).is_err());
        assert!(read_frame(&mut &b"P6\n1 1\n65535\n\0\0"[..], 10).is_err());
    }
}

//! From image bytes to 8-bit RGB pixels, as PIL's `Image.open(p).convert("RGB")` gives them.
//!
//! - Formats: JPEG (baseline, progressive, grayscale, CMYK), PNG (8/16-bit, palette, gray+alpha,
//!   RGBA, interlaced), WebP, GIF (first frame), BMP, TIFF.
//! - Alpha is dropped, not composited (PIL's `convert("RGB")`); 16-bit samples keep their high
//!   byte (`v >> 8`), as PIL does.
//! - EXIF orientation is applied by default ([`ExifMode::Apply`]); torchvision itself ignores it
//!   ([`ExifMode::Ignore`]).
//! - Decompression bombs are refused from the header, before any pixel is decoded: the
//!   decoder's own header parse, and before it a direct read of the PNG, BMP, GIF and WebP
//!   size fields (a decoder may refuse a huge declared size with a vaguer error).
//! - Decoding can be cancelled ([`decode_image_bytes_cancellable`]): the flag is checked at
//!   every read of the compressed data (PNG, GIF, BMP, TIFF and WebP decoders read as they
//!   go) and between the decoding steps. JPEG reads its whole input first and then decodes in
//!   one call, so a JPEG is stopped before and after its decode only (its cost is bounded by
//!   the pixel limit).

use crate::error::{Error, ImageProblem, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::{BufRead, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// File extensions of the formats above, lower case: what a directory scan takes as an image
/// (`classify` and `quantize` on a folder, the watcher on a snapshot folder).
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "jfif", "png", "webp", "gif", "bmp", "tif", "tiff",
];

/// Whether `path`'s extension is one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Default pixel limit: 64 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

/// What to do with an EXIF orientation tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExifMode {
    /// Rotate/flip the pixels upright, as a photo viewer shows them (default).
    #[default]
    Apply,
    /// Use the stored pixel grid, as torchvision's `PIL.Image.open` pipeline does.
    Ignore,
}

impl std::str::FromStr for ExifMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "apply" => Ok(ExifMode::Apply),
            "ignore" => Ok(ExifMode::Ignore),
            _ => Err(format!("unknown EXIF mode '{s}' (use apply or ignore)")),
        }
    }
}

/// Decoding limits and options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest width x height accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// EXIF orientation handling.
    pub exif: ExifMode,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            exif: ExifMode::Apply,
        }
    }
}

/// A decoded image.
#[derive(Clone, Debug)]
pub struct DecodedImage {
    /// Upright (unless EXIF is ignored) 8-bit RGB pixels.
    pub rgb: RgbImage,
    /// The container format, lowercase (`jpeg`, `png`, ...).
    pub format: &'static str,
}

/// Reads and decodes an image file.
pub fn decode_image_file(path: &Path, opts: &DecodeOptions) -> Result<DecodedImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read image", e))?;
    decode_image_bytes(&bytes, &path.display().to_string(), opts)
}

/// Decodes image bytes; `name` identifies them in errors (a path or an upload's file name).
pub fn decode_image_bytes(bytes: &[u8], name: &str, opts: &DecodeOptions) -> Result<DecodedImage> {
    decode_image_bytes_cancellable(bytes, name, opts, &AtomicBool::new(false))
}

/// [`decode_image_bytes`] that stops with [`ImageProblem::Cancelled`] soon after `cancel` is
/// set (see the module documentation for where it is checked).
pub fn decode_image_bytes_cancellable(
    bytes: &[u8],
    name: &str,
    opts: &DecodeOptions,
    cancel: &AtomicBool,
) -> Result<DecodedImage> {
    decode(bytes, opts, cancel).map_err(|problem| Error::Image {
        path: name.to_string(),
        problem,
    })
}

/// The size an image declares and the bytes its decoding holds at its peak (the decoder's
/// output buffer plus the 8-bit RGB copy when the decoder's layout is another), read from the
/// header only. The server reserves that much of its decode budget before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredSize {
    /// Width in pixels (before EXIF rotation).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Peak bytes of decoded pixels.
    pub decoded_bytes: u64,
}

/// Reads the header of `bytes` for [`DeclaredSize`], with the same refusals as a decode
/// (unknown format, over the pixel limit, ...), named by `name`.
pub fn declared_size(bytes: &[u8], name: &str, opts: &DecodeOptions) -> Result<DeclaredSize> {
    let named = |problem| Error::Image {
        path: name.to_string(),
        problem,
    };
    let never = AtomicBool::new(false);
    let (reader, fname) = open(bytes, opts, &never).map_err(named)?;
    let decoder = reader
        .into_decoder()
        .map_err(|e| named(problem(fname, e)))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, opts).map_err(named)?;
    let rgb = u64::from(width) * u64::from(height) * 3;
    let native = decoder.total_bytes();
    let decoded_bytes = if decoder.color_type() == image::ColorType::Rgb8 {
        native
    } else {
        native.saturating_add(rgb)
    };
    Ok(DeclaredSize {
        width,
        height,
        decoded_bytes,
    })
}

/// The compressed bytes, read through a check of the cancellation flag.
struct CancellableCursor<'a> {
    inner: Cursor<&'a [u8]>,
    cancel: &'a AtomicBool,
}

impl CancellableCursor<'_> {
    fn check(&self) -> std::io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(Cancelled));
        }
        Ok(())
    }
}

/// The marker error a cancelled read carries through the decoder.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decoding cancelled")
    }
}

impl std::error::Error for Cancelled {}

impl Read for CancellableCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl BufRead for CancellableCursor<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
    }
}

impl Seek for CancellableCursor<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn check_size(
    width: u32,
    height: u32,
    opts: &DecodeOptions,
) -> std::result::Result<(), ImageProblem> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(ImageProblem::TooManyPixels {
            width,
            height,
            megapixels: pixels as f64 / 1e6,
            limit_megapixels: opts.max_pixels as f64 / 1e6,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageProblem::ZeroSized { width, height });
    }
    Ok(())
}

/// Recognises the format, refuses what is not decoded here and, from the raw header fields,
/// declared sizes over the limit; returns the reader positioned at the start.
fn open<'a>(
    bytes: &'a [u8],
    opts: &DecodeOptions,
    cancel: &'a AtomicBool,
) -> std::result::Result<(ImageReader<CancellableCursor<'a>>, &'static str), ImageProblem> {
    if bytes.is_empty() {
        return Err(ImageProblem::Empty);
    }
    let cursor = CancellableCursor {
        inner: Cursor::new(bytes),
        cancel,
    };
    let reader = ImageReader::new(cursor)
        .with_guessed_format()
        .map_err(|e| ImageProblem::Corrupt {
            format: "image",
            detail: e.to_string(),
        })?;
    let Some(format) = reader.format() else {
        return Err(match sniff_unsupported(bytes) {
            Some(name) => ImageProblem::UnsupportedFormat(name.into()),
            None => ImageProblem::UnknownFormat,
        });
    };
    let fname = format_name(format);
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    ) {
        return Err(ImageProblem::UnsupportedFormat(fname.to_uppercase()));
    }
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    if let Some((width, height)) = header_dimensions(format, bytes) {
        // Only a size over the limit is decided here; anything else is the decoder's call.
        if u64::from(width) * u64::from(height) > opts.max_pixels {
            check_size(width, height, opts)?;
        }
    }
    Ok((reader, fname))
}

fn decode(
    bytes: &[u8],
    opts: &DecodeOptions,
    cancel: &AtomicBool,
) -> std::result::Result<DecodedImage, ImageProblem> {
    let cancelled = || cancel.load(Ordering::Relaxed);
    if cancelled() {
        return Err(ImageProblem::Cancelled);
    }
    let (reader, fname) = open(bytes, opts, cancel)?;
    let mut decoder = reader.into_decoder().map_err(|e| problem(fname, e))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, opts)?;
    let orientation = match opts.exif {
        // A broken EXIF block must not make a good image unusable: treat it as "no rotation".
        ExifMode::Apply => decoder.orientation().ok(),
        ExifMode::Ignore => None,
    };
    if cancelled() {
        return Err(ImageProblem::Cancelled);
    }
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| problem(fname, e))?;
    if cancelled() {
        return Err(ImageProblem::Cancelled);
    }
    if let Some(o) = orientation {
        image.apply_orientation(o);
    }
    Ok(DecodedImage {
        rgb: to_rgb8_like_pil(image),
        format: fname,
    })
}

/// Converts to 8-bit RGB the way PIL's `convert("RGB")` does: alpha dropped, gray replicated,
/// 16-bit samples reduced to their high byte.
fn to_rgb8_like_pil(image: DynamicImage) -> RgbImage {
    let high_byte = |v: u16| (v >> 8) as u8;
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
        }),
        DynamicImage::ImageRgba16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
        }),
        DynamicImage::ImageLuma16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        // 8-bit RGBA, gray and gray+alpha: `image` drops alpha and replicates gray like PIL.
        other => other.to_rgb8(),
    }
}

/// A JPEG must end its last scan with an EOI marker; otherwise the decoder would fill the
/// missing rows with grey and the classifier would answer about a half-image.
fn check_jpeg_complete(bytes: &[u8]) -> std::result::Result<(), ImageProblem> {
    let find_last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    let last_scan = find_last(0xDA);
    let last_end = find_last(0xD9);
    match (last_scan, last_end) {
        (Some(s), Some(e)) if e > s => Ok(()),
        (Some(_), _) => Err(ImageProblem::Truncated {
            format: "jpeg",
            detail: "the data ends inside the compressed scan (no end-of-image marker)".into(),
        }),
        (None, _) => Err(ImageProblem::Truncated {
            format: "jpeg",
            detail: "no image scan found (file cut off in the header?)".into(),
        }),
    }
}

/// Width and height as the header's raw fields state them, for formats whose decoders may
/// refuse a huge size with another error (BMP, PNG, WebP) or allocate before checking (GIF).
/// `None` when the header is too short or not laid out as expected: the decoder then decides.
fn header_dimensions(format: ImageFormat, b: &[u8]) -> Option<(u32, u32)> {
    let u16le = |i: usize| {
        Some(u32::from(u16::from_le_bytes(
            b.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    let u32le = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let u32be = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let u24le = |i: usize| {
        let s = b.get(i..i + 3)?;
        Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
    };
    match format {
        // Signature, then the IHDR chunk: length, "IHDR", width, height (big-endian).
        ImageFormat::Png if b.get(12..16) == Some(b"IHDR") => Some((u32be(16)?, u32be(20)?)),
        // BITMAPCOREHEADER (12 bytes) has 16-bit sizes; the later ones signed 32-bit, with a
        // negative height for top-down rows.
        ImageFormat::Bmp => match u32le(14)? {
            12 => Some((u16le(18)?, u16le(20)?)),
            n if n >= 40 => {
                let w = u32le(18)? as i32;
                let h = u32le(22)? as i32;
                Some((w.unsigned_abs(), h.unsigned_abs()))
            }
            _ => None,
        },
        // The logical screen size.
        ImageFormat::Gif => Some((u16le(6)?, u16le(8)?)),
        ImageFormat::WebP if b.get(8..12) == Some(b"WEBP") => match b.get(12..16)? {
            // Extended: 24-bit canvas width-1 and height-1.
            b"VP8X" => Some((u24le(24)? + 1, u24le(27)? + 1)),
            // Lossless: signature 0x2f, then 14 bits of width-1 and 14 of height-1.
            b"VP8L" if b.get(20) == Some(&0x2f) => {
                let bits = u32le(21)?;
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            // Lossy key frame: 3-byte tag, start code 9d 01 2a, 14-bit width and height.
            b"VP8 " if b.get(23..26) == Some(&[0x9d, 0x01, 0x2a]) => {
                Some((u16le(26)? & 0x3fff, u16le(28)? & 0x3fff))
            }
            _ => None,
        },
        _ => None,
    }
}

fn problem(format: &'static str, e: image::ImageError) -> ImageProblem {
    use image::ImageError as E;
    if let E::IoError(io) = &e {
        if io.get_ref().is_some_and(|inner| inner.is::<Cancelled>()) {
            return ImageProblem::Cancelled;
        }
    }
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageProblem::Truncated {
                format,
                detail: "the data ends before the image does".into(),
            }
        }
        E::Unsupported(u) => ImageProblem::Corrupt {
            format,
            detail: format!("uses a feature this decoder does not support: {u}"),
        },
        E::Limits(l) => ImageProblem::Corrupt {
            format,
            detail: format!("decoding would exceed the memory limit: {l}"),
        },
        other => ImageProblem::Corrupt {
            format,
            detail: other.to_string(),
        },
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        ImageFormat::Avif => "avif",
        ImageFormat::Ico => "ico",
        ImageFormat::Hdr => "hdr",
        ImageFormat::OpenExr => "openexr",
        ImageFormat::Qoi => "qoi",
        ImageFormat::Pnm => "pnm",
        ImageFormat::Tga => "tga",
        ImageFormat::Dds => "dds",
        ImageFormat::Farbfeld => "farbfeld",
        _ => "unknown",
    }
}

/// Names well-known formats that `image` does not recognise, so the error can say what they are.
fn sniff_unsupported(bytes: &[u8]) -> Option<&'static str> {
    let head = &bytes[..bytes.len().min(512)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if text.contains("<svg") {
        return Some("SVG");
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return match &bytes[8..12] {
            b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1" => {
                Some("HEIC/HEIF")
            }
            b"avif" | b"avis" => Some("AVIF"),
            _ => None,
        };
    }
    if head.starts_with(b"%PDF") {
        return Some("PDF");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of(bytes: &[u8]) -> ImageProblem {
        match decode_image_bytes(bytes, "x", &DecodeOptions::default()) {
            Err(Error::Image { problem, .. }) => problem,
            other => panic!("expected an image error, got {other:?}"),
        }
    }

    #[test]
    fn empty_text_svg_and_heic_are_named() {
        assert_eq!(problem_of(b""), ImageProblem::Empty);
        assert_eq!(problem_of(b"hello, world"), ImageProblem::UnknownFormat);
        assert_eq!(
            problem_of(b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            ImageProblem::UnsupportedFormat("SVG".into())
        );
        let mut heic = vec![0, 0, 0, 24];
        heic.extend_from_slice(b"ftypheic");
        heic.extend_from_slice(&[0; 16]);
        assert_eq!(
            problem_of(&heic),
            ImageProblem::UnsupportedFormat("HEIC/HEIF".into())
        );
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        // A valid 8x8 PNG, with a limit of 63 pixels.
        let mut png = Vec::new();
        RgbImage::new(8, 8)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let opts = DecodeOptions {
            max_pixels: 63,
            ..Default::default()
        };
        let err = decode_image_bytes(&png, "eight.png", &opts).unwrap_err();
        assert!(matches!(
            err,
            Error::Image {
                problem: ImageProblem::TooManyPixels {
                    width: 8,
                    height: 8,
                    ..
                },
                ..
            }
        ));
        assert!(err.to_string().starts_with("eight.png: "));
        assert!(decode_image_bytes(&png, "eight.png", &DecodeOptions::default()).is_ok());
    }

    fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::new(w, h)
            .write_to(&mut Cursor::new(&mut out), format)
            .unwrap();
        out
    }

    fn assert_too_large(bytes: &[u8], width: u32, height: u32) {
        match problem_of(bytes) {
            ImageProblem::TooManyPixels {
                width: w,
                height: h,
                ..
            } => assert_eq!((w, h), (width, height)),
            other => panic!("expected TooManyPixels {width}x{height}, got {other:?}"),
        }
        let err = declared_size(bytes, "x", &DecodeOptions::default()).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    /// Headers that declare huge sizes are refused as too large, whatever the decoder would
    /// have said (issue 19: BMP and PNG gave corrupt_image, a WebP zero_sized_image).
    #[test]
    fn huge_declared_sizes_are_too_large_in_every_format() {
        let mut bmp = encoded(ImageFormat::Bmp, 2, 2);
        bmp[18..22].copy_from_slice(&100_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&100_000i32.to_le_bytes());
        assert_too_large(&bmp, 100_000, 100_000);
        // Top-down rows: a negative height.
        bmp[22..26].copy_from_slice(&(-100_000i32).to_le_bytes());
        assert_too_large(&bmp, 100_000, 100_000);

        let mut png = encoded(ImageFormat::Png, 1, 1);
        png[16..20].copy_from_slice(&(i32::MAX as u32).to_be_bytes());
        assert_too_large(&png, i32::MAX as u32, 1);

        // An extended WebP header declaring a 16384x16384 canvas, and nothing after it.
        let mut webp = b"RIFF\x16\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
        webp.extend_from_slice(&[0xff, 0x3f, 0x00, 0xff, 0x3f, 0x00]);
        assert_too_large(&webp, 16384, 16384);

        let mut gif = encoded(ImageFormat::Gif, 1, 1);
        gif[6..10].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert_too_large(&gif, 65535, 65535);
    }

    #[test]
    fn declared_size_counts_the_decoded_bytes() {
        let png = encoded(ImageFormat::Png, 10, 20);
        let size = declared_size(&png, "x", &DecodeOptions::default()).unwrap();
        assert_eq!((size.width, size.height), (10, 20));
        assert_eq!(size.decoded_bytes, 10 * 20 * 3, "RGB8 needs no second copy");
        let gray = {
            let mut out = Vec::new();
            image::GrayImage::new(10, 20)
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .unwrap();
            out
        };
        let size = declared_size(&gray, "x", &DecodeOptions::default()).unwrap();
        assert_eq!(
            size.decoded_bytes,
            10 * 20 + 10 * 20 * 3,
            "gray, then its RGB copy"
        );
    }

    #[test]
    fn a_set_cancel_flag_stops_the_decode() {
        let png = encoded(ImageFormat::Png, 64, 64);
        let cancel = AtomicBool::new(true);
        let err = decode_image_bytes_cancellable(&png, "x", &DecodeOptions::default(), &cancel)
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Image {
                problem: ImageProblem::Cancelled,
                ..
            }
        ));
        cancel.store(false, Ordering::Relaxed);
        assert!(
            decode_image_bytes_cancellable(&png, "x", &DecodeOptions::default(), &cancel).is_ok()
        );
    }

    #[test]
    fn sixteen_bit_keeps_the_high_byte() {
        let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
            1,
            1,
            image::Rgb([0x12ff, 0xab00, 0x00ff]),
        );
        let rgb = to_rgb8_like_pil(DynamicImage::ImageRgb16(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [0x12, 0xab, 0x00]);
    }
}

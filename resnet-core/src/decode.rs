//! From image bytes to 8-bit RGB pixels, as PIL's `Image.open(p).convert("RGB")` gives them.
//!
//! - Formats: JPEG (baseline, progressive, grayscale, CMYK), PNG (8/16-bit, palette, gray+alpha,
//!   RGBA, interlaced), WebP, GIF (first frame), BMP, TIFF.
//! - Alpha is dropped, not composited (PIL's `convert("RGB")`); 16-bit samples keep their high
//!   byte (`v >> 8`), as PIL does.
//! - EXIF orientation is applied by default ([`ExifMode::Apply`]); torchvision itself ignores it
//!   ([`ExifMode::Ignore`]).
//! - Decompression bombs are refused from the header, before any pixel is decoded.

use crate::error::{Error, ImageProblem, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

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
    decode(bytes, opts).map_err(|problem| Error::Image {
        path: name.to_string(),
        problem,
    })
}

fn decode(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<DecodedImage, ImageProblem> {
    if bytes.is_empty() {
        return Err(ImageProblem::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
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
    let mut decoder = reader.into_decoder().map_err(|e| problem(fname, e))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageProblem::ZeroSized { width, height });
    }
    let pixels = width as u64 * height as u64;
    if pixels > opts.max_pixels {
        return Err(ImageProblem::TooManyPixels {
            width,
            height,
            megapixels: pixels as f64 / 1e6,
            limit_megapixels: opts.max_pixels as f64 / 1e6,
        });
    }
    let orientation = match opts.exif {
        // A broken EXIF block must not make a good image unusable: treat it as "no rotation".
        ExifMode::Apply => decoder.orientation().ok(),
        ExifMode::Ignore => None,
    };
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| problem(fname, e))?;
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

fn problem(format: &'static str, e: image::ImageError) -> ImageProblem {
    use image::ImageError as E;
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

//! Image decoding (with explicit limits checked before decoding) and OWLv2 preprocessing into
//! `pixel_values`, exactly as transformers' `Owlv2ImageProcessor` (see `docs/owlv2.md`):
//! RGB (alpha composited onto white), rescale, pad bottom/right to a square with 0.0, anti-alias
//! Gaussian blur when downscaling (reflect borders), bilinear resize (`align_corners=False`),
//! per-channel normalisation.
//!
//! The blur and resize are fused: only the source columns and rows that the bilinear resize reads
//! are blurred, stages run once over each buffer, and rows are processed in parallel with rayon.
//! Pure functions only; no model, no I/O beyond the bytes given.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};
use rayon::prelude::*;

pub use crate::limits::ImageLimits;

/// Why an image was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ImageError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("encoded image is {len} bytes, more than the limit of {max}")]
    TooManyBytes { len: usize, max: usize },
    #[error("image format is not recognised (JPEG, PNG, WebP and BMP are supported)")]
    UnknownFormat,
    #[error("image format {0} is not supported (JPEG, PNG, WebP and BMP are)")]
    UnsupportedFormat(String),
    #[error(
        "image is {width}x{height}, beyond the limits ({max_side} per side, {max_pixels} pixels)"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("image cannot be decoded: {0}")]
    Decode(String),
    #[error(
        "decoding this image needs about {need} MiB, more than the decode budget of {budget} MiB"
    )]
    OverBudget { need: u64, budget: u64 },
    #[error("raw frame of {got} bytes does not match {width}x{height} RGB24 ({expected} bytes)")]
    RawSize {
        width: u32,
        height: u32,
        expected: u64,
        got: usize,
    },
}

impl ImageError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Empty => "empty_image",
            ImageError::TooManyBytes { .. } => "image_too_large",
            ImageError::UnknownFormat | ImageError::UnsupportedFormat(_) => {
                "unsupported_image_format"
            }
            ImageError::TooManyPixels { .. } | ImageError::OverBudget { .. } => "image_too_large",
            ImageError::ZeroSize { .. } => "invalid_image",
            ImageError::Decode(_) => "invalid_image",
            ImageError::RawSize { .. } => "invalid_raw_frame",
        }
    }

    /// Whether the image was refused for its size (HTTP 413) rather than its content (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ImageError::TooManyBytes { .. }
                | ImageError::TooManyPixels { .. }
                | ImageError::OverBudget { .. }
        )
    }
}

/// A decoded RGB24 image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl ImageLimits {
    /// Checks decoded (or declared) dimensions: none zero, within the side and pixel limits.
    pub fn check(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSize { width, height });
        }
        if width > self.max_side
            || height > self.max_side
            || u64::from(width) * u64::from(height) > self.max_pixels
        {
            return Err(ImageError::TooManyPixels {
                width,
                height,
                max_side: self.max_side,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }
}

impl Rgb {
    /// Wraps a packed RGB24 frame, checking its size and the limits.
    pub fn from_raw(
        width: u32,
        height: u32,
        data: Vec<u8>,
        limits: &ImageLimits,
    ) -> Result<Self, ImageError> {
        limits.check(width, height)?;
        let expected = u64::from(width) * u64::from(height) * 3;
        if data.len() as u64 != expected {
            return Err(ImageError::RawSize {
                width,
                height,
                expected,
                got: data.len(),
            });
        }
        Ok(Rgb {
            width,
            height,
            data,
        })
    }
}

/// What an encoded image's header says, already checked: a supported format, within the byte,
/// side and pixel limits, and (JPEG) not truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl Header {
    /// Memory that decoding will take at its peak: the decoder's buffer at the format's widest
    /// sample layout (16-bit RGBA for PNG, 8-bit RGBA otherwise) plus the 8-bit copy made from it
    /// (RGBA for PNG, RGB otherwise) while it is alive. Measured on a 16-bit RGBA PNG of 40 M
    /// pixels: 455 MiB of peak growth against 480 MB estimated.
    pub fn decode_cost(&self) -> u64 {
        let bytes_per_pixel = if self.format == ImageFormat::Png {
            8 + 4
        } else {
            4 + 3
        };
        u64::from(self.width) * u64::from(self.height) * bytes_per_pixel
    }
}

/// Reads and checks an encoded image's header, so that a bomb, a truncated JPEG or an unsupported
/// format is refused before any pixel is decoded.
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<Header, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_encoded_bytes {
        return Err(ImageError::TooManyBytes {
            len: bytes.len(),
            max: limits.max_encoded_bytes,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat)?;
    match format {
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp => {}
        other => return Err(ImageError::UnsupportedFormat(format!("{other:?}"))),
    }
    let (width, height) = header_size(bytes, format)?;
    limits.check(width, height)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // PIL (and so transformers) refuses these too, instead of inventing the missing rows.
        return Err(ImageError::Decode(
            "truncated JPEG: no end-of-image marker after the last scan".into(),
        ));
    }
    Ok(Header {
        format,
        width,
        height,
    })
}

/// The image size from its header alone (no CRC or body needed), so a bomb is refused before any
/// decoding. BMP goes through the decoder's own header parse: its height is signed (negative for
/// top-down rows), which the quick reader takes as a huge unsigned number.
fn header_size(bytes: &[u8], format: ImageFormat) -> Result<(u32, u32), ImageError> {
    let parsed = || {
        ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| ImageError::Decode(e.to_string()))
    };
    if format == ImageFormat::Bmp {
        return parsed();
    }
    match imagesize::blob_size(bytes) {
        Ok(sz) => Ok((
            u32::try_from(sz.width).unwrap_or(u32::MAX),
            u32::try_from(sz.height).unwrap_or(u32::MAX),
        )),
        Err(_) => parsed(),
    }
}

/// Whether a JPEG has its end-of-image marker after its last start-of-scan. Inside entropy-coded
/// data `0xFF` is always followed by `0x00` or a restart marker, so `FF D9` there is the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(last_sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[last_sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes JPEG/PNG/WebP/BMP bytes into RGB24 after checking the limits against the header.
/// Images with alpha are composited onto white (PIL's `alpha_composite` arithmetic).
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<Rgb, ImageError> {
    decode_probed(bytes, &probe(bytes, limits)?, limits)
}

/// `decode` of bytes whose header `probe` has already read and checked.
pub fn decode_probed(
    bytes: &[u8],
    header: &Header,
    limits: &ImageLimits,
) -> Result<Rgb, ImageError> {
    let format = header.format;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    // Decoded buffer (up to 16-bit RGBA) plus decoder scratch.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(lim);
    let img = if limits.apply_exif_orientation {
        decode_oriented(reader)?
    } else {
        reader
            .decode()
            .map_err(|e| ImageError::Decode(e.to_string()))?
    };
    let (w, h) = (img.width(), img.height());
    let data = if img.color().has_alpha() {
        let rgba = img.into_rgba8();
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for px in rgba.as_raw().chunks_exact(4) {
            let a = u32::from(px[3]);
            out.extend_from_slice(&[
                over_white(px[0], a),
                over_white(px[1], a),
                over_white(px[2], a),
            ]);
        }
        out
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(Rgb {
        width: w,
        height: h,
        data,
    })
}

/// Decodes and applies the EXIF orientation (rotation and mirroring; no tag: as stored).
fn decode_oriented(reader: ImageReader<Cursor<&[u8]>>) -> Result<image::DynamicImage, ImageError> {
    use image::ImageDecoder;
    let bad = |e: image::ImageError| ImageError::Decode(e.to_string());
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// PIL `Image.alpha_composite(white, src)` for one channel (PRECISION_BITS = 7).
fn over_white(c: u8, a: u32) -> u8 {
    const PB: u32 = 7;
    let dst_a = 255u32;
    let blend = dst_a * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let tmp = u32::from(c) * coef1 + 255 * coef2;
    let t = tmp + (0x80 << PB);
    let shifted = ((t >> 8) + t) >> 8;
    (shifted >> PB) as u8
}

/// The numbers of the preprocessing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Output side (the vision `image_size`).
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub rescale: f32,
}

/// PyTorch `upsample_bilinear2d` (align_corners=False) for `out` outputs from `inp` inputs:
/// `(i0, i1, λ0, λ1)` per output index, computed in f32 like PyTorch's CPU kernel.
fn bilinear_weights(inp: usize, out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(inp - 1);
            let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Per output index, the source taps of "blur (reflect borders over `0..s`), then bilinear" folded
/// into one weighted sum; taps at or beyond `limit` read the zero padding and are dropped.
fn resize_taps(s: usize, t: usize, limit: usize, kernel: Option<&[f32]>) -> Vec<Vec<(usize, f32)>> {
    bilinear_weights(s, t)
        .into_iter()
        .map(|(i0, i1, l0, l1)| {
            let mut taps: Vec<(usize, f32)> = Vec::new();
            for (i, l) in [(i0, l0), (i1, l1)] {
                if l == 0.0 {
                    continue;
                }
                match kernel {
                    None => taps.push((i, l)),
                    Some(k) => {
                        let r = (k.len() / 2) as isize;
                        for (ti, &kv) in k.iter().enumerate() {
                            taps.push((reflect(i as isize + ti as isize - r, s), l * kv));
                        }
                    }
                }
            }
            taps.retain(|(i, _)| *i < limit);
            taps.sort_by_key(|(i, _)| *i);
            let mut merged: Vec<(usize, f32)> = Vec::with_capacity(taps.len());
            for (i, w) in taps {
                match merged.last_mut() {
                    Some(last) if last.0 == i => last.1 += w,
                    _ => merged.push((i, w)),
                }
            }
            merged
        })
        .collect()
}

/// Normalised 1-D Gaussian kernel as torchvision builds it (f32).
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let ksize = 2 * (3.0 * sigma).ceil() as usize + 1;
    let half = (ksize - 1) as f32 * 0.5;
    let mut k: Vec<f32> = (0..ksize)
        .map(|i| {
            let x = -half + i as f32;
            (-0.5 * (x / sigma) * (x / sigma)).exp()
        })
        .collect();
    let sum: f32 = k.iter().sum();
    for v in &mut k {
        *v /= sum;
    }
    k
}

/// Reflect an index into `[0, n)` without repeating the edge (`d c b | a b c d | c b a`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - m;
    }
    m as usize
}

/// Preprocesses one RGB image into `3 × size × size` f32 values (CHW), appended to `out`.
pub fn preprocess_into(img: &Rgb, cfg: &PreprocessConfig, out: &mut Vec<f32>) {
    let t = cfg.size;
    let (w, h) = (img.width as usize, img.height as usize);
    let s = w.max(h);
    let start = out.len();
    out.resize(start + 3 * t * t, 0.0);
    let dst = &mut out[start..];
    let (p0, rest) = dst.split_at_mut(t * t);
    let (p1, p2) = rest.split_at_mut(t * t);
    let rs = cfg.rescale;
    let pixel = |y: usize, x: usize, c: usize| -> f32 {
        if y < h && x < w {
            f32::from(img.data[(y * w + x) * 3 + c]) * rs
        } else {
            0.0
        }
    };
    let norm = |v: f32, c: usize| (v - cfg.mean[c]) / cfg.std[c];

    if s == t {
        p0.par_chunks_mut(t)
            .zip(p1.par_chunks_mut(t))
            .zip(p2.par_chunks_mut(t))
            .enumerate()
            .for_each(|(y, ((r0, r1), r2))| {
                for x in 0..t {
                    r0[x] = norm(pixel(y, x, 0), 0);
                    r1[x] = norm(pixel(y, x, 1), 1);
                    r2[x] = norm(pixel(y, x, 2), 2);
                }
            });
        return;
    }

    // `u8 → f32(x) * rescale`, exactly as the reference rescales before padding.
    let mut lut = [0f32; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = i as f32 * rs;
    }
    // Anti-alias blur only when downscaling; blur and bilinear resize are folded into one set of
    // taps per output column and per output row (separable), so each pass runs once.
    let kernel = (s > t).then(|| gaussian_kernel((s as f32 / t as f32 - 1.0) / 2.0));
    let col_taps = resize_taps(s, t, w, kernel.as_deref());
    let row_taps = resize_taps(s, t, h, kernel.as_deref());
    // Horizontal pass: every image row, at the output columns: `hb[(y * t + x) * 3 + c]`.
    let mut hb = vec![0f32; h * t * 3];
    hb.par_chunks_mut(t * 3).enumerate().for_each(|(y, row)| {
        let line = &img.data[y * w * 3..(y + 1) * w * 3];
        for (out, taps) in row.chunks_exact_mut(3).zip(&col_taps) {
            let mut acc = [0f32; 3];
            for &(x, kv) in taps {
                let p = &line[x * 3..x * 3 + 3];
                acc[0] += kv * lut[p[0] as usize];
                acc[1] += kv * lut[p[1] as usize];
                acc[2] += kv * lut[p[2] as usize];
            }
            out.copy_from_slice(&acc);
        }
    });
    // Vertical pass at the output rows, then normalisation into the three planes.
    p0.par_chunks_mut(t)
        .zip(p1.par_chunks_mut(t))
        .zip(p2.par_chunks_mut(t))
        .zip(row_taps.par_iter())
        .for_each_init(
            || vec![0f32; t * 3],
            |acc, (((r0, r1), r2), taps)| {
                acc.iter_mut().for_each(|v| *v = 0.0);
                for &(y, kv) in taps {
                    for (o, v) in acc.iter_mut().zip(&hb[y * t * 3..(y + 1) * t * 3]) {
                        *o += kv * v;
                    }
                }
                for (x, px) in acc.chunks_exact(3).enumerate() {
                    r0[x] = norm(px[0], 0);
                    r1[x] = norm(px[1], 1);
                    r2[x] = norm(px[2], 2);
                }
            },
        );
}

/// Preprocesses one image into a fresh `3 × size × size` buffer.
pub fn preprocess(img: &Rgb, cfg: &PreprocessConfig) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * cfg.size * cfg.size);
    preprocess_into(img, cfg, &mut out);
    out
}

#[cfg(test)]
mod tests;

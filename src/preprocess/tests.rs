//! Unit tests of decoding and preprocessing: hand-checkable cases (PIL and PyTorch arithmetic),
//! limits, truncated and top-down images.

use super::*;

fn cfg(size: usize) -> PreprocessConfig {
    PreprocessConfig {
        size,
        mean: [0.0; 3],
        std: [1.0; 3],
        rescale: 1.0,
    }
}

#[test]
fn reflect_excludes_edge() {
    let n = 4;
    let got: Vec<usize> = (-3..7).map(|i| reflect(i, n)).collect();
    assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    assert_eq!(reflect(5, 1), 0);
}

#[test]
fn gaussian_kernel_shape_and_sum() {
    let k = gaussian_kernel(0.5);
    assert_eq!(k.len(), 5); // 2*ceil(1.5)+1
    let sum: f32 = k.iter().sum();
    assert!((sum - 1.0).abs() < 1e-6);
    assert!((k[0] - k[4]).abs() < 1e-9 && k[2] > k[1] && k[1] > k[0]);
    // exp(-2)/(1+2e^-2+2e^-8) by hand for the centre ratio
    assert!((k[1] / k[2] - (-2.0f32).exp()).abs() < 1e-6);
}

#[test]
fn bilinear_upscale_by_two_matches_pytorch_weights() {
    // PyTorch: 2 -> 4, align_corners=False: src = (d+0.5)/2-0.5 = -0.25,0.25,0.75,1.25
    let w = bilinear_weights(2, 4);
    let l1: Vec<(usize, usize, f32)> = w.iter().map(|x| (x.0, x.1, x.3)).collect();
    assert_eq!(
        l1,
        vec![(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.25)]
    );
    // Folded taps: padding beyond `limit` is dropped, equal indices merge.
    let taps = resize_taps(2, 4, 1, None);
    assert_eq!(taps[1], vec![(0, 0.75)]);
    assert_eq!(taps[3], Vec::<(usize, f32)>::new());
    let taps = resize_taps(2, 4, 2, None);
    assert_eq!(taps[3], vec![(1, 1.0)]);
}

#[test]
fn pads_bottom_right_with_zero_and_keeps_top_left() {
    // 2x1 image (w=2, h=1) into 2x2: no resize, second row is padding.
    let img = Rgb {
        width: 2,
        height: 1,
        data: vec![10, 20, 30, 40, 50, 60],
    };
    let out = preprocess(&img, &cfg(2));
    assert_eq!(&out[0..4], &[10.0, 40.0, 0.0, 0.0]);
    assert_eq!(&out[4..8], &[20.0, 50.0, 0.0, 0.0]);
    assert_eq!(&out[8..12], &[30.0, 60.0, 0.0, 0.0]);
}

#[test]
fn downscale_blurs_constant_image_to_constant() {
    // A constant square image stays constant after blur (reflect) and resize.
    let n = 37;
    let img = Rgb {
        width: n,
        height: n,
        data: vec![100; (n * n * 3) as usize],
    };
    let out = preprocess(&img, &cfg(16));
    assert!(
        out.iter().all(|v| (v - 100.0).abs() < 1e-3),
        "{:?}",
        &out[..4]
    );
}

#[test]
fn normalise_subtracts_then_divides() {
    let img = Rgb {
        width: 1,
        height: 1,
        data: vec![255, 0, 51],
    };
    let c = PreprocessConfig {
        size: 1,
        mean: [0.5, 0.5, 0.5],
        std: [0.25, 0.5, 2.0],
        rescale: 1.0 / 255.0,
    };
    let out = preprocess(&img, &c);
    assert!((out[0] - 2.0).abs() < 1e-6);
    assert!((out[1] + 1.0).abs() < 1e-6);
    assert!((out[2] - (0.2 - 0.5) / 2.0).abs() < 1e-6);
}

#[test]
fn alpha_over_white_matches_pil() {
    assert_eq!(over_white(0, 0), 255);
    assert_eq!(over_white(0, 255), 0);
    assert_eq!(over_white(200, 255), 200);
    // PIL: alpha_composite(white, (0,0,0,128)) -> 127
    assert_eq!(over_white(0, 128), 127);
}

#[test]
fn limits_are_checked_before_decoding() {
    // A PNG header claiming 30000x30000 with no pixel data.
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    let e = decode(&png, &ImageLimits::default()).expect_err("bomb");
    assert!(
        matches!(e, ImageError::TooManyPixels { width: 30000, .. }),
        "{e:?}"
    );
    assert_eq!(decode(&[], &ImageLimits::default()), Err(ImageError::Empty));
    assert_eq!(
        decode(b"hello world", &ImageLimits::default()),
        Err(ImageError::UnknownFormat)
    );
}

#[test]
fn decode_cost_counts_the_worst_sample_layout_and_the_rgb_copy() {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(100, 50))
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .expect("encode");
    let cost = |limits: &ImageLimits| probe(&png, limits).map(|h| h.decode_cost());
    assert_eq!(cost(&ImageLimits::default()), Ok(100 * 50 * 12));
    let tiny = ImageLimits {
        max_pixels: 100,
        ..ImageLimits::default()
    };
    assert!(matches!(cost(&tiny), Err(ImageError::TooManyPixels { .. })));
    assert_eq!(probe(b"", &tiny), Err(ImageError::Empty));
}

#[test]
fn truncated_jpegs_are_refused_and_whole_ones_decode() {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .expect("encode");
    let whole = decode(&jpeg, &ImageLimits::default()).expect("whole JPEG");
    assert_eq!((whole.width, whole.height), (64, 48));
    for cut in [jpeg.len() - 2, jpeg.len() * 2 / 3] {
        let e = decode(&jpeg[..cut], &ImageLimits::default()).expect_err("truncated");
        assert!(e.to_string().contains("truncated JPEG"), "{cut}: {e}");
    }
    // Bytes after the end marker are ignored, as PIL does.
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(b"trailer");
    assert!(decode(&trailing, &ImageLimits::default()).is_ok());
}

/// A 24-bit BMP of 2x2 pixels; `top_down` stores the height negative.
fn bmp_2x2(top_down: bool) -> Vec<u8> {
    let rows: [[u8; 8]; 2] = [
        [0, 0, 255, 0, 255, 0, 0, 0],
        [255, 0, 0, 255, 255, 255, 0, 0],
    ];
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54u32 + 16).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&2i32.to_le_bytes());
    b.extend_from_slice(&(if top_down { -2i32 } else { 2 }).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    for r in rows {
        b.extend_from_slice(&r);
    }
    b
}

#[test]
fn top_down_bmps_decode_with_their_real_size() {
    let down = decode(&bmp_2x2(true), &ImageLimits::default()).expect("top-down BMP");
    let up = decode(&bmp_2x2(false), &ImageLimits::default()).expect("bottom-up BMP");
    assert_eq!((down.width, down.height), (2, 2));
    // The same rows, stored in the opposite order.
    assert_eq!(&down.data[..6], &up.data[6..]);
    assert_eq!(&down.data[6..], &up.data[..6]);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A 40×20 JPEG, left half red and right half blue, with an EXIF APP1 segment whose orientation
/// tag is `orientation` (6: rotate 90° clockwise to display).
fn jpeg_with_orientation(orientation: u16) -> Vec<u8> {
    let img = image::RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .expect("encode");
    // Exif header, big-endian TIFF header, one IFD entry: 0x0112 SHORT 1 = orientation.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&u16::try_from(exif.len() + 2).expect("len").to_be_bytes());
    app1.extend_from_slice(&exif);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied_only_when_asked() {
    let bytes = jpeg_with_orientation(6);
    let stored = decode(&bytes, &ImageLimits::default()).expect("decode");
    assert_eq!((stored.width, stored.height), (40, 20));
    let oriented = decode(
        &bytes,
        &ImageLimits {
            apply_exif_orientation: true,
            ..ImageLimits::default()
        },
    )
    .expect("decode");
    assert_eq!((oriented.width, oriented.height), (20, 40));
    // Rotated 90° clockwise: the left (red) half is now the top half.
    let px = |img: &Rgb, x: u32, y: u32| {
        let i = ((y * img.width + x) * 3) as usize;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    };
    let top = px(&oriented, 10, 5);
    let bottom = px(&oriented, 10, 35);
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    // Orientation 1 (as stored) and no tag change nothing.
    let one = decode(
        &jpeg_with_orientation(1),
        &ImageLimits {
            apply_exif_orientation: true,
            ..ImageLimits::default()
        },
    )
    .expect("decode");
    assert_eq!((one.width, one.height), (40, 20));
}

//! The link as a QR code: in the terminal (two rows of modules per line of text) and as a
//! PNG file.

use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, QrCode};

use crate::{Error, Result};

/// Pixels per module in the PNG.
const PNG_SCALE: usize = 8;
/// Light modules around the code: the 4 the QR standard asks for.
const QUIET: usize = 4;

fn code(text: &str) -> Result<QrCode> {
    QrCode::new(text.as_bytes()).map_err(|e| Error::pki("QR code", e))
}

/// The code as text. With `ansi`, painted black on white so it scans on dark and light
/// terminals alike; without, dark modules are drawn (for files and pipes).
pub fn terminal(text: &str, ansi: bool) -> Result<String> {
    let code = code(text)?;
    let mut render = code.render::<Dense1x2>();
    render.quiet_zone(true);
    let art = if ansi {
        render
            .build()
            .lines()
            .map(|line| format!("\x1b[30;47m{line}\x1b[0m\n"))
            .collect()
    } else {
        render.build() + "\n"
    };
    Ok(art)
}

/// The code as an 8-bit greyscale PNG.
pub fn png(text: &str) -> Result<Vec<u8>> {
    let code = code(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            pixels[y * side + mx * PNG_SCALE..y * side + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let side = u32::try_from(side).map_err(|e| Error::pki("QR code PNG", e))?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let png_err = |e: png::EncodingError| Error::pki("QR code PNG", e);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&pixels).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://ha.example.com:8443/.well-known/portcullis/enroll/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn terminal_art_is_square_blocks() {
        let plain = terminal(URL, false).unwrap();
        assert!(plain.contains('█') || plain.contains('▀') || plain.contains('▄'));
        let lines: Vec<&str> = plain.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        // Two modules per line: about half as many lines as columns.
        assert!(lines.len() * 2 >= width && lines.len() * 2 <= width + 2);
        let ansi = terminal(URL, true).unwrap();
        assert!(
            ansi.lines()
                .all(|l| l.starts_with("\x1b[30;47m") && l.ends_with("\x1b[0m"))
        );
    }

    #[test]
    fn png_has_the_signature_and_size() {
        let bytes = png(URL).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!(info.width, info.height);
        assert_eq!(info.width as usize % PNG_SCALE, 0);
    }
}

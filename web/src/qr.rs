//! QR code as inline SVG (rendered in the app, no image service): what a phone camera
//! scans to open the join link.

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// Pixels per QR module. Links of a few hundred characters give ~60 modules; at 4 px that
/// is ~300 px with the quiet zone — scannable from a laptop screen and still fits a phone.
const MODULE_PX: u32 = 4;

/// An `<svg>` document for `text` with the standard 4-module quiet zone, or an error
/// sentence when the text does not fit in a QR code.
pub fn svg_for(text: &str) -> Result<String, String> {
    // Medium error correction: robust enough for a screen, keeps the code small.
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| format!("cannot draw a QR code for this link: {e}"))?;
    Ok(code
        .render::<svg::Color>()
        .quiet_zone(true)
        .module_dimensions(MODULE_PX, MODULE_PX)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

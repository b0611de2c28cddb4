//! QR codes as SVG, drawn on the server so that the console needs no
//! third-party script to show an enrolment.

/// The QR code of `text` as an SVG document (black on white, with the
/// standard quiet zone).
pub fn svg(text: &str) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_an_svg() {
        let svg = super::svg("otpauth://totp/Ferry:alice?secret=JBSWY3DPEHPK3PXP&issuer=Ferry").unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("<path") || svg.contains("<rect"));
        assert!(!svg.contains("<script"));
    }
}

//! A JPEG reader for the case that dominates preprocessing: a photo shrunk to a small training
//! input. At 1/8 scale each 8×8 block becomes one pixel, the block's DC coefficient (exactly what
//! libjpeg-turbo's 1×1 inverse DCT computes), so AC coefficients are only skipped: never stored,
//! dequantised or transformed, and a progressive file's AC scans are not decoded at all.
//!
//! [`Jpeg::parse`] reads the markers and counts the scans, so a progressive "scan bomb" (thousands
//! of scans, each costing a pass over every block in a general decoder) is refused before any
//! decoding, whichever decoder runs next. Parsing costs memory in proportion to the scans only:
//! Huffman tables are kept as their definitions (a few hundred bytes) and built when a scan that
//! uses them is decoded, at most one per slot, and files with absurd numbers of markers or table
//! segments are refused. [`Jpeg::decode_eighth`] decodes the 1/8-scale image of
//! baseline, extended and progressive Huffman JPEGs with 8-bit samples in gray or YCbCr; anything
//! else (arithmetic coding, 12-bit samples, CMYK, RGB-coded) reports itself unsupported and is
//! left to libjpeg-turbo. Like TurboJPEG, problems libjpeg would only warn about (a truncated
//! scan, a bad Huffman code, a misplaced restart marker) are errors.

mod bits;
mod huffman;

use std::sync::Arc;

use bits::Bits;
use huffman::{Definition, Huffman, Tables};
use image::{DynamicImage, GrayImage, RgbImage};

/// Most scans a JPEG may have. Ordinary progressive files have about 10 (mozjpeg's at most a few
/// dozen); libjpeg-turbo's fuzzers and `djpeg -maxscans` use limits of the same order.
pub const MAX_SCANS: usize = 256;

/// Most markers a JPEG may have (segments and standalone markers outside the entropy-coded data).
/// Photos have a few dozen; even a 256-scan progressive file with tables before every scan and
/// a multi-segment ICC profile stays far below.
pub const MAX_MARKERS: usize = 4096;

/// Most DHT plus DQT segments a JPEG may have: one of each before every scan fits with room.
pub const MAX_TABLE_SEGMENTS: usize = 1024;

/// Huffman table definitions in force, by slot (0–3).
type Slots = [Option<Arc<Definition>>; 4];

/// Why a JPEG cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    #[error("corrupt JPEG: {0}")]
    Corrupt(&'static str),
    #[error("not decodable at 1/8 scale here: {0}")]
    Unsupported(&'static str),
    #[error("the JPEG has more than {limit} scans (a progressive scan bomb)")]
    TooManyScans { limit: usize },
    /// More markers, or table segments, than any encoder writes: refused while parsing.
    #[error("the JPEG has more than {limit} {what}")]
    TooManyMarkers { what: &'static str, limit: usize },
}

#[derive(Debug, Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant: usize,
}

#[derive(Debug)]
struct ScanComponent {
    /// Index into the frame's components.
    index: usize,
    /// Table slots as written (0–15); only 0–3 exist, checked when a table is used, as
    /// libjpeg does (a progressive DC scan's unused AC selector may hold anything).
    dc_table: usize,
    ac_table: usize,
}

#[derive(Debug)]
struct Scan<'a> {
    components: Vec<ScanComponent>,
    ss: u8,
    se: u8,
    ah: u8,
    al: u8,
    restart_interval: usize,
    /// Huffman table definitions in force for this scan, DC then AC.
    dc: Slots,
    ac: Slots,
    /// The entropy-coded data, restart markers included.
    data: &'a [u8],
}

/// A JPEG's structure: frame, tables and scans, borrowing the entropy-coded data.
#[derive(Debug)]
pub struct Jpeg<'a> {
    pub width: u32,
    pub height: u32,
    /// SOF2: progressive Huffman.
    pub progressive: bool,
    components: Vec<Component>,
    /// Each component's quantisation table (natural order), latched at its first scan.
    quant: Vec<Option<Quant>>,
    scans: Vec<Scan<'a>>,
    /// Why [`Jpeg::decode_eighth`] does not apply, if it does not.
    unsupported: Option<&'static str>,
    adobe_transform: Option<u8>,
    jfif: bool,
}

impl<'a> Jpeg<'a> {
    /// Reads the markers of `bytes`; the entropy-coded data is located, not decoded.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, JpegError> {
        if !bytes.starts_with(&[0xFF, 0xD8]) {
            return Err(JpegError::Corrupt("no start-of-image marker"));
        }
        let mut jpeg = Jpeg {
            width: 0,
            height: 0,
            progressive: false,
            components: Vec::new(),
            quant: Vec::new(),
            scans: Vec::new(),
            unsupported: None,
            adobe_transform: None,
            jfif: false,
        };
        let mut quant = [None::<Quant>; 4];
        let (mut dc, mut ac) = (Slots::default(), Slots::default());
        let mut restart_interval = 0;
        let mut frame_seen = false;
        let (mut markers, mut table_segments) = (0, 0);
        let mut pos = 2;
        while pos < bytes.len() {
            // libjpeg skips stray bytes before a marker (with a warning), and 0xFF fill bytes.
            match memchr::memchr(0xFF, &bytes[pos..]) {
                Some(skip) => pos += skip,
                None => break,
            }
            while bytes.get(pos) == Some(&0xFF) {
                pos += 1;
            }
            let Some(&marker) = bytes.get(pos) else { break };
            pos += 1;
            markers += 1;
            if markers > MAX_MARKERS {
                return Err(JpegError::TooManyMarkers { what: "markers", limit: MAX_MARKERS });
            }
            if matches!(marker, 0xC4 | 0xDB) {
                table_segments += 1;
                if table_segments > MAX_TABLE_SEGMENTS {
                    return Err(JpegError::TooManyMarkers { what: "table segments", limit: MAX_TABLE_SEGMENTS });
                }
            }
            match marker {
                0xD9 => break,
                0x00 | 0x01 | 0xD0..=0xD7 => continue,
                0xD8 => return Err(JpegError::Corrupt("a second start-of-image marker")),
                _ => {}
            }
            let length = match bytes.get(pos..pos + 2) {
                Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
                _ => return Err(JpegError::Corrupt("a marker segment runs past the end")),
            };
            let segment = bytes
                .get(pos + 2..pos + length.max(2))
                .filter(|_| length >= 2)
                .ok_or(JpegError::Corrupt("a marker segment runs past the end"))?;
            pos += length;
            match marker {
                0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    if frame_seen {
                        return Err(JpegError::Corrupt("two frame headers"));
                    }
                    frame_seen = true;
                    jpeg.progressive = marker == 0xC2;
                    if marker > 0xC2 {
                        jpeg.unsupported.get_or_insert("arithmetic, lossless or hierarchical coding");
                    }
                    // Read whatever the coding, so the pixel limit applies to every JPEG.
                    jpeg.read_frame(segment)?;
                }
                0xCC => {
                    jpeg.unsupported.get_or_insert("arithmetic coding");
                }
                0xDC => {
                    jpeg.unsupported.get_or_insert("a DNL marker");
                }
                0xC4 => read_huffman_tables(segment, &mut dc, &mut ac)?,
                0xDB => read_quant_tables(segment, &mut quant)?,
                0xDD => {
                    let &[hi, lo] = segment else { return Err(JpegError::Corrupt("a bad restart interval")) };
                    restart_interval = usize::from(u16::from_be_bytes([hi, lo]));
                }
                0xE0 if segment.starts_with(b"JFIF\0") => jpeg.jfif = true,
                0xEE if segment.starts_with(b"Adobe") && segment.len() >= 12 => {
                    jpeg.adobe_transform = Some(segment[11]);
                }
                0xDA => {
                    if !frame_seen {
                        return Err(JpegError::Corrupt("a scan before the frame header"));
                    }
                    if jpeg.scans.len() == MAX_SCANS {
                        return Err(JpegError::TooManyScans { limit: MAX_SCANS });
                    }
                    let end = entropy_end(bytes, pos);
                    let mut scan = jpeg.read_scan(segment, &bytes[pos..end])?;
                    scan.restart_interval = restart_interval;
                    (scan.dc, scan.ac) = (dc.clone(), ac.clone());
                    for c in &scan.components {
                        let quant_index = jpeg.components[c.index].quant;
                        if jpeg.quant[c.index].is_none() {
                            jpeg.quant[c.index] = quant[quant_index];
                        }
                    }
                    jpeg.scans.push(scan);
                    pos = end;
                }
                _ => {}
            }
        }
        if !frame_seen {
            return Err(JpegError::Corrupt("no frame header"));
        }
        Ok(jpeg)
    }

    /// How many scans the file has.
    pub fn scan_count(&self) -> usize {
        self.scans.len()
    }

    /// Why [`Jpeg::decode_eighth`] cannot decode this file (`None` when it can).
    pub fn eighth_unsupported(&self) -> Option<&'static str> {
        if let Some(reason) = self.unsupported {
            return Some(reason);
        }
        let geometry = Geometry::new(self);
        if !geometry.integral() {
            return Some("fractional chroma sampling");
        }
        if geometry.scale.iter().any(|&s| s > 2) {
            return Some("chroma subsampled four times in both directions");
        }
        if self.progressive && geometry.scale.contains(&2) {
            // libjpeg decodes such chroma with a 2×2 inverse DCT, which needs the AC scans.
            return Some("progressive with chroma subsampled in both directions");
        }
        if self.progressive && (0..self.components.len()).any(|i| !self.has_low_ac_scan(i)) {
            // libjpeg-turbo (since 2.1) then interpolates the component's DC values from their
            // 5×5 neighbourhood ("block smoothing" of a DC-only image), and so changes even the
            // 1/8-scale output.
            return Some("a progressive component without AC scans");
        }
        match self.components.len() {
            1 => None,
            3 => {
                let rgb_ids = self.components.iter().map(|c| c.id).eq(*b"RGB");
                match self.adobe_transform {
                    Some(0) => Some("RGB-coded colour"),
                    Some(_) => None,
                    None if !self.jfif && rgb_ids => Some("RGB-coded colour"),
                    None => None,
                }
            }
            _ => Some("CMYK or another colour space than gray and YCbCr"),
        }
    }

    /// Whether some scan brings AC coefficients 1–9 of component `i`: libjpeg-turbo interpolates
    /// the DC values of a progressive component without (`change_dc` in `decompress_smooth_data`).
    fn has_low_ac_scan(&self, i: usize) -> bool {
        self.scans.iter().any(|scan| scan.ss <= 9 && scan.se >= 1 && scan.components.iter().any(|c| c.index == i))
    }

    /// The image at 1/8 scale (`ceil(width / 8)` × `ceil(height / 8)`), without EXIF orientation.
    pub fn decode_eighth(&self) -> Result<DynamicImage, JpegError> {
        if let Some(reason) = self.eighth_unsupported() {
            return Err(JpegError::Unsupported(reason));
        }
        if self.scans.is_empty() {
            // libjpeg: "JPEG datastream contains no image".
            return Err(JpegError::Corrupt("no scan"));
        }
        let geometry = Geometry::new(self);
        let mut planes: Vec<Vec<i32>> =
            (0..self.components.len()).map(|i| vec![0; geometry.plane_width(i) * geometry.plane_height(i)]).collect();
        let mut tables = Tables::default();
        for scan in &self.scans {
            if scan.ss == 0 {
                self.decode_scan(scan, &geometry, &mut planes, &mut tables)?;
            }
        }
        let samples: Vec<Vec<u8>> = planes
            .iter()
            .enumerate()
            .map(|(i, plane)| {
                if geometry.scale[i] == 2 {
                    // Already samples, from the 2×2 inverse DCT.
                    return plane.iter().map(|&sample| sample as u8).collect();
                }
                // libjpeg's 1×1 inverse DCT: a 16-bit coefficient times a 16-bit multiplier.
                let q = i32::from(self.quant[i].map_or(1, |table| table[0]) as i16);
                plane.iter().map(|&dc| range_limit((dc * q + 4) >> 3)).collect()
            })
            .collect();
        let (w, h) = (self.width.div_ceil(8), self.height.div_ceil(8));
        if self.components.len() == 1 {
            let pw = geometry.plane_width(0);
            let gray = (0..h as usize).flat_map(|y| samples[0][y * pw..y * pw + w as usize].iter().copied()).collect();
            return GrayImage::from_raw(w, h, gray)
                .map(DynamicImage::ImageLuma8)
                .ok_or(JpegError::Corrupt("inconsistent dimensions"));
        }
        let channel = |i: usize| geometry.upsample(i, &samples[i], w as usize, h as usize);
        let (y, cb, cr) = (channel(0), channel(1), channel(2));
        let mut rgb = Vec::with_capacity(y.len() * 3);
        for ((&y, &cb), &cr) in y.iter().zip(&cb).zip(&cr) {
            rgb.extend_from_slice(&ycbcr_to_rgb(y, cb, cr));
        }
        RgbImage::from_raw(w, h, rgb).map(DynamicImage::ImageRgb8).ok_or(JpegError::Corrupt("inconsistent dimensions"))
    }

    fn read_frame(&mut self, segment: &[u8]) -> Result<(), JpegError> {
        let corrupt = JpegError::Corrupt("a bad frame header");
        let &[precision, h1, h0, w1, w0, count, ref rest @ ..] = segment else { return Err(corrupt) };
        if count == 0 || rest.len() != 3 * usize::from(count) {
            return Err(corrupt);
        }
        self.height = u32::from(u16::from_be_bytes([h1, h0]));
        self.width = u32::from(u16::from_be_bytes([w1, w0]));
        if self.width == 0 || self.height == 0 {
            return Err(JpegError::Corrupt("an empty image"));
        }
        if precision != 8 {
            self.unsupported.get_or_insert("samples that are not 8-bit");
        }
        for chunk in rest.chunks_exact(3) {
            let (h, v) = (usize::from(chunk[1] >> 4), usize::from(chunk[1] & 15));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || chunk[2] > 3 {
                return Err(corrupt);
            }
            self.components.push(Component { id: chunk[0], h, v, quant: usize::from(chunk[2]) });
        }
        self.quant = vec![None; self.components.len()];
        Ok(())
    }

    fn read_scan(&self, segment: &[u8], data: &'a [u8]) -> Result<Scan<'a>, JpegError> {
        let corrupt = JpegError::Corrupt("a bad scan header");
        let (&count, rest) = segment.split_first().ok_or(JpegError::Corrupt("a bad scan header"))?;
        let count = usize::from(count);
        if !(1..=4).contains(&count) || rest.len() != 2 * count + 3 {
            return Err(corrupt);
        }
        let mut components: Vec<ScanComponent> = Vec::with_capacity(count);
        for pair in rest[..2 * count].chunks_exact(2) {
            let index = self
                .components
                .iter()
                .position(|c| c.id == pair[0])
                .ok_or(JpegError::Corrupt("a scan names a component the frame does not have"))?;
            if components.iter().any(|c| c.index == index) {
                return Err(JpegError::Corrupt("a component twice in one scan"));
            }
            components.push(ScanComponent {
                index,
                dc_table: usize::from(pair[1] >> 4),
                ac_table: usize::from(pair[1] & 15),
            });
        }
        let tail = &rest[2 * count..];
        let (ss, se, ah, al) = (tail[0], tail[1], tail[2] >> 4, tail[2] & 15);
        let sequential_ok = ss == 0 && se == 63 && ah == 0 && al == 0;
        let progressive_ok = ss <= se && se <= 63 && al <= 13 && (ss == 0) == (se == 0);
        if (self.progressive && !progressive_ok) || (!self.progressive && !sequential_ok && self.unsupported.is_none())
        {
            return Err(JpegError::Corrupt("bad spectral selection or approximation in a scan"));
        }
        Ok(Scan { components, ss, se, ah, al, restart_interval: 0, dc: Slots::default(), ac: Slots::default(), data })
    }

    /// Decodes the DC coefficients of one scan into `planes` (skipping AC in sequential scans,
    /// whole blocks of 2×2 components).
    fn decode_scan(
        &self,
        scan: &Scan<'_>,
        geometry: &Geometry,
        planes: &mut [Vec<i32>],
        tables: &mut Tables,
    ) -> Result<(), JpegError> {
        let refining = self.progressive && scan.ah > 0;
        // Build the tables this scan uses (and only those), then borrow them.
        for c in &scan.components {
            if !refining {
                tables.prepare(true, c.dc_table, &scan.dc)?;
            }
            if !self.progressive {
                tables.prepare(false, c.ac_table, &scan.ac)?;
            }
        }
        let tables = &*tables;
        // An interleaved scan covers whole MCUs; a single-component scan covers that component's
        // blocks only, one block per MCU.
        let single = scan.components.len() == 1;
        let mut lanes = Vec::with_capacity(scan.components.len());
        for c in &scan.components {
            let comp = &self.components[c.index];
            let reduced = geometry.scale[c.index] == 2;
            lanes.push(Lane {
                index: c.index,
                blocks: if single { (1, 1) } else { (comp.h, comp.v) },
                stride: geometry.plane_width(c.index),
                dc: if refining { None } else { Some(tables.get(true, c.dc_table)?) },
                ac: if self.progressive { None } else { Some(tables.get(false, c.ac_table)?) },
                quant: if reduced {
                    Some(self.quant[c.index].ok_or(JpegError::Corrupt("a missing quantisation table"))?)
                } else {
                    None
                },
            });
        }
        let (mcus_x, mcus_y) =
            if single { geometry.blocks(scan.components[0].index) } else { (geometry.mcus_x, geometry.mcus_y) };
        if self.progressive {
            progressive_dc(scan, &lanes, planes, (mcus_x, mcus_y))
        } else {
            sequential_dc(scan, &lanes, planes, (mcus_x, mcus_y))
        }
    }
}

/// A progressive file's DC scans: the first (DC differences, shifted by the successive
/// approximation) and the refinements (one raw bit per block). AC scans are never decoded.
fn progressive_dc(
    scan: &Scan<'_>,
    lanes: &[Lane<'_>],
    planes: &mut [Vec<i32>],
    (mcus_x, mcus_y): (usize, usize),
) -> Result<(), JpegError> {
    let mut bits = Bits::new(scan.data);
    let mut restarts = Restarts::new(scan.restart_interval);
    let mut predictors = [0i32; 4];
    let shift = u32::from(scan.al);
    for my in 0..mcus_y {
        for mx in 0..mcus_x {
            if restarts.before_mcu(&mut bits)? {
                predictors = [0; 4];
            }
            for (lane, predictor) in lanes.iter().zip(predictors.iter_mut()) {
                let plane = &mut planes[lane.index];
                let (bw, bh) = lane.blocks;
                for by in 0..bh {
                    for bx in 0..bw {
                        let coefficient = &mut plane[(my * bh + by) * lane.stride + mx * bw + bx];
                        bits.ensure();
                        match lane.dc {
                            Some(dc) => {
                                *predictor = predictor.wrapping_add(dc.decode_difference(&mut bits)?);
                                // Kept in 16 bits, as libjpeg's coefficients are.
                                *coefficient = i32::from(predictor.wrapping_shl(shift) as i16);
                            }
                            None => {
                                if bits.take(1) == 1 {
                                    *coefficient |= 1i32.wrapping_shl(shift);
                                }
                            }
                        }
                    }
                }
            }
        }
        bits.check_not_truncated()?;
    }
    Ok(())
}

/// Restart-interval bookkeeping shared by the scan loops.
#[derive(Debug)]
struct Restarts {
    interval: usize,
    until: usize,
    next: u8,
}

impl Restarts {
    fn new(interval: usize) -> Self {
        Restarts { interval, until: interval, next: 0 }
    }

    /// Before each MCU: when an interval has ended, moves `bits` past the expected `RSTn` and
    /// answers `true` (DC predictions start again from zero).
    #[inline(always)]
    fn before_mcu(&mut self, bits: &mut Bits<'_>) -> Result<bool, JpegError> {
        if self.interval == 0 {
            return Ok(false);
        }
        let restart = self.until == 0;
        if restart {
            *bits = bits.restarted(self.next)?;
            self.next = (self.next + 1) & 7;
            self.until = self.interval;
        }
        self.until -= 1;
        Ok(restart)
    }
}

/// Sequential scans, the common case: per block, one DC difference decoded and the AC
/// coefficients skipped, or for 2×2 components the whole block decoded for [`idct_2x2`]. The
/// block order of an MCU is resolved once.
fn sequential_dc(
    scan: &Scan<'_>,
    lanes: &[Lane<'_>],
    planes: &mut [Vec<i32>],
    (mcus_x, mcus_y): (usize, usize),
) -> Result<(), JpegError> {
    let missing = || JpegError::Corrupt("a scan without Huffman tables");
    let mut tables = Vec::with_capacity(lanes.len());
    for lane in lanes.iter() {
        tables.push((lane.dc.ok_or_else(missing)?, lane.ac.ok_or_else(missing)?));
    }
    // Each block of an MCU: its lane and its offset from the lane's MCU origin (in samples: a
    // 2×2 component's blocks are two samples wide and tall).
    let order: Vec<(usize, usize)> = lanes
        .iter()
        .enumerate()
        .flat_map(|(l, lane)| {
            let scale = if lane.quant.is_some() { 2 } else { 1 };
            (0..lane.blocks.1)
                .flat_map(move |by| (0..lane.blocks.0).map(move |bx| (l, scale * (by * lane.stride + bx))))
        })
        .collect();
    let scales: Vec<usize> = lanes.iter().map(|lane| if lane.quant.is_some() { 2 } else { 1 }).collect();
    let mut bits = Bits::new(scan.data);
    let mut restarts = Restarts::new(scan.restart_interval);
    let mut predictors = [0i32; 4];
    let mut origins = [0usize; 4];
    for my in 0..mcus_y {
        for ((origin, lane), scale) in origins.iter_mut().zip(lanes.iter()).zip(&scales) {
            *origin = scale * my * lane.blocks.1 * lane.stride;
        }
        for _ in 0..mcus_x {
            if restarts.before_mcu(&mut bits)? {
                predictors = [0; 4];
            }
            for &(l, offset) in &order {
                let (dc, ac) = tables[l];
                bits.ensure();
                predictors[l] = predictors[l].wrapping_add(dc.decode_difference(&mut bits)?);
                // Kept in 16 bits, as libjpeg's coefficients are.
                let coefficient = i32::from(predictors[l] as i16);
                let plane = &mut planes[lanes[l].index];
                let at = origins[l] + offset;
                match &lanes[l].quant {
                    None => {
                        plane[at] = coefficient;
                        ac.skip_block(&mut bits)?;
                    }
                    Some(quant) => {
                        let mut block = [0i32; 64];
                        block[0] = coefficient;
                        ac.decode_block(&mut bits, &mut block)?;
                        let out = idct_2x2(&block, quant);
                        let stride = lanes[l].stride;
                        plane[at..at + 2].copy_from_slice(&out[..2]);
                        plane[at + stride..at + stride + 2].copy_from_slice(&out[2..]);
                    }
                }
            }
            for ((origin, lane), scale) in origins.iter_mut().zip(lanes.iter()).zip(&scales) {
                *origin += scale * lane.blocks.0;
            }
        }
        bits.check_not_truncated()?;
    }
    Ok(())
}

/// What a scan needs per component, resolved once.
#[derive(Debug)]
struct Lane<'t> {
    index: usize,
    /// Blocks per MCU, across and down.
    blocks: (usize, usize),
    stride: usize,
    /// `None` in a DC refinement scan (one raw bit per block).
    dc: Option<&'t Huffman>,
    /// `None` in progressive scans (DC only).
    ac: Option<&'t Huffman>,
    /// Set for components decoded with the 2×2 inverse DCT.
    quant: Option<Quant>,
}

/// The MCU grid and each component's block grid.
#[derive(Debug)]
struct Geometry {
    width: usize,
    height: usize,
    h_max: usize,
    v_max: usize,
    mcus_x: usize,
    mcus_y: usize,
    sampling: Vec<(usize, usize)>,
    /// Output samples per block side: 1 (the DC value), or 2 where libjpeg scales a subsampled
    /// component with a 2×2 inverse DCT instead of upsampling it (4:2:0 chroma at 1/8).
    scale: Vec<usize>,
}

impl Geometry {
    fn new(jpeg: &Jpeg<'_>) -> Self {
        let h_max = jpeg.components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = jpeg.components.iter().map(|c| c.v).max().unwrap_or(1);
        let (width, height) = (jpeg.width as usize, jpeg.height as usize);
        let (mcus_x, mcus_y) = if jpeg.components.len() == 1 {
            (width.div_ceil(8), height.div_ceil(8))
        } else {
            (width.div_ceil(8 * h_max), height.div_ceil(8 * v_max))
        };
        // libjpeg's choice (jdmaster.c): double a component's IDCT size while its sampling
        // ratio in both directions is still divisible by twice the size.
        let scale = jpeg
            .components
            .iter()
            .map(|c| {
                let mut size = 1;
                while size < 8 && h_max % (c.h * size * 2) == 0 && v_max % (c.v * size * 2) == 0 {
                    size *= 2;
                }
                size
            })
            .collect();
        let sampling = jpeg.components.iter().map(|c| (c.h, c.v)).collect();
        Geometry { width, height, h_max, v_max, mcus_x, mcus_y, sampling, scale }
    }

    /// The blocks of component `i` that hold image data (a single-component scan's grid).
    fn blocks(&self, i: usize) -> (usize, usize) {
        let (h, v) = self.sampling[i];
        ((self.width * h).div_ceil(self.h_max).div_ceil(8), (self.height * v).div_ceil(self.v_max).div_ceil(8))
    }

    /// Plane sizes cover the padded MCU grid, so interleaved scans never write out of bounds.
    fn plane_width(&self, i: usize) -> usize {
        let blocks = if self.sampling.len() == 1 { self.mcus_x } else { self.mcus_x * self.sampling[i].0 };
        blocks.max(self.blocks(i).0) * self.scale[i]
    }

    fn plane_height(&self, i: usize) -> usize {
        let blocks = if self.sampling.len() == 1 { self.mcus_y } else { self.mcus_y * self.sampling[i].1 };
        blocks.max(self.blocks(i).1) * self.scale[i]
    }

    /// Component `i`'s samples at the output size `w`×`h`, subsampled components replicated
    /// as libjpeg does at 1/8 scale (its smooth upsampling is off below 2/8), so the result is
    /// exactly TurboJPEG's.
    fn upsample(&self, i: usize, samples: &[u8], w: usize, h: usize) -> Vec<u8> {
        let (ch, cv) = (self.sampling[i].0 * self.scale[i], self.sampling[i].1 * self.scale[i]);
        let stride = self.plane_width(i);
        let columns: Vec<usize> = (0..w).map(|x| x * ch / self.h_max).collect();
        let mut out = Vec::with_capacity(w * h);
        for y in 0..h {
            let row = &samples[(y * cv / self.v_max) * stride..];
            out.extend(columns.iter().map(|&x| row[x]));
        }
        out
    }

    /// Whether every component's sampling divides the largest (libjpeg refuses fractions too).
    fn integral(&self) -> bool {
        self.sampling.iter().all(|&(h, v)| self.h_max.is_multiple_of(h) && self.v_max.is_multiple_of(v))
    }
}

/// Quantisation table in natural (row-major) order.
type Quant = [u16; 64];

/// Natural index of each zig-zag position.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// libjpeg-turbo's reduced 2×2 inverse DCT (LL&M with 13-bit constants): the four quadrant
/// averages of a block, as samples in row-major order. The arithmetic is that of its SSE2 kernel
/// (`jsimd_idct_2x2_sse2`, what TurboJPEG runs on x86-64 in place of `jpeg_idct_2x2`): 16-bit
/// dequantisation products, 32-bit wrapping sums, the odd part of the second pass saturated to
/// 16 bits and the output saturated to a sample. For any data an encoder writes this is the
/// exact arithmetic of jidctred.c too; only corrupt or extreme data (coefficients times
/// quantisers past 16 bits) tells the two apart, and then this gives TurboJPEG's samples.
fn idct_2x2(block: &[i32; 64], quant: &Quant) -> [i32; 4] {
    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    // `pmaddwd` pairs of the odd part: 16-bit inputs, constants under 2^15, so each pair's sum
    // fits 32 bits; the two pairs add with wrapping (`paddd`).
    let odd = |c1: i16, c3: i16, c5: i16, c7: i16| {
        let pair = |a: i16, fa: i32, b: i16, fb: i32| i32::from(a) * fa + i32::from(b) * fb;
        pair(c1, 29692, c3, -10426).wrapping_add(pair(c5, 6967, c7, -5906))
    };
    let descale = |x: i32, n: u32| x.wrapping_add(1 << (n - 1)) >> n;
    // `pmullw`: the low 16 bits of coefficient times quantiser.
    let z = |i: usize| (block[i] as i16).wrapping_mul(quant[i] as i16);
    let mut work = [[0i32; 8]; 2];
    for column in [0, 1, 3, 5, 7] {
        let even = i32::from(z(column)) << (CONST_BITS + 2);
        let odd = odd(z(8 + column), z(24 + column), z(40 + column), z(56 + column));
        work[0][column] = descale(even.wrapping_add(odd), CONST_BITS - PASS1_BITS + 2);
        work[1][column] = descale(even.wrapping_sub(odd), CONST_BITS - PASS1_BITS + 2);
    }
    let saturate16 = |x: i32| x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    let mut out = [0i32; 4];
    for (row, w) in work.iter().enumerate() {
        let even = w[0].wrapping_shl(CONST_BITS + 2);
        let odd = odd(saturate16(w[1]), saturate16(w[3]), saturate16(w[5]), saturate16(w[7]));
        let sample = |x: i32| descale(x, CONST_BITS + PASS1_BITS + 3 + 2).clamp(-128, 127) + 128;
        out[2 * row] = sample(even.wrapping_add(odd));
        out[2 * row + 1] = sample(even.wrapping_sub(odd));
    }
    out
}

/// libjpeg's post-IDCT range limiting (`range_limit[x & RANGE_MASK]` in jdmaster.c): `x` is
/// taken modulo 1024 as a signed 10-bit value, offset by 128 and clamped to a sample. Valid
/// data stays within the 10 bits, where this is a plain clamp; corrupt data wraps like libjpeg.
fn range_limit(x: i32) -> u8 {
    let wrapped = ((x & 1023) ^ 512) - 512;
    (wrapped + 128).clamp(0, 255) as u8
}

/// libjpeg's YCbCr → RGB (JFIF, full range), in 16-bit fixed point.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    [
        clamp(y + ((91_881 * cr + 32_768) >> 16)),
        clamp(y + ((-22_554 * cb - 46_802 * cr + 32_768) >> 16)),
        clamp(y + ((116_130 * cb + 32_768) >> 16)),
    ]
}

/// Where a scan's entropy-coded data ends: at the first marker that is not a restart marker
/// (`0xFF 0x00` is a stuffed data byte).
fn entropy_end(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(skip) = memchr::memchr(0xFF, &bytes[pos..]) {
        let at = pos + skip;
        match bytes.get(at + 1) {
            Some(0x00 | 0xD0..=0xD7) => pos = at + 2,
            Some(_) => return at,
            None => return bytes.len(),
        }
    }
    bytes.len()
}

/// Reads a DHT segment into the slots: a definition replaces the slot's previous one, so at
/// most eight are in force however many the file has; they are built when used.
fn read_huffman_tables(mut segment: &[u8], dc: &mut Slots, ac: &mut Slots) -> Result<(), JpegError> {
    while let Some((&class_id, rest)) = segment.split_first() {
        let counts: [u8; 16] =
            rest.get(..16).and_then(|c| c.try_into().ok()).ok_or(JpegError::Corrupt("a short Huffman table"))?;
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 {
            return Err(JpegError::Corrupt("a bad Huffman table"));
        }
        let symbols = rest.get(16..16 + total).ok_or(JpegError::Corrupt("a short Huffman table"))?;
        let (class, id) = (class_id >> 4, usize::from(class_id & 15));
        let slot = match class {
            0 => dc.get_mut(id),
            1 => ac.get_mut(id),
            _ => None,
        }
        .ok_or(JpegError::Corrupt("a bad Huffman table class or id"))?;
        *slot = Some(Arc::new(Definition { counts, symbols: symbols.to_vec() }));
        segment = &rest[16 + total..];
    }
    Ok(())
}

fn read_quant_tables(mut segment: &[u8], quant: &mut [Option<Quant>; 4]) -> Result<(), JpegError> {
    while let Some((&precision_id, rest)) = segment.split_first() {
        let (wide, id) = (precision_id >> 4 != 0, usize::from(precision_id & 15));
        let size = if wide { 128 } else { 64 };
        let table = rest.get(..size).ok_or(JpegError::Corrupt("a short quantisation table"))?;
        if id > 3 {
            return Err(JpegError::Corrupt("a bad quantisation table id"));
        }
        let mut natural = [0u16; 64];
        for (k, &index) in ZIGZAG.iter().enumerate() {
            natural[index] =
                if wide { u16::from_be_bytes([table[2 * k], table[2 * k + 1]]) } else { u16::from(table[k]) };
        }
        quant[id] = Some(natural);
        segment = &rest[size..];
    }
    Ok(())
}

#[cfg(test)]
mod tests;

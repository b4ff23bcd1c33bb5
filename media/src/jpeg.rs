//! A JPEG reader for the case that dominates preprocessing: a photo shrunk to a small training
//! input. At 1/8 scale each 8×8 block becomes one pixel, the block's DC coefficient (exactly what
//! libjpeg-turbo's 1×1 inverse DCT computes), so AC coefficients are only skipped: never stored,
//! dequantised or transformed, and a progressive file's AC scans are not decoded at all.
//!
//! [`Jpeg::parse`] reads the markers and counts the scans, so a progressive "scan bomb" (thousands
//! of scans, each costing a pass over every block in a general decoder) is refused before any
//! decoding, whichever decoder runs next. [`Jpeg::decode_eighth`] decodes the 1/8-scale image of
//! baseline, extended and progressive Huffman JPEGs with 8-bit samples in gray or YCbCr; anything
//! else (arithmetic coding, 12-bit samples, CMYK, RGB-coded) reports itself unsupported and is
//! left to libjpeg-turbo. Like TurboJPEG, problems libjpeg would only warn about (a truncated
//! scan, a bad Huffman code, a misplaced restart marker) are errors.

mod bits;
mod huffman;

use bits::Bits;
use huffman::Huffman;
use image::{DynamicImage, GrayImage, RgbImage};

/// Most scans a JPEG may have. Ordinary progressive files have about 10 (mozjpeg's at most a few
/// dozen); libjpeg-turbo's fuzzers and `djpeg -maxscans` use limits of the same order.
pub const MAX_SCANS: usize = 256;

/// Why a JPEG cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    #[error("corrupt JPEG: {0}")]
    Corrupt(&'static str),
    #[error("not decodable at 1/8 scale here: {0}")]
    Unsupported(&'static str),
    #[error("the JPEG has more than {limit} scans (a progressive scan bomb)")]
    TooManyScans { limit: usize },
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
    dc_table: usize,
    ac_table: usize,
}

#[derive(Debug)]
struct Scan<'a> {
    components: Vec<ScanComponent>,
    ss: u8,
    ah: u8,
    al: u8,
    restart_interval: usize,
    /// Huffman tables in force for this scan (indices into [`Jpeg::tables`]), DC then AC.
    dc: [Option<usize>; 4],
    ac: [Option<usize>; 4],
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
    tables: Vec<Huffman>,
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
            tables: Vec::new(),
            scans: Vec::new(),
            unsupported: None,
            adobe_transform: None,
            jfif: false,
        };
        let mut quant = [None::<Quant>; 4];
        let (mut dc, mut ac) = ([None; 4], [None; 4]);
        let mut restart_interval = 0;
        let mut frame_seen = false;
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
                0xC0..=0xC2 => {
                    if frame_seen {
                        return Err(JpegError::Corrupt("two frame headers"));
                    }
                    frame_seen = true;
                    jpeg.progressive = marker == 0xC2;
                    jpeg.read_frame(segment)?;
                }
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    frame_seen = true;
                    jpeg.unsupported.get_or_insert("arithmetic, lossless or hierarchical coding");
                }
                0xCC => {
                    jpeg.unsupported.get_or_insert("arithmetic coding");
                }
                0xDC => {
                    jpeg.unsupported.get_or_insert("a DNL marker");
                }
                0xC4 => read_huffman_tables(segment, &mut jpeg.tables, &mut dc, &mut ac)?,
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
                    (scan.dc, scan.ac) = (dc, ac);
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

    /// The image at 1/8 scale (`ceil(width / 8)` × `ceil(height / 8)`), without EXIF orientation.
    pub fn decode_eighth(&self) -> Result<DynamicImage, JpegError> {
        if let Some(reason) = self.eighth_unsupported() {
            return Err(JpegError::Unsupported(reason));
        }
        let geometry = Geometry::new(self);
        let mut planes: Vec<Vec<i32>> =
            (0..self.components.len()).map(|i| vec![0; geometry.plane_width(i) * geometry.plane_height(i)]).collect();
        for scan in &self.scans {
            if scan.ss == 0 {
                self.decode_scan(scan, &geometry, &mut planes)?;
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
                let q = i64::from(self.quant[i].map_or(1, |table| table[0]));
                plane.iter().map(|&dc| ((i64::from(dc) * q + 4) >> 3).saturating_add(128).clamp(0, 255) as u8).collect()
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
        self.height = u32::from(u16::from_be_bytes([h1, h0]));
        self.width = u32::from(u16::from_be_bytes([w1, w0]));
        if self.width == 0 || self.height == 0 {
            return Err(JpegError::Corrupt("an empty image"));
        }
        if precision != 8 {
            self.unsupported.get_or_insert("samples that are not 8-bit");
        }
        if count == 0 || rest.len() < 3 * usize::from(count) {
            return Err(corrupt);
        }
        for chunk in rest.chunks_exact(3).take(usize::from(count)) {
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
        let mut components = Vec::with_capacity(count);
        for pair in rest[..2 * count].chunks_exact(2) {
            let index = self
                .components
                .iter()
                .position(|c| c.id == pair[0])
                .ok_or(JpegError::Corrupt("a scan names a component the frame does not have"))?;
            components.push(ScanComponent {
                index,
                dc_table: usize::from(pair[1] >> 4) & 3,
                ac_table: usize::from(pair[1] & 15) & 3,
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
        Ok(Scan { components, ss, ah, al, restart_interval: 0, dc: [None; 4], ac: [None; 4], data })
    }

    /// Decodes the DC coefficients of one scan into `planes` (skipping AC in sequential scans,
    /// whole blocks of 2×2 components).
    fn decode_scan(&self, scan: &Scan<'_>, geometry: &Geometry, planes: &mut [Vec<i32>]) -> Result<(), JpegError> {
        let table = |slot: Option<usize>| {
            slot.map(|i| &self.tables[i]).ok_or(JpegError::Corrupt("a scan uses an undefined Huffman table"))
        };
        let refining = self.progressive && scan.ah > 0;
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
                dc: if refining { None } else { Some(table(scan.dc[c.dc_table])?) },
                ac: if self.progressive { None } else { Some(table(scan.ac[c.ac_table])?) },
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
                                *coefficient = predictor.wrapping_shl(shift);
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
        if lanes.iter().filter(|other| other.index == lane.index).count() > 1 {
            return Err(JpegError::Corrupt("a component twice in one scan"));
        }
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
                let plane = &mut planes[lanes[l].index];
                let at = origins[l] + offset;
                match &lanes[l].quant {
                    None => {
                        plane[at] = predictors[l];
                        ac.skip_block(&mut bits)?;
                    }
                    Some(quant) => {
                        let mut block = [0i32; 64];
                        block[0] = predictors[l];
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

/// libjpeg's reduced 2×2 inverse DCT (`jpeg_idct_2x2` in jidctred.c, LL&M with 13-bit
/// constants): the four quadrant averages of a block, as samples in row-major order.
fn idct_2x2(block: &[i32; 64], quant: &Quant) -> [i32; 4] {
    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    let descale = |x: i64, n: u32| (x + (1 << (n - 1))) >> n;
    let odd = |c7: i64, c5: i64, c3: i64, c1: i64| -5906 * c7 + 6967 * c5 - 10426 * c3 + 29692 * c1;
    let coef = |i: usize| i64::from(block[i]) * i64::from(quant[i]);
    let mut work = [0i64; 16];
    for column in [0, 1, 3, 5, 7] {
        let even = coef(column) << (CONST_BITS + 2);
        let odd = odd(coef(56 + column), coef(40 + column), coef(24 + column), coef(8 + column));
        work[column] = descale(even + odd, CONST_BITS - PASS1_BITS + 2);
        work[8 + column] = descale(even - odd, CONST_BITS - PASS1_BITS + 2);
    }
    let mut out = [0i32; 4];
    for row in 0..2 {
        let w = &work[8 * row..8 * row + 8];
        let even = w[0] << (CONST_BITS + 2);
        let odd = odd(w[7], w[5], w[3], w[1]);
        let sample = |x: i64| (descale(x, CONST_BITS + PASS1_BITS + 3 + 2) + 128).clamp(0, 255) as i32;
        out[2 * row] = sample(even + odd);
        out[2 * row + 1] = sample(even - odd);
    }
    out
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

fn read_huffman_tables(
    mut segment: &[u8],
    tables: &mut Vec<Huffman>,
    dc: &mut [Option<usize>; 4],
    ac: &mut [Option<usize>; 4],
) -> Result<(), JpegError> {
    while let Some((&class_id, rest)) = segment.split_first() {
        let counts: [u8; 16] =
            rest.get(..16).and_then(|c| c.try_into().ok()).ok_or(JpegError::Corrupt("a short Huffman table"))?;
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let symbols = rest.get(16..16 + total).ok_or(JpegError::Corrupt("a short Huffman table"))?;
        let (class, id) = (class_id >> 4, usize::from(class_id & 15));
        if class > 1 || id > 3 {
            return Err(JpegError::Corrupt("a bad Huffman table class or id"));
        }
        tables.push(Huffman::new(&counts, symbols, class == 0)?);
        let slot = if class == 0 { &mut dc[id] } else { &mut ac[id] };
        *slot = Some(tables.len() - 1);
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

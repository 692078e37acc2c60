//! A baseline JPEG encoder for store records: RGB u8 → YCbCr 4:2:0, the Arai–Agui–Nakajima
//! float DCT with the quantisation folded into its output scale, and the example Huffman tables
//! of the standard (ITU T.81 Annex K), which every decoder takes and libjpeg also writes by
//! default. Quality scales the Annex K quantisation tables as libjpeg does, so a quality means
//! what it means to Pillow.
//!
//! Why our own: it is the one step of a JPEG-store ingest whose speed we control, and the
//! encoder we used before (jpeg-encoder) took twice libjpeg-turbo's time per image here
//! (`runner bench ingest` prints the codec steps). The work is laid out for the compiler to
//! vectorise: the DCT runs on eight columns at once, the entropy coder walks a bit mask of the
//! non-zero coefficients.

/// Zigzag position → natural (row-major) position in an 8×8 block.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Annex K.1 quantisation tables, natural order.
const LUMA_QUANT: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA_QUANT: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

/// Annex K.3 Huffman tables: code counts per length 1..=16, then the symbols.
struct HuffmanSpec {
    counts: [u8; 16],
    symbols: &'static [u8],
}

const LUMA_DC: HuffmanSpec = HuffmanSpec {
    counts: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    symbols: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
};
const CHROMA_DC: HuffmanSpec = HuffmanSpec {
    counts: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    symbols: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
};
const LUMA_AC: HuffmanSpec = HuffmanSpec {
    counts: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
    symbols: &[
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
};
const CHROMA_AC: HuffmanSpec = HuffmanSpec {
    counts: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
    symbols: &[
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
};

/// A Huffman table as (code, length) per symbol.
struct HuffmanCodes {
    code: [u16; 256],
    len: [u8; 256],
}

impl HuffmanCodes {
    /// Canonical codes (Annex C): consecutive within a length, doubled going one bit longer.
    fn new(spec: &HuffmanSpec) -> HuffmanCodes {
        let mut codes = HuffmanCodes {
            code: [0; 256],
            len: [0; 256],
        };
        let mut symbols = spec.symbols.iter();
        let mut code = 0u16;
        for (length, &count) in (1u8..).zip(&spec.counts) {
            for _ in 0..count {
                let symbol = usize::from(*symbols.next().expect("counts match symbols"));
                codes.code[symbol] = code;
                codes.len[symbol] = length;
                code += 1;
            }
            code <<= 1;
        }
        codes
    }
}

/// libjpeg's quality scaling of a base table, in zigzag order, clamped to baseline's 1..=255.
fn scaled_quant(base: &[u16; 64], quality: u8) -> [u16; 64] {
    let quality = u32::from(quality.clamp(1, 100));
    let scale = if quality < 50 {
        5000 / quality
    } else {
        200 - 2 * quality
    };
    std::array::from_fn(|k| ((u32::from(base[ZIGZAG[k]]) * scale + 50) / 100).clamp(1, 255) as u16)
}

/// What the AAN DCT's output is multiplied by to give the quantised coefficient:
/// 1 / (q · s(u) · s(v) · 8), with s(0) = 1, s(k) = √2 cos(kπ/16); laid out transposed
/// (index v · 8 + u), as [`quantised_block`] has the DCT's output.
fn dct_divisors(quant_zigzag: &[u16; 64]) -> [f32; 64] {
    let s = |k: usize| {
        if k == 0 {
            1.0
        } else {
            std::f64::consts::SQRT_2 * (k as f64 * std::f64::consts::PI / 16.0).cos()
        }
    };
    let mut divisors = [0f32; 64];
    for (k, &q) in quant_zigzag.iter().enumerate() {
        let natural = ZIGZAG[k];
        let (u, v) = (natural / 8, natural % 8);
        divisors[v * 8 + u] = (1.0 / (f64::from(q) * s(u) * s(v) * 8.0)) as f32;
    }
    divisors
}

type Row = [f32; 8];

/// The AAN 8-point forward DCT applied to eight columns at once: `d[k]` holds sample k of each
/// column, and each output holds that frequency (scaled by s(k), see [`dct_divisors`]). The
/// loop over columns does the same arithmetic in each lane, which the compiler vectorises.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane i of all eight rows: an iterator would hide that
fn aan_dct(d: &mut [Row; 8]) {
    const C4: f32 = std::f32::consts::FRAC_1_SQRT_2; // cos(4π/16)
    for i in 0..8 {
        let (t0, t7) = (d[0][i] + d[7][i], d[0][i] - d[7][i]);
        let (t1, t6) = (d[1][i] + d[6][i], d[1][i] - d[6][i]);
        let (t2, t5) = (d[2][i] + d[5][i], d[2][i] - d[5][i]);
        let (t3, t4) = (d[3][i] + d[4][i], d[3][i] - d[4][i]);
        // Even part.
        let (t10, t13) = (t0 + t3, t0 - t3);
        let (t11, t12) = (t1 + t2, t1 - t2);
        d[0][i] = t10 + t11;
        d[4][i] = t10 - t11;
        let z1 = (t12 + t13) * C4;
        d[2][i] = t13 + z1;
        d[6][i] = t13 - z1;
        // Odd part.
        let (t10, t11, t12) = (t4 + t5, t5 + t6, t6 + t7);
        let z5 = (t10 - t12) * 0.382_683_43; // cos(6π/16)
        let z2 = 0.541_196_1 * t10 + z5; // cos(6π/16)·√2
        let z4 = 1.306_563 * t12 + z5; // cos(2π/16)·√2
        let z3 = t11 * C4;
        let (z11, z13) = (t7 + z3, t7 - z3);
        d[5][i] = z13 + z2;
        d[3][i] = z13 - z2;
        d[1][i] = z11 + z4;
        d[7][i] = z11 - z4;
    }
}

#[inline(always)]
fn transpose(d: &[Row; 8]) -> [Row; 8] {
    let mut t = [[0f32; 8]; 8];
    for (i, row) in d.iter().enumerate() {
        for (j, &value) in row.iter().enumerate() {
            t[j][i] = value;
        }
    }
    t
}

/// Forward DCT and quantisation of one level-shifted block (rows of 8), zigzag order out.
#[inline(always)]
fn quantised_block(block: &[Row; 8], divisors: &[f32; 64]) -> [i16; 64] {
    let mut d = *block;
    aan_dct(&mut d); // down the columns: d[u][x]
    let mut d = transpose(&d); // d[x][u]
    aan_dct(&mut d); // along the rows: d[v][u], the transpose of natural order
    let flat = d.as_flattened();
    let mut quantised = [0i32; 64];
    for ((value, &coefficient), &divisor) in quantised.iter_mut().zip(flat).zip(divisors) {
        // Round half away from zero; `as` truncates (f32::round would be a libm call on
        // baseline x86-64).
        let scaled = coefficient * divisor;
        *value = (scaled + 0.5f32.copysign(scaled)) as i32;
    }
    std::array::from_fn(|k| quantised[ZIGZAG_TRANSPOSED[k]] as i16)
}

/// Zigzag position → position in the transposed block that [`quantised_block`] computes.
const ZIGZAG_TRANSPOSED: [usize; 64] = {
    let mut table = [0; 64];
    let mut k = 0;
    while k < 64 {
        table[k] = (ZIGZAG[k] % 8) * 8 + ZIGZAG[k] / 8;
        k += 1;
    }
    table
};

/// Bits of an entropy-coded segment, with 0xFF bytes stuffed.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    bits: u64,
    count: u32,
}

impl BitWriter<'_> {
    /// Appends `value`, which has at most `len` ≤ 32 bits.
    #[inline(always)]
    fn put(&mut self, value: u32, len: u32) {
        self.bits = (self.bits << len) | u64::from(value);
        self.count += len;
        if self.count >= 32 {
            self.count -= 32;
            let word = (self.bits >> self.count) as u32;
            self.flush_word(word);
        }
    }

    #[inline(always)]
    fn flush_word(&mut self, word: u32) {
        let bytes = word.to_be_bytes();
        // Some byte is 0xFF iff some byte of !word is zero (the classic has-zero-byte test).
        let inverted = !word;
        let has_ff = inverted.wrapping_sub(0x0101_0101) & word & 0x8080_8080 != 0;
        if has_ff {
            for byte in bytes {
                self.out.push(byte);
                if byte == 0xFF {
                    self.out.push(0);
                }
            }
        } else {
            self.out.extend_from_slice(&bytes);
        }
    }

    /// Pads the last byte with 1 bits (as the standard asks) and writes it out.
    fn finish(mut self) {
        while !self.count.is_multiple_of(8) {
            self.put(1, 1);
        }
        let bytes = self.count / 8;
        for i in (0..bytes).rev() {
            let byte = (self.bits >> (8 * i)) as u8;
            self.out.push(byte);
            if byte == 0xFF {
                self.out.push(0);
            }
        }
    }
}

/// Magnitude category of a coefficient (bits needed for |v|) and its appended bits.
#[inline(always)]
fn category(value: i32) -> (u32, u32) {
    let magnitude = value.unsigned_abs();
    let size = 32 - magnitude.leading_zeros();
    // Negative values are sent as value − 1 in `size` bits (ones' complement of |v|).
    let bits = if value < 0 {
        (value - 1) as u32
    } else {
        value as u32
    };
    (size, bits & ((1u32 << size) - 1))
}

/// What coding one component's blocks takes.
struct Component {
    /// See [`dct_divisors`].
    divisors: [f32; 64],
    dc: HuffmanCodes,
    ac: HuffmanCodes,
}

/// Entropy-codes one block; `previous_dc` is the component's last DC value.
#[inline(always)]
fn encode_block(writer: &mut BitWriter, block: &[i16; 64], previous_dc: &mut i32, t: &Component) {
    let dc = i32::from(block[0]);
    let (size, bits) = category(dc - *previous_dc);
    *previous_dc = dc;
    let symbol = size as usize;
    writer.put(
        (u32::from(t.dc.code[symbol]) << size) | bits,
        u32::from(t.dc.len[symbol]) + size,
    );
    let mut nonzero = nonzero_mask(block) & !1; // AC coefficients only
    let mut position = 1u32; // next zigzag index to code
    while nonzero != 0 {
        let k = nonzero.trailing_zeros();
        nonzero &= nonzero - 1;
        let mut run = k - position;
        while run >= 16 {
            let zrl = 0xF0;
            writer.put(u32::from(t.ac.code[zrl]), u32::from(t.ac.len[zrl]));
            run -= 16;
        }
        let (size, bits) = category(i32::from(block[k as usize]));
        let symbol = ((run << 4) | size) as usize;
        writer.put(
            (u32::from(t.ac.code[symbol]) << size) | bits,
            u32::from(t.ac.len[symbol]) + size,
        );
        position = k + 1;
    }
    if position < 64 {
        writer.put(u32::from(t.ac.code[0]), u32::from(t.ac.len[0])); // end of block
    }
}

/// Bit k set where `block[k] != 0`. Built eight coefficients at a time: eight 0/1 bytes times
/// 0x0102…80 gather their bits in the top byte (no carries, since each partial product lands on
/// its own bit), which the compiler turns into a few vector ops and multiplies.
#[inline(always)]
fn nonzero_mask(block: &[i16; 64]) -> u64 {
    let mut flags = [0u8; 64];
    for (flag, &value) in flags.iter_mut().zip(block) {
        *flag = u8::from(value != 0);
    }
    let mut mask = 0u64;
    for (group, bytes) in flags.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        mask |= (word.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * group);
    }
    mask
}

/// One row of MCUs (16 pixel rows) as level-shifted Y and 2×2-averaged Cb, Cr, padded to whole
/// MCUs by repeating the last row and column. Reused from row to row, so that the buffers stay
/// small and in cache.
struct McuRow {
    y: Vec<f32>,
    cb: Vec<f32>,
    cr: Vec<f32>,
    /// Full-resolution chroma before averaging.
    cb_full: Vec<f32>,
    cr_full: Vec<f32>,
    /// Padded luma width (a multiple of 16); chroma rows are half as wide.
    width: usize,
}

impl McuRow {
    fn new(padded_width: usize) -> McuRow {
        let full = vec![0f32; 16 * padded_width];
        let half = vec![0f32; 8 * padded_width / 2];
        McuRow {
            y: full.clone(),
            cb: half.clone(),
            cr: half,
            cb_full: full.clone(),
            cr_full: full,
            width: padded_width,
        }
    }

    /// Fills the row of MCUs starting at pixel row `top`.
    #[inline(always)]
    fn fill(&mut self, rgb: &[u8], width: usize, height: usize, top: usize) {
        let pw = self.width;
        for row in 0..16 {
            let src = &rgb[(top + row).min(height - 1) * width * 3..][..width * 3];
            let out = row * pw..(row + 1) * pw;
            let y = &mut self.y[out.clone()];
            let cb = &mut self.cb_full[out.clone()];
            let cr = &mut self.cr_full[out];
            for (x, px) in src.chunks_exact(3).enumerate() {
                let (r, g, b) = (f32::from(px[0]), f32::from(px[1]), f32::from(px[2]));
                y[x] = 0.299 * r + 0.587 * g + 0.114 * b - 128.0;
                cb[x] = -0.168_735_9 * r - 0.331_264_1 * g + 0.5 * b;
                cr[x] = 0.5 * r - 0.418_687_6 * g - 0.081_312_4 * b;
            }
            for x in width..pw {
                y[x] = y[width - 1];
                cb[x] = cb[width - 1];
                cr[x] = cr[width - 1];
            }
        }
        let cw = pw / 2;
        for (full, half) in [(&self.cb_full, &mut self.cb), (&self.cr_full, &mut self.cr)] {
            for row in 0..8 {
                let top = &full[2 * row * pw..][..pw];
                let bottom = &full[(2 * row + 1) * pw..][..pw];
                for (x, value) in half[row * cw..(row + 1) * cw].iter_mut().enumerate() {
                    *value =
                        0.25 * (top[2 * x] + top[2 * x + 1] + bottom[2 * x] + bottom[2 * x + 1]);
                }
            }
        }
    }
}

#[inline(always)]
fn load_block(plane: &[f32], stride: usize, x: usize, y: usize) -> [Row; 8] {
    std::array::from_fn(|row| {
        plane[(y + row) * stride + x..][..8]
            .try_into()
            .expect("8 samples")
    })
}

/// Encodes `width × height` RGB rows (`rgb.len() == width · height · 3`, both sides 1..=65535)
/// as a baseline JFIF stream appended to `out`.
pub fn encode_rgb(rgb: &[u8], width: u16, height: u16, quality: u8, out: &mut Vec<u8>) {
    encode_with(rgb, width, height, quality, out, has_avx2_and_bmi());
}

fn has_avx2_and_bmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("bmi1")
            && std::is_x86_feature_detected!("bmi2")
            && std::is_x86_feature_detected!("lzcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`encode_rgb`], with the AVX2 + BMI build of the scan loop when `avx2_and_bmi` (which the
/// caller has checked the CPU for).
fn encode_with(
    rgb: &[u8],
    width: u16,
    height: u16,
    quality: u8,
    out: &mut Vec<u8>,
    avx2_and_bmi: bool,
) {
    let (w, h) = (usize::from(width), usize::from(height));
    assert!(
        w > 0 && h > 0 && rgb.len() == w * h * 3,
        "RGB buffer of {w}x{h}"
    );
    let luma_quant = scaled_quant(&LUMA_QUANT, quality);
    let chroma_quant = scaled_quant(&CHROMA_QUANT, quality);
    write_headers(out, width, height, &luma_quant, &chroma_quant);

    let luma = Component {
        divisors: dct_divisors(&luma_quant),
        dc: HuffmanCodes::new(&LUMA_DC),
        ac: HuffmanCodes::new(&LUMA_AC),
    };
    let chroma = Component {
        divisors: dct_divisors(&chroma_quant),
        dc: HuffmanCodes::new(&CHROMA_DC),
        ac: HuffmanCodes::new(&CHROMA_AC),
    };
    let mut writer = BitWriter {
        out,
        bits: 0,
        count: 0,
    };
    match avx2_and_bmi {
        // SAFETY: the caller checked that the CPU has every feature the function is built for.
        #[cfg(target_arch = "x86_64")]
        true => unsafe { encode_scan_avx2(rgb, w, h, &luma, &chroma, &mut writer) },
        _ => encode_scan(rgb, w, h, &luma, &chroma, &mut writer),
    }
    writer.finish();
    out.extend_from_slice(&[0xFF, 0xD9]); // EOI
}

/// The entropy-coded data of all MCUs, each 4 Y blocks then Cb then Cr. Everything it calls
/// is inlined, so that [`encode_scan_avx2`] compiles the whole loop for AVX2.
#[inline(always)]
fn encode_scan(
    rgb: &[u8],
    w: usize,
    h: usize,
    luma: &Component,
    chroma: &Component,
    writer: &mut BitWriter,
) {
    let padded_width = w.div_ceil(16) * 16;
    let mut mcus = McuRow::new(padded_width);
    let mut dc = [0i32; 3];
    for top in (0..h).step_by(16) {
        mcus.fill(rgb, w, h, top);
        for mx in (0..padded_width).step_by(16) {
            for (dy, dx) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                let block = load_block(&mcus.y, padded_width, mx + dx, dy);
                let quantised = quantised_block(&block, &luma.divisors);
                encode_block(writer, &quantised, &mut dc[0], luma);
            }
            for (plane, component) in [(&mcus.cb, 1), (&mcus.cr, 2)] {
                let block = load_block(plane, padded_width / 2, mx / 2, 0);
                let quantised = quantised_block(&block, &chroma.divisors);
                encode_block(writer, &quantised, &mut dc[component], chroma);
            }
        }
    }
}

/// [`encode_scan`] compiled for AVX2 (eight-lane float rows become single instructions) and
/// BMI/LZCNT (bit counts and variable shifts in the entropy coder take one cycle). `runner bench
/// ingest` shows the encode step's time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt")]
unsafe fn encode_scan_avx2(
    rgb: &[u8],
    w: usize,
    h: usize,
    luma: &Component,
    chroma: &Component,
    writer: &mut BitWriter,
) {
    encode_scan(rgb, w, h, luma, chroma, writer)
}

fn write_headers(out: &mut Vec<u8>, width: u16, height: u16, luma: &[u16; 64], chroma: &[u16; 64]) {
    let segment = |out: &mut Vec<u8>, marker: u8, body: &[u8]| {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(body);
    };
    out.extend_from_slice(&[0xFF, 0xD8]); // SOI
                                          // JFIF 1.01, no density, no thumbnail.
    segment(
        out,
        0xE0,
        &[b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0],
    );
    let mut dqt = Vec::with_capacity(130);
    for (id, table) in [(0u8, luma), (1, chroma)] {
        dqt.push(id); // 8-bit precision
        dqt.extend(table.iter().map(|&q| q as u8));
    }
    segment(out, 0xDB, &dqt);
    let [hh, hl] = height.to_be_bytes();
    let [wh, wl] = width.to_be_bytes();
    // Baseline, 8 bits; Y sampled 2×2 with table 0, Cb and Cr 1×1 with table 1.
    segment(
        out,
        0xC0,
        &[8, hh, hl, wh, wl, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1],
    );
    let mut dht = Vec::new();
    for (class_id, spec) in [
        (0x00, &LUMA_DC),
        (0x10, &LUMA_AC),
        (0x01, &CHROMA_DC),
        (0x11, &CHROMA_AC),
    ] {
        dht.push(class_id);
        dht.extend_from_slice(&spec.counts);
        dht.extend_from_slice(spec.symbols);
    }
    segment(out, 0xC4, &dht);
    // One scan of all three components: Y with tables 0/0, Cb and Cr with 1/1; full spectrum.
    segment(out, 0xDA, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded with zune-jpeg, an independent decoder.
    fn decode(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let mut decoder = crate::store::codec::zune_rgb_decoder(bytes, true);
        let pixels = decoder.decode().expect("our stream decodes");
        let info = decoder.info().unwrap();
        (usize::from(info.width), usize::from(info.height), pixels)
    }

    fn psnr(a: &[u8], b: &[u8]) -> f64 {
        let mse = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        10.0 * (255.0 * 255.0 / mse.max(1e-9)).log10()
    }

    /// Smooth gradients with some texture: what photos look like to a DCT.
    fn test_image(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| {
                    let t = ((x * 7 + y * 13) % 23) as f64;
                    [
                        (x * 255 / w.max(1)) as u8,
                        (y * 255 / h.max(1)) as u8,
                        (128.0 + 60.0 * (x as f64 / 9.0).sin() + t) as u8,
                    ]
                })
            })
            .collect()
    }

    #[test]
    fn huffman_codes_are_the_canonical_ones() {
        // Annex K.3.1: luminance DC category 0 is 00, 1 is 010, 11 is 111111110.
        let dc = HuffmanCodes::new(&LUMA_DC);
        assert_eq!((dc.code[0], dc.len[0]), (0b00, 2));
        assert_eq!((dc.code[1], dc.len[1]), (0b010, 3));
        assert_eq!((dc.code[11], dc.len[11]), (0b1_1111_1110, 9));
        // Annex K.3.2: luminance AC end-of-block is 1010, ZRL is 11111111001.
        let ac = HuffmanCodes::new(&LUMA_AC);
        assert_eq!((ac.code[0x00], ac.len[0x00]), (0b1010, 4));
        assert_eq!((ac.code[0xF0], ac.len[0xF0]), (0b111_1111_1001, 11));
    }

    #[test]
    fn quality_scales_the_tables_as_libjpeg() {
        // Quality 50 is the Annex K table; 90 scales by 0.2, rounding half up; 100 is all ones.
        assert_eq!(scaled_quant(&LUMA_QUANT, 50)[0], 16);
        assert_eq!(scaled_quant(&LUMA_QUANT, 90)[0], 3);
        assert_eq!(scaled_quant(&LUMA_QUANT, 90)[63], 20); // natural 63: 99 * 0.2 = 19.8
        assert!(scaled_quant(&CHROMA_QUANT, 100).iter().all(|&q| q == 1));
    }

    #[test]
    fn negative_coefficients_are_sent_as_ones_complement() {
        assert_eq!(category(0), (0, 0));
        assert_eq!(category(1), (1, 0b1));
        assert_eq!(category(-1), (1, 0b0));
        assert_eq!(category(-5), (3, 0b010));
        assert_eq!(category(1023), (10, 1023));
    }

    #[test]
    fn nonzero_mask_marks_exactly_the_nonzero_coefficients() {
        let mut block = [0i16; 64];
        for k in [0, 1, 7, 8, 9, 30, 55, 63] {
            block[k] = if k % 2 == 0 { -3 } else { 1 };
        }
        let expected = [0u32, 1, 7, 8, 9, 30, 55, 63]
            .iter()
            .fold(0u64, |m, &k| m | 1 << k);
        assert_eq!(nonzero_mask(&block), expected);
        assert_eq!(nonzero_mask(&[0; 64]), 0);
        assert_eq!(nonzero_mask(&[i16::MIN; 64]), u64::MAX);
    }

    #[test]
    fn dct_of_a_flat_block_is_its_dc_only() {
        let divisors = dct_divisors(&[1; 64]);
        let block = quantised_block(&[[10.0; 8]; 8], &divisors);
        // DC of the orthonormal 2-D DCT of a constant c is 8c.
        assert_eq!(block[0], 80);
        assert!(block[1..].iter().all(|&c| c == 0));
    }

    /// Pillow 13 (libjpeg-turbo) on the same [`test_image`]s, 4:2:0, by this script:
    ///
    /// ```python
    /// import math, io, numpy as np
    /// from PIL import Image
    /// def img(w, h):
    ///     a = np.zeros((h, w, 3), np.uint8)
    ///     for y in range(h):
    ///         for x in range(w):
    ///             a[y, x] = [x * 255 // w, y * 255 // h,
    ///                        int(128 + 60 * math.sin(x / 9.0) + (x * 7 + y * 13) % 23)]
    ///     return a
    /// for w, h in [(64, 48), (256, 256), (17, 9)]:
    ///     for q in [30, 90]:
    ///         a = img(w, h); buf = io.BytesIO(); Image.fromarray(a).save(buf, "JPEG", quality=q)
    ///         d = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(float)
    ///         print(w, h, q, buf.tell(), round(10 * np.log10(255**2 / ((d - a)**2).mean()), 2))
    /// ```
    const PILLOW: [(usize, usize, u8, usize, f64); 6] = [
        (64, 48, 30, 790, 33.77),
        (64, 48, 90, 1094, 36.11),
        (256, 256, 30, 3192, 33.35),
        (256, 256, 90, 6405, 36.19),
        (17, 9, 30, 659, 30.09),
        (17, 9, 90, 716, 32.99),
    ];

    #[test]
    fn matches_libjpeg_in_size_and_fidelity() {
        for (w, h, quality, pillow_bytes, pillow_db) in PILLOW {
            let rgb = test_image(w, h);
            let mut ours = Vec::new();
            encode_rgb(&rgb, w as u16, h as u16, quality, &mut ours);
            let (dw, dh, pixels) = decode(&ours);
            assert_eq!((dw, dh), (w, h));
            let db = psnr(&rgb, &pixels);
            let size = ours.len() as f64 / pillow_bytes as f64;
            assert!(
                (db - pillow_db).abs() < 0.3 && (0.95..1.05).contains(&size),
                "{w}x{h} q{quality}: ours {} B {db:.2} dB, Pillow {pillow_bytes} B {pillow_db} dB",
                ours.len()
            );
        }
    }

    #[test]
    fn any_size_decodes_to_that_size() {
        // Whole MCUs or not, down to one pixel.
        for (w, h) in [(1, 1), (40, 3), (3, 40), (16, 16), (33, 17)] {
            let mut out = Vec::new();
            encode_rgb(&test_image(w, h), w as u16, h as u16, 75, &mut out);
            let (dw, dh, _) = decode(&out);
            assert_eq!((dw, dh), (w, h));
        }
    }

    #[test]
    fn the_avx2_build_writes_the_same_bytes_as_the_portable_one() {
        if !has_avx2_and_bmi() {
            return; // nothing to compare on this CPU
        }
        let rgb = test_image(72, 40);
        let encode = |fast| {
            let mut out = Vec::new();
            encode_with(&rgb, 72, 40, 85, &mut out, fast);
            out
        };
        assert_eq!(encode(true), encode(false));
    }

    #[test]
    fn higher_quality_is_larger_and_closer() {
        // Gray, so that 4:2:0 chroma does not cap the PSNR.
        let rgb: Vec<u8> = test_image(64, 48)
            .chunks_exact(3)
            .flat_map(|p| [p[2]; 3])
            .collect();
        let encode = |q| {
            let mut out = Vec::new();
            encode_rgb(&rgb, 64, 48, q, &mut out);
            out
        };
        let (low, high) = (encode(30), encode(95));
        assert!(high.len() > low.len());
        let (low_db, high_db) = (psnr(&rgb, &decode(&low).2), psnr(&rgb, &decode(&high).2));
        assert!(
            high_db > low_db + 5.0,
            "q30 {low_db:.1} dB, q95 {high_db:.1} dB"
        );
    }
}

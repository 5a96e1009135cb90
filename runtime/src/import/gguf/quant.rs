//! ggml's tensor types: their block sizes (so the reader can bound every tensor, whatever its
//! type) and dequantization to f32 for the types kilotune imports.
//!
//! Block layouts follow ggml's `ggml-common.h`; each dequantizer computes exactly what ggml's
//! reference `dequantize_row_*` (and `gguf-py`'s numpy port) computes, one multiply and one add
//! per element, so the result matches them bit for bit.

use half::{bf16, f16};

/// A ggml tensor type, numbered as `enum ggml_type` in `ggml.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // ggml's own spelling, so a reader can grep both code bases
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 32 × 4-bit, one f16 scale.
    Q4_0,
    /// 32 × 4-bit, f16 scale and minimum.
    Q4_1,
    /// 32 × 5-bit, one f16 scale.
    Q5_0,
    /// 32 × 5-bit, f16 scale and minimum.
    Q5_1,
    /// 32 × 8-bit, one f16 scale.
    Q8_0,
    /// 32 × 8-bit, f16 scale and sum (an activation type).
    Q8_1,
    /// K-quant, 2-bit.
    Q2_K,
    /// K-quant, 3-bit.
    Q3_K,
    /// K-quant, 4-bit.
    Q4_K,
    /// K-quant, 5-bit.
    Q5_K,
    /// K-quant, 6-bit.
    Q6_K,
    /// K-quant, 8-bit (an activation type).
    Q8_K,
    /// i-quant.
    IQ2_XXS,
    /// i-quant.
    IQ2_XS,
    /// i-quant.
    IQ3_XXS,
    /// i-quant.
    IQ1_S,
    /// i-quant.
    IQ4_NL,
    /// i-quant.
    IQ3_S,
    /// i-quant.
    IQ2_S,
    /// i-quant.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// i-quant.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary.
    TQ1_0,
    /// Ternary.
    TQ2_0,
    /// Microscaling FP4.
    MXFP4,
}

impl GgmlType {
    /// The type for a ggml type id; `None` for ids ggml never defined or has retired
    /// (4, 5, 31–33, 36–38).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// ggml's name for the type (`"Q4_1"`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }

    /// `(elements per block, bytes per block)`, as ggml's type traits state them.
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 | IQ4_NL => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            MXFP4 => (32, 17),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
        }
    }

    /// Whether [`dequantize`] reads this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0)
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) to f32, or `None` when `ty` is not one
/// [`GgmlType::can_dequantize`] accepts or `bytes` is not a whole number of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (per_block, block_bytes) = ty.block();
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    if !bytes.len().is_multiple_of(block_bytes) || !ty.can_dequantize() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * per_block);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|c| half_at(c, 0))),
        GgmlType::BF16 => out.extend(blocks.map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
        GgmlType::Q8_0 => {
            // d: f16, qs: [i8; 32]. x = qs * d.
            for b in blocks {
                let d = half_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            // d: f16, qs: [u8; 16]. Element j is the low nibble of qs[j], element j + 16 its
            // high nibble; x = (nibble - 8) * d.
            for b in blocks {
                let d = half_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
                out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
        GgmlType::Q4_1 => {
            // d: f16, m: f16, qs: [u8; 16]; nibbles as Q4_0, x = nibble * d + m.
            for b in blocks {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            // Q5_0: d: f16, qh: u32, qs: [u8; 16]; Q5_1 adds m: f16 after d. Bit j of qh is the
            // fifth bit of element j, bit j + 16 that of element j + 16.
            // Q5_0: x = (q - 16) * d; Q5_1: x = q * d + m.
            let with_min = ty == GgmlType::Q5_1;
            for b in blocks {
                let d = half_at(b, 0);
                let (m, rest) = if with_min { (half_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let value = |q: u8| {
                    if with_min {
                        f32::from(q) * d + m
                    } else {
                        f32::from(q as i8 - 16) * d
                    }
                };
                out.extend(qs.iter().enumerate().map(|(j, &q)| value((q & 0x0F) | ((((qh >> j) & 1) as u8) << 4))));
                out.extend(qs.iter().enumerate().map(|(j, &q)| value((q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4))));
            }
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn type_ids_round_trip_and_retired_ids_are_refused() {
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id, "{}", t.name());
            }
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn f32_f16_bf16() {
        let b: Vec<u8> = [1.5f32, -2.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &b), Some(vec![1.5, -2.25]));
        // 0x3C00 = 1.0, 0xC000 = -2.0, 0x7BFF = 65504 (f16's largest).
        assert_eq!(dequantize(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B]), Some(vec![1.0, -2.0, 65504.0]));
        // bf16 0x3FC0 = 1.5, 0xC040 = -3.0.
        assert_eq!(dequantize(GgmlType::BF16, &[0xC0, 0x3F, 0x40, 0xC0]), Some(vec![1.5, -3.0]));
    }

    #[test]
    fn q8_0_is_the_signed_byte_times_the_scale() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
        assert_eq!(dequantize(GgmlType::Q8_0, &b), Some(want));
        // -128 is a legal quant.
        let mut b = h(2.0).to_vec();
        b.extend([0x80u8; 32]);
        assert_eq!(dequantize(GgmlType::Q8_0, &b), Some(vec![-256.0; 32]));
    }

    #[test]
    fn q4_0_low_nibbles_are_the_first_half() {
        // qs[j] = (15 - j) << 4 | j: element j = (j - 8) * d, element 16 + j = (7 - j) * d.
        let mut b = h(0.25).to_vec();
        b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let mut want: Vec<f32> = (0..16).map(|j| (j as f32 - 8.0) * 0.25).collect();
        want.extend((0..16).map(|j| (7.0 - j as f32) * 0.25));
        assert_eq!(dequantize(GgmlType::Q4_0, &b), Some(want));
    }

    #[test]
    fn q4_1_adds_the_minimum() {
        // d = 0.5, m = -1.0, qs[j] = 0xF0 | j: element j = j/2 - 1, element 16 + j = 15/2 - 1.
        let mut b = h(0.5).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| 0xF0 | j));
        let mut want: Vec<f32> = (0..16).map(|j| j as f32 * 0.5 - 1.0).collect();
        want.extend([6.5; 16]);
        assert_eq!(dequantize(GgmlType::Q4_1, &b), Some(want));
    }

    #[test]
    fn q5_0_and_q5_1_take_the_fifth_bit_from_qh() {
        // qh has bits 0 (element 0) and 17 (element 17) set; every nibble is 3.
        let qh = (1u32 << 0 | 1 << 17).to_le_bytes();
        let mut b = h(1.0).to_vec();
        b.extend(qh);
        b.extend([0x33u8; 16]);
        let mut want = vec![3.0 - 16.0; 32];
        want[0] = 19.0 - 16.0;
        want[17] = 19.0 - 16.0;
        assert_eq!(dequantize(GgmlType::Q5_0, &b), Some(want));

        let mut b = h(0.5).to_vec();
        b.extend(h(10.0));
        b.extend(qh);
        b.extend([0x33u8; 16]);
        let mut want = vec![3.0 * 0.5 + 10.0; 32];
        want[0] = 19.0 * 0.5 + 10.0;
        want[17] = 19.0 * 0.5 + 10.0;
        assert_eq!(dequantize(GgmlType::Q5_1, &b), Some(want));
    }

    #[test]
    fn partial_blocks_and_undequantized_types_are_refused() {
        assert_eq!(dequantize(GgmlType::Q8_0, &[0; 33]), None);
        assert_eq!(dequantize(GgmlType::F32, &[0; 7]), None);
        assert_eq!(dequantize(GgmlType::Q6_K, &[0; 210]), None);
        assert_eq!(dequantize(GgmlType::Q4_1, &[]), Some(vec![]));
    }
}

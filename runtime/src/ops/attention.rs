//! `Attention`: fused scaled-dot-product attention,
//! softmax(scale · Q·Kᵀ + mask) · V with padding or causal masks and grouped KV heads.
//!
//! The fusion pass finds it from the `Softmax` outward in both exporters' forms: the scale
//! may be split over Q and K (dynamo), K may arrive transposed in several ways, and the
//! exporters' `IsNaN`/`Where` guard for fully-masked rows is built into the kernel. Q, K and V
//! are read in place, in whichever layout the projections left them: the per-head transposes
//! of the exported graph are never materialized.

pub use super::attention_prefix::PrefixKv;
use super::{broadcast, shape_err};
use crate::error::Result;
use crate::kernels::attention::{attention_f32, AttentionDims, MaskView, Operand, Strides};
use crate::ops::shape::permute;
use crate::tensor::{shape_of, Tensor};

/// How an operand is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [batch, heads, seq, head_dim].
    Bhsd,
    /// [batch, seq, heads, head_dim] (the projection's output, viewed per head).
    Bshd,
}

/// The fused attention op.
#[derive(Clone)]
pub struct Attention {
    /// The factor on Q·Kᵀ.
    pub scale: f32,
    /// Layout of Q.
    pub q_layout: Layout,
    /// Layout of K (the un-transposed keys).
    pub k_layout: Layout,
    /// Layout of V.
    pub v_layout: Layout,
    /// Whether a causal mask applies on top of any given mask.
    pub causal: bool,
    /// Whether the output is [B, S, H, D] (the following transpose was absorbed) rather than
    /// [B, H, S, D].
    pub out_bshd: bool,
    /// A user's prefix-tuning keys and values, when a delta has them.
    pub prefix: Option<std::sync::Arc<PrefixKv>>,
}

// Written by hand so that an unpatched op prints exactly as the derived form did before the
// prefix existed: the base fingerprint hashes this text.
impl std::fmt::Debug for Attention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Attention");
        d.field("scale", &self.scale)
            .field("q_layout", &self.q_layout)
            .field("k_layout", &self.k_layout)
            .field("v_layout", &self.v_layout)
            .field("causal", &self.causal)
            .field("out_bshd", &self.out_bshd);
        if let Some(p) = &self.prefix {
            d.field("prefix_len", &p.len);
        }
        d.finish()
    }
}

/// The mask's elements and (batch, head, row) strides for scores of shape `full`
/// = [B, H, Sq, Sk]; a mask broadcast along keys is materialized so keys stay contiguous.
pub(crate) fn prepare_mask(m: &Tensor, full: [usize; 4]) -> Result<(std::borrow::Cow<'_, [f32]>, [usize; 3])> {
    let bs = broadcast::broadcast_shapes(m.shape(), &full)
        .filter(|s| s.as_slice() == full)
        .ok_or_else(|| shape_err(format!("Attention mask {:?} does not fit {full:?}", m.shape())))?;
    let md = m.typed::<f32>("Attention mask")?;
    let st = broadcast::broadcast_strides(m.shape(), &bs);
    if st[3] == 1 || full[3] == 1 {
        return Ok((std::borrow::Cow::Borrowed(md), [st[0], st[1], st[2]]));
    }
    let e = crate::ops::shape::expand(m, &Tensor::new(&[4], full.iter().map(|&x| x as i64).collect())?)?;
    let st = broadcast::broadcast_strides(&full, &full);
    Ok((std::borrow::Cow::Owned(e.typed::<f32>("Attention mask")?.to_vec()), [st[0], st[1], st[2]]))
}

/// Reads an operand in `layout` as contiguous [B, H, S, D] (copying only for [B, S, H, D]).
pub(crate) fn to_bhsd(t: &Tensor, layout: Layout) -> Result<Vec<f32>> {
    let v = t.typed::<f32>("Attention operand")?;
    Ok(match layout {
        Layout::Bhsd => v.to_vec(),
        Layout::Bshd => permute(v, t.shape(), &[0, 2, 1, 3]),
    })
}

/// (batch, heads, seq, head_dim, strides) of an operand in `layout`.
pub(crate) fn view(t: &Tensor, layout: Layout, what: &str) -> Result<([usize; 4], Strides)> {
    if t.rank() != 4 {
        return Err(shape_err(format!("Attention {what}: expected rank 4, got {:?}", t.shape())));
    }
    let s = t.shape();
    Ok(match layout {
        Layout::Bhsd => ([s[0], s[1], s[2], s[3]], Strides::bhsd(s[1], s[2], s[3])),
        Layout::Bshd => ([s[0], s[2], s[1], s[3]], Strides::bshd(s[2], s[1], s[3])),
    })
}

impl Attention {
    /// Runs the attention.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let ([b, h, sq, d], qs) = view(q, self.q_layout, "Q")?;
        let ([kb, kh, sk, kdim], ks) = view(k, self.k_layout, "K")?;
        let ([vb, vh, vs, vdim], vst) = view(v, self.v_layout, "V")?;
        if kb != b || vb != b || kdim != d || vdim != d || vh != kh || vs != sk || kh == 0 || h % kh != 0 {
            return Err(shape_err(format!(
                "Attention: Q {:?}, K {:?}, V {:?} do not fit",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        let dims = AttentionDims { batch: b, heads: h, kv_heads: kh, q_len: sq, kv_len: sk, head_dim: d };
        let full = [b, h, sq, sk];
        let prepared = mask.map(|m| prepare_mask(m, full)).transpose()?;
        let mask_view = prepared.as_ref().map(|(data, st)| MaskView { data, batch_stride: st[0], head_stride: st[1], row_stride: st[2] });
        let mut out = vec![0f32; b * sq * h * d];
        let qo = Operand { data: q.typed::<f32>("Q")?, strides: qs };
        match &self.prefix {
            None => {
                let k = Operand { data: k.typed::<f32>("K")?, strides: ks };
                let v = Operand { data: v.typed::<f32>("V")?, strides: vst };
                attention_f32(qo, k, v, mask_view.as_ref(), self.causal, self.scale, &dims, &mut out);
            }
            Some(p) => {
                if p.k.len() != p.len * kh * d || p.v.len() != p.len * kh * d {
                    return Err(shape_err(format!("Attention prefix of {} rows does not fit {kh} kv heads of {d}", p.len)));
                }
                let kp = p.prepend(&p.k, &to_bhsd(k, self.k_layout)?, b, kh, sk, d);
                let vp = p.prepend(&p.v, &to_bhsd(v, self.v_layout)?, b, kh, sk, d);
                let total = p.len + sk;
                let ext = mask_view.as_ref().map(|m| p.extend_mask(m, b, h, sq, sk));
                let ext_view = ext.as_ref().map(|(data, st)| MaskView { data, batch_stride: st[0], head_stride: st[1], row_stride: st[2] });
                let dims = AttentionDims { kv_len: total, ..dims };
                let st = Strides::bhsd(kh, total, d);
                attention_f32(qo, Operand { data: &kp, strides: st }, Operand { data: &vp, strides: st }, ext_view.as_ref(), self.causal, self.scale, &dims, &mut out);
            }
        }
        if self.out_bshd {
            Ok(Tensor::from_parts(shape_of(&[b, sq, h, d])?, out))
        } else {
            Ok(Tensor::from_parts(shape_of(&[b, h, sq, d])?, permute(&out, &[b, sq, h, d], &[0, 2, 1, 3])))
        }
    }
}

//! Elementwise ops: broadcasting arithmetic, comparisons, logic, unary math, `Where`, `Cast`,
//! and the fused activations `Gelu` and `Silu`.

use super::broadcast;
use super::shape_err;
use crate::error::Result;
use crate::tensor::{DType, Data, Tensor};

/// Binary elementwise operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a · b
    Mul,
    /// a / b (integer division truncates, as ONNX specifies)
    Div,
    /// a ^ b
    Pow,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// logical and
    And,
    /// logical or
    Or,
    /// a == b
    Equal,
    /// a < b
    Less,
    /// a <= b
    LessOrEqual,
    /// a > b
    Greater,
    /// a >= b
    GreaterOrEqual,
}

impl BinaryOp {
    /// The ONNX op name.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Max => "Max",
            BinaryOp::Min => "Min",
            BinaryOp::And => "And",
            BinaryOp::Or => "Or",
            BinaryOp::Equal => "Equal",
            BinaryOp::Less => "Less",
            BinaryOp::LessOrEqual => "LessOrEqual",
            BinaryOp::Greater => "Greater",
            BinaryOp::GreaterOrEqual => "GreaterOrEqual",
        }
    }

    fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual
        )
    }
}

/// Unary elementwise operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// √x
    Sqrt,
    /// 1/x
    Reciprocal,
    /// erf(x)
    Erf,
    /// 1/(1+e^-x)
    Sigmoid,
    /// sin x
    Sin,
    /// cos x
    Cos,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// tanh x
    Tanh,
    /// max(x, 0)
    Relu,
    /// |x|
    Abs,
    /// x is NaN
    IsNaN,
    /// logical not
    Not,
}

impl UnaryOp {
    /// The ONNX op name.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "Neg",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Reciprocal => "Reciprocal",
            UnaryOp::Erf => "Erf",
            UnaryOp::Sigmoid => "Sigmoid",
            UnaryOp::Sin => "Sin",
            UnaryOp::Cos => "Cos",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Tanh => "Tanh",
            UnaryOp::Relu => "Relu",
            UnaryOp::Abs => "Abs",
            UnaryOp::IsNaN => "IsNaN",
            UnaryOp::Not => "Not",
        }
    }
}

fn arith_f32(op: BinaryOp) -> Option<fn(f32, f32) -> f32> {
    Some(match op {
        BinaryOp::Add => |a, b| a + b,
        BinaryOp::Sub => |a, b| a - b,
        BinaryOp::Mul => |a, b| a * b,
        BinaryOp::Div => |a, b| a / b,
        BinaryOp::Pow => |a: f32, b: f32| if b == 2.0 { a * a } else { a.powf(b) },
        BinaryOp::Max => |a: f32, b: f32| if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) },
        BinaryOp::Min => |a: f32, b: f32| if a.is_nan() || b.is_nan() { f32::NAN } else { a.min(b) },
        _ => return None,
    })
}

fn arith_int<T>(op: BinaryOp) -> Option<fn(T, T) -> T>
where
    T: Copy + Ord + num_like::Int,
{
    Some(match op {
        BinaryOp::Add => |a: T, b: T| a.wadd(b),
        BinaryOp::Sub => |a: T, b: T| a.wsub(b),
        BinaryOp::Mul => |a: T, b: T| a.wmul(b),
        BinaryOp::Div => |a: T, b: T| a.tdiv(b),
        BinaryOp::Max => |a: T, b: T| a.max(b),
        BinaryOp::Min => |a: T, b: T| a.min(b),
        BinaryOp::Pow => |a: T, b: T| a.ipow(b),
        _ => return None,
    })
}

mod num_like {
    /// The integer arithmetic ONNX asks of shape computations: wrapping, truncating division
    /// (0 on division by zero rather than a panic; ONNX leaves it undefined).
    pub trait Int: Sized {
        fn wadd(self, o: Self) -> Self;
        fn wsub(self, o: Self) -> Self;
        fn wmul(self, o: Self) -> Self;
        fn tdiv(self, o: Self) -> Self;
        fn ipow(self, o: Self) -> Self;
    }
    macro_rules! int {
        ($t:ty) => {
            impl Int for $t {
                fn wadd(self, o: Self) -> Self { self.wrapping_add(o) }
                fn wsub(self, o: Self) -> Self { self.wrapping_sub(o) }
                fn wmul(self, o: Self) -> Self { self.wrapping_mul(o) }
                fn tdiv(self, o: Self) -> Self { self.checked_div(o).unwrap_or(0) }
                fn ipow(self, o: Self) -> Self { self.wrapping_pow(u32::try_from(o).unwrap_or(0)) }
            }
        };
    }
    int!(i64);
    int!(i32);
}

fn compare<T: PartialOrd>(op: BinaryOp) -> fn(T, T) -> bool {
    match op {
        BinaryOp::Equal => |a, b| a == b,
        BinaryOp::Less => |a, b| a < b,
        BinaryOp::LessOrEqual => |a, b| a <= b,
        BinaryOp::Greater => |a, b| a > b,
        _ => |a, b| a >= b,
    }
}

/// Applies a binary op with broadcasting.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ash, bsh) = (a.shape(), b.shape());
    let mismatch = || shape_err(format!("{} of {:?} and {:?}", op.name(), a.dtype(), b.dtype()));
    macro_rules! go {
        ($x:expr, $y:expr, $f:expr) => {{
            let (s, v) = broadcast::binary($x, ash, $y, bsh, $f)?;
            Ok(Tensor::from_parts(s, v))
        }};
    }
    match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => {
            if op.is_comparison() {
                go!(x, y, compare::<f32>(op))
            } else {
                go!(x, y, arith_f32(op).ok_or_else(mismatch)?)
            }
        }
        (Data::I64(x), Data::I64(y)) => {
            if op.is_comparison() {
                go!(x, y, compare::<i64>(op))
            } else {
                go!(x, y, arith_int::<i64>(op).ok_or_else(mismatch)?)
            }
        }
        (Data::I32(x), Data::I32(y)) => {
            if op.is_comparison() {
                go!(x, y, compare::<i32>(op))
            } else {
                go!(x, y, arith_int::<i32>(op).ok_or_else(mismatch)?)
            }
        }
        (Data::F32(x), Data::I64(y)) if op == BinaryOp::Pow => go!(x, y, |a: f32, b: i64| a.powi(b as i32)),
        (Data::Bool(x), Data::Bool(y)) => match op {
            BinaryOp::And => go!(x, y, |a: bool, b: bool| a && b),
            BinaryOp::Or => go!(x, y, |a: bool, b: bool| a || b),
            BinaryOp::Equal => go!(x, y, |a: bool, b: bool| a == b),
            _ => Err(mismatch()),
        },
        _ => Err(mismatch()),
    }
}

/// Applies a unary op.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let shape = x.dims().clone();
    match (op, x.data()) {
        (UnaryOp::Not, Data::Bool(v)) => Ok(Tensor::from_parts(shape, v.iter().map(|&b| !b).collect())),
        (UnaryOp::IsNaN, Data::F32(v)) => Ok(Tensor::from_parts(shape, v.iter().map(|x| x.is_nan()).collect())),
        (UnaryOp::Neg, Data::I64(v)) => Ok(Tensor::from_parts(shape, v.iter().map(|x| x.wrapping_neg()).collect())),
        (UnaryOp::Abs, Data::I64(v)) => Ok(Tensor::from_parts(shape, v.iter().map(|x| x.wrapping_abs()).collect())),
        (_, Data::F32(v)) => {
            let f: fn(f32) -> f32 = match op {
                UnaryOp::Neg => |x| -x,
                UnaryOp::Sqrt => f32::sqrt,
                UnaryOp::Reciprocal => |x| 1.0 / x,
                UnaryOp::Erf => crate::kernels::activation::erf,
                UnaryOp::Sigmoid => sigmoid,
                UnaryOp::Sin => f32::sin,
                UnaryOp::Cos => f32::cos,
                UnaryOp::Exp => f32::exp,
                UnaryOp::Log => f32::ln,
                UnaryOp::Tanh => f32::tanh,
                UnaryOp::Relu => |x| x.max(0.0),
                UnaryOp::Abs => f32::abs,
                // `IsNaN` of f32 is handled above; `Not` is defined on booleans only.
                UnaryOp::IsNaN | UnaryOp::Not => return Err(shape_err(format!("{} of {:?}", op.name(), x.dtype()))),
            };
            Ok(Tensor::from_parts(shape, v.iter().map(|&x| f(x)).collect()))
        }
        _ => Err(shape_err(format!("{} of {:?}", op.name(), x.dtype()))),
    }
}

/// The logistic function: finite for every x, and kept out of subnormal arithmetic (see
/// [`crate::kernels::activation::sigmoid`]).
pub fn sigmoid(x: f32) -> f32 {
    crate::kernels::activation::sigmoid(x)
}

/// GELU: exact x·Φ(x) = 0.5·x·(1 + erf(x/√2)), or the tanh approximation.
pub fn gelu(x: &Tensor, tanh: bool) -> Result<Tensor> {
    let v = x.typed::<f32>("Gelu input")?;
    let out: Vec<f32> = if tanh {
        const C: f32 = 0.797_884_6; // √(2/π)
        v.iter().map(|&x| 0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())).collect()
    } else {
        let mut out = vec![0f32; v.len()];
        crate::kernels::activation::gelu(v, &mut out);
        out
    };
    Ok(Tensor::from_parts(x.dims().clone(), out))
}

/// SiLU: x · sigmoid(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let v = x.typed::<f32>("Silu input")?;
    let mut out = vec![0f32; v.len()];
    crate::kernels::activation::silu(v, &mut out);
    Ok(Tensor::from_parts(x.dims().clone(), out))
}

/// `Where(cond, x, y)` with three-way broadcasting.
pub fn where_(cond: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let c = cond.typed::<bool>("Where condition")?;
    let xy = broadcast::broadcast_shapes(x.shape(), y.shape())
        .ok_or_else(|| shape_err(format!("Where: {:?} and {:?} do not broadcast", x.shape(), y.shape())))?;
    let out = broadcast::broadcast_shapes(cond.shape(), &xy)
        .ok_or_else(|| shape_err(format!("Where: condition {:?} does not broadcast", cond.shape())))?;
    super::budget::check(&out, "Where")?;
    let strides = [
        broadcast::broadcast_strides(cond.shape(), &out),
        broadcast::broadcast_strides(x.shape(), &out),
        broadcast::broadcast_strides(y.shape(), &out),
    ];
    macro_rules! go {
        ($a:expr, $b:expr) => {{
            let mut v = Vec::with_capacity(out.iter().product());
            broadcast::for_each_offset(&out, strides, |_, [ic, ix, iy]| v.push(if c[ic] { $a[ix] } else { $b[iy] }));
            Ok(Tensor::from_parts(out, v))
        }};
    }
    match (x.data(), y.data()) {
        (Data::F32(a), Data::F32(b)) => go!(a, b),
        (Data::I64(a), Data::I64(b)) => go!(a, b),
        (Data::I32(a), Data::I32(b)) => go!(a, b),
        (Data::Bool(a), Data::Bool(b)) => go!(a, b),
        _ => Err(shape_err(format!("Where of {:?} and {:?}", x.dtype(), y.dtype()))),
    }
}

/// `Cast` between the supported dtypes (float → int truncates toward zero, as ONNX does).
pub fn cast(x: &Tensor, to: DType) -> Tensor {
    if x.dtype() == to {
        return x.clone();
    }
    let shape = x.dims().clone();
    let f = x.to_f32_vec();
    match to {
        DType::F32 => Tensor::from_parts(shape, f),
        DType::Bool => Tensor::from_parts(shape, f.iter().map(|&v| v != 0.0).collect()),
        _ => {
            // Integers go through i64 so large token ids and shapes stay exact.
            let ints: Vec<i64> = match x.data() {
                Data::F32(v) => v.iter().map(|&v| v as i64).collect(),
                _ => x.to_i64_vec("Cast").expect("non-float data converts to i64"),
            };
            match to {
                DType::I64 => Tensor::from_parts(shape, ints),
                DType::I32 => Tensor::from_parts(shape, ints.iter().map(|&v| v as i32).collect()),
                DType::I8 => Tensor::from_parts(shape, ints.iter().map(|&v| v as i8).collect()),
                DType::U8 => Tensor::from_parts(shape, ints.iter().map(|&v| v as u8).collect()),
                DType::F32 | DType::Bool => unreachable!("handled above"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unary op on every dtype is a value or a typed error, never a panic (the `onnx`
    /// fuzz target found `Not` of a float tensor reaching an `unreachable!`).
    #[test]
    fn every_unary_op_on_every_dtype_is_a_value_or_a_typed_error() {
        use crate::error::Error;
        use UnaryOp::*;
        let ops = [Neg, Sqrt, Reciprocal, Erf, Sigmoid, Sin, Cos, Exp, Log, Tanh, Relu, Abs, IsNaN, Not];
        let inputs = [
            Tensor::new(&[2], vec![1f32, -2.0]).unwrap(),
            Tensor::new(&[2], vec![1i64, -2]).unwrap(),
            Tensor::new(&[2], vec![1i32, -2]).unwrap(),
            Tensor::new(&[2], vec![1i8, -2]).unwrap(),
            Tensor::new(&[2], vec![1u8, 2]).unwrap(),
            Tensor::new(&[2], vec![true, false]).unwrap(),
        ];
        for op in ops {
            for x in &inputs {
                let floats = matches!(op, Neg | Sqrt | Reciprocal | Erf | Sigmoid | Sin | Cos | Exp | Log | Tanh | Relu | Abs | IsNaN) && x.dtype() == DType::F32;
                let defined = floats || (op == Not && x.dtype() == DType::Bool) || (matches!(op, Neg | Abs) && x.dtype() == DType::I64);
                match unary(op, x) {
                    Ok(y) => assert!(defined && y.shape() == x.shape(), "{} of {:?} gave a value of shape {:?}", op.name(), x.dtype(), y.shape()),
                    Err(e) => assert!(!defined && matches!(e, Error::InvalidModel(_)), "{} of {:?}: {e:?}", op.name(), x.dtype()),
                }
            }
        }
    }

    #[test]
    fn gelu_matches_closed_form_values() {
        // Φ(1) = 0.841344746 → gelu(1) = 0.841344746; gelu(-1) = -0.158655254
        let t = Tensor::new(&[2], vec![1.0f32, -1.0]).unwrap();
        let g = gelu(&t, false).unwrap();
        let v = g.as_slice::<f32>().unwrap();
        assert!((v[0] - 0.841_344_7).abs() < 1e-6 && (v[1] + 0.158_655_26).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn integer_division_truncates_and_never_panics() {
        let a = Tensor::new(&[3], vec![7i64, -7, 5]).unwrap();
        let b = Tensor::new(&[3], vec![2i64, 2, 0]).unwrap();
        let c = binary(BinaryOp::Div, &a, &b).unwrap();
        assert_eq!(c.as_slice::<i64>().unwrap(), &[3, -3, 0]);
    }

    #[test]
    fn where_broadcasts_all_three() {
        let c = Tensor::new(&[2, 1], vec![true, false]).unwrap();
        let x = Tensor::new(&[1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let y = Tensor::scalar(-1.0f32);
        let w = where_(&c, &x, &y).unwrap();
        assert_eq!(w.shape(), &[2, 3]);
        assert_eq!(w.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn mismatched_dtypes_are_errors() {
        let a = Tensor::new(&[1], vec![1.0f32]).unwrap();
        let b = Tensor::new(&[1], vec![1i64]).unwrap();
        assert!(binary(BinaryOp::Add, &a, &b).is_err());
    }
}

//! The metadata section: ordered key/value pairs of thirteen value types, arrays included.
//!
//! Arrays are stored typed (`Vec<f32>`, `Vec<String>`, ...), not as a list of [`Value`]s, so a
//! tokenizer's 150 000 tokens cost what they weigh. Every count is checked against the bytes left
//! in the file before anything is allocated for it, and arrays of arrays may nest at most
//! [`MAX_DEPTH`] levels.

use std::collections::HashMap;
use std::fmt;

use crate::cursor::Cursor;
use crate::error::{Error, Result};
pub use crate::types::ValueType;

/// Deepest nesting of arrays of arrays the reader accepts (llama.cpp writes none).
pub const MAX_DEPTH: usize = 8;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: all elements share one type.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// An integer of any width and signedness, widened; `None` for other types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Scalars as written; strings quoted and escaped; arrays as their type and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            // Debug: shortest round-trip digits, exponent notation for very large or small values.
            Value::F32(v) => write!(f, "{v:?}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
            Value::Array(a) => write!(f, "[{}; {}]", a.element_type(), a.len()),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v:?}"),
        }
    }
}

impl Array {
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (a copy; a nested array is cloned whole).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.clone()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }
}

/// The metadata of one file, in file order, with lookup by key.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every key and value, in the order the file stores them.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).and_then(|&i| self.entries.get(i)).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey { key: key.to_string() })
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Error::wrong_type(key, "a string", v.value_type()))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Error::wrong_type(key, "a bool", v.value_type())),
        }
    }

    /// An integer of any GGUF integer type whose value fits in `T`.
    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.require(key)?;
        let Some(i) = v.as_i128() else { return Err(Error::wrong_type(key, expected, v.value_type())) };
        T::try_from(i).map_err(|_| Error::WrongType {
            key: key.to_string(),
            expected,
            found: format!("{} {i}", v.value_type()),
        })
    }

    /// A u32 stored as any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "an integer that fits u32")
    }

    /// A u64 stored as any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "an integer that fits u64")
    }

    /// An i64 stored as any integer type whose value fits.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "an integer that fits i64")
    }

    /// An f32, or an f64 rounded to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(Error::wrong_type(key, "a float", v.value_type())),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&Array> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Error::wrong_type(key, "an array", v.value_type()))
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            Array::String(v) => Ok(v),
            a => Err(array_type(key, "an array of strings", a)),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.get_array(key)? {
            Array::F32(v) => Ok(v),
            a => Err(array_type(key, "an array of f32", a)),
        }
    }

    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.get_array(key)? {
            Array::I32(v) => Ok(v),
            a => Err(array_type(key, "an array of i32", a)),
        }
    }

    /// Reads `count` entries (the caller has read the count from the header).
    pub(crate) fn read(c: &mut Cursor<'_>, count: u64) -> Result<Metadata> {
        // Each entry takes at least 8 (key length) + 4 (type) + 1 bytes.
        let mut md = Metadata {
            entries: Vec::with_capacity(reserve(count, c.remaining(), 13)),
            index: HashMap::with_capacity(reserve(count, c.remaining(), 13)),
        };
        for i in 0..count {
            let key = c.string(&|| format!("the key of metadata entry {i}"))?;
            let code = c.u32(&|| format!("the type of metadata {key:?}"))?;
            let ty = ValueType::from_code(code)
                .ok_or_else(|| Error::UnknownValueType { key: key.clone(), code })?;
            let value = read_value(c, ty, &key, 0)?;
            if md.index.insert(key.clone(), md.entries.len()).is_some() {
                return Err(Error::DuplicateKey { key });
            }
            md.entries.push((key, value));
        }
        Ok(md)
    }
}

fn array_type(key: &str, expected: &'static str, found: &Array) -> Error {
    Error::WrongType {
        key: key.to_string(),
        expected,
        found: format!("an array of {}", found.element_type()),
    }
}

/// The capacity to reserve for `count` items of at least `min_bytes` each: never more than the
/// bytes left could hold, nor more than [`MAX_RESERVE`]. Past that the vector grows as items are
/// actually read, so memory follows what the file contains, not what it claims.
pub(crate) fn reserve(count: u64, remaining: usize, min_bytes: usize) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX).min(remaining / min_bytes).min(MAX_RESERVE)
}

/// Most items reserved ahead of reading them (see [`reserve`]).
const MAX_RESERVE: usize = 1 << 12;

fn read_value(c: &mut Cursor<'_>, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
    let what = || format!("the value of metadata {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(c.array(&what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(&what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        ValueType::Bool => Value::Bool(u8::from_le_bytes(c.array(&what)?) != 0),
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
    })
}

/// Reads `n` fixed-size little-endian values as one block of bytes (bounded by `take`).
fn fixed<const N: usize, T>(
    c: &mut Cursor<'_>,
    n: u64,
    what: &dyn Fn() -> String,
    from: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let bytes = c.take(n.saturating_mul(N as u64), what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|b| {
            let mut a = [0; N];
            a.copy_from_slice(b);
            from(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array> {
    if depth >= MAX_DEPTH {
        return Err(Error::TooDeep { key: key.to_string(), max: MAX_DEPTH });
    }
    let code = c.u32(&|| format!("the element type of array {key:?}"))?;
    let ty =
        ValueType::from_code(code).ok_or_else(|| Error::UnknownValueType { key: key.to_string(), code })?;
    let n = c.u64(&|| format!("the length of array {key:?}"))?;
    let what = || format!("the {n} elements ({ty}) of array {key:?}");
    // Every element takes at least `min_bytes`: a count the rest of the file cannot hold is
    // refused here, before anything is allocated for it.
    let min = ty.min_bytes() as u64;
    if n > (c.remaining() as u64) / min {
        return Err(Error::Truncated {
            what: what(),
            offset: c.position() as u64,
            needed: n.saturating_mul(min),
            len: (c.position() + c.remaining()) as u64,
        });
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(fixed(c, n, &what, u8::from_le_bytes)?),
        ValueType::I8 => Array::I8(fixed(c, n, &what, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(fixed(c, n, &what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(c, n, &what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(c, n, &what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(c, n, &what, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(c, n, &what, f32::from_le_bytes)?),
        ValueType::Bool => Array::Bool(fixed(c, n, &what, |[b]: [u8; 1]| b != 0)?),
        ValueType::U64 => Array::U64(fixed(c, n, &what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(c, n, &what, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(c, n, &what, f64::from_le_bytes)?),
        ValueType::String => {
            let mut v = Vec::with_capacity(reserve(n, c.remaining(), 8));
            for i in 0..n {
                v.push(c.string(&|| format!("element {i} of array {key:?}"))?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(reserve(n, c.remaining(), 12));
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}

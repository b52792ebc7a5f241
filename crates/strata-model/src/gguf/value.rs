//! GGUF metadata values and the ordered key → value table, with typed getters whose errors
//! name the key, what was found and what was expected.

use std::collections::HashMap;

use super::GgufError;

/// One metadata value. Arrays hold values of one type (GGUF allows nested arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A u8 (GGUF value type 0).
    U8(u8),
    /// An i8 (GGUF value type 1).
    I8(i8),
    /// A u16 (GGUF value type 2).
    U16(u16),
    /// An i16 (GGUF value type 3).
    I16(i16),
    /// A u32 (GGUF value type 4).
    U32(u32),
    /// An i32 (GGUF value type 5).
    I32(i32),
    /// A u64 (GGUF value type 10).
    U64(u64),
    /// An i64 (GGUF value type 11).
    I64(i64),
    /// An f32 (GGUF value type 6).
    F32(f32),
    /// An f64 (GGUF value type 12).
    F64(f64),
    /// A bool, stored as one byte 0 or 1 (GGUF value type 7).
    Bool(bool),
    /// A UTF-8 string (GGUF value type 8).
    String(String),
    /// An array of values of one type (GGUF value type 9).
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is an integer ≥ 0 of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            ref other => other.as_u64().and_then(|v| i64::try_from(v).ok()).or(match *other {
                Value::I8(v) => Some(v.into()),
                Value::I16(v) => Some(v.into()),
                Value::I32(v) => Some(v.into()),
                _ => None,
            }),
        }
    }

    /// The value as f64 (floats and integers).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            ref other => other.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for tables: arrays show their type and length, long strings are cut.
    pub fn summary(&self) -> String {
        match self {
            Value::Array(a) => {
                let inner = a.first().map_or("?", Value::type_name);
                format!("[{inner}; {}]", a.len())
            }
            Value::String(s) if s.chars().count() > 60 => {
                let head: String = s.chars().take(57).collect();
                format!("{:?}…", head)
            }
            Value::String(s) => format!("{s:?}"),
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}

/// The metadata of a GGUF file: keys in file order, unique.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    ///
    /// # Errors
    /// [`GgufError::DuplicateKey`] if the key is already present.
    pub fn insert(&mut self, key: String, value: Value) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Adds or replaces a key (writers building a file).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.index.get(key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.to_string(), value));
            }
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn required(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    fn wrong(key: &str, v: &Value, expected: &'static str) -> GgufError {
        GgufError::BadValue { key: key.to_string(), value: v.summary(), expected: expected.to_string() }
    }

    /// A required unsigned integer (any integer width).
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.required(key)?;
        v.as_u64().ok_or_else(|| Self::wrong(key, v, "a non-negative integer"))
    }

    /// An optional unsigned integer: `Ok(None)` if absent, an error if present with another type.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| Self::wrong(key, v, "a non-negative integer"))).transpose()
    }

    /// The number at `key`; an error when absent or not a number.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.required(key)?;
        v.as_f64().ok_or_else(|| Self::wrong(key, v, "a number"))
    }

    /// The number at `key`, `None` when absent; an error when not a number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| Self::wrong(key, v, "a number"))).transpose()
    }

    /// The string at `key`; an error when absent or not a string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.required(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, v, "a string"))
    }

    /// The string at `key`, `None` when absent; an error when not a string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| Self::wrong(key, v, "a string"))).transpose()
    }

    /// The bool at `key`, `None` when absent; an error when not a bool.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| Self::wrong(key, v, "a bool"))).transpose()
    }

    /// The array at `key`; an error when absent or not an array.
    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.required(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, v, "an array"))
    }

    /// The array at `key`, `None` when absent; an error when not an array.
    pub fn opt_array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        self.get(key).map(|v| v.as_array().ok_or_else(|| Self::wrong(key, v, "an array"))).transpose()
    }

    /// A required array of strings.
    pub fn str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.array(key)?.iter().map(|v| v.as_str().ok_or_else(|| Self::wrong(key, v, "an array of strings"))).collect()
    }
}

//! Serde helpers for metric floats that may be NaN or infinite.
//!
//! JSON has no NaN or infinity, and `serde_json` writes them as `null`, which then cannot be read
//! back into an `f64`: one diverged metric made a run directory unresumable. Fields marked
//! `#[serde(with = "crate::nonfinite")]` write finite values as numbers and the others as the
//! strings `"NaN"`, `"inf"` and `"-inf"`, and read numbers, those strings, and `null` (as NaN,
//! for files written before).
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Row {
//!     #[serde(with = "darts::nonfinite")]
//!     loss: f64,
//! }
//! let s = serde_json::to_string(&Row { loss: f64::INFINITY }).unwrap();
//! assert_eq!(s, r#"{"loss":"inf"}"#);
//! assert_eq!(serde_json::from_str::<Row>(&s).unwrap(), Row { loss: f64::INFINITY });
//! let old: Row = serde_json::from_str(r#"{"loss":null}"#).unwrap();
//! assert!(old.loss.is_nan());
//! ```

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;

/// Serialise one float (see the module docs).
pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else if x.is_nan() {
        s.serialize_str("NaN")
    } else if *x > 0.0 {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

struct F64Visitor;

impl<'de> Visitor<'de> for F64Visitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, \"NaN\", \"inf\", \"-inf\" or null")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" | "nan" => Ok(f64::NAN),
            "inf" | "Infinity" => Ok(f64::INFINITY),
            "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
}

/// Deserialise one float (see the module docs).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(F64Visitor)
}

/// The same for `Vec<Vec<f64>>` (softmax(α) tables).
pub mod table {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct F(#[serde(with = "super")] f64);

    /// Serialise a table.
    pub fn serialize<S: Serializer>(rows: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(rows.len()))?;
        for r in rows {
            let row: Vec<F> = r.iter().map(|&x| F(x)).collect();
            seq.serialize_element(&row)?;
        }
        seq.end()
    }

    /// Deserialise a table.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        let rows = Vec::<Vec<F>>::deserialize(d)?;
        Ok(rows
            .into_iter()
            .map(|r| r.into_iter().map(|f| f.0).collect())
            .collect())
    }
}

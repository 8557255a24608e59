//! The two wire encodings of the Kinesis API: JSON 1.1 (`application/x-amz-json-1.1`,
//! blobs as base64 strings, timestamps as epoch seconds) and CBOR 1.1
//! (`application/x-amz-cbor-1.1`, blobs as byte strings, timestamps as tag 1
//! epoch seconds), which the AWS SDK for Java sends by default.
//!
//! Operations are written once against serde types; [`Blob`] and
//! [`Timestamp`] render themselves per encoding by asking the serializer
//! whether it is human-readable (JSON is, CBOR is not). Every decoding failure
//! is a `SerializationException`, never a panic.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::error::ApiError;

/// `Content-Type` of JSON 1.1.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// `Content-Type` of CBOR 1.1.
pub const CBOR_CONTENT_TYPE: &str = "application/x-amz-cbor-1.1";

/// The encoding of a request, and so of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON 1.1.
    Json,
    /// CBOR 1.1.
    Cbor,
}

impl Encoding {
    /// The encoding a `Content-Type` names; anything but CBOR is read as
    /// JSON (the AWS CLI and most SDKs send JSON 1.0/1.1 types).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.trim().to_ascii_lowercase().starts_with("application/x-amz-cbor") => {
                Self::Cbor
            }
            _ => Self::Json,
        }
    }

    /// The `Content-Type` of responses.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON_CONTENT_TYPE,
            Self::Cbor => CBOR_CONTENT_TYPE,
        }
    }

    /// Decodes a request body. An empty body is an empty structure.
    ///
    /// # Errors
    /// `SerializationException` when the body does not decode into `T`.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            match self {
                Self::Json => b"{}",
                Self::Cbor => &[0xa0],
            }
        } else {
            body
        };
        match self {
            Self::Json => serde_json::from_slice(body)
                .map_err(|e| ApiError::serialization(format!("Malformed JSON request: {e}"))),
            Self::Cbor => ciborium::from_reader(body)
                .map_err(|e| ApiError::serialization(format!("Malformed CBOR request: {e}"))),
        }
    }

    /// Encodes a response body.
    ///
    /// # Errors
    /// `InternalFailure` if the value cannot be encoded (a bug).
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, ApiError> {
        let fail = |e: &dyn fmt::Display| {
            ApiError::new(super::ErrorKind::InternalFailure, format!("encoding the response: {e}"))
        };
        match self {
            Self::Json => serde_json::to_vec(value).map_err(|e| fail(&e)),
            Self::Cbor => {
                let mut out = Vec::new();
                ciborium::into_writer(value, &mut out).map_err(|e| fail(&e))?;
                Ok(out)
            }
        }
    }
}

/// A data blob: base64 text in JSON, a byte string in CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Bytes);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&BASE64.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string or a byte string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
                BASE64
                    .decode(v)
                    .map(|b| Blob(Bytes::from(b)))
                    .map_err(|e| E::custom(format!("blob is not valid base64: {e}")))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(Bytes::from(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A point in time: epoch seconds (with fraction) in JSON, tag 1 in CBOR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timestamp(pub f64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub fn from_ms(ms: u64) -> Self {
        Self(ms as f64 / 1000.0)
    }

    /// Milliseconds since the Unix epoch (0 for times before it).
    pub fn to_ms(self) -> u64 {
        if self.0.is_finite() && self.0 > 0.0 { (self.0 * 1000.0).round() as u64 } else { 0 }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_f64(self.0)
        } else {
            ciborium::tag::Required::<f64, 1>(self.0).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            struct V;
            impl Visitor<'_> for V {
                type Value = Timestamp;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("epoch seconds")
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                    Ok(Timestamp(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                    Ok(Timestamp(v as f64))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                    Ok(Timestamp(v as f64))
                }
            }
            d.deserialize_any(V)
        } else {
            let mut v = ciborium::Value::deserialize(d)?;
            while let ciborium::Value::Tag(_, inner) = v {
                v = *inner;
            }
            match v {
                ciborium::Value::Float(f) => Ok(Timestamp(f)),
                ciborium::Value::Integer(i) => Ok(Timestamp(i128::from(i) as f64)),
                _ => Err(de::Error::custom("timestamp must be a number of epoch seconds")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Sample {
        data: Blob,
        at: Timestamp,
    }

    #[test]
    fn blobs_and_timestamps_in_both_encodings() {
        let s = Sample { data: Blob(Bytes::from_static(b"\x00hi\xff")), at: Timestamp(1.5) };
        let json = Encoding::Json.encode(&s).expect("json");
        assert_eq!(std::str::from_utf8(&json).expect("utf8"), r#"{"Data":"AGhp/w==","At":1.5}"#);
        assert_eq!(Encoding::Json.decode::<Sample>(&json).expect("decode"), s);
        let cbor = Encoding::Cbor.encode(&s).expect("cbor");
        // Tag 1 (0xc1) then a float (ciborium picks the shortest exact width).
        assert!(
            cbor.windows(2).any(|w| w[0] == 0xc1 && matches!(w[1], 0xf9..=0xfb)),
            "{cbor:02x?}"
        );
        assert_eq!(Encoding::Cbor.decode::<Sample>(&cbor).expect("decode"), s);
        // An integer timestamp under tag 1, as other CBOR writers send it.
        let mut m = Vec::new();
        let v = ciborium::Value::Map(vec![
            ("Data".into(), ciborium::Value::Bytes(vec![1, 2])),
            ("At".into(), ciborium::Value::Tag(1, Box::new(ciborium::Value::Integer(7.into())))),
        ]);
        ciborium::into_writer(&v, &mut m).expect("write");
        let d: Sample = Encoding::Cbor.decode(&m).expect("decode");
        assert_eq!((d.data.0.as_ref(), d.at.to_ms()), (&[1u8, 2][..], 7_000));
    }

    #[test]
    fn garbage_is_a_serialization_error() {
        for body in
            [&b"{"[..], b"[1,2]", b"{\"Data\": 5, \"At\": 1}", b"{\"Data\":\"!!\",\"At\":1}"]
        {
            let e = Encoding::Json.decode::<Sample>(body).expect_err("must fail");
            assert_eq!(e.kind, super::super::ErrorKind::Serialization, "{e}");
        }
        for body in [&[0xffu8][..], &[0xa1, 0x61], &[0x1b, 0xff]] {
            let e = Encoding::Cbor.decode::<Sample>(body).expect_err("must fail");
            assert_eq!(e.kind, super::super::ErrorKind::Serialization, "{e}");
        }
    }
}

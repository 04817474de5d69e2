//! Safetensors headers, parsed defensively and written deterministically.
//!
//! The blob stores every input header verbatim, so parsing only has to *understand* a header well
//! enough to locate tensor data; it never re-serialises what the user uploaded. Tensor data itself
//! is streamed by the caller, so nothing here needs the whole file in memory.

use std::io::Read;

use serde_json::{Map, Value};

/// Largest header we accept. The reference implementation allows 100 MB; real headers are far
/// smaller (2^17 tensors with 60-byte names take about 16 MB), and the header is held in memory
/// while a model is encoded, so the cap is the model-wide one.
pub const MAX_HEADER_LEN: u64 = MAX_MODEL_HEADER_BYTES;

/// Most tensors one file (and one model, across its files) may have. Memory per tensor is small
/// but not zero (its name, shape and offsets, its derived INT8 entries, its streams in the blob
/// index), so the count is what bounds it: 2^17 is well above the largest real checkpoints (a
/// 1T-parameter MoE in BF16 has about 70,000 tensors).
pub const MAX_TENSORS: usize = 1 << 17;

/// Most header bytes one model may have, all its files together: with [`MAX_TENSORS`], what
/// bounds the memory names take (a header of 2^17 tensors with 60-byte names is about 16 MB).
pub const MAX_MODEL_HEADER_BYTES: u64 = 32 << 20;

/// Everything that can be wrong with a safetensors file, each naming the problem for the user.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("file is too short to hold the 8-byte header length")]
    Truncated,
    #[error("header length {0} is larger than the {MAX_HEADER_LEN}-byte limit")]
    HeaderTooLarge(u64),
    /// The first bytes are text: a JSON file, a form body, an HTML page... not safetensors.
    #[error(
        "not a safetensors file: it starts with the text {0:?}, where a safetensors file starts with its header's length (8 bytes, little-endian) and then the JSON header"
    )]
    NotSafetensors(String),
    #[error("header is not valid UTF-8 JSON: {0}")]
    BadJson(String),
    #[error("header must be a JSON object")]
    NotAnObject,
    #[error("more than {MAX_TENSORS} tensors: that many are not accepted")]
    TooManyTensors,
    #[error("tensor {name:?}: {problem}")]
    BadTensor { name: String, problem: String },
    #[error("__metadata__ must map strings to strings")]
    BadMetadata,
    #[error("tensor data is not contiguous: {0}")]
    NotContiguous(String),
    #[error("file length {actual} does not match the {expected} bytes the header describes")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("i/o error while reading safetensors: {0}")]
    Io(#[from] std::io::Error),
}

/// Element types of the safetensors format that occupy whole bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum Dtype {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        use Dtype::*;
        match self {
            BOOL | U8 | I8 | F8_E5M2 | F8_E4M3 | F8_E8M0 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            I64 | U64 | F64 => 8,
        }
    }

    /// The name used in headers.
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            BOOL => "BOOL",
            U8 => "U8",
            I8 => "I8",
            F8_E5M2 => "F8_E5M2",
            F8_E4M3 => "F8_E4M3",
            F8_E8M0 => "F8_E8M0",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            I64 => "I64",
            U64 => "U64",
            F64 => "F64",
        }
    }

    /// Parses a header dtype name.
    pub fn parse(s: &str) -> Option<Dtype> {
        use Dtype::*;
        Some(match s {
            "BOOL" => BOOL,
            "U8" => U8,
            "I8" => I8,
            "F8_E5M2" => F8_E5M2,
            "F8_E4M3" => F8_E4M3,
            "F8_E8M0" => F8_E8M0,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "I64" => I64,
            "U64" => U64,
            "F64" => F64,
            _ => return None,
        })
    }

    /// Floating-point types, whose bit layout the plane codec exploits.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }
}

/// One tensor as the header describes it; offsets are relative to the start of the data area.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Length of the tensor's data in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    /// True for tensors with no data bytes.
    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }
}

/// A parsed header: the exact bytes (length prefix included) plus what they describe.
#[derive(Debug, Clone)]
pub struct Header {
    /// The 8-byte length prefix followed by the JSON, exactly as read.
    pub raw: Vec<u8>,
    pub metadata: Option<Map<String, Value>>,
    /// Tensors in data order (ascending offsets), which for a valid file is also file order.
    pub tensors: Vec<TensorInfo>,
    /// Indexes into `tensors`, sorted by name: lookups in O(log n) without a second copy of the
    /// names (a header may hold 2^18 of them).
    by_name: Vec<u32>,
}

impl Header {
    /// Offset of the data area in the file.
    pub fn data_start(&self) -> u64 {
        self.raw.len() as u64
    }

    /// Length of the data area.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    /// Total file length the header implies.
    pub fn file_len(&self) -> u64 {
        self.data_start() + self.data_len()
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let at = self
            .by_name
            .binary_search_by(|&i| self.tensors[i as usize].name.as_str().cmp(name))
            .ok()?;
        Some(&self.tensors[self.by_name[at] as usize])
    }

    /// True when a tensor is BF16 or FP16: what a blob stores (F32-only weights stay plain
    /// files, on the server and in `qstore push` alike).
    pub fn has_16bit_floats(&self) -> bool {
        self.tensors
            .iter()
            .any(|t| matches!(t.dtype, Dtype::BF16 | Dtype::F16))
    }

    /// Checks that a file of `actual` bytes is exactly what this header describes.
    pub fn check_file_len(&self, actual: u64) -> Result<(), SafetensorsError> {
        if self.file_len() != actual {
            return Err(SafetensorsError::LengthMismatch {
                expected: self.file_len(),
                actual,
            });
        }
        Ok(())
    }
}

/// Reads and validates a header from the start of a safetensors stream, leaving the reader at the
/// first data byte.
pub fn read_header(r: &mut impl Read) -> Result<Header, SafetensorsError> {
    let mut len_bytes = [0u8; 8];
    r.read_exact(&mut len_bytes).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SafetensorsError::Truncated,
        _ => SafetensorsError::Io(e),
    })?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_LEN {
        // A real header length has zero high bytes; printable text there means another format.
        if len_bytes
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            return Err(SafetensorsError::NotSafetensors(
                String::from_utf8_lossy(&len_bytes).into_owned(),
            ));
        }
        return Err(SafetensorsError::HeaderTooLarge(n));
    }
    let mut raw = Vec::with_capacity(8 + n as usize);
    raw.extend_from_slice(&len_bytes);
    let got = r.take(n).read_to_end(&mut raw)?;
    if got as u64 != n {
        return Err(SafetensorsError::BadJson(format!(
            "header declares {n} bytes but the file ends after {got}"
        )));
    }
    let (metadata, tensors, by_name) = parse_header_json(&raw[8..])?;
    Ok(Header {
        raw,
        metadata,
        tensors,
        by_name,
    })
}

/// The name index of [`Header`]; a name that appears twice is an error.
fn index_by_name(tensors: &[TensorInfo]) -> Result<Vec<u32>, SafetensorsError> {
    let mut by_name: Vec<u32> = (0..tensors.len() as u32).collect();
    by_name.sort_unstable_by(|&a, &b| tensors[a as usize].name.cmp(&tensors[b as usize].name));
    for w in by_name.windows(2) {
        let name = &tensors[w[0] as usize].name;
        if *name == tensors[w[1] as usize].name {
            return Err(twice(name.clone()));
        }
    }
    Ok(by_name)
}

fn twice(name: String) -> SafetensorsError {
    SafetensorsError::BadTensor {
        name,
        problem: "appears twice in the header".into(),
    }
}

/// Header metadata and tensors in data order, as [`parse_header_json`] returns them, with the
/// name index of [`Header`].
pub type ParsedHeader = (Option<Map<String, Value>>, Vec<TensorInfo>, Vec<u32>);

/// Parses header JSON into metadata and tensors sorted by offset, checking every invariant.
/// Entries are turned into [`TensorInfo`]s as the JSON is read, one at a time, so memory is the
/// tensors themselves, never a JSON tree of the whole header.
pub fn parse_header_json(json: &[u8]) -> Result<ParsedHeader, SafetensorsError> {
    let text = std::str::from_utf8(json).map_err(|e| SafetensorsError::BadJson(e.to_string()))?;
    if !text.trim_start().starts_with('{') {
        return Err(SafetensorsError::NotAnObject);
    }
    let Entries(parsed) =
        serde_json::from_str(text).map_err(|e| SafetensorsError::BadJson(e.to_string()))?;
    let (metadata, mut tensors) = parsed?;
    tensors.sort_by_key(|t| (t.begin, t.end));
    let by_name = index_by_name(&tensors)?;
    check_contiguous(&tensors)?;
    Ok((metadata, tensors, by_name))
}

type MetadataAndTensors = (Option<Map<String, Value>>, Vec<TensorInfo>);

/// A JSON object's entries parsed as they are read; the first problem found ends parsing (the
/// rest of the object is skipped, not built).
struct Entries(Result<MetadataAndTensors, SafetensorsError>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let (mut metadata, mut tensors) = (None, Vec::new());
                let mut problem = None;
                while let Some(name) = map.next_key::<String>()? {
                    if problem.is_some() {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    let entry = map.next_value::<Value>()?;
                    let parsed = if name == "__metadata__" {
                        match metadata {
                            Some(_) => Err(twice(name)),
                            None => parse_metadata(entry).map(|m| metadata = Some(m)),
                        }
                    } else if tensors.len() == MAX_TENSORS {
                        Err(SafetensorsError::TooManyTensors)
                    } else {
                        parse_tensor(name, entry).map(|t| tensors.push(t))
                    };
                    problem = parsed.err();
                }
                Ok(Entries(match problem {
                    Some(e) => Err(e),
                    None => Ok((metadata, tensors)),
                }))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn parse_metadata(entry: Value) -> Result<Map<String, Value>, SafetensorsError> {
    match entry {
        Value::Object(m) if m.values().all(Value::is_string) => Ok(m),
        _ => Err(SafetensorsError::BadMetadata),
    }
}

fn parse_tensor(name: String, entry: Value) -> Result<TensorInfo, SafetensorsError> {
    let bad = |problem: &str| SafetensorsError::BadTensor {
        name: name.clone(),
        problem: problem.to_string(),
    };
    let Value::Object(fields) = &entry else {
        return Err(bad("entry must be an object"));
    };
    let dtype_name = fields
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing string field \"dtype\""))?;
    let dtype = Dtype::parse(dtype_name)
        .ok_or_else(|| bad(&format!("unsupported dtype {dtype_name:?}")))?;
    let shape = u64_array(fields.get("shape"))
        .ok_or_else(|| bad("\"shape\" must be an array of non-negative integers"))?;
    let offsets = u64_array(fields.get("data_offsets"))
        .ok_or_else(|| bad("\"data_offsets\" must be two non-negative integers"))?;
    let [begin, end] = offsets[..] else {
        return Err(bad("\"data_offsets\" must be two non-negative integers"));
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    let nbytes = elements
        .checked_mul(dtype.size())
        .ok_or_else(|| bad("size overflows"))?;
    if end < begin || end - begin != nbytes {
        return Err(bad(&format!(
            "data_offsets [{begin}, {end}] do not match {nbytes} bytes of {dtype_name}{shape:?}"
        )));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        begin,
        end,
    })
}

fn u64_array(v: Option<&Value>) -> Option<Vec<u64>> {
    v?.as_array()?.iter().map(Value::as_u64).collect()
}

fn check_contiguous(tensors: &[TensorInfo]) -> Result<(), SafetensorsError> {
    let mut expected = 0u64;
    for t in tensors {
        if t.begin != expected {
            return Err(SafetensorsError::NotContiguous(format!(
                "tensor {:?} starts at {} but the previous data ends at {expected}",
                t.name, t.begin
            )));
        }
        expected = t.end;
    }
    Ok(())
}

/// A tensor to be written by [`write_header`], in data order.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
}

/// Serialises a header the way the reference writer does: `__metadata__` first, tensors in data
/// order, JSON padded with spaces to a multiple of 8 bytes. Deterministic for the same input.
/// Written entry by entry (what serde_json writes for the same map, with `preserve_order`), so
/// memory is the output itself, not a JSON tree of every tensor.
pub fn write_header(metadata: Option<&Map<String, Value>>, tensors: &[TensorSpec]) -> Vec<u8> {
    // About what each entry takes (name, dtype, shape, offsets), so a header of many tensors is
    // not built by doubling a buffer (which peaks at up to twice its size).
    let entries: usize = tensors.iter().map(|t| t.name.len() + 96).sum();
    let mut json = Vec::with_capacity(entries + 256);
    json.push(b'{');
    if let Some(m) = metadata {
        put_json(&mut json, &"__metadata__");
        json.push(b':');
        put_json(&mut json, m);
    }
    let mut offset = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let len = t.shape.iter().product::<u64>() * t.dtype.size();
        if i > 0 || metadata.is_some() {
            json.push(b',');
        }
        put_json(&mut json, &t.name.as_str());
        json.extend_from_slice(b":{\"dtype\":");
        put_json(&mut json, &t.dtype.name());
        json.extend_from_slice(b",\"shape\":");
        put_json(&mut json, &t.shape.as_slice());
        json.extend_from_slice(b",\"data_offsets\":");
        put_json(&mut json, &[offset, offset + len]);
        json.push(b'}');
        offset += len;
    }
    json.push(b'}');
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut raw = (json.len() as u64).to_le_bytes().to_vec();
    raw.extend_from_slice(&json);
    raw
}

/// Appends `v` as compact JSON.
fn put_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(out, v).expect("strings, numbers and string maps serialise");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec {
                name: "a".into(),
                dtype: Dtype::BF16,
                shape: vec![2, 3],
            },
            TensorSpec {
                name: "b".into(),
                dtype: Dtype::I64,
                shape: vec![],
            },
            TensorSpec {
                name: "c".into(),
                dtype: Dtype::U8,
                shape: vec![0, 4],
            },
        ]
    }

    #[test]
    fn written_header_parses_back() {
        let mut meta = Map::new();
        meta.insert("format".into(), "pt".into());
        let raw = write_header(Some(&meta), &specs());
        assert_eq!((raw.len() - 8) % 8, 0);
        let h = read_header(&mut &raw[..]).unwrap();
        assert_eq!(h.raw, raw);
        assert_eq!(h.metadata.as_ref().unwrap()["format"], "pt");
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(h.data_len(), 12 + 8);
        assert!(h.check_file_len(raw.len() as u64 + 20).is_ok());
        assert!(h.check_file_len(raw.len() as u64 + 19).is_err());
    }

    /// Derived INT8 files already served have these exact bytes: the streamed writer must keep
    /// writing what serde_json wrote for the whole map (insertion order, compact).
    #[test]
    fn written_header_is_what_serde_json_writes_for_the_map() {
        let mut meta = Map::new();
        meta.insert("format".into(), "pt".into());
        meta.insert("z \"quoted\"\n".into(), "\u{e9}\u{1}".into());
        let mut specs = specs();
        specs[1].name = "b.\"odd\"\\name\u{7f}".into();
        for metadata in [Some(&meta), None] {
            let mut map = Map::new();
            if let Some(m) = metadata {
                map.insert("__metadata__".into(), Value::Object(m.clone()));
            }
            let mut offset = 0;
            for t in &specs {
                let len = t.shape.iter().product::<u64>() * t.dtype.size();
                let entry = serde_json::json!({
                    "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + len],
                });
                map.insert(t.name.clone(), entry);
                offset += len;
            }
            let mut json = serde_json::to_vec(&Value::Object(map)).unwrap();
            while !json.len().is_multiple_of(8) {
                json.push(b' ');
            }
            let raw = write_header(metadata, &specs);
            assert_eq!(
                &raw[8..],
                &json[..],
                "{}",
                String::from_utf8_lossy(&raw[8..])
            );
        }
        assert_eq!(&write_header(None, &[])[8..], b"{}      ");
    }

    fn parse(json: &str) -> Result<Header, SafetensorsError> {
        let mut raw = (json.len() as u64).to_le_bytes().to_vec();
        raw.extend_from_slice(json.as_bytes());
        read_header(&mut &raw[..])
    }

    #[test]
    fn malformed_headers_are_rejected_with_a_reason() {
        let cases = [
            ("[]", "JSON object"),
            ("{", "JSON"),
            (
                r#"{"t":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}"#,
                "unsupported dtype",
            ),
            (
                r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}}"#,
                "do not match",
            ),
            (
                r#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                "not contiguous",
            ),
            (
                r#"{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                "shape",
            ),
            (
                r#"{"t":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,1]}}"#,
                "overflows",
            ),
            (r#"{"t":{"dtype":"U8","shape":[1]}}"#, "data_offsets"),
            (r#"{"__metadata__":{"a":1}}"#, "__metadata__"),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                "not contiguous",
            ),
        ];
        for (json, needle) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn oversized_and_truncated_headers_are_rejected() {
        let raw = (MAX_HEADER_LEN + 1).to_le_bytes();
        assert!(matches!(
            read_header(&mut &raw[..]),
            Err(SafetensorsError::HeaderTooLarge(_))
        ));
        assert!(matches!(
            read_header(&mut &raw[..5]),
            Err(SafetensorsError::Truncated)
        ));
        let mut short = 100u64.to_le_bytes().to_vec();
        short.extend_from_slice(b"{}");
        assert!(read_header(&mut &short[..]).is_err());
    }

    #[test]
    fn duplicate_tensor_names_are_refused() {
        let json = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let err = parse_header_json(json).unwrap_err().to_string();
        assert!(err.contains("\"a\"") && err.contains("twice"), "{err}");
        let meta = br#"{"__metadata__":{},"__metadata__":{}}"#;
        assert!(parse_header_json(meta).is_err());
    }

    #[test]
    fn text_is_said_not_to_be_safetensors() {
        let err = read_header(&mut &b"{\"model_type\": \"bert\"}"[..]).unwrap_err();
        assert!(matches!(err, SafetensorsError::NotSafetensors(_)), "{err}");
        assert!(
            err.to_string().starts_with("not a safetensors file"),
            "{err}"
        );
        let form = read_header(&mut &b"weights=%01%02%03%04"[..]).unwrap_err();
        assert!(form.to_string().contains("\"weights=\""), "{form}");
    }
}

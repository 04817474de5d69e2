//! The inputs of an encode and the outputs they imply: which tensors are quantized, what the
//! derived INT8 files and sharding index look like. The writer moves bytes; this decides layout.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use super::FormatError;
use super::arrival::{Arrival, ArrivingFile};
use super::chunk::high_dtype_of;
use super::index::OutputFile;
use crate::codec::quantize::HighDtype;
use crate::safetensors::{self, Dtype, Header, TensorInfo, TensorSpec};

/// Name of the sharding index that Hugging Face writes next to shards.
pub const SHARD_INDEX_NAME: &str = "model.safetensors.index.json";

/// Which tensors get an int8 form when the int8 checkpoint is derived.
pub struct Selection {
    skip: Option<Regex>,
    only: Option<Regex>,
}

impl Selection {
    /// Tensors transformers + bitsandbytes leave in high precision: embeddings, the output head, norms.
    pub const DEFAULT_SKIP: &'static str =
        r"(?i)(embed|lm_head|norm|(^|\.)ln_|(^|\.)wte\.|(^|\.)wpe\.)";

    /// `skip` replaces the default skip pattern; `only` restricts to matching names and, unless
    /// `skip` is also given, turns the default skip off.
    pub fn new(skip: Option<&str>, only: Option<&str>) -> Result<Self, FormatError> {
        let compile = |p: &str| {
            Regex::new(p).map_err(|e| FormatError::Input(format!("invalid regex {p:?}: {e}")))
        };
        let skip = match (skip, only) {
            (Some(s), _) => Some(compile(s)?),
            (None, None) => Some(compile(Self::DEFAULT_SKIP)?),
            (None, Some(_)) => None,
        };
        Ok(Selection {
            skip,
            only: only.map(compile).transpose()?,
        })
    }

    pub(super) fn wants(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|r| r.is_match(name))
            && !self.skip.as_ref().is_some_and(|r| r.is_match(name))
    }
}

impl Default for Selection {
    fn default() -> Self {
        Self::new(None, None).expect("the default pattern compiles")
    }
}

/// The files that make up one model upload.
#[derive(Default)]
pub struct EncodeInput {
    /// High-precision safetensors files (one, or every shard).
    pub high: Vec<PathBuf>,
    /// `model.safetensors.index.json`, for sharded models.
    pub shard_index: Option<PathBuf>,
    /// A user-supplied int8 checkpoint (one or more files) to store instead of deriving one.
    pub int8: Vec<PathBuf>,
    /// Set when the (single) high-precision file is still being written, e.g. by an upload in
    /// progress: the encoder then reads it as it arrives, and checks its final length at the end.
    pub arriving: Option<Arc<Arrival>>,
}

impl EncodeInput {
    /// Adds a high-precision weights file named `name` in the repo, at `path`: the sharding
    /// index by its name, any other file as a safetensors file (shard).
    pub fn add_high(&mut self, name: &str, path: PathBuf) {
        if name == SHARD_INDEX_NAME {
            self.shard_index = Some(path);
        } else {
            self.high.push(path);
        }
    }
}

/// A safetensors input: path, name in the blob, parsed header.
pub(super) struct InputFile {
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) header: Header,
}

/// The name a file keeps in the blob: its file name without the directory.
fn file_name(path: &Path) -> Result<String, FormatError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| FormatError::Input(format!("{}: not a file name", path.display())))
}

impl InputFile {
    pub(super) fn open(path: &Path) -> Result<InputFile, FormatError> {
        let name = file_name(path)?;
        let mut f =
            File::open(path).map_err(|e| FormatError::Input(format!("{}: {e}", path.display())))?;
        let header = safetensors::read_header(&mut BufReader::new(&mut f))
            .map_err(|e| FormatError::Input(format!("{}: {e}", path.display())))?;
        header
            .check_file_len(f.metadata()?.len())
            .map_err(|e| FormatError::Input(format!("{}: {e}", path.display())))?;
        Ok(InputFile {
            path: path.to_owned(),
            name,
            header,
        })
    }

    /// Opens a file still being written: parses its header as soon as it has arrived. Its length
    /// can only be checked once writing ends ([`Arrival::wait_complete`]).
    pub(super) fn open_arriving(
        path: &Path,
        arrival: &Arc<Arrival>,
    ) -> Result<InputFile, FormatError> {
        let name = file_name(path)?;
        let file =
            File::open(path).map_err(|e| FormatError::Input(format!("{}: {e}", path.display())))?;
        let mut reader = ArrivingFile::new(file, arrival.clone());
        let header = safetensors::read_header(&mut reader)
            .map_err(|e| FormatError::Input(format!("{name}: {e}")))?;
        Ok(InputFile {
            path: path.to_owned(),
            name,
            header,
        })
    }

    /// Reads `len` bytes at data offset `begin` (random access, for the paired int8 file).
    pub(super) fn read_data(
        &self,
        file: &mut File,
        begin: u64,
        len: u64,
    ) -> Result<Vec<u8>, FormatError> {
        let mut buf = vec![0u8; len as usize];
        file.seek(SeekFrom::Start(self.header.data_start() + begin))?;
        file.read_exact(&mut buf)?;
        Ok(buf)
    }
}

/// How one high-precision tensor is stored.
#[derive(Clone)]
pub(super) enum Role {
    Shared,
    /// Quantized; with `supplied`, the int8 file index holding its weight and SCB.
    Quantized {
        rows: u64,
        cols: u64,
        supplied: Option<usize>,
    },
}

/// The int8 header of a derived file: the high file's tensors in the same order, each quantized
/// weight replaced by `weight` (I8), `SCB` (F32, one per row) and `weight_format` (U8 scalar 0).
pub(super) fn derived_int8_header(file: &InputFile, roles: &[Role]) -> Vec<u8> {
    let mut specs = Vec::new();
    for (t, role) in file.header.tensors.iter().zip(roles) {
        match role {
            Role::Shared => specs.push(TensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            }),
            Role::Quantized { rows, .. } => {
                let prefix = t
                    .name
                    .strip_suffix(".weight")
                    .expect("quantized names end in .weight");
                specs.push(TensorSpec {
                    name: t.name.clone(),
                    dtype: Dtype::I8,
                    shape: t.shape.clone(),
                });
                specs.push(TensorSpec {
                    name: format!("{prefix}.SCB"),
                    dtype: Dtype::F32,
                    shape: vec![*rows],
                });
                specs.push(TensorSpec {
                    name: format!("{prefix}.weight_format"),
                    dtype: Dtype::U8,
                    shape: vec![],
                });
            }
        }
    }
    let mut meta = Map::new();
    meta.insert("format".into(), Value::from("pt"));
    safetensors::write_header(Some(&meta), &specs)
}

pub(super) fn header_of(raw: &[u8]) -> Header {
    safetensors::read_header(&mut &raw[..]).expect("headers we wrote parse")
}

/// The int8 sharding index: the high one with `weight_map` rebuilt from the int8 files and
/// `metadata.total_size` set to their data size; keys sorted, two-space indent, as transformers writes.
pub(super) fn int8_shard_index(
    high_json: &[u8],
    files: &[OutputFile],
    headers: &[Header],
) -> Result<Vec<u8>, FormatError> {
    let mut root: Map<String, Value> = serde_json::from_slice(high_json)
        .map_err(|e| FormatError::Input(format!("{SHARD_INDEX_NAME}: {e}")))?;
    let mut weight_map = std::collections::BTreeMap::new();
    let mut total = 0u64;
    for (file, header) in files.iter().zip(headers) {
        for t in &header.tensors {
            weight_map.insert(t.name.clone(), Value::from(file.name.clone()));
        }
        total += header.data_len();
    }
    let mut meta = match root.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.insert("total_size".into(), Value::from(total));
    root.insert(
        "metadata".into(),
        Value::Object(
            meta.into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        ),
    );
    root.insert(
        "weight_map".into(),
        Value::Object(weight_map.into_iter().collect()),
    );
    let sorted: std::collections::BTreeMap<String, Value> = root.into_iter().collect();
    let mut out =
        serde_json::to_vec_pretty(&sorted).map_err(|e| FormatError::Input(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

pub(super) fn read_shard_index(
    path: &Path,
    high: &[InputFile],
) -> Result<(String, Vec<u8>), FormatError> {
    let bytes =
        std::fs::read(path).map_err(|e| FormatError::Input(format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| FormatError::Input(format!("{}: not JSON: {e}", path.display())))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            FormatError::Input(format!("{}: no \"weight_map\" object", path.display()))
        })?;
    for (tensor, file) in map {
        let file = file.as_str().unwrap_or_default();
        let holder = high.iter().find(|h| h.name == file);
        if holder.is_none_or(|h| h.header.tensor(tensor).is_none()) {
            return Err(FormatError::Input(format!(
                "{}: tensor {tensor:?} is mapped to {file:?}, which was not given or lacks it",
                path.display()
            )));
        }
    }
    Ok((SHARD_INDEX_NAME.to_string(), bytes))
}

pub(super) fn check_unique_names(files: &[InputFile]) -> Result<(), FormatError> {
    for (i, f) in files.iter().enumerate() {
        if files[..i].iter().any(|g| g.name == f.name) {
            return Err(FormatError::Input(format!(
                "two input files are named {:?}",
                f.name
            )));
        }
    }
    Ok(())
}

/// A model's tensors and header bytes, all files together, within what an encode is sized for
/// (the per-file caps alone would let a model of many files exceed them).
pub(super) fn check_model_size<'a>(
    files: impl Iterator<Item = &'a InputFile>,
) -> Result<(), FormatError> {
    let (mut tensors, mut header_bytes) = (0usize, 0u64);
    for f in files {
        tensors += f.header.tensors.len();
        header_bytes += f.header.raw.len() as u64;
    }
    if tensors > safetensors::MAX_TENSORS {
        return Err(FormatError::Input(format!(
            "the model has {tensors} tensors; at most {} are accepted",
            safetensors::MAX_TENSORS
        )));
    }
    if header_bytes > safetensors::MAX_MODEL_HEADER_BYTES {
        return Err(FormatError::Input(format!(
            "the model's safetensors headers take {header_bytes} bytes together; at most {} are \
             accepted",
            safetensors::MAX_MODEL_HEADER_BYTES
        )));
    }
    Ok(())
}

/// The model's high precision: whichever 16-bit float type holds the most elements.
pub(super) fn model_dtype(files: &[InputFile]) -> Result<HighDtype, FormatError> {
    let (mut bf16, mut f16) = (0u64, 0u64);
    for t in files.iter().flat_map(|f| &f.header.tensors) {
        match t.dtype {
            Dtype::BF16 => bf16 += t.elements(),
            Dtype::F16 => f16 += t.elements(),
            _ => {}
        }
    }
    match (bf16, f16) {
        (0, 0) => Err(FormatError::Input(
            "no BF16 or FP16 tensors: convert the checkpoint first (qstore convert --to bf16)"
                .into(),
        )),
        _ if bf16 >= f16 => Ok(HighDtype::Bf16),
        _ => Ok(HighDtype::F16),
    }
}

/// A supplied INT8 checkpoint must be what bitsandbytes writes for this model (LLM.int8), or it
/// would be served as the model's INT8 file while being something else: every tensor of the
/// model under its own name; a quantized `X.weight` as I8 of the model's shape with `X.SCB` (F32,
/// one per row) and `X.weight_format` (U8 scalar); every other tensor with the model's dtype and
/// shape (its bytes are compared while encoding, [`int8_tensor_differs`]); nothing else. The first
/// mismatch is named.
pub(super) fn check_int8_layout(
    high: &[InputFile],
    int8: &[InputFile],
    dtype: HighDtype,
) -> Result<(), FormatError> {
    let mut supplied: HashMap<&str, (&TensorInfo, &str, bool)> = HashMap::new();
    for f in int8 {
        for t in &f.header.tensors {
            if let Some((_, other, _)) = supplied.insert(&t.name, (t, &f.name, false)) {
                return Err(int8_mismatch(format!(
                    "tensor {:?} is in both {other} and {}",
                    t.name, f.name
                )));
            }
        }
    }
    let mut quantized = 0usize;
    for t in high.iter().flat_map(|f| &f.header.tensors) {
        let Some(entry) = supplied.get_mut(t.name.as_str()) else {
            return Err(int8_mismatch(format!(
                "it lacks the model's tensor {:?}",
                t.name
            )));
        };
        entry.2 = true;
        let got = entry.0;
        if got.dtype != Dtype::I8 {
            if got.dtype != t.dtype || got.shape != t.shape {
                return Err(int8_mismatch(format!(
                    "tensor {:?} is {} but the model's is {}",
                    t.name,
                    describe(got.dtype, &got.shape),
                    describe(t.dtype, &t.shape)
                )));
            }
            continue;
        }
        for (name, dtype, shape) in int8_companions(t, got, dtype)? {
            let ok = supplied.get_mut(name.as_str()).map(|e| {
                e.2 = true;
                e.0.dtype == dtype && e.0.shape == shape
            });
            if ok != Some(true) {
                return Err(int8_mismatch(format!(
                    "the I8 tensor {:?} needs {name:?} as {}",
                    t.name,
                    describe(dtype, &shape)
                )));
            }
        }
        quantized += 1;
    }
    if let Some((name, (_, file, _))) = supplied.iter().find(|(_, e)| !e.2) {
        return Err(int8_mismatch(format!(
            "tensor {name:?} (in {file}) is not a tensor of the model nor the SCB/weight_format of one"
        )));
    }
    if quantized == 0 {
        return Err(int8_mismatch(
            "it has no quantized weight (an I8 `X.weight` with its `X.SCB`)".into(),
        ));
    }
    Ok(())
}

/// What an LLM.int8 weight `got` standing for the model's `t` must come with (`X.SCB`,
/// `X.weight_format`), after checking the weight itself.
fn int8_companions(
    t: &TensorInfo,
    got: &TensorInfo,
    model: HighDtype,
) -> Result<[(String, Dtype, Vec<u64>); 2], FormatError> {
    let prefix = t.name.strip_suffix(".weight").filter(|_| {
        high_dtype_of(t.dtype) == Some(model) && t.shape.len() == 2 && got.shape == t.shape
    });
    let Some(prefix) = prefix else {
        return Err(int8_mismatch(format!(
            "tensor {:?} is {} but the model's is {}: only 2-D `.weight` tensors of the model's \
             dtype ({}) are quantized, to I8 of the same shape",
            t.name,
            describe(got.dtype, &got.shape),
            describe(t.dtype, &t.shape),
            model.precision_name()
        )));
    };
    if t.shape[1] > super::MAX_QUANTIZED_COLS {
        return Err(int8_mismatch(format!(
            "tensor {:?} has {} columns; quantized weights may have at most {}",
            t.name,
            t.shape[1],
            super::MAX_QUANTIZED_COLS
        )));
    }
    Ok([
        (format!("{prefix}.SCB"), Dtype::F32, vec![t.shape[0]]),
        (format!("{prefix}.weight_format"), Dtype::U8, vec![]),
    ])
}

/// A kept (not quantized) tensor of a supplied INT8 checkpoint whose bytes are not the model's.
pub(super) fn int8_tensor_differs(name: &str) -> FormatError {
    int8_mismatch(format!(
        "tensor {name:?} is not quantized, so it must equal the model's, but its bytes differ"
    ))
}

fn int8_mismatch(what: String) -> FormatError {
    FormatError::Input(format!(
        "the INT8 checkpoint is not an LLM.int8 checkpoint of this model: {what}"
    ))
}

fn describe(dtype: Dtype, shape: &[u64]) -> String {
    format!("{}{shape:?}", dtype.name())
}

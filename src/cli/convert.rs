//! `qstore convert`: float checkpoints to BF16/FP16 with round-to-nearest-even, streamed.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use half::{bf16, f16};
use indicatif::ProgressBar;

use crate::safetensors::{self, Dtype, TensorSpec};

/// Target precision of a conversion.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    Bf16,
    Fp16,
}

impl Target {
    fn dtype(self) -> Dtype {
        match self {
            Target::Bf16 => Dtype::BF16,
            Target::Fp16 => Dtype::F16,
        }
    }

    fn round_f64(self, v: f64) -> u16 {
        match self {
            Target::Bf16 => bf16::from_f64(v).to_bits(),
            Target::Fp16 => f16::from_f64(v).to_bits(),
        }
    }

    fn round_f32(self, v: f32) -> u16 {
        match self {
            Target::Bf16 => bf16::from_f32(v).to_bits(),
            Target::Fp16 => f16::from_f32(v).to_bits(),
        }
    }
}

/// Converts every floating tensor of `input` to `to`, leaving other tensors and the metadata as
/// they are; tensor order is kept. Writes through a temporary file renamed into place.
pub fn convert(input: &Path, to: Target, output: &Path, bar: ProgressBar) -> Result<()> {
    let f = File::open(input).with_context(|| format!("{}", input.display()))?;
    let file_len = f.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let header =
        safetensors::read_header(&mut reader).with_context(|| format!("{}", input.display()))?;
    header
        .check_file_len(file_len)
        .with_context(|| format!("{}", input.display()))?;
    let converts = |d: Dtype| d.is_float() && d != to.dtype();
    let specs: Vec<TensorSpec> = header
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: if converts(t.dtype) {
                to.dtype()
            } else {
                t.dtype
            },
            shape: t.shape.clone(),
        })
        .collect();
    let target = super::output::Output::create(output, &[input])?;
    let mut out = BufWriter::with_capacity(1 << 20, target.file());
    out.write_all(&safetensors::write_header(header.metadata.as_ref(), &specs))?;
    bar.set_length(header.data_len());
    bar.set_message("convert");
    let mut buf = vec![0u8; 1 << 20];
    for t in &header.tensors {
        let size = t.dtype.size() as usize;
        let mut left = t.len();
        while left > 0 {
            let n = (left.min(buf.len() as u64) as usize) / size * size;
            if n == 0 {
                bail!("tensor {} is not a whole number of elements", t.name);
            }
            reader.read_exact(&mut buf[..n])?;
            if converts(t.dtype) {
                for e in buf[..n].chunks_exact(size) {
                    out.write_all(&convert_one(t.dtype, e, to).to_le_bytes())?;
                }
            } else {
                out.write_all(&buf[..n])?;
            }
            left -= n as u64;
            bar.inc(n as u64);
        }
    }
    out.flush()?;
    drop(out);
    target.commit()?;
    bar.finish_and_clear();
    Ok(())
}

fn convert_one(from: Dtype, e: &[u8], to: Target) -> u16 {
    match from {
        Dtype::F64 => to.round_f64(f64::from_le_bytes(e.try_into().expect("8 bytes"))),
        Dtype::F32 => to.round_f32(f32::from_le_bytes(e.try_into().expect("4 bytes"))),
        Dtype::F16 => to.round_f32(f16::from_le_bytes([e[0], e[1]]).to_f32()),
        Dtype::BF16 => to.round_f32(bf16::from_le_bytes([e[0], e[1]]).to_f32()),
        _ => unreachable!("only float tensors are converted"),
    }
}

//! The `qstore` command line: thin wrappers that parse arguments, show progress and map errors to
//! one readable line.

mod convert;
mod output;
mod remote;
mod server;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::format::{
    Blob, EncodeInput, EncodeOptions, FormatError, MappedFile, Precision, Report, Selection,
    encode_to_path,
};

#[derive(Parser)]
#[command(
    name = "qstore",
    version,
    about = "Store a model once; serve it as INT8 and as BF16/FP16, byte-exact."
)]
pub struct Cli {
    /// No progress bars or summaries.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server (embedded defaults: ./data, 127.0.0.1:8080).
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        config: server::ConfigArgs,
    },
    /// Apply catalog migrations and exit (for deployments where `serve` skips them).
    Migrate {
        #[command(flatten)]
        config: server::ConfigArgs,
    },
    /// Delete objects no revision refers to, and old upload spools (leftovers of uploads cut
    /// short by a crash). Safe while servers run: only leftovers older than the grace period go.
    Gc {
        /// Keep leftovers younger than this many seconds (default: gc.grace_secs, 86400).
        #[arg(long)]
        grace_secs: Option<u64>,
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        config: server::ConfigArgs,
    },
    /// Manage API tokens for uploads and deletes.
    Token {
        #[command(subcommand)]
        command: server::TokenCommand,
    },
    /// Encode a BF16/FP16 safetensors checkpoint (and optionally its INT8 twin) into one blob.
    Encode {
        /// High-precision safetensors file(s): one file, or every shard.
        #[arg(required = true)]
        high: Vec<PathBuf>,
        /// The shards' model.safetensors.index.json.
        #[arg(long)]
        index: Option<PathBuf>,
        /// A matching INT8 (bitsandbytes LLM.int8) checkpoint to store instead of deriving one.
        #[arg(long, num_args = 1..)]
        int8: Vec<PathBuf>,
        /// Regex of tensor names not to quantize (replaces the default: embeddings, lm_head, norms).
        #[arg(long)]
        skip: Option<String>,
        /// Regex of the only tensor names to quantize.
        #[arg(long)]
        only: Option<String>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write one output file of a blob (`-o -` for stdout).
    Decode {
        blob: PathBuf,
        #[arg(long, value_enum)]
        precision: PrecisionArg,
        /// File name inside the model; optional for single-file models.
        #[arg(long)]
        file: Option<String>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Store a server's endpoint and token for the client commands (checked with the server
    /// first; kept in ~/.config/qstore/login.json, mode 0600). QSTORE_ENDPOINT/QSTORE_TOKEN and
    /// HF_ENDPOINT/HF_TOKEN override it.
    Login {
        /// e.g. https://models.example.com (default: the current one, or http://localhost:8080).
        #[arg(long)]
        endpoint: Option<String>,
        /// The API token (default: QSTORE_TOKEN/HF_TOKEN, else one line read from stdin).
        #[arg(long)]
        token: Option<String>,
    },
    /// List the server's repos, or one repo's branches, tags and files (`REPO[@REVISION]`).
    Ls { repo: Option<String> },
    /// Download a revision (`REPO[@REVISION]`, default main) in one precision: the weights are
    /// rebuilt here from the blob's sections, so fewer bytes cross the wire than the files hold.
    /// Every chunk and file is checked; a file appears only once it matches the server's sha256.
    Pull {
        repo: String,
        /// int8, or the model's own bf16/fp16 (the default).
        #[arg(long, short)]
        precision: Option<String>,
        /// Where to write the repo's files (default: ./NAME), a folder transformers loads.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Upload a folder as one commit (the repo is created if missing). The weights are encoded
    /// here and sent as their blob, about two thirds of the BF16 bytes; the server decodes and
    /// checks it before the commit lands. Run again after an interruption: what the server
    /// holds is not sent twice.
    Push {
        dir: PathBuf,
        repo: String,
        /// The branch to commit to.
        #[arg(long, short, default_value = "main")]
        branch: String,
        /// The commit's title.
        #[arg(long, short)]
        message: Option<String>,
    },
    /// Delete a repo, or one commit of it (`REPO@COMMIT`); asks first unless --yes.
    Rm {
        repo: String,
        #[arg(long, short)]
        yes: bool,
    },
    /// Show sections, sizes and bits per parameter.
    Inspect {
        blob: PathBuf,
        #[arg(long)]
        json: bool,
        /// Add a per-tensor breakdown.
        #[arg(long)]
        tensors: bool,
    },
    /// Decode every output and check every checksum and sha256.
    Verify { blob: PathBuf },
    /// Convert a safetensors checkpoint's floating tensors to BF16 or FP16 (round to nearest even).
    Convert {
        input: PathBuf,
        #[arg(long, value_enum)]
        to: convert::Target,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Int8,
    Bf16,
    Fp16,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    if !matches!(cli.command, Command::Serve { .. }) {
        reuse_freed_buffers();
    }
    match cli.command {
        Command::Serve { listen, config } => server::serve(&config, listen),
        Command::Migrate { config } => server::migrate(&config),
        Command::Token { command } => server::token(command),
        Command::Gc {
            grace_secs,
            dry_run,
            config,
        } => server::gc(&config, grace_secs, dry_run),
        Command::Encode {
            high,
            index,
            int8,
            skip,
            only,
            output,
        } => encode(
            EncodeInput {
                high,
                shard_index: index,
                int8,
                arriving: None,
            },
            skip,
            only,
            &output,
            quiet,
        ),
        Command::Decode {
            blob,
            precision,
            file,
            output,
        } => decode(&blob, precision, file.as_deref(), &output, quiet),
        Command::Inspect {
            blob,
            json,
            tensors,
        } => inspect(&blob, json, tensors),
        Command::Verify { blob } => verify(&blob, quiet),
        Command::Login { endpoint, token } => remote::login(endpoint, token),
        Command::Ls { repo } => remote::ls(repo),
        Command::Pull {
            repo,
            precision,
            output,
        } => remote::pull(&repo, precision.as_deref(), output, progress_bar(quiet, 0)),
        Command::Push {
            dir,
            repo,
            branch,
            message,
        } => remote::push(
            &dir,
            &repo,
            &branch,
            message.as_deref(),
            progress_bar(quiet, 0),
        ),
        Command::Rm { repo, yes } => remote::rm(&repo, yes),
        Command::Convert { input, to, output } => {
            convert::convert(&input, to, &output, progress_bar(quiet, 0))
        }
    }
}

fn progress_bar(quiet: bool, len: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

fn open_blob(path: &Path) -> Result<Blob<MappedFile>> {
    let f = File::open(path).with_context(|| format!("{}", path.display()))?;
    Blob::open(MappedFile::new(f)).with_context(|| format!("{}", path.display()))
}

/// Lets a command reuse the buffers it frees. Encodes and decodes allocate and free a few MiB
/// per chunk, and glibc's malloc served each from a fresh map and unmapped it on free, so every
/// chunk paid the page faults and the kernel's zeroing again (about an eighth of an encode's
/// CPU). Served from the heap up to 16 MiB (larger ones, a worst-case header's, still map and
/// unmap: with 64 MiB that encode's peak grew by 50 MiB), and trimmed only past 64 MiB free: an
/// encode of the synthetic set took 11,000-12,000 page faults instead of 33,500 and 5% less
/// CPU; `qstore decode` of MiniLM ran 9-15% faster. The server keeps the defaults, which give
/// memory back sooner to a process that runs for months.
///
/// Heaps also grow 16 MiB at a time (`M_TOP_PAD`) instead of by what each allocation lacks: a
/// `qstore decode` of MiniLM's BF16 file grew its threads' heaps in ~300 `mprotect` calls, each
/// waiting for the address-space lock while the other thread populated a buffer under it, and
/// the waiting thread woke on the busy core: both decode threads shared one core for the first
/// ~10 ms. With the pad, 11 calls, and the decode ran 2-5% faster (MiniLM and synthetic, BF16
/// and INT8); untouched padding costs no memory (peak RSS unchanged).
fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets three of malloc's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

fn encode(
    input: EncodeInput,
    skip: Option<String>,
    only: Option<String>,
    output: &Path,
    quiet: bool,
) -> Result<()> {
    let total: u64 = input
        .high
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = progress_bar(quiet, total);
    bar.set_message("encode");
    let opts = EncodeOptions {
        selection: Selection::new(skip.as_deref(), only.as_deref())?,
        ..Default::default()
    };
    let summary = encode_to_path(&input, &opts, output, &|n| bar.inc(n)).map_err(|e| match e {
        // Input problems already name their file; I/O errors here are about the output.
        FormatError::Io(io) => anyhow::Error::new(io).context(output.display().to_string()),
        other => other.into(),
    })?;
    bar.finish_and_clear();
    if !quiet {
        let r = Report::new(&summary.index, summary.blob_len);
        eprintln!(
            "wrote {} ({} bytes): {:.2}x smaller than the two separate files; quantized weights {:.2} bits/param",
            output.display(),
            summary.blob_len,
            r.ratio_vs_separate_files,
            r.quantized_bits_per_param
        );
    }
    Ok(())
}

fn precision(blob: &Blob<MappedFile>, p: PrecisionArg) -> Result<Precision> {
    let high = blob.index().high_dtype.precision_name();
    match p {
        PrecisionArg::Int8 => Ok(Precision::Int8),
        PrecisionArg::Bf16 if high == "bf16" => Ok(Precision::High),
        PrecisionArg::Fp16 if high == "fp16" => Ok(Precision::High),
        _ => bail!("this model's high precision is {high}; ask for --precision {high} or int8"),
    }
}

/// Gathers a decode's small pieces (biases, norms, headers) into fewer writes. Chunks (about
/// 1 MiB each) are larger, so they bypass it: copying them into a 1 MiB buffer took 3.5% of a
/// MiniLM INT8 decode.
const DECODE_BUFFER: usize = 64 << 10;

fn decode(
    path: &Path,
    p: PrecisionArg,
    name: Option<&str>,
    output: &Path,
    quiet: bool,
) -> Result<()> {
    let blob = open_blob(path)?;
    let file = blob.file(precision(&blob, p)?, name)?;
    if output == Path::new("-") {
        let mut out = BufWriter::with_capacity(DECODE_BUFFER, std::io::stdout());
        blob.write_file(file, &mut out)?;
        out.flush()?;
        leave_to_exit(blob);
        return Ok(());
    }
    let bar = progress_bar(quiet, file.size);
    bar.set_message("decode");
    let target = output::Output::create(output, &[path])?;
    {
        let mut out = bar.wrap_write(BufWriter::with_capacity(DECODE_BUFFER, target.file()));
        blob.write_file(file, &mut out)?;
        out.flush()?;
    }
    target.commit()?;
    bar.finish_and_clear();
    leave_to_exit(blob);
    Ok(())
}

/// Leaves a decoded blob's mapping for the process's exit to take down instead of unmapping it
/// here: the command ends right after, and `munmap` while the decode pool's threads are still
/// alive costs more than the same pages in the exit's teardown, once they are gone (probably
/// the TLB flushes on their core). MiniLM INT8, `qstore decode -o /dev/null`: unmapping took
/// 0.6 ms of a 14 ms run, and the exit ~0.35 ms more without it.
fn leave_to_exit(blob: Blob<MappedFile>) {
    std::mem::forget(blob);
}

fn inspect(path: &Path, json: bool, tensors: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let blob = open_blob(path)?;
    let len = std::fs::metadata(path)?.len();
    let mut report = Report::new(blob.index(), len);
    if !tensors {
        report.tensors.clear();
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let mb = |b: u64| b as f64 / 1e6;
    writeln!(
        out,
        "blob            {:>12} bytes ({:.2} MB), high precision {}",
        report.blob_bytes,
        mb(report.blob_bytes),
        report.high_dtype
    )?;
    writeln!(
        out,
        "  base          {:>12} bytes (int8 outputs read only this)",
        report.base_bytes
    )?;
    writeln!(out, "  residual      {:>12} bytes", report.residual_bytes)?;
    writeln!(out, "  index+footer  {:>12} bytes", report.index_bytes)?;
    writeln!(
        out,
        "separate files  {:>12} bytes high + {} bytes int8",
        report.high_files_bytes, report.int8_files_bytes
    )?;
    writeln!(
        out,
        "ratio           {:.3}x vs the two separate files",
        report.ratio_vs_separate_files
    )?;
    writeln!(
        out,
        "quantized       {} params, {:.3} bits/param (int8 {:.3} + residual {:.3} + scales {:.3} + index)",
        report.quantized_params,
        report.quantized_bits_per_param,
        report.int8_bits_per_param,
        report.residual_bits_per_param,
        report.scales_bits_per_param
    )?;
    writeln!(
        out,
        "shared          {} params, {:.3} bits/param",
        report.shared_params, report.shared_bits_per_param
    )?;
    for (label, files) in [
        ("int8", &blob.index().int8_files),
        (
            blob.index().high_dtype.precision_name(),
            &blob.index().high_files,
        ),
    ] {
        for f in files.iter() {
            writeln!(
                out,
                "{label:>5} file      {} {} bytes sha256 {}",
                f.name, f.size, f.sha256
            )?;
        }
    }
    if tensors {
        writeln!(
            out,
            "{:<60} {:>10} {:>12} {:>12} {:>9}",
            "tensor", "kind", "params", "stored", "bits/par"
        )?;
        for t in &report.tensors {
            writeln!(
                out,
                "{:<60} {:>10} {:>12} {:>12} {:>9.3}",
                t.name, t.kind, t.params, t.stored_bytes, t.bits_per_param
            )?;
        }
    }
    Ok(())
}

/// A writer that only hashes (and reports progress), for verification.
struct HashSink<'a>(Sha256, &'a ProgressBar);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1.inc(buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn verify(path: &Path, quiet: bool) -> Result<()> {
    let blob = open_blob(path)?;
    let total: u64 = [Precision::Int8, Precision::High]
        .iter()
        .flat_map(|&p| blob.files(p))
        .map(|f| f.size)
        .sum();
    let bar = progress_bar(quiet, total);
    bar.set_message("verify");
    let mut failures = Vec::new();
    for p in [Precision::Int8, Precision::High] {
        for f in blob.files(p) {
            let mut sink = HashSink(Sha256::new(), &bar);
            blob.write_file(f, &mut sink)
                .with_context(|| f.name.clone())?;
            let got = hex::encode(sink.0.finalize());
            if got != f.sha256 {
                failures.push(format!(
                    "{} ({:?}): sha256 {got}, index says {}",
                    f.name, p, f.sha256
                ));
            }
        }
    }
    bar.finish_and_clear();
    if !failures.is_empty() {
        bail!("verification failed: {}", failures.join("; "));
    }
    if !quiet {
        eprintln!(
            "ok: {} files decoded, every chunk checksum and file sha256 matches",
            blob.files(Precision::Int8).len() + blob.files(Precision::High).len()
        );
    }
    Ok(())
}

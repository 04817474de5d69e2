//! Output files that never appear half-written.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where a command writes. A regular file is written to a temporary file in the same directory
/// and renamed into place on [`Output::commit`], so a failed run leaves nothing behind; a special
/// file that already exists (`/dev/null`, a FIFO) is written in place instead of being replaced.
pub enum Output {
    Atomic(tempfile::NamedTempFile, PathBuf),
    Direct(File),
}

impl Output {
    /// Refuses a path that is one of `inputs` (the same file under any name): writing it would
    /// destroy what is being read.
    pub fn create(path: &Path, inputs: &[&Path]) -> Result<Output> {
        if let Some(input) = inputs.iter().find(|i| crate::format::same_file(path, i)) {
            anyhow::bail!(
                "refusing to write {} over the input {}",
                path.display(),
                input.display()
            );
        }
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir());
        if special {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| path.display().to_string())?;
            return Ok(Output::Direct(f));
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp =
            crate::format::output_tempfile(dir).with_context(|| path.display().to_string())?;
        Ok(Output::Atomic(tmp, path.to_owned()))
    }

    pub fn file(&self) -> &File {
        match self {
            Output::Atomic(tmp, _) => tmp.as_file(),
            Output::Direct(f) => f,
        }
    }

    /// Makes the output visible under its final name.
    pub fn commit(self) -> Result<()> {
        if let Output::Atomic(tmp, path) = self {
            tmp.persist(&path)
                .map_err(|e| e.error)
                .with_context(|| path.display().to_string())?;
        }
        Ok(())
    }
}

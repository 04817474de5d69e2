//! The `qstore` binary as a user runs it.

use std::process::{Command, Output};

use qstore::safetensors::Dtype;
use qstore::synth::llm_like_bf16;

use crate::helpers::*;

fn qstore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = qstore(args);
    assert!(
        out.status.success(),
        "qstore {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Decodes one precision of `blob` to `out` and checks it equals the file `expected`.
fn decodes_to(blob: &str, precision: &str, out: &str, expected: &str) {
    ok(&["decode", blob, "--precision", precision, "-o", out]);
    assert_eq!(
        std::fs::read(out).unwrap(),
        std::fs::read(expected).unwrap()
    );
}

/// A failing command exits non-zero with exactly one line on stderr that names the problem.
fn fails(args: &[&str], needle: &str) {
    let out = qstore(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "qstore {args:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{err:?} should contain {needle:?}"
    );
}

#[test]
fn convert_encode_decode_inspect_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let f32_data: Vec<u8> = llm_like_bf16(16, 32, 1)
        .iter()
        .flat_map(|&c| (half::bf16::from_bits(c).to_f32() * 1.001).to_le_bytes())
        .collect();
    write_st(
        &dir.path().join("f32.safetensors"),
        &[("format", "pt")],
        &[
            T::new("dense.weight", Dtype::F32, &[16, 32], f32_data.clone()),
            T::new(
                "ids",
                Dtype::I64,
                &[2],
                vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
            ),
        ],
    );
    ok(&[
        "convert",
        &d("f32.safetensors"),
        "--to",
        "bf16",
        "-o",
        &d("bf16.safetensors"),
    ]);
    let converted = tensors_of(&std::fs::read(d("bf16.safetensors")).unwrap());
    let expect: Vec<u8> = f32_data
        .chunks_exact(4)
        .flat_map(|b| half::bf16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
        .collect();
    assert_eq!((converted[0].1, &converted[0].3), (Dtype::BF16, &expect));
    assert_eq!(converted[1].1, Dtype::I64);

    let out = ok(&["encode", &d("bf16.safetensors"), "-o", &d("m.qstore")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bits/param"));
    decodes_to(
        &d("m.qstore"),
        "bf16",
        &d("back.safetensors"),
        &d("bf16.safetensors"),
    );
    let stdout = ok(&["decode", &d("m.qstore"), "--precision", "int8", "-o", "-"]).stdout;
    check_derived_int8(
        &std::fs::read(d("bf16.safetensors")).unwrap(),
        &stdout,
        &|n: &str| n == "dense.weight",
    );

    let report: serde_json::Value =
        serde_json::from_slice(&ok(&["inspect", &d("m.qstore"), "--json", "--tensors"]).stdout)
            .unwrap();
    assert_eq!(report["quantized_params"], 16 * 32);
    assert!(
        report["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "dense.weight" && t["kind"] == "quantized")
    );
    let text = String::from_utf8(ok(&["inspect", &d("m.qstore")]).stdout).unwrap();
    assert!(text.contains("ratio") && text.contains("bits/param"));
    ok(&["verify", &d("m.qstore")]);
    // A reader that closes the pipe early gets no panic and no error message.
    let mut child = Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args(["decode", &d("m.qstore"), "--precision", "bf16", "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Special files are written in place, never replaced by a rename.
    ok(&[
        "decode",
        &d("m.qstore"),
        "--precision",
        "bf16",
        "-o",
        "/dev/null",
    ]);
    assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
    fails(
        &["encode", &d("bf16.safetensors"), "-o", "/dev/null"],
        "not a regular file",
    );
    ok(&[
        "-q",
        "convert",
        &d("bf16.safetensors"),
        "--to",
        "fp16",
        "-o",
        &d("fp16.safetensors"),
    ]);
    ok(&["-q", "encode", &d("fp16.safetensors"), "-o", &d("h.qstore")]);
    decodes_to(
        &d("h.qstore"),
        "fp16",
        &d("h.safetensors"),
        &d("fp16.safetensors"),
    );
}

#[test]
fn errors_are_one_readable_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    write_st(
        &dir.path().join("a.safetensors"),
        &[],
        &[T::codes("x.weight", Dtype::BF16, &[2, 2], &[1, 2, 3, 4])],
    );
    ok(&["encode", "-q", &d("a.safetensors"), "-o", &d("a.qstore")]);
    fails(
        &["encode", &d("missing.safetensors"), "-o", &d("x.qstore")],
        "missing.safetensors",
    );
    std::fs::write(d("junk.safetensors"), b"\x05\0\0\0\0\0\0\0{\"a\"").unwrap();
    fails(
        &["encode", &d("junk.safetensors"), "-o", &d("x.qstore")],
        "JSON",
    );
    fails(
        &[
            "decode",
            &d("a.qstore"),
            "--precision",
            "fp16",
            "-o",
            &d("o"),
        ],
        "bf16",
    );
    fails(
        &[
            "decode",
            &d("a.qstore"),
            "--precision",
            "bf16",
            "--file",
            "nope",
            "-o",
            &d("o"),
        ],
        "nope",
    );
    fails(
        &[
            "decode",
            &d("a.safetensors"),
            "--precision",
            "bf16",
            "-o",
            &d("o"),
        ],
        "not a qstore blob",
    );
    fails(&["verify", &d("missing.qstore")], "missing.qstore");
    fails(
        &[
            "encode",
            &d("a.safetensors"),
            "-o",
            &d("no/such/dir/x.qstore"),
        ],
        "no/such/dir/x.qstore",
    );
    fails(
        &[
            "encode",
            &d("a.safetensors"),
            "--skip",
            "(",
            "-o",
            &d("x.qstore"),
        ],
        "regex",
    );
    assert!(!dir.path().join("x.qstore").exists() && !dir.path().join("o").exists());
    let mut blob = std::fs::read(d("a.qstore")).unwrap();
    let mid = blob.len() / 3;
    blob[mid] ^= 0x10;
    std::fs::write(d("bad.qstore"), blob).unwrap();
    let out = qstore(&["verify", &d("bad.qstore")]);
    assert!(!out.status.success());
}

#[test]
fn server_commands_fail_in_one_line_on_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    fails(&["serve", "--config", &d("missing.toml")], "missing.toml");
    std::fs::write(d("typo.toml"), "[server]\nlisen = \"0.0.0.0:1\"\n").unwrap();
    fails(&["serve", "--config", &d("typo.toml")], "lisen");
    std::fs::write(
        d("bad.toml"),
        "[catalog]\ndatabase_url = \"nosuchdb://x\"\n",
    )
    .unwrap();
    fails(&["migrate", "--config", &d("bad.toml")], "catalog");
    let out = Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args(["serve", "--data-dir", &d("data")])
        .env("QSTORE__SERVER__SHUTDOWN_TIMEOUT", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("shutdown_timeout"), "{err}");
}

#[test]
fn migrate_creates_the_catalog_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for _ in 0..2 {
        let out = ok(&["migrate", "--data-dir", data]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "catalog is up to date\n"
        );
    }
    assert!(dir.path().join("data/catalog.db").is_file());
}

/// The first log line `qstore serve` prints with these extra environment variables.
fn first_log_line(args: &[&str], env: &[(&str, &str)]) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_qstore"))
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    first
}

#[test]
fn serve_says_at_start_that_writes_are_refused_without_a_token_off_loopback() {
    let env = [("QSTORE__LOG__LEVEL", "warn")];
    let first = first_log_line(&["--listen", "0.0.0.0:0"], &env);
    assert!(first.contains("uploads and deletes are refused"), "{first}");
    assert!(
        !first.contains('\u{1b}'),
        "no colour codes off a terminal: {first:?}"
    );
}

#[test]
fn serve_logs_json_lines_when_asked() {
    let env = [("QSTORE__LOG__JSON", "true")];
    let first = first_log_line(&["--listen", "127.0.0.1:0"], &env);
    let line: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(line["level"], "INFO", "{first}");
    assert_eq!(line["fields"]["message"], "qstore listening", "{first}");
}

#[test]
fn outputs_never_overwrite_inputs_and_get_ordinary_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let model = one_weight_model(dir.path(), 16, 64, 3);
    let model = model.to_str().unwrap().to_string();
    let before = std::fs::read(&model).unwrap();
    fails(&["encode", &model, "-o", &model], "refusing to write");
    std::fs::hard_link(&model, d("alias.safetensors")).unwrap();
    fails(
        &["encode", &model, "-o", &d("alias.safetensors")],
        "over the input",
    );
    fails(
        &["convert", &model, "--to", "fp16", "-o", &model],
        "over the input",
    );
    assert_eq!(
        std::fs::read(&model).unwrap(),
        before,
        "the input is intact"
    );
    ok(&["encode", "-q", &model, "-o", &d("m.qstore")]);
    fails(
        &[
            "decode",
            &d("m.qstore"),
            "--precision",
            "int8",
            "-o",
            &d("m.qstore"),
        ],
        "over the input",
    );

    // Outputs get 0666 less the umask, like any file the user's tools write.
    let with_umask = |args: &str| {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask 022 && \"{}\" {args}",
                env!("CARGO_BIN_EXE_qstore")
            ))
            .status()
            .unwrap();
        assert!(status.success(), "{args}");
    };
    with_umask(&format!("encode -q {model} -o {}", d("u.qstore")));
    with_umask(&format!(
        "decode -q {} --precision bf16 -o {}",
        d("u.qstore"),
        d("u.safetensors")
    ));
    with_umask(&format!(
        "convert -q {model} --to fp16 -o {}",
        d("c.safetensors")
    ));
    for f in ["u.qstore", "u.safetensors", "c.safetensors"] {
        let mode = std::fs::metadata(d(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{f}: {mode:o}");
    }
}

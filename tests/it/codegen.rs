//! What the optimiser made of the SIMD loops. A loop's helpers must be inlined into it to run
//! with its target features; one that is not turns each intrinsic it uses into a call. That
//! happened silently, twice: a 128-bit mask compare in a function not compiled for AVX-512 VL
//! (a call per sixteen elements), and a build whose table loop called a closure without the
//! loop's features, 3.7x slower.

use std::collections::{HashMap, HashSet};
use std::process::Command;

/// No function of qstore calls a SIMD intrinsic, directly or through generic library code
/// (`array::map` and the like), and no SIMD loop calls a closure of its own: all inlined. Dependencies may (the regex crates do,
/// in code that runs once). A debug build inlines nothing, so this only means something
/// optimised.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "checks the optimised build: run with --release"
)]
fn simd_loops_call_no_intrinsic_or_closure_out_of_line() {
    let bin = env!("CARGO_BIN_EXE_qstore");
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-C", bin])
        .output()
        .expect("needs objdump (binutils)");
    assert!(out.status.success(), "objdump {bin} failed");
    let disassembly = String::from_utf8_lossy(&out.stdout);
    let graph = call_graph(&disassembly);
    let mut found = Vec::new();
    for (callee, _) in graph.names.iter().filter(|(_, name)| is_intrinsic(name)) {
        // Up through library code to the first callers that are not library code.
        let (mut seen, mut todo) = (HashSet::new(), vec![*callee]);
        while let Some(f) = todo.pop() {
            for &caller in graph.callers.get(f).into_iter().flatten() {
                let name = graph.names[caller];
                if name.contains("qstore::") {
                    found.push(format!("{name} calls {}", graph.names[callee]));
                } else if is_library(name) && seen.insert(caller) {
                    todo.push(caller);
                }
            }
        }
    }
    // A closure in a SIMD loop has the loop's features, but called out of line it passes its
    // vectors through memory: 50 -> 75 ms for the synthetic INT8 decode, 53 -> 47 ms on AVX2
    // once written out.
    let simd = |name: &str| name.contains("avx2::") || name.contains("avx512");
    found.extend(
        graph
            .names
            .values()
            .filter(|name| {
                name.starts_with("qstore::") && simd(name) && name.contains("{{closure}}")
            })
            .map(|name| format!("{name} is a closure called out of line")),
    );
    assert!(
        found.is_empty(),
        "SIMD code called out of line (a helper was not inlined into its loop):\n{}",
        found.join("\n")
    );
}

fn is_intrinsic(name: &str) -> bool {
    name.split_once("core::core_arch::x86::")
        .is_some_and(|(_, rest)| rest.contains("::_mm"))
}

fn is_library(name: &str) -> bool {
    ["core::", "alloc::", "<core::", "<alloc::"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Functions by address (instances of one generic share a name), and each one's callers.
struct CallGraph<'a> {
    names: HashMap<&'a str, &'a str>,
    callers: HashMap<&'a str, Vec<&'a str>>,
}

/// The call graph of `objdump -d -C` output: `ADDR <name>:` starts a function, and
/// `call ADDR <name>` lines inside it call another.
fn call_graph(disassembly: &str) -> CallGraph<'_> {
    let mut graph = CallGraph {
        names: HashMap::new(),
        callers: HashMap::new(),
    };
    let mut current = "";
    for line in disassembly.lines() {
        if let Some((addr, name)) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            let addr = addr.trim_start_matches('0');
            graph.names.insert(addr, name);
            current = addr;
        } else if let Some((_, target)) = line.split_once("call ") {
            let target = target.trim();
            if let Some((addr, _)) = target.split_once(" <") {
                graph.callers.entry(addr.trim()).or_default().push(current);
            }
        }
    }
    graph
}

//! Every chunk decoder on hostile input: frequency tables, rANS streams (int8 and float byte
//! planes), and residuals against fuzzed int8 values and scales. The first bytes choose the
//! decoder, its lanes (4 or 32: which / 5 odd; a 32-lane residual is decoded in the
//! version-2, version-3 and version-4 layouts, 32-lane int8 values with one table, with a table
//! per group of rows, with a coarse table and with coarse tables and escapes, 32-lane 16-bit
//! floats with fine and coarse tables)
//! and the output size; an error is fine, a panic or an out-of-bounds access is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::codec::quantize::HighDtype;
use qstore::codec::residual::{self, ChunkRows, Layout};
use qstore::codec::{
    Lanes, decode_float, decode_float16_coarse, decode_int8, decode_int8_coarse, decode_int8_escaped,
    decode_int8_rows,
};

fuzz_target!(|data: &[u8]| {
    let [which, a, b, rest @ ..] = data else {
        return;
    };
    let n = (usize::from(*a) << 8 | usize::from(*b)) % 8192;
    let lanes = if which / 5 % 2 == 1 {
        Lanes::Wide
    } else {
        Lanes::Narrow
    };
    match which % 5 {
        0 => {
            let _ = decode_int8(rest, lanes, &mut vec![0u8; n]);
            if lanes == Lanes::Wide {
                let _ = decode_int8_rows(rest, &mut vec![0u8; n]);
                let _ = decode_int8_coarse(rest, &mut vec![0u8; n]);
                let _ = decode_int8_escaped(rest, &mut vec![0u8; n]);
            }
        }
        1 => {
            let _ = decode_float(rest, 2, lanes, &mut vec![0u8; n * 2]);
            if lanes == Lanes::Wide {
                let _ = decode_float16_coarse(rest, &mut vec![0u8; n * 2]);
            }
        }
        2 => {
            let _ = decode_float(rest, 4, lanes, &mut vec![0u8; n * 4]);
        }
        3 => {
            let _ = decode_float(rest, 8, lanes, &mut vec![0u8; n * 8]);
        }
        _ => residual_case(*a, *b, lanes, rest),
    }
});

/// A residual chunk of `rows` x `cols` whose int8 values and scales come from the input too.
fn residual_case(a: u8, b: u8, lanes: Lanes, rest: &[u8]) {
    let (rows, cols) = (usize::from(a % 8) + 1, usize::from(b % 64) + 1);
    let n = rows * cols;
    if rest.len() < n + rows * 2 {
        return;
    }
    let (q, rest) = rest.split_at(n);
    let (scale_bytes, stored) = rest.split_at(rows * 2);
    let scales: Vec<f32> = scale_bytes
        .chunks_exact(2)
        .map(|s| half::f16::from_le_bytes([s[0], s[1]]).to_f32())
        .collect();
    for dtype in [HighDtype::Bf16, HighDtype::F16] {
        let chunk = ChunkRows {
            dtype,
            q,
            scales: &scales,
            cols,
        };
        let layouts: &[Layout] = match lanes {
            Lanes::Narrow => &[Layout::Narrow],
            Lanes::Wide => &[Layout::WideRunsOfEight, Layout::Wide, Layout::WideBelowTop],
        };
        for &layout in layouts {
            let _ = residual::decode(&chunk, stored, layout, &mut vec![0u8; n * 2]);
        }
    }
}

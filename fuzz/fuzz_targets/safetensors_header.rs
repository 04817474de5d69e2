//! The safetensors header parser: any bytes give a header or an error, never a panic, and a
//! header it accepts describes tensors that fit the length it implies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::safetensors::read_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = read_header(&mut &data[..]) {
        let mut end = 0;
        for t in &h.tensors {
            assert_eq!(t.begin, end, "tensors are contiguous in data order");
            assert_eq!(t.end - t.begin, t.len());
            assert!(h.tensor(&t.name).is_some_and(|u| u.begin == t.begin));
            end = t.end;
        }
        assert_eq!(h.data_len(), end);
    }
});

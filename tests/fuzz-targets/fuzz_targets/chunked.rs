//! The chunked scanner gives the same answer however the body is split, never reads
//! past what it is given, and forwards only a prefix of what it consumed.
#![no_main]
use drover::wire::chunked::ChunkedScanner;
use libfuzzer_sys::fuzz_target;

fn scan(input: &[u8], cut: usize) -> Option<(usize, usize, bool)> {
    let mut s = ChunkedScanner::default();
    let (a, b) = input.split_at(cut.min(input.len()));
    let first = s.scan(a).ok()?;
    assert!(first.body <= first.consumed && first.consumed <= a.len());
    if first.done || first.consumed < a.len() {
        return Some((first.body, first.consumed, first.done));
    }
    let second = s.scan(b).ok()?;
    assert!(second.body <= second.consumed && second.consumed <= b.len());
    // Body bytes are a prefix: none after a trailer byte.
    let body = if second.body > 0 { a.len() + second.body } else { first.body };
    Some((body, a.len() + second.consumed, second.done))
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize;
    let input = &data[1..];
    let whole = scan(input, input.len());
    let split = scan(input, cut);
    if let (Some(w), Some(s)) = (whole, split) {
        if w.2 && s.2 {
            assert_eq!(w, s);
        }
    }
});

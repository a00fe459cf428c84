//! A request head is judged without touching the buffer, and a head drover serves is
//! split off exactly.
#![no_main]
use drover::proxy::h1::codec::{parse_head, take_request, HeadLimits, HeadParse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_bytes: 32 * 1024,
        max_headers: 100,
    };
    let mut fields = Vec::new();
    let parsed = parse_head(data, limits, &mut fields);
    if let HeadParse::Complete(head) = parsed {
        assert!(head.len <= data.len());
        let mut buf = bytes::BytesMut::from(data);
        if take_request(&mut buf, &head, &fields).is_ok() {
            assert_eq!(&buf[..], &data[head.len..]);
        }
    }
});

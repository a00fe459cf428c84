//! Any worker response head that parses is forwarded the same by the copy and the
//! re-parse paths, and what goes to the client parses as one complete head.
#![no_main]
use drover::proxy::h1::codec::{
    for_each_picked, forward_parsed_head, forward_response_head, parse_response, Expectations,
    Persist,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(head) = parse_response(data, &Expectations::plain()) else {
        return;
    };
    let (mut a, mut b) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    let fast = forward_parsed_head(data, &head, Persist::Open, &[], &mut a);
    let full = forward_response_head(&data[..head.len], &head, Persist::Open, &[], &mut b);
    if fast.is_ok() && full.is_ok() {
        // The same head either way (the copy keeps a value's optional whitespace), and
        // one complete head.
        assert_eq!(fields(&a), fields(&b));
    }
    let _ = for_each_picked(data, &head, |_, _| {});
});

fn fields(bytes: &[u8]) -> (u16, Vec<(String, Vec<u8>)>) {
    let mut slots = [httparse::EMPTY_HEADER; 300];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, bytes.len()),
        other => panic!("forwarded head does not parse: {other:?}"),
    }
    let code = resp.code.unwrap_or(0);
    let fields = resp
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.trim_ascii().to_vec()))
        .collect();
    (code, fields)
}

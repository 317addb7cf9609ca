//! The fuzz targets' properties (src/props.rs) as proptest tests, so the
//! stable suite covers what `scripts/fuzz` explores: arbitrary bytes, and
//! bytes shaped like each protocol so the deeper paths are reached.

use proptest::prelude::*;
use proxyguard::props;

fn socks5_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![4u8, 5]),
        prop::collection::vec(any::<u8>(), 0..4),
        prop::sample::select(vec![4u8, 5]),
        any::<u8>(),
        prop::sample::select(vec![1u8, 3, 4, 9]),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(v, methods, rv, cmd, atyp, tail)| {
            let mut b = vec![v, methods.len() as u8 + 1, 0];
            b.extend(methods);
            b.extend([rv, cmd, 0, atyp]);
            b.extend(tail);
            b
        })
}

fn reply_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        "HTTP/1\\.[01] [0-9]{3}[ a-zA-Z]{0,12}\r\n([A-Za-z-]{1,12}: [ -~]{0,20}\r\n){0,4}\r\n[ -~]{0,8}",
    )
        .prop_map(|(c, s)| {
            let mut b = vec![c];
            b.extend(s.into_bytes());
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn socks5_server_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        props::socks5_server(&data);
    }

    #[test]
    fn socks5_server_shaped(data in socks5_shaped()) {
        props::socks5_server(&data);
    }

    #[test]
    fn upstream_replies_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        props::upstream_replies(&data);
    }

    #[test]
    fn upstream_replies_shaped(data in reply_shaped()) {
        props::upstream_replies(&data);
    }

    #[test]
    fn text_parsers_strings(s in "\\PC{0,60}") {
        props::text_parsers(s.as_bytes());
    }

    #[test]
    fn text_parsers_urls(s in "(http|socks5h?)://([a-z0-9%]{1,8}(:[a-zA-Z0-9@/#?%]{0,10})?@)?[a-z0-9.\\[\\]:]{1,20}(/[a-z?=&]{0,10})?") {
        props::text_parsers(s.as_bytes());
    }

    #[test]
    fn text_parsers_numeric_hosts(s in "(0x[0-9a-fA-F]{0,9}|0[0-7]{0,12}|[0-9]{1,11})(\\.(0x[0-9a-f]{0,3}|[0-9]{1,4})){0,4}(:[0-9]{1,5})?") {
        props::text_parsers(s.as_bytes());
    }

    #[test]
    fn signer_inputs(s in "(GET|POST|[A-Z]{0,6})\n[ -~]{0,60}\n[ -~]{0,20}\n[ -~]{0,20}") {
        props::signer(s.as_bytes());
    }

    #[test]
    fn config_texts(s in "(\\[\\[?[a-z_.]{1,10}\\]\\]?\n|[a-z_]{1,12} = (\"[ -~]{0,20}\"|[0-9]{1,6}|true|\\[\\])\n){0,8}") {
        props::config(s.as_bytes());
    }
}

#[test]
fn numeric_ipv4_forms_agree_with_dotted_decimal() {
    // Every u32 in its decimal, hex and octal single-number forms.
    for v in [0u32, 1, 0x7f000001, 0xffffffff, 0x0a000001, 0xa9fea9fe] {
        let ip = std::net::Ipv4Addr::from(v);
        for s in [format!("{v}"), format!("0x{v:x}"), format!("0{v:o}")] {
            assert_eq!(proxyguard::acl::parse_numeric_ipv4(&s), Some(ip), "{s}");
        }
    }
}

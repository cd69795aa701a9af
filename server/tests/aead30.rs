//! AES-128-GCM-SIV (AEAD 30) negotiated as chrony's server negotiates it.
//!
//! A chrony 4.6.1+ client sends record 1024 and derives its keys with id 30
//! in the TLS exporter context; a chrony 4.4-4.6.0 client sends no record
//! and derives them with id 15. The test plays both against the real
//! binary, derives the keys itself from the TLS exporter secret (RFC 8446,
//! section 7.5, written here on `ring`'s HMAC and checked against values
//! computed with Python's `hmac`), and proves which keys the server put in
//! its cookies by authenticating NTS requests with them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{try_cookie, Ntsd, Outcome};
use nts_proto::client::NtsClient;
use nts_proto::ke::{decode_message, encode_message, Record, EXPORTER_LABEL, PROTOCOL_NTPV4};
use nts_proto::{AeadAlgorithm, AeadKey, SessionKeys};
use ring::{digest, hmac};

/// HKDF-Expand-Label (RFC 8446, section 7.1).
fn expand_label(
    alg: hmac::Algorithm,
    secret: &[u8],
    label: &[u8],
    ctx: &[u8],
    len: usize,
) -> Vec<u8> {
    let full = [b"tls13 ", label].concat();
    let mut info = (len as u16).to_be_bytes().to_vec();
    info.push(full.len() as u8);
    info.extend_from_slice(&full);
    info.push(ctx.len() as u8);
    info.extend_from_slice(ctx);
    let key = hmac::Key::new(alg, secret);
    let (mut out, mut t, mut i) = (Vec::new(), Vec::new(), 1u8);
    while out.len() < len {
        let mut msg = t.clone();
        msg.extend_from_slice(&info);
        msg.push(i);
        t = hmac::sign(&key, &msg).as_ref().to_vec();
        out.extend_from_slice(&t);
        i += 1;
    }
    out.truncate(len);
    out
}

/// The TLS 1.3 exporter (RFC 8446, section 7.5) from the exporter master
/// secret, with the hash of the negotiated cipher suite.
fn exporter(sha384: bool, secret: &[u8], context: &[u8], len: usize) -> Vec<u8> {
    let (h, d) = if sha384 {
        (hmac::HMAC_SHA384, &digest::SHA384)
    } else {
        (hmac::HMAC_SHA256, &digest::SHA256)
    };
    let empty = digest::digest(d, b"");
    let derived = expand_label(h, secret, EXPORTER_LABEL, empty.as_ref(), d.output_len());
    let ctx = digest::digest(d, context);
    expand_label(h, &derived, b"exporter", ctx.as_ref(), len)
}

/// Known answers from Python 3 (`hmac`, `hashlib`), the same formula
/// written independently, for 16-byte keys of each context an AEAD-30
/// client may use.
#[test]
fn exporter_matches_python() {
    let cases = [
        (false, "0000001e00", "58c81779069ed5fe9308d40b290e87eb"),
        (false, "0000001e01", "415e9a1b01324faebbdf89219ad77f12"),
        (false, "0000000f00", "8e925d313916e77fe423ecba3684a903"),
        (false, "0000000f01", "71897e7ce902ff7a80e2ae7749f239c9"),
        (true, "0000001e00", "f78c041bf82e62bb386cf4b7df52e8ba"),
        (true, "0000001e01", "a22602f00564a67d6ed57a1b840dd3a7"),
        (true, "0000000f00", "4f557065c365b31980a1d14391a18c20"),
        (true, "0000000f01", "c00f33c47cb0deb282d40ce3261c0c41"),
    ];
    for (sha384, ctx, want) in cases {
        let secret = if sha384 {
            vec![0x22; 48]
        } else {
            vec![0x11; 32]
        };
        let got = exporter(sha384, &secret, &hex::decode(ctx).unwrap(), 16);
        assert_eq!(hex::encode(got), want, "sha384={sha384} context {ctx}");
    }
}

/// Records every TLS secret the client logs (SSLKEYLOGFILE's content).
#[derive(Debug, Default)]
struct Secrets(Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((label.to_owned(), secret.to_vec()));
    }
}

struct Session {
    records: Vec<Record>,
    exporter_secret: Vec<u8>,
    sha384: bool,
}

/// One NTS-KE session sending `request` as it is.
fn session(s: &Ntsd, request: &[u8]) -> Session {
    let secrets = Arc::new(Secrets::default());
    let base = nts_client::client_config(Some(&s.ca())).unwrap();
    let mut config = (*base).clone();
    config.key_log = secrets.clone();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", s.ke_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request).unwrap();
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("NTS-KE read: {e}"),
    }
    let suite = tls.conn.negotiated_cipher_suite().unwrap();
    // rustls clients list TLS13_AES_256_GCM_SHA384 first; the server takes
    // TLS13_AES_128_GCM_SHA256 (SHA-256 runs in CPU instructions).
    assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let sha384 = suite.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384;
    let exporter_secret = secrets
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(l, _)| l == "EXPORTER_SECRET")
        .map(|(_, s)| s.clone())
        .expect("rustls logs EXPORTER_SECRET");
    // Our exporter agrees with rustls' on this connection.
    let mut theirs = [0u8; 16];
    tls.conn
        .export_keying_material(&mut theirs, EXPORTER_LABEL, Some(&[0, 0, 0, 30, 0]))
        .unwrap();
    assert_eq!(
        exporter(sha384, &exporter_secret, &[0, 0, 0, 30, 0], 16),
        theirs
    );
    Session {
        records: decode_message(&response).expect("a whole response"),
        exporter_secret,
        sha384,
    }
}

fn request(aeads: &[u16], record_1024: bool) -> Vec<u8> {
    let mut records = vec![
        Record::NextProtocol(vec![PROTOCOL_NTPV4]),
        Record::Aead(aeads.to_vec()),
    ];
    if record_1024 {
        records.push(Record::Compliant128GcmExport);
    }
    records.push(Record::EndOfMessage);
    encode_message(&records)
}

/// The session keys exported with `context_id` in the context.
fn keys(s: &Session, context_id: u16) -> SessionKeys {
    let key = |dir: u8| {
        let [a, b] = context_id.to_be_bytes();
        let bytes = exporter(s.sha384, &s.exporter_secret, &[0, 0, a, b, dir], 16);
        AeadKey::new(AeadAlgorithm::AesGcmSiv128, &bytes).unwrap()
    };
    SessionKeys {
        c2s: key(0),
        s2c: key(1),
    }
}

fn cookies(s: &Session) -> Vec<Vec<u8>> {
    s.records
        .iter()
        .filter_map(|r| match r {
            Record::NewCookie(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn aead_30_with_and_without_record_1024() {
    let s = Ntsd::start("portable");
    for (kind, record_1024, context_id, wrong_id) in [
        ("chrony 4.6.1+", true, 30, 15),
        ("chrony 4.4-4.6.0", false, 15, 30),
    ] {
        let ke = session(&s, &request(&[30, 15], record_1024));
        assert!(
            ke.records.contains(&Record::Aead(vec![30])),
            "{kind}: {:?}",
            ke.records
        );
        assert_eq!(
            ke.records.contains(&Record::Compliant128GcmExport),
            record_1024,
            "{kind}: record 1024 goes back exactly when it came"
        );
        let issued = cookies(&ke);
        assert_eq!(issued.len(), 8, "{kind}");
        assert!(issued.iter().all(|c| c.len() == 68), "{kind}");

        let mut right = NtsClient::new(keys(&ke, context_id), issued.clone());
        for seed in 1..=3 {
            assert_eq!(
                try_cookie(&mut right, s.ntp_port, seed),
                Outcome::Authenticated,
                "{kind}: keys from context id {context_id}"
            );
        }
        let mut wrong = NtsClient::new(keys(&ke, wrong_id), issued);
        assert_eq!(
            try_cookie(&mut wrong, s.ntp_port, 9),
            Outcome::Nak,
            "{kind}: keys from context id {wrong_id} must not authenticate"
        );
    }

    // Record 1024 with another AEAD chosen is not echoed, and the AES-SIV
    // keys keep their own id in the context.
    let ke = session(&s, &request(&[15, 30], true));
    assert!(ke.records.contains(&Record::Aead(vec![15])));
    assert!(!ke.records.contains(&Record::Compliant128GcmExport));
    assert!(cookies(&ke).iter().all(|c| c.len() == 100));
    // A record 1024 with a body is Bad Request, as chrony answers it.
    let mut bad = request(&[30], false);
    let end = bad.split_off(bad.len() - 4);
    bad.extend_from_slice(&[0x04, 0x00, 0x00, 0x02, 0xab, 0xcd]);
    bad.extend_from_slice(&end);
    let ke = session(&s, &bad);
    assert_eq!(ke.records.first(), Some(&Record::Error(1)));

    let sessions = s.metric("ntsd_ke_sessions_total{aead=\"30\"}");
    assert_eq!(sessions, 2, "{}", s.metrics_text());
    s.terminate();
}

/// `ntsd query --aead 30` negotiates AEAD 30 with the compliant export and
/// gets an authenticated reply.
#[test]
fn query_with_aead_30() {
    let s = Ntsd::start("auto");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ntsd"))
        .args([
            "query",
            &format!("localhost:{}", s.ke_port),
            "--aead",
            "30",
            "--ca",
        ])
        .arg(s.ca())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("AEAD 30 (AesGcmSiv128, compliant export)"),
        "{text}"
    );
    assert!(text.contains("cookies of 68 bytes"), "{text}");
    s.terminate();
}

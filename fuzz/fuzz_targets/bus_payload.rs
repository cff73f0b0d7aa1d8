//! The bus payload decoders, on arbitrary bytes; every decoded value must survive
//! `encode` and decode unchanged.
#![no_main]

use std::fmt::Debug;

use clawfleet_proto::bus::{DecodeError, decode_directive, decode_envelope, decode_heartbeat, encode};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

fn round_trip<T>(what: &str, data: &[u8], decode: fn(&[u8]) -> Result<T, DecodeError>)
where
    T: Serialize + PartialEq + Debug,
{
    let Ok(value) = decode(data) else { return };
    let bytes = encode(&value);
    match decode(&bytes) {
        Ok(again) => assert_eq!(again, value, "{what} changed in a round trip through {:?}", String::from_utf8_lossy(&bytes)),
        Err(e) => panic!("{what} {value:?} encodes to {:?}, which does not decode: {e}", String::from_utf8_lossy(&bytes)),
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip("directive", data, decode_directive);
    round_trip("agent envelope", data, decode_envelope);
    round_trip("heartbeat", data, decode_heartbeat);
});

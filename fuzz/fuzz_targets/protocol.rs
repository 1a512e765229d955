//! The coordinator's request decoding: every request body type of the runner protocol from
//! arbitrary JSON, the `Content-Range` header of log patches, and the pure rules applied to
//! what they carry (long-poll wait, patch planning). No panic; what decodes re-encodes; a
//! parsed range is well-formed.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use protocol::*;

/// Decodes `data` as `T` the way the coordinator's handlers do; what decodes must encode.
fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(data: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(data).ok()?;
    serde_json::to_string(&v).expect("a decoded request encodes again");
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            let _ = decode::<RegisterRequest>(body);
        }
        1 => {
            if let Some(req) = decode::<JobRequestBody>(body) {
                let cap = Duration::from_secs(30);
                assert!(req.wait(cap) <= cap);
            }
        }
        2 => {
            let _ = decode::<FinishRequest>(body);
        }
        3 => {
            let _ = decode::<SubmitMeta>(body);
        }
        4 => {
            let _ = decode::<TokenRequest>(body);
        }
        5 => {
            let _ = decode::<StepReport>(body);
        }
        6 => {
            // Bodies the agent decodes from the coordinator.
            let _ = decode::<JobPayload>(body);
            let _ = decode::<JobAck>(body);
            let _ = decode::<RewindBody>(body);
        }
        _ => {
            let (held, header) = match body.split_first_chunk::<8>() {
                Some((h, rest)) => (u64::from_le_bytes(*h), rest),
                None => (0, body),
            };
            let Ok(header) = std::str::from_utf8(header) else {
                return;
            };
            if let Some(r) = ContentRange::parse(header) {
                assert!(r.end >= r.start);
                assert!(r.len() >= 1);
                assert_eq!(ContentRange::parse(&r.header()), Some(r));
                match plan_patch(held, r) {
                    PatchPlan::Append { skip } => assert!(skip < r.len()),
                    PatchPlan::Duplicate => assert!(r.end < held),
                    PatchPlan::Gap => assert!(r.start > held),
                }
            }
        }
    }
});

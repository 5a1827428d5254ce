//! etcd watches, as a bounded wait for a change under a key prefix.
//!
//! [`EtcdArbiter::wait_for_change`] opens a watch (`POST /v3/watch`, a stream of
//! newline-delimited JSON answers) on every key under a prefix from a given revision,
//! and returns as soon as etcd reports an event, or when the wait's window ends. Used
//! with a range read whose revision it starts after (list, then watch from the list's
//! revision + 1, as Kubernetes informers do), no change between the read and the watch
//! is missed: a change that came in between is reported at once.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::{json, Value};

use super::{EtcdArbiter, EtcdError, Result, B64, MAX_ANSWER_BYTES};
use base64::Engine as _;

/// The end of the range of every key that starts with `prefix` (its last byte + 1).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range to the end of the key space.
    vec![0]
}

impl EtcdArbiter {
    /// Wait up to `window` for a change (a put or delete, a lease expiry) of a key
    /// under `prefix` at revision `from_revision` or later. `Ok(true)` on a change,
    /// `Ok(false)` when the window ended without one.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint opens the watch.
    pub fn wait_for_change(
        &self,
        prefix: &str,
        from_revision: u64,
        window: Duration,
    ) -> Result<bool> {
        let body = json!({
            "create_request": {
                "key": B64.encode(prefix),
                "range_end": B64.encode(prefix_end(prefix)),
                "start_revision": from_revision.to_string(),
            }
        });
        let mut last = EtcdError::NoEndpoint;
        for endpoint in &self.endpoints {
            let sent = self
                .agent
                .post(format!("{endpoint}/v3/watch"))
                .config()
                .timeout_global(Some(window))
                .build()
                .header("content-type", "application/json")
                .send(body.to_string());
            let resp = match sent {
                Ok(r) => r,
                Err(ureq::Error::Timeout(_)) => return Ok(false),
                Err(e) => {
                    last = EtcdError::Unreachable {
                        endpoint: endpoint.clone(),
                        detail: e.to_string(),
                    };
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                last = EtcdError::Status {
                    endpoint: endpoint.clone(),
                    status,
                    body: String::new(),
                };
                continue;
            }
            let reader = resp.into_body().into_reader().take(MAX_ANSWER_BYTES);
            return Ok(changed(BufReader::new(reader)));
        }
        Err(last)
    }
}

/// Whether the watch stream reports a change before it ends (the window's timeout
/// ends it as a read error).
fn changed(mut stream: impl BufRead) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match stream.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let Ok(answer) = serde_json::from_str::<Value>(&line) else {
            // Not an answer this code knows: re-read the state to be sure.
            return true;
        };
        let Some(result) = answer.get("result") else {
            return true;
        };
        let events = result
            .get("events")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        // A canceled or compacted watch lost its place: re-read the state.
        let lost = result.get("canceled").and_then(Value::as_bool) == Some(true)
            || result.get("compact_revision").is_some();
        if events || lost {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("ft/vm/1/"), b"ft/vm/10".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn streams_decode() {
        let created = "{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true}}\n";
        assert!(!changed(created.as_bytes()));
        let event = format!(
            "{created}{}\n",
            "{\"result\":{\"header\":{\"revision\":\"2\"},\"events\":[{\"kv\":{}}]}}"
        );
        assert!(changed(event.as_bytes()));
        assert!(changed(&b"{\"result\":{\"canceled\":true}}\n"[..]));
        assert!(changed(&b"{\"error\":{\"code\":14}}\n"[..]));
        assert!(changed(&b"not json\n"[..]));
    }
}

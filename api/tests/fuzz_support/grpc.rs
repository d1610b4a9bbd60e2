//! Fuzzing a live tonic server: arbitrary bytes sent as the body of every
//! method of a service, exactly as a hostile client could, through the
//! server's own prost decoding and then its handler. A handler that
//! panics is found by the panic record of [`super::fuzz_support`] (a
//! panic inside a server task only resets the stream; the client sees an
//! error like any other).
//!
//! Needs `bytes`, `tokio`, `tokio-stream` and `tonic`; included with
//! `#[path]` beside `fuzz_support`.
#![allow(dead_code)]

use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

use super::fuzz_support::{self, Rpc};

/// A codec that sends and receives message bodies as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// What one call came to. Only panics count as findings: errors are the
/// refusals the fuzzing hopes for, and a slow answer may be a legitimate
/// wait (a stream that has nothing yet).
#[derive(Debug)]
pub enum Outcome {
    /// The handler answered (the first message, if it streams).
    Answered,
    /// It refused, or the call failed.
    Refused(Status),
    /// No answer within the wait.
    TimedOut,
}

/// Sends `messages` (one unless the method streams requests) as the raw
/// request body of `rpc` and waits up to `wait` for the answer's first
/// message.
pub async fn call(channel: &Channel, rpc: &Rpc, messages: Vec<Vec<u8>>, wait: Duration) -> Outcome {
    let path = match tonic::codegen::http::uri::PathAndQuery::from_str(&rpc.path()) {
        Ok(p) => p,
        Err(e) => return Outcome::Refused(Status::internal(format!("bad path: {e}"))),
    };
    let work = async {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = tonic::Request::new(tokio_stream::iter(messages));
        let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
        stream.message().await?;
        Ok::<(), Status>(())
    };
    match tokio::time::timeout(wait, work).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(status)) => Outcome::Refused(status),
        Err(_) => Outcome::TimedOut,
    }
}

/// Tally of one method's fuzzing, for the run's report.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Calls the handler answered.
    pub answered: u32,
    /// Calls refused (by decoding or by the handler).
    pub refused: u32,
    /// Calls with no answer in time.
    pub timed_out: u32,
}

/// Leaves a message as generated.
pub fn unchanged(_: &Rpc, bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Fuzzes every method of `rpcs` over `channel`, `cases` calls each,
/// each call waiting at most `wait`; fails with the method and input of
/// the first panic (shrunk). Runs the calls on `runtime`. `sanitize` sees
/// every message before it is sent: it keeps address fields on loopback,
/// since a fuzzed server must dial nothing but this machine.
pub fn fuzz_methods(
    runtime: &tokio::runtime::Runtime,
    channel: &Channel,
    rpcs: &[Rpc],
    cases: u32,
    wait: Duration,
    sanitize: fn(&Rpc, Vec<u8>) -> Vec<u8>,
) -> Vec<(String, Tally)> {
    fuzz_support::record_panics();
    let mut report = Vec::new();
    for rpc in rpcs {
        let mut config = fuzz_support::config(cases);
        config.cases = cases;
        let mut runner = TestRunner::new(config);
        let messages = if rpc.client_streaming {
            proptest::collection::vec(fuzz_support::request_bytes(), 0..4).boxed()
        } else {
            fuzz_support::request_bytes().prop_map(|b| vec![b]).boxed()
        };
        let tally = std::cell::RefCell::new(Tally::default());
        let result = runner.run(&messages, |messages| {
            let messages = messages.into_iter().map(|m| sanitize(rpc, m)).collect();
            let outcome = runtime.block_on(call(channel, rpc, messages, wait));
            {
                let mut t = tally.borrow_mut();
                match outcome {
                    Outcome::Answered => t.answered += 1,
                    Outcome::Refused(_) => t.refused += 1,
                    Outcome::TimedOut => t.timed_out += 1,
                }
            }
            let panics = fuzz_support::take_panics();
            if panics.is_empty() {
                Ok(())
            } else {
                Err(TestCaseError::fail(panics.join("\n")))
            }
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => panic!(
                "{} panicked on {} message(s) {:02x?}:\n{why}",
                rpc.path(),
                input.len(),
                input
            ),
            Err(TestError::Abort(why)) => panic!("{}: fuzzing aborted: {why}", rpc.path()),
        }
        report.push((rpc.path(), tally.into_inner()));
    }
    report
}

/// The RPCs of the services [`fuzz_support::SERVED_BY`] assigns to `target`.
pub fn rpcs_of(target: &str) -> Vec<Rpc> {
    let services: Vec<&str> = fuzz_support::SERVED_BY
        .iter()
        .filter(|(_, t)| *t == target)
        .map(|(s, _)| *s)
        .collect();
    assert!(!services.is_empty(), "no service is fuzzed by {target}");
    fuzz_support::rpcs()
        .into_iter()
        .filter(|r| services.contains(&r.full_service().as_str()))
        .collect()
}

//! The gateway's per-message hot paths: WebSocket framing of a batch, event fan-out from the
//! cache to subscribed connections, and a cache hit. Run:
//! `cargo bench -p resgate-rs --bench hot_paths`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resgate::hot_paths::{Decoder, FanOut, Incoming, Lookup, encode_batch};
use std::hint::black_box;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A client frame as browsers send it: masked.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws");
    // What one read of a client keeping 8 gets in flight holds.
    let batch: Vec<u8> = (0..8u64)
        .flat_map(|id| client_frame(format!(r#"{{"id":{id},"method":"get.bench.item.3"}}"#).as_bytes()))
        .collect();
    g.throughput(Throughput::Elements(8));
    g.bench_function("decode_8_requests", |b| {
        b.iter(|| {
            let mut d = Decoder::new(1 << 20, false);
            d.extend(black_box(&batch));
            let mut n = 0;
            d.parse(|m| {
                if let Incoming::Text(t) = m {
                    n += t.len();
                }
                true
            })
            .unwrap();
            black_box(n)
        })
    });
    let replies: Vec<Utf8Bytes> = (0..8).map(|id| Utf8Bytes::from(format!(r#"{{"result":{{}},"id":{id}}}"#))).collect();
    g.bench_function("encode_8_replies", |b| {
        b.iter(|| {
            let mut frames = replies.clone();
            black_box(encode_batch(&mut Vec::new(), &mut frames, false, false))
        })
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 1000] {
        let mut f = FanOut::new(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("change_event_to_{n}_connections"), |b| b.iter(|| black_box(f.event())));
    }
    g.finish();
}

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    let l = Lookup::default();
    g.bench_function("hit_register_snapshot", |b| b.iter(|| black_box(l.hit())));
    g.finish();
}

criterion_group!(benches, framing, fan_out, cache);
criterion_main!(benches);

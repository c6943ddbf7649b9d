//! Hot-path codec benchmarks: what the gateway does per request and per event.
//! Run: `cargo bench -p res-protocol --bench codec`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use res_protocol::client::{Method, decode_request, event_frame};
use res_protocol::service::{RequestFields, decode_call, decode_change_event, decode_get};
use res_protocol::value::ResourceData;
use std::hint::black_box;

fn client_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    let frame = br#"{"id":42,"method":"call.seats.departure.123.hold","params":{"seats":["1A","1B"]}}"#;
    g.bench_function("decode_request+parse_method", |b| {
        b.iter(|| {
            let (id, req) = decode_request(black_box(frame)).unwrap();
            black_box((id, Method::parse(req.method()).unwrap()));
        })
    });
    let data = br#"{"values":{"seat1A":"held","price":{"data":{"amount":4200,"currency":"EUR"}}}}"#;
    g.bench_function("event_frame", |b| b.iter(|| black_box(event_frame("seats.departure.123", "change", Some(data)))));
    g.finish();
}

fn service_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("service");
    g.throughput(Throughput::Elements(1));
    let token = serde_json::value::RawValue::from_string(r#"{"sub":"u1","roles":["customer"]}"#.into()).unwrap();
    g.bench_function("encode_access_request", |b| {
        b.iter(|| {
            black_box(
                RequestFields {
                    cid: "c0ffee0123456789abcd",
                    token: Some(&token),
                    query: None,
                    params: None,
                    is_http: false,
                }
                .encode(),
            )
        })
    });
    let change = br#"{"values":{"a":1,"b":"two","c":{"rid":"x.y"},"d":{"action":"delete"}}}"#;
    g.bench_function("decode_change_event", |b| b.iter(|| black_box(decode_change_event(black_box(change)).unwrap())));
    let model: String = {
        let props: Vec<String> = (0..100).map(|i| format!("\"seat{i}\":\"free\"")).collect();
        format!(r#"{{"result":{{"model":{{{}}}}}}}"#, props.join(","))
    };
    g.bench_function("decode_get_100_props", |b| {
        b.iter(|| black_box(decode_get(black_box(model.as_bytes())).unwrap()))
    });
    let got = decode_get(model.as_bytes()).unwrap();
    g.bench_function("encode_model_100_props", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(2048);
            black_box(&got.data as &ResourceData).write_client(&mut out, false);
            black_box(out)
        })
    });
    g.bench_function("decode_call", |b| b.iter(|| black_box(decode_call(br#"{"result":{"ok":true}}"#).0.unwrap())));
    g.finish();
}

criterion_group!(benches, client_side, service_side);
criterion_main!(benches);

//! Records per second through each trace reader, the JSONL writer and the synthetic
//! generators, on 100,000 in-memory requests. Replay's goal is 500,000 simulated requests
//! per second of wall time on one core (issue 4), and the trace is read on that same core,
//! so each reader must stream several times faster than that (goal: at least 2 million
//! records per second for the CSV readers, 1 million for JSON with hash ids) to leave the
//! engine most of the time. Inputs are built from a seeded generator, not read from disk,
//! so the figure is parsing, not I/O.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dujiang::trace::{
    ArrivalProcess, DiurnalProfile, Format, JsonlWriter, PrefixSharing, SynthConfig,
    SyntheticTrace, TraceReader, TraceRecord,
};
use std::hint::black_box;

const N: usize = 100_000;

fn records(prefix: bool) -> Vec<TraceRecord> {
    let cfg = SynthConfig {
        prefix: prefix.then(PrefixSharing::default),
        ..SynthConfig::new(ArrivalProcess::Poisson, 5.0, 1)
    };
    SyntheticTrace::new(cfg).unwrap().take(N).collect()
}

fn azure_csv(recs: &[TraceRecord]) -> String {
    let mut s = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    let origin: u64 = 1_700_158_546; // 2023-11-16 18:15:46 UTC
    for r in recs {
        let secs = origin + r.arrival_ns / 1_000_000_000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // All within a few days of 2023-11-16: day of month from the epoch day.
        let day = 16 + (days - 19_677);
        s.push_str(&format!(
            "2023-11-{day:02} {:02}:{:02}:{:02}.{:07},{},{}\n",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            r.arrival_ns % 1_000_000_000 / 100,
            r.prompt_tokens,
            r.output_tokens
        ));
    }
    s
}

fn burstgpt_csv(recs: &[TraceRecord]) -> String {
    let mut s = String::from(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n",
    );
    for (i, r) in recs.iter().enumerate() {
        s.push_str(&format!(
            "{:.3},{},1.5,ChatGPT,{},{},{},Conversation log\n",
            r.arrival_ns as f64 / 1e9,
            i % 1000,
            r.prompt_tokens,
            r.output_tokens,
            r.prompt_tokens + r.output_tokens
        ));
    }
    s
}

fn mooncake_jsonl(recs: &[TraceRecord]) -> String {
    let mut s = String::new();
    for r in recs {
        let ids: Vec<String> = r.hash_ids.iter().map(u64::to_string).collect();
        s.push_str(&format!(
            "{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": {}, \"hash_ids\": [{}]}}\n",
            r.arrival_ns / 1_000_000,
            r.prompt_tokens,
            r.output_tokens,
            ids.join(", ")
        ));
    }
    s
}

fn dujiang_jsonl(recs: &[TraceRecord]) -> Vec<u8> {
    let mut w = JsonlWriter::new(Vec::new());
    for r in recs {
        w.write(r).unwrap();
    }
    w.into_inner()
}

fn readers(c: &mut Criterion) {
    let plain = records(false);
    let hashed = records(true);
    let inputs: [(&str, Format, Vec<u8>); 4] = [
        ("azure", Format::Azure, azure_csv(&plain).into_bytes()),
        (
            "burstgpt",
            Format::BurstGpt,
            burstgpt_csv(&plain).into_bytes(),
        ),
        (
            "mooncake",
            Format::Mooncake,
            mooncake_jsonl(&hashed).into_bytes(),
        ),
        ("jsonl", Format::Jsonl, dujiang_jsonl(&hashed)),
    ];
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(N as u64));
    for (name, format, bytes) in &inputs {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let n = TraceReader::new(bytes.as_slice(), "bench", *format)
                    .map(|r| black_box(r.unwrap()).prompt_tokens as u64)
                    .sum::<u64>();
                black_box(n)
            })
        });
    }
    g.finish();
}

fn writer_and_generators(c: &mut Criterion) {
    let hashed = records(true);
    let mut g = c.benchmark_group("produce");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("write_jsonl", |b| {
        let mut buf = Vec::with_capacity(64 << 20);
        b.iter(|| {
            buf.clear();
            let mut w = JsonlWriter::new(&mut buf);
            for r in &hashed {
                w.write(r).unwrap();
            }
            black_box(buf.len())
        })
    });
    for (name, process) in [
        ("gen_poisson", ArrivalProcess::Poisson),
        ("gen_gamma", ArrivalProcess::Gamma { cv: 3.0 }),
        (
            "gen_diurnal",
            ArrivalProcess::Diurnal(DiurnalProfile::default()),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let gen = SyntheticTrace::new(SynthConfig::new(process.clone(), 100.0, 1)).unwrap();
                black_box(gen.take(N).map(|r| r.arrival_ns).max())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = readers, writer_and_generators
}
criterion_main!(benches);

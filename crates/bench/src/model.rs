//! The model service against llama.cpp, side by side in one run, on the same GGUF, threads,
//! slots and per-slot context:
//! - prompt and single-stream generation rates, from each server's own per-request timings
//!   (Ollama's durations for clawfleet, llama-server's `timings`), with `llama-bench` as a third
//!   opinion;
//! - aggregate generation with 1, 4, 16 and 32 concurrent streams and time to first token at 16
//!   streams, through the same OpenAI-compatible streaming client against both servers;
//! - llama.cpp's own batched-decoding ceiling (`llama-batched-bench`), for scale;
//! - resident memory.
//!
//! The machine's speed drifts by tens of percent over minutes, so every comparison is measured
//! in turns (ours, theirs, theirs, ours, …) and reported as medians.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{Row, free_port, median, percentile, rss_mib};

/// Where the reference llama.cpp tools are (built by scripts/bench from the llama.cpp sources
/// clawfleet itself links, with llama.cpp's default options).
pub(crate) struct Reference {
    pub(crate) bench: PathBuf,
    pub(crate) batched_bench: PathBuf,
    pub(crate) server: PathBuf,
}

impl Reference {
    pub(crate) fn in_dir(dir: &Path) -> Reference {
        Reference { bench: dir.join("llama-bench"), batched_bench: dir.join("llama-batched-bench"), server: dir.join("llama-server") }
    }
}

const SLOTS: u32 = 32;
/// Context of each slot; llama-server gets `-c SLOTS × SLOT_CONTEXT -np SLOTS`, the same.
const SLOT_CONTEXT: u32 = 1024;
const THREADS: u32 = 2;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Clawfleet,
    LlamaServer,
}

struct Server {
    kind: Kind,
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(url: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited with {status}");
        }
        if let Ok(r) = reqwest::get(format!("{url}/v1/models")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn clawfleet_server(bin: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["model", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--model-slots", &SLOTS.to_string(), "--model-ctx", &SLOT_CONTEXT.to_string(), "--model-threads", &THREADS.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting clawfleet model serve")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut child).await?;
    Ok(Server { kind: Kind::Clawfleet, child, url })
}

async fn llama_server(reference: &Reference, model: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let mut child = Command::new(&reference.server)
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &THREADS.to_string(), "-tb", &THREADS.to_string()])
        .args(["-c", &(SLOTS * SLOT_CONTEXT).to_string(), "-np", &SLOTS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting llama-server")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut child).await?;
    Ok(Server { kind: Kind::LlamaServer, child, url })
}

/// Measures both servers in turns, swapping who goes first every round, `rounds` times each.
async fn in_turns<'a, T, F, Fut>(rounds: usize, servers: [&'a Server; 2], mut measure: F) -> anyhow::Result<[Vec<T>; 2]>
where
    F: FnMut(&'a Server) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut got = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            got[k].push(measure(servers[k]).await?);
        }
    }
    Ok(got)
}

/// One streamed chat completion: (time to first token, completion tokens, end).
async fn stream_one(
    http: &reqwest::Client,
    url: &str,
    prompt: &str,
    max_tokens: u32,
    seed: u64,
) -> anyhow::Result<(Duration, u64, Instant)> {
    let t0 = Instant::now();
    let body = json!({
        "model": "smollm2", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let resp = http.post(format!("{url}/v1/chat/completions")).json(&body).send().await?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let mut bytes = resp.bytes_stream();
    let (mut first, mut chunks, mut usage) = (None, 0u64, None);
    let mut buf = Vec::new();
    while let Some(chunk) = bytes.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data)?;
            if v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                first.get_or_insert_with(|| t0.elapsed());
                chunks += 1;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage = Some(n);
            }
        }
    }
    Ok((first.unwrap_or_else(|| t0.elapsed()), usage.unwrap_or(chunks), Instant::now()))
}

const STORY: &str = "Write a long story about a dragon who learns to sail, with many details.";

/// Generation tokens per second over `streams` concurrent requests of `max_tokens` each.
async fn aggregate(server: &Server, streams: usize, max_tokens: u32) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let (http, url) = (http.clone(), server.url.clone());
            tokio::spawn(async move { stream_one(&http, &url, STORY, max_tokens, i as u64 + 1).await })
        })
        .collect();
    let mut tokens = 0;
    let mut end = t0;
    for t in tasks {
        let (_, n, e) = t.await??;
        tokens += n;
        end = end.max(e);
    }
    Ok(tokens as f64 / end.duration_since(t0).as_secs_f64())
}

/// Time to first token of `streams` concurrent requests with a prompt of about 100 tokens, each
/// starting with its own number so that no prompt cache holds it (`round` numbers them apart).
async fn first_tokens(server: &Server, streams: usize, round: usize) -> anyhow::Result<Vec<f64>> {
    let text = "The quick brown fox jumps over the lazy dog near the quiet river bank. ".repeat(6) + "Summarize that.";
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let n = round * streams + i + 1;
            let (http, url, prompt) = (http.clone(), server.url.clone(), format!("{n}. {text}"));
            tokio::spawn(async move { stream_one(&http, &url, &prompt, 16, n as u64).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??.0.as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// llama-bench's prompt (pp512) and generation (tg128) rates.
fn llama_bench(reference: &Reference, model: &Path) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(&reference.bench)
        .arg("-m")
        .arg(model)
        .args(["-t", &THREADS.to_string(), "-p", "512", "-n", "128", "-r", "3", "-o", "json"])
        .output()
        .context("running llama-bench")?;
    if !out.status.success() {
        bail!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let rate = |key: &str| runs.iter().find(|r| r[key].as_u64().unwrap_or(0) > 0).and_then(|r| r["avg_ts"].as_f64());
    Ok((rate("n_prompt").context("pp rate")?, rate("n_gen").context("tg rate")?))
}

/// llama-batched-bench's generation rate (over all sequences) with 1, 16 and 32 sequences of a
/// 100-token prompt and 128 generated tokens, each in its own KV stream like both servers.
fn batched_bench(reference: &Reference, model: &Path) -> anyhow::Result<Vec<(u64, f64)>> {
    let out = Command::new(&reference.batched_bench)
        .arg("-m")
        .arg(model)
        .args(["-c", &(SLOTS * SLOT_CONTEXT).to_string(), "-b", "2048", "-ub", "512", "-npp", "100", "-ntg", "128", "-npl", "1,16,32"])
        .args(["-t", &THREADS.to_string(), "-tb", &THREADS.to_string(), "-no-kvu", "--output-format", "jsonl"])
        .output()
        .context("running llama-batched-bench")?;
    if !out.status.success() {
        bail!("llama-batched-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((v["pl"].as_u64().context("pl")?, v["speed_tg"].as_f64().context("speed_tg")?))
        })
        .collect()
}

const LONG: &str = "The quick brown fox jumps over the lazy dog. ";

/// A server's prompt rate over a 512-token prompt, from its own timings of the request. Every
/// prompt starts differently, so that neither server finds it in its prompt cache.
async fn prompt_rate(http: &reqwest::Client, server: &Server, seed: u64) -> anyhow::Result<f64> {
    let prompt = format!("{seed}. {}", LONG.repeat(50));
    match server.kind {
        Kind::Clawfleet => {
            let body =
                json!({"model": "smollm2", "prompt": prompt, "raw": true, "stream": false, "options": {"num_predict": 1, "seed": seed}});
            let v: Value = http.post(format!("{}/api/generate", server.url)).json(&body).send().await?.json().await?;
            let n = v["prompt_eval_count"].as_f64().context("prompt_eval_count")?;
            Ok(n / (v["prompt_eval_duration"].as_f64().context("prompt_eval_duration")? / 1e9))
        }
        Kind::LlamaServer => {
            let body = json!({"prompt": prompt, "n_predict": 1, "seed": seed, "cache_prompt": false});
            let v: Value = http.post(format!("{}/completion", server.url)).json(&body).send().await?.json().await?;
            Ok(v["timings"]["prompt_per_second"].as_f64().context("timings.prompt_per_second")?)
        }
    }
}

/// A server's single-stream generation rate: tokens after the first over the time after the
/// first, from a 128-token completion (another seed when the model ends its text too soon).
async fn generation_rate(http: &reqwest::Client, server: &Server, seed: u64) -> anyhow::Result<f64> {
    let prompt = "Once upon a time";
    for seed in (seed..).step_by(1000).take(10) {
        let (n, seconds) = match server.kind {
            Kind::Clawfleet => {
                let body = json!({"model": "smollm2", "prompt": prompt, "raw": true, "stream": false,
                    "options": {"num_predict": 128, "temperature": 0.8, "seed": seed}});
                let v: Value = http.post(format!("{}/api/generate", server.url)).json(&body).send().await?.json().await?;
                (v["eval_count"].as_f64().context("eval_count")?, v["eval_duration"].as_f64().context("eval_duration")? / 1e9)
            }
            Kind::LlamaServer => {
                let body = json!({"prompt": prompt, "n_predict": 128, "temperature": 0.8, "seed": seed, "cache_prompt": false});
                let v: Value = http.post(format!("{}/completion", server.url)).json(&body).send().await?.json().await?;
                let t = &v["timings"];
                (
                    t["predicted_n"].as_f64().context("timings.predicted_n")?,
                    t["predicted_ms"].as_f64().context("timings.predicted_ms")? / 1e3,
                )
            }
        };
        if n >= 32.0 {
            return Ok((n - 1.0) / seconds);
        }
    }
    bail!("{}: ten completions in a row ended before 32 tokens", server.url)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) async fn run(bin: &Path, reference: &Reference, model: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rounds = if quick { 2 } else { 6 };
    let ours = clawfleet_server(bin).await?;
    let theirs = llama_server(reference, model).await?;
    let idle = [rss_mib(ours.child.id())?, rss_mib(theirs.child.id())?];
    let both = [&ours, &theirs];
    let http = reqwest::Client::new();

    // Prompt and single-stream generation rates, each server timing its own requests.
    let mut seed = 0;
    let [pp, ref_pp] = in_turns(rounds, both, |s| {
        seed += 1;
        prompt_rate(&http, s, seed)
    })
    .await?
    .map(median);
    let [tg, ref_tg] = in_turns(rounds, both, |s| {
        seed += 1;
        generation_rate(&http, s, seed)
    })
    .await?
    .map(median);
    let (bench_pp, bench_tg) = llama_bench(reference, model)?;
    rows.push(Row {
        name: "prompt processing (512 tokens), one stream",
        result: format!("{pp:.0} tok/s"),
        goal: ">= 1.0x llama.cpp",
        notes: format!("llama-server: {ref_pp:.0} tok/s, ratio {:.2}; llama-bench pp512: {bench_pp:.0} tok/s", pp / ref_pp),
    });
    rows.push(Row {
        name: "generation (128 tokens), one stream",
        result: format!("{tg:.0} tok/s"),
        goal: ">= 1.0x llama.cpp",
        notes: format!(
            "llama-server: {ref_tg:.0} tok/s, ratio {:.2}; llama-bench tg128: {bench_tg:.0} tok/s (no sampling, no server)",
            tg / ref_tg
        ),
    });

    // Aggregate throughput through the same streaming client.
    let levels: &[usize] = if quick { &[1, 16] } else { &[1, 4, 16, 32] };
    let max_tokens = if quick { 64 } else { 128 };
    let mut ours_single = 0.0;
    for &n in levels {
        for server in both {
            aggregate(server, n.min(4), 8).await?; // warm up
        }
        let [rate, ref_rate] = in_turns(rounds.div_ceil(2), both, |s| aggregate(s, n, max_tokens)).await?.map(median);
        if n == 1 {
            ours_single = rate;
        }
        rows.push(Row {
            name: match n {
                1 => "aggregate generation, 1 stream",
                4 => "aggregate generation, 4 concurrent streams",
                16 => "aggregate generation, 16 concurrent streams",
                _ => "aggregate generation, 32 concurrent streams",
            },
            result: format!("{rate:.0} tok/s"),
            goal: if n == 16 { ">= 3x our 1 stream; ahead of llama-server" } else { "ahead of llama-server" },
            notes: format!(
                "llama-server: {ref_rate:.0} tok/s, ratio {:.2}{}",
                rate / ref_rate,
                if n > 1 && ours_single > 0.0 { format!("; {:.2}x our 1 stream", rate / ours_single) } else { String::new() }
            ),
        });
    }
    let ceiling = batched_bench(reference, model)?;
    let at = |n: u64| ceiling.iter().find(|(pl, _)| *pl == n).map_or(0.0, |(_, r)| *r);
    rows.push(Row {
        name: "llama.cpp's own batched decoding (llama-batched-bench), for scale",
        result: format!("1: {:.0}, 16: {:.0}, 32: {:.0} tok/s", at(1), at(16), at(32)),
        goal: "reference",
        notes: format!(
            "decoding only, no server, no sampling: 16 sequences give {:.2}x one; the ceiling of any server built on these kernels",
            at(16) / at(1)
        ),
    });

    // Time to first token.
    let mut round = 0;
    let [mut a, mut b] = in_turns(rounds.div_ceil(2), both, |s| {
        round += 1;
        first_tokens(s, 16, round)
    })
    .await?
    .map(|v| v.concat());
    rows.push(Row {
        name: "time to first token, 16 concurrent streams, 100-token prompt",
        result: format!("p50 {:.0} ms, p99 {:.0} ms", percentile(&mut a, 0.5), percentile(&mut a, 0.99)),
        goal: "measured",
        notes: format!(
            "llama-server: p50 {:.0} ms, p99 {:.0} ms; {} requests each",
            percentile(&mut b, 0.5),
            percentile(&mut b, 0.99),
            a.len()
        ),
    });
    let metrics = http.get(format!("{}/metrics", ours.url)).send().await?.text().await?;
    let kv_mb = metrics
        .lines()
        .find_map(|l| l.strip_prefix("clawfleet_model_kv_cache_bytes "))
        .and_then(|v| v.parse::<u64>().ok())
        .context("clawfleet_model_kv_cache_bytes in /metrics")?
        / 1_000_000;
    rows.push(Row {
        name: "resident memory of the model service",
        result: format!("{:.0} MiB loaded and idle, {:.0} MiB peak", idle[0], peak_rss_mib(ours.child.id())),
        goal: "measured",
        notes: format!(
            "llama-server: {:.0} MiB idle, {:.0} MiB peak; both hold {SLOTS} slots × {SLOT_CONTEXT} tokens of KV cache ({kv_mb} MB)",
            idle[1],
            peak_rss_mib(theirs.child.id()),
        ),
    });
    Ok(())
}

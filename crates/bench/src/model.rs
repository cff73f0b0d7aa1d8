//! The model service against llama.cpp, side by side in one run, on the same GGUF and threads:
//! prompt and generation rates (`llama-bench` for llama.cpp, the service's own per-request
//! durations for clawfleet); aggregate generation with 1, 4, 16 and 32 concurrent streams and
//! time to first token at 16 streams, through the same OpenAI-compatible HTTP client against
//! `clawfleet model serve` and `llama-server` with the same slots and context; resident memory.

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
    pub(crate) server: PathBuf,
}

const SLOTS: u32 = 32;
const CONTEXT: u32 = 16_384;
const THREADS: u32 = 2;

struct Server {
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
        if let Ok(r) = reqwest::get(format!("{url}/v1/models")).await {
            if r.status().is_success() {
                return Ok(());
            }
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
        .args(["--model-slots", &SLOTS.to_string(), "--model-ctx", &CONTEXT.to_string(), "--model-threads", &THREADS.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting clawfleet model serve")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut child).await?;
    Ok(Server { child, url })
}

async fn llama_server(reference: &Reference, model: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let mut child = Command::new(&reference.server)
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &THREADS.to_string(), "-tb", &THREADS.to_string(), "-c", &CONTEXT.to_string(), "-np", &SLOTS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting llama-server")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut child).await?;
    Ok(Server { child, url })
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

/// Time to first token of `streams` concurrent requests with a prompt of about 100 tokens.
async fn first_tokens(server: &Server, streams: usize, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let prompt = "The quick brown fox jumps over the lazy dog near the quiet river bank. ".repeat(6) + "Summarize that.";
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for r in 0..rounds {
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let (http, url, prompt) = (http.clone(), server.url.clone(), prompt.clone());
                tokio::spawn(async move { stream_one(&http, &url, &prompt, 16, (r * streams + i) as u64 + 1).await })
            })
            .collect();
        for t in tasks {
            out.push(t.await??.0.as_secs_f64() * 1000.0);
        }
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

/// clawfleet's prompt and generation rates, from the Ollama API's per-request durations.
async fn clawfleet_rates(server: &Server) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::new();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(51);
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for seed in 1..=5 {
        let v: Value = http
            .post(format!("{}/api/generate", server.url))
            .json(&json!({"model": "smollm2", "prompt": long, "raw": true, "stream": false, "options": {"num_predict": 1, "seed": seed}}))
            .send()
            .await?
            .json()
            .await?;
        pp.push(
            v["prompt_eval_count"].as_f64().context("prompt_eval_count")? / (v["prompt_eval_duration"].as_f64().context("duration")? / 1e9),
        );
        let v: Value = http
            .post(format!("{}/api/generate", server.url))
            .json(&json!({"model": "smollm2", "prompt": "Once upon a time", "raw": true, "stream": false, "options": {"num_predict": 128, "temperature": 0.8, "seed": seed}}))
            .send()
            .await?
            .json()
            .await?;
        let n = v["eval_count"].as_f64().context("eval_count")?;
        if n >= 32.0 {
            // The first token is counted in the prompt phase; the rest over the eval time.
            tg.push((n - 1.0) / (v["eval_duration"].as_f64().context("duration")? / 1e9));
        }
    }
    if tg.is_empty() {
        bail!("no generation ran 32 tokens or more");
    }
    Ok((median(pp), median(tg)))
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) async fn run(bin: &Path, reference: &Reference, model: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // Prompt and single-stream generation rates.
    let (ref_pp, ref_tg) = llama_bench(reference, model)?;
    let ours = clawfleet_server(bin).await?;
    let idle_rss = rss_mib(ours.child.id())?;
    let (pp, tg) = clawfleet_rates(&ours).await?;
    rows.push(Row {
        name: "prompt processing (512 tokens), one stream",
        result: format!("{pp:.0} tok/s"),
        goal: ">= 1.0x llama.cpp",
        notes: format!("llama.cpp (llama-bench pp512): {ref_pp:.0} tok/s; ratio {:.2}", pp / ref_pp),
    });
    rows.push(Row {
        name: "generation, one stream",
        result: format!("{tg:.0} tok/s"),
        goal: ">= 1.0x llama.cpp",
        notes: format!(
            "llama.cpp (llama-bench tg128): {ref_tg:.0} tok/s; ratio {:.2}; clawfleet's includes sampling and streaming",
            tg / ref_tg
        ),
    });

    // Aggregate throughput and first tokens, both servers through the same client.
    let reference_server = llama_server(reference, model).await?;
    let ref_idle_rss = rss_mib(reference_server.child.id())?;
    let levels: &[usize] = if quick { &[1, 16] } else { &[1, 4, 16, 32] };
    let max_tokens = if quick { 64 } else { 128 };
    let mut ours_single = 0.0;
    for &n in levels {
        let mut rates = [0.0f64; 2];
        for (k, server) in [&ours, &reference_server].into_iter().enumerate() {
            // Warm up once, then measure.
            aggregate(server, n.min(4), 8).await?;
            rates[k] = aggregate(server, n, max_tokens).await?;
        }
        if n == 1 {
            ours_single = rates[0];
        }
        rows.push(Row {
            name: match n {
                1 => "aggregate generation, 1 stream",
                4 => "aggregate generation, 4 concurrent streams",
                16 => "aggregate generation, 16 concurrent streams",
                _ => "aggregate generation, 32 concurrent streams",
            },
            result: format!("{:.0} tok/s", rates[0]),
            goal: if n == 16 { ">= 3x our 1 stream; ahead of llama-server" } else { "ahead of llama-server" },
            notes: format!(
                "llama-server (-np {SLOTS}): {:.0} tok/s; ratio {:.2}{}",
                rates[1],
                rates[0] / rates[1],
                if n > 1 && ours_single > 0.0 { format!("; {:.1}x our single stream", rates[0] / ours_single) } else { String::new() }
            ),
        });
    }
    let rounds = if quick { 1 } else { 3 };
    let mut ttft = [Vec::new(), Vec::new()];
    for (k, server) in [&ours, &reference_server].into_iter().enumerate() {
        ttft[k] = first_tokens(server, 16, rounds).await?;
    }
    let [mut a, mut b] = ttft;
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
    rows.push(Row {
        name: "resident memory of the model service",
        result: format!("{idle_rss:.0} MiB loaded and idle, {:.0} MiB peak", peak_rss_mib(ours.child.id())),
        goal: "measured",
        notes: format!(
            "llama-server: {ref_idle_rss:.0} MiB idle, {:.0} MiB peak; both with {SLOTS} slots and a {CONTEXT}-token KV cache",
            peak_rss_mib(reference_server.child.id())
        ),
    });
    Ok(())
}

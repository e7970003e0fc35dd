//! Throughput of the bf16 AMX products on their own (for profiling the kernel): one dense
//! layer product `x (rows, inner) · Wᵀ` and one scoring-sized attention.
//!
//! cargo run --release -p mirrorsim-llm --example amx_bench [-- ROWS INNER OUT]

use std::time::Instant;

use mirrorsim_llm::model::amx::{self, AttentionInputs, AttentionMask, Bf16Weight, KeyValues};

fn values(count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let amx = amx::amx()?;
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().transpose()?.unwrap_or(600);
    let inner = args.next().transpose()?.unwrap_or(576);
    let out = args.next().transpose()?.unwrap_or(1536);
    let weight = Bf16Weight::pack(amx, &values(out * inner), out, inner);
    let x = values(rows * inner);
    let repeats = 200;
    weight.matmul_t(&x, rows);
    let started = Instant::now();
    for _ in 0..repeats {
        std::hint::black_box(weight.matmul_t(&x, rows));
    }
    let seconds = started.elapsed().as_secs_f64() / repeats as f64;
    let flops = 2.0 * (rows * inner * out) as f64;
    println!(
        "dense {rows}x{inner} · {out}: {:.3} ms, {:.0} GFLOP/s ({} threads)",
        seconds * 1e3,
        flops / seconds / 1e9,
        rayon::current_num_threads()
    );

    if std::env::var("AMX_BENCH_ONLY").is_ok_and(|only| only == "dense") {
        return Ok(());
    }
    // One layer of scoring: 4 continuations of 150 tokens after a 600-token prefix, SmolLM2's
    // 3 KV heads × 3 groups × 64.
    let (batch, kv_heads, groups, seq, past, head_dim) = (4, 3, 3, 150, 600, 64);
    let queries = values(batch * kv_heads * groups * seq * head_dim);
    let own = values(batch * kv_heads * seq * head_dim);
    let prefix = values(kv_heads * past * head_dim);
    let inputs = AttentionInputs {
        batch,
        kv_heads,
        groups,
        seq,
        head_dim,
        queries: &queries,
        first: KeyValues {
            keys: &prefix,
            values: &prefix,
            batch_stride: 0,
            head_stride: past * head_dim,
            len: past,
        },
        second: KeyValues {
            keys: &own,
            values: &own,
            batch_stride: kv_heads * seq * head_dim,
            head_stride: seq * head_dim,
            len: seq,
        },
        mask: AttentionMask::Causal,
    };
    amx::attention(amx, &inputs);
    let started = Instant::now();
    for _ in 0..repeats {
        std::hint::black_box(amx::attention(amx, &inputs));
    }
    let seconds = started.elapsed().as_secs_f64() / repeats as f64;
    let flops = 4.0 * (batch * kv_heads * groups * seq * (past + seq) * head_dim) as f64;
    println!(
        "attention {batch}x{seq} after {past}: {:.3} ms, {:.0} GFLOP/s",
        seconds * 1e3,
        flops / seconds / 1e9
    );
    Ok(())
}

//! The cost line of `mirrorsim run` against a real OpenAI-compatible server: the mirrorsim server
//! library serving the default SmolLM2 on a free loopback port, used by the pipeline as an HTTP
//! model with a price table. The tokens and dollars printed for each LLM stage must equal what the
//! server counted (the `usage` it reported), what the run journal stored, and the prices; a stage
//! answered from the journal sends nothing and costs nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use mirrorsim_distill::Journal;
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::{Backend, ChoiceRequest, ChoiceScores, Completion, GenerateRequest, LlmError};

const PRICE_IN: f64 = 150.0;
const PRICE_OUT: f64 = 600.0;

/// What the server's `usage` fields add up to: prompt tokens once per request (its `n` samples
/// share the prompt), completion tokens of every sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ServerUsage {
    requests: u64,
    one_token_requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The engine behind the server, tallying the usage of every request it answers.
struct UsageCountingEngine {
    engine: LocalEngine,
    usage: Arc<Mutex<ServerUsage>>,
}

impl Backend for UsageCountingEngine {
    fn model_id(&self) -> String {
        self.engine.model_id()
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        let answers = self.engine.generate(requests)?;
        let mut usage = self.usage.lock().unwrap();
        for (request, completions) in requests.iter().zip(&answers) {
            usage.requests += 1;
            if request.params.max_tokens == 1 {
                usage.one_token_requests += 1;
            }
            usage.prompt_tokens += completions[0].prompt_tokens as u64;
            usage.completion_tokens += completions
                .iter()
                .map(|c| c.completion_tokens as u64)
                .sum::<u64>();
        }
        Ok(answers)
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        self.engine.score_choices(requests)
    }
}

fn embedded_dataset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small")
}

fn write_pipeline(dir: &Path, base_url: &str) -> PathBuf {
    let text = format!(
        r#"run_dir = "run"

[source]
spec = "movielens:{data}"

[scenes]
max_train_scenes = 4
max_eval_scenes = 1
history_len = 3
train_options = {{ min = 2, max = 3 }}
seed = 4

[models.remote]
endpoint = "{base_url}"
served_model = "smollm2"
max_concurrency = 4
price_per_million_input = {PRICE_IN}
price_per_million_output = {PRICE_OUT}

[rationales]
strong_model = "remote"
weak_model = "remote"
n = 2
strong_temperature = 0.7
weak_temperature = 1.3
max_tokens = 12
seed = 3
max_scenes = 2

[score]
predictor_model = "remote"
seed = 5

[distill]
top_k = 2
"#,
        data = embedded_dataset().display()
    );
    let path = dir.join("pipeline.toml");
    fs::write(&path, text).unwrap();
    path
}

fn run_pipeline(pipeline: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(["run", pipeline.to_str().unwrap()])
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "mirrorsim run failed");
    stdout
}

/// One stage's printed figures: the closing line's tokens and the cost line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StageLines {
    summary_in: u64,
    summary_out: u64,
    billed_in: u64,
    billed_out: u64,
    dollars: f64,
    requests_sent: u64,
}

fn number_after<'t>(text: &'t str, marker: &str) -> &'t str {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in {text:?}"))
        + marker.len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    &rest[..end]
}

fn stage_lines(stdout: &str, key: &str) -> StageLines {
    let mut lines = stdout.lines();
    let summary = lines
        .find(|l| l.starts_with(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no closing line for {key} in:\n{stdout}"));
    let cost = lines
        .next()
        .filter(|l| l.trim_start().starts_with("cost (remote): "))
        .unwrap_or_else(|| panic!("no cost line after {summary:?}"));
    StageLines {
        summary_in: number_after(summary, "tokens in ").parse().unwrap(),
        summary_out: number_after(summary, " / out ").parse().unwrap(),
        billed_in: number_after(cost, "cost (remote): ").parse().unwrap(),
        billed_out: number_after(cost, "/M + ").parse().unwrap(),
        dollars: number_after(cost, "= $").parse().unwrap(),
        requests_sent: number_after(&cost[cost.find("= $").unwrap()..], "(")
            .parse()
            .unwrap(),
    }
}

fn assert_cost(stage: &StageLines) {
    let expected =
        stage.billed_in as f64 / 1e6 * PRICE_IN + stage.billed_out as f64 / 1e6 * PRICE_OUT;
    // Printed with 6 decimals.
    assert!(
        (stage.dollars - expected).abs() <= 5e-7,
        "{stage:?}: expected ${expected}"
    );
}

#[test]
fn cost_lines_match_the_server_usage_the_journal_and_the_prices() {
    let model = mirrorsim_llm::default_model::default_model_path().unwrap();
    let engine = LocalEngine::load(&model, EngineOptions::default()).unwrap();
    let usage = Arc::new(Mutex::new(ServerUsage::default()));
    let backend: Arc<dyn Backend> = Arc::new(UsageCountingEngine {
        engine,
        usage: Arc::clone(&usage),
    });
    let server =
        mirrorsim_serve::serve("127.0.0.1:0".parse().unwrap(), backend, "smollm2").unwrap();
    let base_url = server.base_url();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");

    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &base_url);
    let run = dir.path().join("run");

    let first = run_pipeline(&pipeline);
    let strong = stage_lines(&first, "rationales.strong");
    let weak = stage_lines(&first, "rationales.weak");
    let scores = stage_lines(&first, "scores");
    let served = *usage.lock().unwrap();

    // Everything was sent: the closing lines' tokens are the billed ones, except that the score
    // stage's one generated token per continuation is billed as output.
    let score_records = fs::read_to_string(run.join("scores.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(score_records, 2 * (2 + 2));
    for generation in [&strong, &weak] {
        assert_eq!(generation.summary_in, generation.billed_in);
        assert_eq!(generation.summary_out, generation.billed_out);
        // One HTTP request per scene, its n = 2 samples in it.
        assert_eq!(generation.requests_sent, 2);
        assert!(generation.billed_in > 0 && generation.billed_out > 0);
        assert_cost(generation);
    }
    assert_eq!(scores.summary_in, scores.billed_in);
    assert_eq!(scores.summary_out, 0);
    assert_eq!(scores.billed_out, score_records);
    // One HTTP request per continuation.
    assert_eq!(scores.requests_sent, score_records);
    assert_cost(&scores);

    // The server's own counts: 2 generation requests per role, one 1-token request per
    // continuation scored, and the same token totals the cost lines billed.
    assert_eq!(served.requests, 2 + 2 + score_records);
    assert_eq!(
        served.requests,
        strong.requests_sent + weak.requests_sent + scores.requests_sent
    );
    assert_eq!(served.one_token_requests, score_records);
    assert_eq!(
        served.prompt_tokens,
        strong.billed_in + weak.billed_in + scores.billed_in
    );
    assert_eq!(
        served.completion_tokens,
        strong.billed_out + weak.billed_out + scores.billed_out
    );

    // The journal stored the same prompt and completion tokens, per request kind.
    let entries = Journal::open(&run.join("journal.sqlite"))
        .unwrap()
        .entries()
        .unwrap();
    let sum = |kind: &str, field: fn(&mirrorsim_distill::JournalEntry) -> Option<u64>| {
        entries
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| field(e).unwrap())
            .sum::<u64>()
    };
    assert_eq!(entries.len(), 2 + 2 + 2);
    assert_eq!(
        sum("generate", |e| e.prompt_tokens),
        strong.billed_in + weak.billed_in
    );
    assert_eq!(
        sum("generate", |e| e.completion_tokens),
        strong.billed_out + weak.billed_out
    );
    assert_eq!(sum("choice", |e| e.prompt_tokens), scores.billed_in);

    // Rerunning the score stage answers every request from the journal: the closing line still
    // counts the tokens the records stand for, the cost line bills nothing, the server sees nothing.
    fs::remove_file(run.join("scores.jsonl")).unwrap();
    let second = run_pipeline(&pipeline);
    let rescored = stage_lines(&second, "scores");
    assert_eq!(rescored.summary_in, scores.summary_in);
    assert_eq!(
        (
            rescored.billed_in,
            rescored.billed_out,
            rescored.requests_sent
        ),
        (0, 0, 0)
    );
    assert_eq!(rescored.dollars, 0.0);
    assert_eq!(*usage.lock().unwrap(), served);

    server.shutdown().unwrap();
}

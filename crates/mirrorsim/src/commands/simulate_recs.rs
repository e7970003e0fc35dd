//! `mirrorsim simulate-recs`: show a recommender's ranked lists to the simulator a page at a
//! time and write simulated metrics beside offline metrics on held-out real data.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::scenes::slate::SlateCatalog;
use mirrorsim_data::scenes::PromptSet;
use mirrorsim_data::{read_source, Catalog, ItemIdx, ReadOptions, SourceSpec, UserIdx};
use mirrorsim_eval::hybrid::{read_hybrid_file, HybridFile};
use mirrorsim_eval::slate::{SlateHint, SlatePrior, SlateSimulator};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines, Mode};
use mirrorsim_llm::Backend;
use mirrorsim_loop::augment::sample_users;
use mirrorsim_loop::metrics::{kendall_tau_b, spearman, OfflineAccumulator, OfflineMetrics};
use mirrorsim_loop::output::{write_json, write_jsonl, write_recs_csv};
use mirrorsim_loop::paging::{
    run_sessions, simulated_metrics, PagingConfig, Session, SimulatedMetrics, SlateChooser,
};
use mirrorsim_loop::recommend::{fit, parse_builtin, top_k_lists};
use mirrorsim_loop::recs::read_recs;
use mirrorsim_loop::split::{CutSummary, TemporalCut};
use serde::Serialize;

use super::eval::{parse_hint_priors, parse_prior, prior_names};
use super::model_arg::load_local;

/// The simulator flags shared by `simulate-recs` and `augment`.
#[derive(Debug, Clone, Args)]
pub struct SimulatorArgs {
    /// The dataset as FORMAT:PATH (e.g. recbole:../shared/data/ml-1m).
    #[arg(long)]
    pub catalog: String,
    /// The simulator: a GGUF file or HF model directory, or `default` (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// A PEFT LoRA adapter directory applied on top of --model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Use the hybrid simulator p_llm^a · p_prior^b with this collaborative prior (knn, ease,
    /// popularity); its weights come from --hybrid, fitted by `mirrorsim eval --prior`.
    #[arg(long, value_name = "KIND")]
    pub prior: Option<String>,
    /// The hybrid.json written by `mirrorsim eval --prior KIND --validation-scenes …`
    /// [default: OUT/hybrid.json].
    #[arg(long, value_name = "FILE")]
    pub hybrid: Option<PathBuf>,
    /// Write these collaborative priors' picks (one or more of knn, ease, popularity,
    /// sequential, comma-separated), fitted before the cut, into every page's prompt, as
    /// `mirrorsim hint --prior` writes them into scenes: for an adapter trained on hinted scenes.
    #[arg(long, value_name = "KIND[,KIND]")]
    pub hint_prior: Option<String>,
    /// direct: one forward per page; rationale: a generated rationale, then the choice.
    #[arg(long, default_value = "direct")]
    pub mode: String,
    /// Items per page (the "none of these" option comes on top).
    #[arg(long, default_value_t = 10)]
    pub page_size: usize,
    /// Pages a user looks at, at most.
    #[arg(long, default_value_t = 3)]
    pub pages: usize,
    /// Users to simulate (drawn with --seed).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Interactions of the user the prompt shows (the latest before the cut).
    #[arg(long, default_value_t = 10)]
    pub history_len: usize,
    /// A folder of prompt templates overriding the embedded ones.
    #[arg(long, value_name = "DIR")]
    pub prompts: Option<PathBuf>,
    /// Option lines show each item's rating count and mean before the cut, as the eval scenes
    /// of `scenes --item-stats` do (for an adapter trained on such scenes).
    #[arg(long)]
    pub item_stats: bool,
    /// With --item-stats, also each option's rank by its count among the slate's options, as
    /// the scenes of `scenes --item-stats-rank` show it.
    #[arg(long, requires = "item_stats")]
    pub item_stats_rank: bool,
    /// Pages sent to the model at once.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// EASE's L2 weight λ.
    #[arg(long, default_value_t = 500.0)]
    pub ease_lambda: f64,
    /// EASE uses at most this many items (the most interacted).
    #[arg(long, default_value_t = 4000)]
    pub ease_max_items: usize,
    /// Item-kNN uses at most this many items (the most interacted).
    #[arg(long, default_value_t = 10_000)]
    pub knn_max_items: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Print the metrics file to stdout.
    #[arg(long)]
    pub json: bool,
}

impl SimulatorArgs {
    pub fn baseline_config(&self) -> BaselineConfig {
        BaselineConfig {
            ease_lambda: self.ease_lambda,
            ease_max_items: self.ease_max_items,
            knn_max_items: self.knn_max_items,
            ..BaselineConfig::default()
        }
    }

    pub fn paging(&self, max_picks: usize) -> PagingConfig {
        PagingConfig {
            page_size: self.page_size,
            max_pages: self.pages,
            max_picks,
            seed: self.seed,
        }
    }

    pub fn read_catalog(&self) -> anyhow::Result<Catalog> {
        let spec: SourceSpec = self.catalog.parse()?;
        let (catalog, _) = read_source(&spec, &ReadOptions::default())
            .with_context(|| format!("reading {spec}"))?;
        Ok(catalog)
    }

    /// The local engine of --model / --adapter.
    pub fn load_backend(&self) -> anyhow::Result<Arc<dyn Backend>> {
        let engine = load_local(Some(Path::new(&self.model)), self.adapter.as_deref())?;
        Ok(Arc::new(engine))
    }

    /// The slate renderer; with --item-stats, items show their counts before `cutoff`.
    pub fn slate_catalog(
        &self,
        catalog: Catalog,
        cutoff: Option<i64>,
    ) -> anyhow::Result<SlateCatalog> {
        let prompts = PromptSet::load(self.prompts.as_deref())?;
        let slates = SlateCatalog::new(catalog, prompts, self.history_len)?;
        Ok(match (self.item_stats, self.item_stats_rank) {
            (true, true) => slates.with_ranked_item_stats(cutoff),
            (true, false) => slates.with_item_stats(cutoff),
            (false, _) => slates,
        })
    }

    /// The hybrid's prior and its fitted weights when --prior is given; checked (with
    /// --hint-prior) before the model is loaded so that a bad flag or a missing file fails fast.
    pub fn hybrid_file(&self) -> anyhow::Result<Option<(BaselineKind, HybridFile, PathBuf)>> {
        // --hint-prior is checked here too, before the slow loads.
        if let Some(name) = &self.hint_prior {
            parse_hint_priors(name)?;
        }
        let Some(name) = &self.prior else {
            if self.hybrid.is_some() {
                bail!("--hybrid needs --prior KIND");
            }
            return Ok(None);
        };
        let kind = parse_prior(name)?;
        let path = self
            .hybrid
            .clone()
            .unwrap_or_else(|| self.out.join("hybrid.json"));
        if !path.is_file() {
            bail!(
                "--prior {kind} needs fitted hybrid weights: {} does not exist; fit them with \
                 `mirrorsim eval --prior {kind} --validation-scenes FILE --out DIR` and pass \
                 --hybrid DIR/hybrid.json",
                path.display()
            );
        }
        let file = read_hybrid_file(&path)?;
        if file.prior != kind {
            bail!(
                "{} was fitted with the prior {}, not {kind}",
                path.display(),
                file.prior
            );
        }
        Ok(Some((kind, file, path)))
    }

    /// The simulator, as a hybrid when `hybrid` is given and with --hint-prior's pick in its
    /// prompts (priors fitted on interactions before `cutoff`), and a description of it.
    pub fn simulator<'c>(
        &self,
        slates: &'c SlateCatalog,
        backend: Arc<dyn Backend>,
        hybrid: Option<(BaselineKind, HybridFile, PathBuf)>,
        cutoff: Option<i64>,
    ) -> anyhow::Result<(SlateSimulator<'c>, String)> {
        let (mut simulator, mut description) =
            self.hybrid_simulator(slates, backend, hybrid, cutoff)?;
        if let Some(name) = &self.hint_prior {
            let kinds = parse_hint_priors(name)?;
            let baselines = self.fit_prior(slates, &kinds, cutoff)?;
            description.push_str(&format!(
                ", with the {} prior's pick in the prompt",
                prior_names(&kinds)
            ));
            simulator = simulator.with_hint(SlateHint { kinds, baselines });
        }
        Ok((simulator, description))
    }

    /// The baselines priors of `kinds` need, fitted on the interactions before `cutoff`.
    fn fit_prior<'c>(
        &self,
        slates: &'c SlateCatalog,
        kinds: &[BaselineKind],
        cutoff: Option<i64>,
    ) -> anyhow::Result<FittedBaselines<'c>> {
        Ok(FittedBaselines::fit(
            slates.catalog(),
            cutoff,
            &self.baseline_config(),
            kinds.contains(&BaselineKind::Ease),
        )?)
    }

    fn hybrid_simulator<'c>(
        &self,
        slates: &'c SlateCatalog,
        backend: Arc<dyn Backend>,
        hybrid: Option<(BaselineKind, HybridFile, PathBuf)>,
        cutoff: Option<i64>,
    ) -> anyhow::Result<(SlateSimulator<'c>, String)> {
        let simulator = SlateSimulator::new(slates, backend);
        let Some((kind, file, path)) = hybrid else {
            return Ok((simulator, "LLM".to_owned()));
        };
        let model_id = simulator.model_id();
        if file.model.as_deref().is_some_and(|m| m != model_id) {
            bail!(
                "{} was fitted for the model {:?}, not {model_id:?}",
                path.display(),
                file.model
            );
        }
        let baselines = self.fit_prior(slates, &[kind], cutoff)?;
        let description = format!(
            "hybrid p_llm^{:.4} · p_{kind}^{:.4}, T = {:.4} (from {})",
            file.weights.llm_weight,
            file.weights.prior_weight,
            file.weights.prior_temperature,
            path.display()
        );
        Ok((
            simulator.with_prior(SlatePrior {
                kind,
                weights: file.weights,
                baselines,
            }),
            description,
        ))
    }
}

#[derive(Debug, Args)]
pub struct SimulateRecsArgs {
    /// Recommendation files (comma-separated): CSV `user,item,rank[,score]` with that header,
    /// or RecBole top-k lines `USER<TAB>ITEM ITEM …`; each file is one recommender, named by
    /// its file name up to the first dot.
    #[arg(long, value_name = "FILE[,FILE..]", value_delimiter = ',')]
    recs: Vec<PathBuf>,
    /// Built-in recommenders fitted before the cut (comma-separated: popularity, knn, ease).
    #[arg(long, value_name = "LIST")]
    builtin: Option<String>,
    /// Cut at this quantile of interaction timestamps: recommenders and the simulated users'
    /// histories see only earlier interactions, offline metrics use the later ones [default:
    /// 0.8 with --builtin; without --builtin and without this flag, no cut: users are
    /// simulated with their whole history and no offline metrics are computed].
    #[arg(long, value_name = "Q")]
    cut_quantile: Option<f64>,
    #[command(flatten)]
    sim: SimulatorArgs,
}

/// One recommender's results.
#[derive(Debug, Serialize)]
struct RecommenderResult {
    name: String,
    /// `builtin` or the file it was read from.
    source: String,
    simulated: SimulatedMetrics,
    /// Items dropped from the lists because the user had interacted with them before the cut
    /// (before the end of their history without a cut).
    seen_items_removed: usize,
    /// Offline metrics on every evaluable user (built-in recommenders; with a cut).
    offline_all_users: Option<OfflineMetrics>,
    /// Offline metrics on the simulated users, from the lists they were shown.
    offline_simulated_users: Option<OfflineMetrics>,
}

#[derive(Debug, Serialize)]
struct Agreement {
    recommenders: Vec<String>,
    spearman_acceptance_vs_ndcg: Option<f64>,
    kendall_acceptance_vs_ndcg: Option<f64>,
    spearman_acceptance_vs_recall: Option<f64>,
    kendall_acceptance_vs_recall: Option<f64>,
    /// The same with the simulator's expected first-page acceptance, `1 − mean P(none)` on
    /// first pages: continuous, so defined when every recommender's acceptance rate is equal.
    spearman_first_page_acceptance_vs_ndcg: Option<f64>,
    kendall_first_page_acceptance_vs_ndcg: Option<f64>,
    spearman_first_page_acceptance_vs_recall: Option<f64>,
    kendall_first_page_acceptance_vs_recall: Option<f64>,
    /// The offline metrics compared are those of the lists shown to the simulated users.
    note: String,
}

#[derive(Debug, Serialize)]
struct RecsMetricsFile {
    catalog: String,
    model: String,
    simulator: String,
    mode: String,
    paging: PagingConfig,
    users_requested: usize,
    cut: Option<CutSummary>,
    recommenders: Vec<RecommenderResult>,
    agreement: Option<Agreement>,
    timings: BTreeMap<String, f64>,
}

pub fn run(args: SimulateRecsArgs) -> anyhow::Result<()> {
    let sim = &args.sim;
    let mode: Mode = sim.mode.parse()?;
    let paging = sim.paging(1);
    paging.validate()?;
    let builtin = args.builtin.as_deref().map(parse_builtin).transpose()?;
    let hybrid_file = sim.hybrid_file()?;
    if args.recs.is_empty() && builtin.is_none() {
        bail!(
            "name recommendations with --recs FILE[,FILE..] and/or --builtin popularity,knn,ease"
        );
    }
    let mut timings = BTreeMap::new();
    let started = Instant::now();
    let catalog = sim.read_catalog()?;
    timings.insert("catalog_read".to_owned(), started.elapsed().as_secs_f64());
    let mut files = Vec::new();
    let mut names = HashSet::new();
    for path in &args.recs {
        let recs = read_recs(path)?;
        recs.check_catalog(&catalog)?;
        if !names.insert(recs.name.clone()) {
            bail!(
                "{}: another recommendations file is also named `{}`; rename one",
                path.display(),
                recs.name
            );
        }
        files.push(recs);
    }
    if let Some(kinds) = &builtin {
        if let Some(kind) = kinds.iter().find(|k| names.contains(k.name())) {
            bail!("a --recs file is named `{kind}` like a built-in recommender; rename it");
        }
    }
    let quantile = args.cut_quantile.or(builtin.as_ref().map(|_| 0.8));
    let cut = quantile
        .map(|q| TemporalCut::at_quantile(&catalog, q))
        .transpose()?;
    if let Some(cut) = &cut {
        eprintln!(
            "cut at {} (quantile {}): {} interactions before, {} evaluable users",
            cut.cutoff,
            cut.quantile,
            cut.position,
            cut.evaluable_users().len()
        );
    }

    // Candidate users: in every recs file and, with a cut, evaluable.
    let mut candidates: Vec<UserIdx> = match &cut {
        Some(cut) => cut.evaluable_users(),
        None => (0..catalog.users.len() as UserIdx).collect(),
    };
    for recs in &files {
        let users: HashSet<&str> = recs.lists.iter().map(|l| l.user_id.as_str()).collect();
        candidates.retain(|&u| users.contains(catalog.user(u).id.as_str()));
    }
    let users = sample_users(&catalog, &candidates, sim.users, sim.seed);
    if users.is_empty() {
        bail!(
            "no user can be simulated: none is in every recommendations file{}",
            if cut.is_some() {
                " with interactions on both sides of the cut"
            } else {
                ""
            }
        );
    }
    let by_user = catalog.interactions_by_user();
    let all_items_of = |u: UserIdx| -> Vec<ItemIdx> {
        let mut items: Vec<ItemIdx> = by_user[u as usize]
            .iter()
            .map(|&p| catalog.interactions[p as usize].item)
            .collect();
        items.sort_unstable();
        items.dedup();
        items
    };
    let seen: Vec<Vec<ItemIdx>> = users
        .iter()
        .map(|&u| match &cut {
            Some(cut) => cut.train_items[u as usize].clone(),
            None => all_items_of(u),
        })
        .collect();
    let depth = sim.page_size * sim.pages;

    // Lists per recommender, for the simulated users.
    let mut recommenders: Vec<(String, String, Vec<Vec<ItemIdx>>, usize)> = Vec::new();
    for recs in &files {
        let mut removed = 0;
        let lists = users
            .iter()
            .zip(&seen)
            .map(|(&u, seen)| {
                let list = recs.list(&catalog.user(u).id);
                let items: Vec<ItemIdx> = list
                    .into_iter()
                    .flat_map(|l| &l.items)
                    .filter_map(|i| catalog.item_idx(&i.item_id))
                    .collect();
                let before = items.len();
                let kept: Vec<ItemIdx> = items
                    .into_iter()
                    .filter(|i| seen.binary_search(i).is_err())
                    .collect();
                removed += before - kept.len();
                kept
            })
            .collect();
        recommenders.push((
            recs.name.clone(),
            recs.path.display().to_string(),
            lists,
            removed,
        ));
    }
    let mut offline_all: BTreeMap<String, OfflineMetrics> = BTreeMap::new();
    let fitted_config = sim.baseline_config();
    if let (Some(kinds), Some(cut)) = (&builtin, &cut) {
        let started = Instant::now();
        let fitted = fit(&catalog, cut.cutoff, &fitted_config, kinds)?;
        timings.insert("builtin_fit".to_owned(), started.elapsed().as_secs_f64());
        let started = Instant::now();
        let evaluable = cut.evaluable_users();
        for &kind in kinds {
            let lists = top_k_lists(
                &fitted,
                kind,
                catalog.items.len(),
                &cut.train_items,
                &users,
                depth,
            )?;
            let csv: Vec<(String, Vec<String>)> = users
                .iter()
                .zip(&lists)
                .map(|(&u, list)| {
                    (
                        catalog.user(u).id.clone(),
                        list.iter().map(|&i| catalog.item(i).id.clone()).collect(),
                    )
                })
                .collect();
            write_recs_csv(&sim.out.join("recs").join(format!("{kind}.csv")), &csv)?;
            let all = top_k_lists(
                &fitted,
                kind,
                catalog.items.len(),
                &cut.train_items,
                &evaluable,
                sim.page_size.max(10),
            )?;
            let mut accumulator = OfflineAccumulator::new(sim.page_size);
            for (&u, list) in evaluable.iter().zip(&all) {
                accumulator.add(list, &cut.held_out[u as usize]);
            }
            offline_all.insert(kind.name().to_owned(), accumulator.finish());
            recommenders.push((kind.name().to_owned(), "builtin".to_owned(), lists, 0));
        }
        timings.insert(
            "builtin_recommend".to_owned(),
            started.elapsed().as_secs_f64(),
        );
    }

    let sessions: Vec<Session> = recommenders
        .iter()
        .flat_map(|(name, _, lists, _)| {
            users.iter().zip(lists).map(|(&u, list)| Session {
                recommender: name.clone(),
                user_id: catalog.user(u).id.clone(),
                items: list.iter().map(|&i| catalog.item(i).id.clone()).collect(),
            })
        })
        .collect();
    let offline_shown: BTreeMap<String, OfflineMetrics> = match &cut {
        Some(cut) => recommenders
            .iter()
            .map(|(name, _, lists, _)| {
                let mut accumulator = OfflineAccumulator::new(sim.page_size);
                for (&u, list) in users.iter().zip(lists) {
                    accumulator.add(list, &cut.held_out[u as usize]);
                }
                (name.clone(), accumulator.finish())
            })
            .collect(),
        None => BTreeMap::new(),
    };
    let held_out_ids: Option<HashSet<(String, String)>> = cut.as_ref().map(|cut| {
        let catalog = &catalog;
        users
            .iter()
            .flat_map(|&u| {
                cut.held_out[u as usize]
                    .iter()
                    .map(move |&i| (catalog.user(u).id.clone(), catalog.item(i).id.clone()))
            })
            .collect()
    });
    let catalog_items = catalog.items.len();

    let started = Instant::now();
    let backend = sim.load_backend()?;
    timings.insert("model_load".to_owned(), started.elapsed().as_secs_f64());
    let cutoff = cut.as_ref().map(|c| c.cutoff);
    let slates = sim.slate_catalog(catalog, cutoff)?;
    let (simulator, description) = sim.simulator(&slates, backend, hybrid_file, cutoff)?;
    let model_id = simulator.model_id();
    let chooser = SlateChooser {
        simulator: &simulator,
        at: cutoff,
        mode,
    };
    let started = Instant::now();
    let lines = run_sessions(&sessions, &paging, &chooser, sim.batch_size, |done| {
        eprintln!("simulate-recs: {done} pages answered");
    })?;
    timings.insert("simulation".to_owned(), started.elapsed().as_secs_f64());
    let in_held_out = |user: &str, item: &str| {
        held_out_ids
            .as_ref()
            .is_some_and(|h| h.contains(&(user.to_owned(), item.to_owned())))
    };
    let simulated = simulated_metrics(
        &lines,
        catalog_items,
        held_out_ids
            .as_ref()
            .map(|_| &in_held_out as &dyn Fn(&str, &str) -> bool),
    );
    let mut results = Vec::new();
    for (name, source, _, removed) in &recommenders {
        let metrics = simulated
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
            .with_context(|| format!("recommender `{name}` had no page to show"))?;
        results.push(RecommenderResult {
            name: name.clone(),
            source: source.clone(),
            simulated: metrics,
            seen_items_removed: *removed,
            offline_all_users: offline_all.get(name).copied(),
            offline_simulated_users: offline_shown.get(name).copied(),
        });
    }
    let agreement = agreement(&results)?;
    let file = RecsMetricsFile {
        catalog: sim.catalog.clone(),
        model: model_id,
        simulator: description,
        mode: mode.name().to_owned(),
        paging,
        users_requested: sim.users,
        cut: cut.as_ref().map(|c| c.summary(slates.catalog())),
        recommenders: results,
        agreement,
        timings,
    };
    write_jsonl(&sim.out.join("choices.jsonl"), &lines)?;
    let metrics_path = sim.out.join("recs_metrics.json");
    write_json(&metrics_path, &file)?;
    print_summary(&file, &metrics_path, sim.json)
}

/// Rank agreement between simulated acceptance and offline metrics on the simulated users.
fn agreement(results: &[RecommenderResult]) -> anyhow::Result<Option<Agreement>> {
    let with_offline: Vec<&RecommenderResult> = results
        .iter()
        .filter(|r| r.offline_simulated_users.is_some())
        .collect();
    if with_offline.len() < 2 {
        return Ok(None);
    }
    let acceptance: Vec<f64> = with_offline
        .iter()
        .map(|r| r.simulated.acceptance_rate)
        .collect();
    let offline = |f: fn(&OfflineMetrics) -> f64| -> Vec<f64> {
        with_offline
            .iter()
            .filter_map(|r| r.offline_simulated_users.as_ref().map(f))
            .collect()
    };
    let expected: Vec<f64> = with_offline
        .iter()
        .map(|r| 1.0 - r.simulated.mean_p_none_first_page)
        .collect();
    let ndcg = offline(|m| m.ndcg_at_k);
    let recall = offline(|m| m.recall_at_k);
    let n = with_offline.len();
    let note = if n <= 3 {
        format!(
            "only {n} recommenders: Spearman takes one of {} values and a random order matches \
             the offline order exactly with probability 1/{}, so agreement here is weak evidence \
             at best",
            if n == 2 { 2 } else { 4 },
            (1..=n).product::<usize>()
        )
    } else {
        format!("{n} recommenders; treat the correlation as indicative, not as a test")
    };
    Ok(Some(Agreement {
        recommenders: with_offline.iter().map(|r| r.name.clone()).collect(),
        spearman_acceptance_vs_ndcg: spearman(&acceptance, &ndcg)?,
        kendall_acceptance_vs_ndcg: kendall_tau_b(&acceptance, &ndcg)?,
        spearman_acceptance_vs_recall: spearman(&acceptance, &recall)?,
        kendall_acceptance_vs_recall: kendall_tau_b(&acceptance, &recall)?,
        spearman_first_page_acceptance_vs_ndcg: spearman(&expected, &ndcg)?,
        kendall_first_page_acceptance_vs_ndcg: kendall_tau_b(&expected, &ndcg)?,
        spearman_first_page_acceptance_vs_recall: spearman(&expected, &recall)?,
        kendall_first_page_acceptance_vs_recall: kendall_tau_b(&expected, &recall)?,
        note,
    }))
}

fn print_summary(file: &RecsMetricsFile, path: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(file)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>9} {:>7} {:>8} {:>10}",
        "recommender", "users", "accepted", "mean rank", "distinct", "pages", "NDCG@k", "Recall@k"
    );
    for r in &file.recommenders {
        let m = &r.simulated;
        let offline = r.offline_simulated_users;
        println!(
            "{:<16} {:>6} {:>10.4} {:>10} {:>9} {:>7.3} {:>8} {:>10}",
            r.name,
            m.users,
            m.acceptance_rate,
            m.mean_chosen_rank
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            m.distinct_chosen_items,
            m.mean_pages_viewed,
            offline.map_or_else(|| "-".to_owned(), |o| format!("{:.4}", o.ndcg_at_k)),
            offline.map_or_else(|| "-".to_owned(), |o| format!("{:.4}", o.recall_at_k)),
        );
    }
    if let Some(a) = &file.agreement {
        let show = |v: Option<f64>| v.map_or_else(|| "undefined".to_owned(), |v| format!("{v:.3}"));
        println!(
            "rank agreement of acceptance with NDCG@k: Spearman {}, Kendall {}; with Recall@k: \
             Spearman {}, Kendall {} ({})",
            show(a.spearman_acceptance_vs_ndcg),
            show(a.kendall_acceptance_vs_ndcg),
            show(a.spearman_acceptance_vs_recall),
            show(a.kendall_acceptance_vs_recall),
            a.note
        );
        println!(
            "with expected first-page acceptance (1 − mean P(none)): NDCG@k Spearman {}, \
             Kendall {}; Recall@k Spearman {}, Kendall {}",
            show(a.spearman_first_page_acceptance_vs_ndcg),
            show(a.kendall_first_page_acceptance_vs_ndcg),
            show(a.spearman_first_page_acceptance_vs_recall),
            show(a.kendall_first_page_acceptance_vs_recall),
        );
    }
    println!("wrote {}", path.display());
    Ok(())
}

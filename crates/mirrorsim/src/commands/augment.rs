//! `mirrorsim augment`: the simulator's accepted choices on recommended slates become extra
//! training interactions (RecBole `.inter` files), and item-kNN / EASE refitted on real +
//! simulated interactions are compared with real only on held-out real data.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::{ItemIdx, UserIdx};
use mirrorsim_eval::{BaselineKind, Mode};
use mirrorsim_loop::augment::{
    augmented_catalog, augmented_histories, control_picks, offline_metrics, sample_users,
    write_recbole_inter, ExtraInteraction,
};
use mirrorsim_loop::metrics::OfflineMetrics;
use mirrorsim_loop::output::{write_json, write_jsonl};
use mirrorsim_loop::paging::{
    run_sessions, simulated_metrics, Session, SimulatedMetrics, SlateChooser,
};
use mirrorsim_loop::recommend::{fit, parse_builtin, top_k_lists};
use mirrorsim_loop::split::{CutSummary, TemporalCut};
use serde::Serialize;

use super::simulate_recs::SimulatorArgs;

#[derive(Debug, Args)]
pub struct AugmentArgs {
    /// The recommender whose top items make the slates (popularity, knn or ease).
    #[arg(long, default_value = "knn")]
    recommender: String,
    /// Recommenders refitted on real + simulated interactions and evaluated.
    #[arg(long, default_value = "knn,ease")]
    evaluate: String,
    /// Cut at this quantile of interaction timestamps: training before, held-out after.
    #[arg(long, default_value_t = 0.8)]
    cut_quantile: f64,
    /// Picks that end a user's session (each pick is one extra interaction).
    #[arg(long, default_value_t = 1)]
    picks_per_user: usize,
    /// The rating written for simulated interactions in the .inter file.
    #[arg(long, default_value_t = 4.0)]
    rating: f32,
    /// Evaluate at this depth as well as at 10 (NDCG@k, Recall@k).
    #[arg(long, default_value_t = 10)]
    eval_k: usize,
    #[command(flatten)]
    sim: SimulatorArgs,
}

#[derive(Debug, Serialize)]
struct Evaluation {
    recommender: String,
    /// `real`, `real+simulated`, `real+random-shown` or `real+top-ranked`.
    training: String,
    extra_interactions: usize,
    all_users: OfflineMetrics,
    augmented_users: OfflineMetrics,
    /// Relative change against `real` on all users, in percent: NDCG@10, Recall@10, MRR@5.
    change_all_users_pct: Option<[f64; 3]>,
    change_augmented_users_pct: Option<[f64; 3]>,
}

#[derive(Debug, Serialize)]
struct AugmentFile {
    catalog: String,
    model: String,
    simulator: String,
    mode: String,
    slate_recommender: String,
    page_size: usize,
    pages: usize,
    picks_per_user: usize,
    users_simulated: usize,
    seed: u64,
    cut: CutSummary,
    simulated: SimulatedMetrics,
    simulated_interactions: usize,
    /// Simulated picks that the user really interacted with after the cut.
    picks_in_held_out: usize,
    recbole_real: String,
    recbole_augmented: String,
    evaluations: Vec<Evaluation>,
    notes: Vec<String>,
    timings: BTreeMap<String, f64>,
}

fn change(base: &OfflineMetrics, other: &OfflineMetrics) -> Option<[f64; 3]> {
    let pct = |b: f64, o: f64| (b > 0.0).then(|| 100.0 * (o - b) / b);
    Some([
        pct(base.ndcg_at_10, other.ndcg_at_10)?,
        pct(base.recall_at_10, other.recall_at_10)?,
        pct(base.mrr_at_5, other.mrr_at_5)?,
    ])
}

pub fn run(args: AugmentArgs) -> anyhow::Result<()> {
    let sim = &args.sim;
    let mode: Mode = sim.mode.parse()?;
    let paging = sim.paging(args.picks_per_user);
    paging.validate()?;
    let slate_kind = match parse_builtin(&args.recommender)?.as_slice() {
        [kind] => *kind,
        _ => bail!("--recommender takes one of popularity, knn, ease"),
    };
    let evaluated = parse_builtin(&args.evaluate)?;
    let hybrid_file = sim.hybrid_file()?;
    let mut timings = BTreeMap::new();
    let started = Instant::now();
    let catalog = sim.read_catalog()?;
    timings.insert("catalog_read".to_owned(), started.elapsed().as_secs_f64());
    let cut = TemporalCut::at_quantile(&catalog, args.cut_quantile)?;
    let evaluable = cut.evaluable_users();
    let users = sample_users(&catalog, &evaluable, sim.users, sim.seed);
    if users.is_empty() {
        bail!("no user has interactions on both sides of the cut");
    }
    eprintln!(
        "cut at {} (quantile {}): {} interactions before; simulating {} of {} evaluable users",
        cut.cutoff,
        cut.quantile,
        cut.position,
        users.len(),
        evaluable.len()
    );
    let config = sim.baseline_config();
    let mut kinds = evaluated.clone();
    kinds.push(slate_kind);
    let started = Instant::now();
    let real_fit = fit(&catalog, cut.cutoff, &config, &kinds)?;
    timings.insert("fit_real".to_owned(), started.elapsed().as_secs_f64());
    let depth = sim.page_size * sim.pages;
    let lists = top_k_lists(
        &real_fit,
        slate_kind,
        catalog.items.len(),
        &cut.train_items,
        &users,
        depth,
    )?;
    let sessions: Vec<Session> = users
        .iter()
        .zip(&lists)
        .map(|(&u, list)| Session {
            recommender: slate_kind.name().to_owned(),
            user_id: catalog.user(u).id.clone(),
            items: list.iter().map(|&i| catalog.item(i).id.clone()).collect(),
        })
        .collect();
    let started = Instant::now();
    let mut evaluations = Vec::new();
    let mut real_metrics: BTreeMap<BaselineKind, (OfflineMetrics, OfflineMetrics)> =
        BTreeMap::new();
    for &kind in &evaluated {
        let all = offline_metrics(
            &real_fit,
            kind,
            &catalog,
            &cut.train_items,
            &cut.held_out,
            &evaluable,
            args.eval_k,
        )?;
        let augmented = offline_metrics(
            &real_fit,
            kind,
            &catalog,
            &cut.train_items,
            &cut.held_out,
            &users,
            args.eval_k,
        )?;
        real_metrics.insert(kind, (all, augmented));
        evaluations.push(Evaluation {
            recommender: kind.name().to_owned(),
            training: "real".to_owned(),
            extra_interactions: 0,
            all_users: all,
            augmented_users: augmented,
            change_all_users_pct: None,
            change_augmented_users_pct: None,
        });
    }
    timings.insert("evaluate_real".to_owned(), started.elapsed().as_secs_f64());
    drop(real_fit);

    let started = Instant::now();
    let backend = sim.load_backend()?;
    timings.insert("model_load".to_owned(), started.elapsed().as_secs_f64());
    let slates = sim.slate_catalog(catalog, Some(cut.cutoff))?;
    let catalog = slates.catalog();
    let (simulator, description) =
        sim.simulator(&slates, backend, hybrid_file, Some(cut.cutoff))?;
    let chooser = SlateChooser {
        simulator: &simulator,
        at: Some(cut.cutoff),
        mode,
    };
    let started = Instant::now();
    let lines = run_sessions(&sessions, &paging, &chooser, sim.batch_size, |done| {
        eprintln!("augment: {done} pages answered");
    })?;
    timings.insert("simulation".to_owned(), started.elapsed().as_secs_f64());
    let mut picks: Vec<ExtraInteraction> = Vec::new();
    for line in &lines {
        if let Some(item) = &line.chosen_item {
            let user = catalog
                .user_idx(&line.user_id)
                .context("a simulated user left the catalog")?;
            let item = catalog
                .item_idx(item)
                .context("a simulated item left the catalog")?;
            picks.push((user, item));
        }
    }
    let picks_in_held_out = picks
        .iter()
        .filter(|(u, i)| cut.held_out[*u as usize].contains(i))
        .count();
    let simulated = simulated_metrics(&lines, catalog.items.len(), None)
        .into_iter()
        .next()
        .map(|(_, m)| m)
        .context("no page was shown")?;

    let name = &catalog.name;
    let timestamp = cut.cutoff - 1;
    let real_path = sim
        .out
        .join("recbole")
        .join(format!("{name}-real"))
        .join(format!("{name}-real.inter"));
    let augmented_path = sim
        .out
        .join("recbole")
        .join(format!("{name}-aug"))
        .join(format!("{name}-aug.inter"));
    let started = Instant::now();
    write_recbole_inter(
        &real_path,
        catalog,
        cut.position,
        &[],
        args.rating,
        timestamp,
    )?;
    write_recbole_inter(
        &augmented_path,
        catalog,
        cut.position,
        &picks,
        args.rating,
        timestamp,
    )?;
    timings.insert("write_recbole".to_owned(), started.elapsed().as_secs_f64());

    // Controls: the same number of extra items per user, random among those shown or the top.
    let shown = |u: UserIdx| -> Vec<ItemIdx> {
        let id = &catalog.user(u).id;
        lines
            .iter()
            .filter(|l| &l.user_id == id)
            .flat_map(|l| l.items.iter().filter_map(|i| catalog.item_idx(i)))
            .collect()
    };
    let (random, top) = control_picks(&picks, &shown, catalog, sim.seed);
    let started = Instant::now();
    for (label, extra) in [
        ("real+simulated", &picks),
        ("real+random-shown", &random),
        ("real+top-ranked", &top),
    ] {
        let augmented = augmented_catalog(catalog, extra, timestamp);
        let fitted = fit(&augmented, cut.cutoff, &config, &evaluated)?;
        let histories = augmented_histories(&cut.train_items, extra);
        for &kind in &evaluated {
            let all = offline_metrics(
                &fitted,
                kind,
                &augmented,
                &histories,
                &cut.held_out,
                &evaluable,
                args.eval_k,
            )?;
            let on_users = offline_metrics(
                &fitted,
                kind,
                &augmented,
                &histories,
                &cut.held_out,
                &users,
                args.eval_k,
            )?;
            let (base_all, base_users) = real_metrics[&kind];
            evaluations.push(Evaluation {
                recommender: kind.name().to_owned(),
                training: label.to_owned(),
                extra_interactions: extra.len(),
                all_users: all,
                augmented_users: on_users,
                change_all_users_pct: change(&base_all, &all),
                change_augmented_users_pct: change(&base_users, &on_users),
            });
        }
    }
    timings.insert(
        "evaluate_augmented".to_owned(),
        started.elapsed().as_secs_f64(),
    );

    let notes = vec![
        format!(
            "simulated interactions are dated {timestamp} (one second before the cut) and \
             written with rating {}",
            args.rating
        ),
        "evaluation leaves each user's training items out of the lists (simulated ones included \
         in the augmented runs, as RecBole masks every training interaction); held-out items are \
         the real items a user interacted with after the cut and never before"
            .to_owned(),
        "controls add the same number of items per user: uniformly drawn from the pages the user \
         was shown (random-shown), or the user's top-ranked items (top-ranked)"
            .to_owned(),
    ];
    let file = AugmentFile {
        catalog: sim.catalog.clone(),
        model: simulator.model_id(),
        simulator: description,
        mode: mode.name().to_owned(),
        slate_recommender: slate_kind.name().to_owned(),
        page_size: sim.page_size,
        pages: sim.pages,
        picks_per_user: args.picks_per_user,
        users_simulated: users.len(),
        seed: sim.seed,
        cut: cut.summary(catalog),
        simulated,
        simulated_interactions: picks.len(),
        picks_in_held_out,
        recbole_real: real_path.display().to_string(),
        recbole_augmented: augmented_path.display().to_string(),
        evaluations,
        notes,
        timings,
    };
    write_jsonl(&sim.out.join("choices.jsonl"), &lines)?;
    let path = sim.out.join("augment_metrics.json");
    write_json(&path, &file)?;
    if sim.json {
        println!("{}", serde_json::to_string_pretty(&file)?);
        return Ok(());
    }
    println!(
        "{} users, {} simulated interactions ({} of them real held-out items)",
        file.users_simulated, file.simulated_interactions, file.picks_in_held_out
    );
    println!(
        "{:<12} {:<18} {:>9} {:>10} {:>8} {:>26}",
        "recommender", "training", "NDCG@10", "Recall@10", "MRR@5", "Δ% all users (N/R/M)"
    );
    for e in &file.evaluations {
        println!(
            "{:<12} {:<18} {:>9.5} {:>10.5} {:>8.5} {:>26}",
            e.recommender,
            e.training,
            e.all_users.ndcg_at_10,
            e.all_users.recall_at_10,
            e.all_users.mrr_at_5,
            e.change_all_users_pct.map_or_else(
                || "-".to_owned(),
                |c| format!("{:+.2} / {:+.2} / {:+.2}", c[0], c[1], c[2])
            )
        );
    }
    println!("wrote {}", path.display());
    Ok(())
}

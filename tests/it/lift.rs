//! `bookrec eval --replay` on a small clustered data set written the way
//! scripts/fetch-datasets writes MovieLens: three genres of ten movies, users who rate only
//! their genre. The replay runs the shipped realtime queries in process; the model knows
//! the first 45 users, the last 15 act only after the cut-off.

use std::fmt::Write as _;

use bookrec::config::Config;

/// `bookrec eval --replay` over a catalogue and ratings written into `dir`, with a small ALS
/// (8 factors, 10 iterations, a plain λ = 50 whatever the defaults say: a scaled λ sizes
/// itself to the data, which for these fixtures of tens of users and books means barely any)
/// and k = 5;
/// `(test, validation)` fractions.
async fn replay(
    dir: &std::path::Path,
    (catalogue, text): (&str, &str),
    ratings: &str,
    (test_fraction, validation_fraction): (f64, f64),
) -> bookrec::lift::Report {
    std::fs::write(dir.join(catalogue), text).expect("catalogue");
    let path = dir.join("ratings.csv");
    std::fs::write(&path, ratings).expect("ratings");
    let cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    let mut params = cfg.als.clone();
    params.factors = 8;
    params.iterations = 10;
    params.threads = 2;
    params.regularization_scaling = bookrec::als::RegularizationScaling::None;
    params.regularization = 50.0;
    params.tune.enabled = false;
    let opts = bookrec::lift::Options {
        ratings: path,
        test_fraction,
        k: 5,
        max_batch: 2000,
        validation_fraction,
        weights: cfg.serve.weights,
    };
    bookrec::lift::run(&cfg, &params, &opts, &mut |_| {})
        .await
        .expect("replay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_scores_every_recommender_and_fold_in_finds_new_users_tastes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let genres = ["Comedy", "Drama", "Horror"];
    let mut items = String::from("item_id,title,year,genres\n");
    for (g, genre) in genres.iter().enumerate() {
        for i in 0..10 {
            writeln!(items, "{},Movie {g}-{i},1999,{genre}", g * 10 + i).expect("write");
        }
    }
    // users 0..44 rate 8 of their genre's movies over the first hours; users 45..59 rate 6
    // later, after every known user is done (the cut-off falls between)
    let mut ratings = String::from("user_id,item_id,rating,timestamp\n");
    let mut t = 1_000_000_000i64;
    for u in 0..60 {
        let g = u % 3;
        let n = if u < 45 { 8 } else { 6 };
        for j in 0..n {
            let item = g * 10 + (u * 7 + j * 3) % 10;
            writeln!(ratings, "{u},{item},5,{t}").expect("write");
            t += 60;
        }
    }
    // 15 users × 6 of 450 ratings: the last 90 are replayed
    let report = replay(
        dir.path(),
        ("items.csv", &items),
        &ratings,
        (90.0 / 450.0, 0.0),
    )
    .await;
    assert_eq!(report.train_events, 360, "{report}");
    assert_eq!(report.replayed_events, 90, "{report}");
    // every replayed rating is of a movie new to its user: a target of every recommender
    let row = |name: &str, users: &str| {
        report
            .rows
            .iter()
            .find(|r| r.recommender == name && r.users == users)
            .cloned()
            .unwrap_or_else(|| panic!("no row {name}/{users} in\n{report}"))
    };
    for name in bookrec::lift::RECOMMENDERS {
        assert_eq!(row(name, "all").targets, 90, "{report}");
        assert_eq!(row(name, "unknown").targets, 90, "{report}");
    }
    // the model cannot know these users: its offline list is empty
    assert_eq!(row("als", "unknown").hr, 0.0, "{report}");
    // fold-in (from the ratings the stream recorded) and the realtime list find the user's
    // genre; popularity does not know it
    let (fold, popular) = (
        row("blend+fold_in", "unknown"),
        row("popularity", "unknown"),
    );
    assert!(fold.hr > popular.hr + 0.2, "{report}");
    assert!(row("realtime", "unknown").hr > popular.hr, "{report}");
    let text = report.to_string();
    eprintln!("{text}");
    assert!(text.contains("| blend+fold_in | unknown | 90 |"), "{text}");
}

/// A Book-Crossing-shaped data set (no times: the replay interleaves users in a seeded
/// order) whose works have two editions each — "Work g-i" and "Work g-i (Paperback)" by one
/// author — and users who each read six of their publisher's eight works, each in one
/// edition (first editions and paperbacks alternate). The blend's
/// weights are tuned on a validation window before the reported one, and the editions' effect
/// is reported beside the blend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_tunes_weights_on_a_validation_window_and_measures_editions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let publishers = ["Penguin", "Tor", "Vintage"];
    let mut books = String::from("isbn,title,author,year,publisher\n");
    for (g, publisher) in publishers.iter().enumerate() {
        for i in 0..8 {
            for (e, suffix) in [(0, ""), (1, " (Paperback)")] {
                writeln!(
                    books,
                    "{g}{i}{e}0000000,Work {g}-{i}{suffix},Author {g}{i},2001,{publisher}"
                )
                .expect("write");
            }
        }
    }
    let mut ratings = String::from("user_id,isbn,rating\n");
    for u in 0..90 {
        let g = u % 3;
        for j in 0..6 {
            let (i, e) = ((u * 5 + j * 3) % 8, (u / 2 + j) % 2);
            writeln!(ratings, "{u},{g}{i}{e}0000000,8").expect("write");
        }
    }
    let report = replay(dir.path(), ("books.csv", &books), &ratings, (0.25, 0.25)).await;
    let text = report.to_string();
    eprintln!("{text}");
    // every work has two editions: the shipped books view groups them
    assert_eq!(report.works_with_editions, 24, "{text}");
    let tuning = report
        .tuning
        .clone()
        .expect("a validation window was replayed");
    assert!(tuning.targets > 0 && tuning.evaluations > 1, "{text}");
    assert!(tuning.hr_chosen >= tuning.hr_from, "{text}");
    let row = |name: &str| {
        report
            .rows
            .iter()
            .find(|r| r.recommender == name && r.users == "all")
            .cloned()
            .unwrap_or_else(|| panic!("no row {name} in\n{text}"))
    };
    // tuned rows are reported when the chosen weights differ from the configured ones
    let tuned = tuning.chosen != report.weights;
    assert_eq!(
        report
            .rows
            .iter()
            .any(|r| r.recommender == "blend+fold_in (tuned)"),
        tuned,
        "{text}"
    );
    let reported = row(if tuned {
        "blend+fold_in (tuned)"
    } else {
        "blend+fold_in"
    });
    // nobody reads a work twice: the lists of the offline model and of the blend with
    // editions apart spend slots on the other edition of works the user has read (ALS finds
    // both editions alike); grouped into works, no slot repeats a work
    let apart = row("blend+fold_in (editions apart)");
    assert_eq!(apart.targets, reported.targets, "{text}");
    assert_eq!(reported.repeated_works, 0.0, "{text}");
    assert!(apart.repeated_works > 0.05, "{text}");
    assert!(row("als").repeated_works > 0.05, "{text}");
    assert!(text.contains("tuned on the validation window"), "{text}");
}

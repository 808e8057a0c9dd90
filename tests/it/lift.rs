//! `bookrec eval --replay` on a small clustered data set written the way
//! scripts/fetch-datasets writes MovieLens: three genres of ten movies, users who rate only
//! their genre. The replay runs the shipped realtime queries in process; the model knows
//! the first 45 users, the last 15 act only after the cut-off.

use std::fmt::Write as _;

use bookrec::config::Config;

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
    std::fs::write(dir.path().join("items.csv"), items).expect("items");
    let path = dir.path().join("ratings.csv");
    std::fs::write(&path, ratings).expect("ratings");

    let cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    let mut params = cfg.als.clone();
    params.factors = 8;
    params.iterations = 10;
    params.threads = 2;
    let opts = bookrec::lift::Options {
        ratings: path,
        // 15 users × 6 of 450 ratings: the last 90 are replayed
        test_fraction: 90.0 / 450.0,
        k: 5,
        max_batch: 2000,
        weights: cfg.serve.weights,
    };
    let report = bookrec::lift::run(&cfg, &params, &opts, &mut |_| {})
        .await
        .expect("replay");
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

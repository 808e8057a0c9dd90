//! Reading interactions from Parquet or CSV and building the Arrow tables a fit produces
//! (recommendations, similar items, factors). Ids keep the Arrow type they had on input.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchReader,
    StringArray, UInt32Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::AlsError;
use super::matrix::{IdMap, Interactions, Triple};
use super::recommend::Scored;

/// Which input columns hold what. `None` picks the first present of the usual names.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub user: Option<String>,
    pub item: Option<String>,
    pub weight: Option<String>,
    pub time: Option<String>,
}

const USER_NAMES: &[&str] = &["user_id"];
const ITEM_NAMES: &[&str] = &["item_id", "book_id"];
const WEIGHT_NAMES: &[&str] = &["weight"];
const TIME_NAMES: &[&str] = &["last_ts", "timestamp", "event_ts", "ts"];

/// Interactions read from a file, with the Arrow types of the id columns as they were.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub data: Interactions,
    pub user_type: DataType,
    pub item_type: DataType,
    pub columns: [Option<String>; 4],
}

fn file_err(path: &Path, reason: impl ToString) -> AlsError {
    AlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_batches(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), AlsError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let file = File::open(path).map_err(|e| file_err(path, e))?;
    match ext.as_deref() {
        Some("parquet") => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.with_batch_size(65536).build())
                .map_err(|e| file_err(path, e))?;
            let schema = reader.schema();
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(path, e))?;
            Ok((schema, batches))
        }
        Some("csv") | Some("tsv") => {
            let delimiter = if ext.as_deref() == Some("tsv") {
                b'\t'
            } else {
                b','
            };
            let format = arrow::csv::reader::Format::default()
                .with_header(true)
                .with_delimiter(delimiter);
            let (inferred, _) = format
                .infer_schema(&file, Some(10_000))
                .map_err(|e| file_err(path, e))?;
            // ids are read as text whatever they look like (ISBNs such as 034545104X
            // follow rows of digits)
            let fields: Vec<Field> = inferred
                .fields()
                .iter()
                .map(|f| {
                    if USER_NAMES.contains(&f.name().as_str())
                        || ITEM_NAMES.contains(&f.name().as_str())
                    {
                        Field::new(f.name(), DataType::Utf8, true)
                    } else {
                        f.as_ref().clone()
                    }
                })
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let file = File::open(path).map_err(|e| file_err(path, e))?;
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(format)
                .with_batch_size(65536)
                .build(file)
                .map_err(|e| file_err(path, e))?;
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(path, e))?;
            Ok((schema, batches))
        }
        _ => Err(file_err(
            path,
            "unknown file type: expected .parquet, .csv or .tsv",
        )),
    }
}

fn pick(
    schema: &Schema,
    path: &str,
    given: &Option<String>,
    names: &[&str],
    required: bool,
) -> Result<Option<String>, AlsError> {
    if let Some(g) = given {
        return match schema.field_with_name(g) {
            Ok(_) => Ok(Some(g.clone())),
            Err(_) => Err(AlsError::Column {
                path: path.to_owned(),
                column: g.clone(),
                reason: format!("not in the file (columns: {})", column_list(schema)),
            }),
        };
    }
    let found = names
        .iter()
        .find(|n| schema.field_with_name(n).is_ok())
        .map(|n| n.to_string());
    if found.is_none() && required {
        return Err(AlsError::Column {
            path: path.to_owned(),
            column: names.join(" or "),
            reason: format!("missing (columns: {})", column_list(schema)),
        });
    }
    Ok(found)
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads `(user, item[, weight][, time])` rows. A null id or a weight that is not a finite
/// number ≥ 0 is an error naming the row; repeated pairs are summed by the matrix.
pub fn read_interactions(path: &Path, columns: &Columns) -> Result<Loaded, AlsError> {
    let (schema, batches) = read_batches(path)?;
    interactions_from_batches(&path.display().to_string(), &schema, &batches, columns)
}

/// [`read_interactions`] over batches already in memory; `source` names them in errors.
pub fn interactions_from_batches(
    source: &str,
    schema: &Schema,
    batches: &[RecordBatch],
    columns: &Columns,
) -> Result<Loaded, AlsError> {
    let path = source;
    let user = pick(schema, path, &columns.user, USER_NAMES, true)?.unwrap_or_default();
    let item = pick(schema, path, &columns.item, ITEM_NAMES, true)?.unwrap_or_default();
    let weight = pick(schema, path, &columns.weight, WEIGHT_NAMES, false)?;
    let time = pick(schema, path, &columns.time, TIME_NAMES, false)?;
    let col_err = |column: &str, reason: String| AlsError::Column {
        path: path.to_owned(),
        column: column.to_owned(),
        reason,
    };
    let type_of = |c: &str| -> Result<DataType, AlsError> {
        Ok(schema
            .field_with_name(c)
            .map_err(|e| col_err(c, e.to_string()))?
            .data_type()
            .clone())
    };
    let (user_type, item_type) = (type_of(&user)?, type_of(&item)?);
    let (mut users, mut items) = (IdMap::new(), IdMap::new());
    let mut triples = Vec::new();
    let mut times: Vec<i64> = Vec::new();
    let mut row0 = 0usize;
    for b in batches {
        let as_text = |c: &str| -> Result<ArrayRef, AlsError> {
            let a = b
                .column_by_name(c)
                .ok_or_else(|| col_err(c, "missing".into()))?;
            cast(a, &DataType::Utf8).map_err(|e| col_err(c, e.to_string()))
        };
        let (u, i) = (as_text(&user)?, as_text(&item)?);
        let (u, i) = (u.as_string::<i32>(), i.as_string::<i32>());
        let w = match &weight {
            Some(c) => Some(
                cast(b.column_by_name(c).expect("picked"), &DataType::Float64)
                    .map_err(|e| col_err(c, e.to_string()))?,
            ),
            None => None,
        };
        let t = match &time {
            Some(c) => {
                Some(seconds(b.column_by_name(c).expect("picked")).map_err(|r| col_err(c, r))?)
            }
            None => None,
        };
        for r in 0..b.num_rows() {
            let row = row0 + r + 1;
            let bad = |reason: String| AlsError::Row {
                path: path.to_owned(),
                row,
                reason,
            };
            if u.is_null(r) || i.is_null(r) {
                return Err(bad(format!("{user} or {item} is null")));
            }
            let wv = match &w {
                Some(w) if w.is_null(r) => return Err(bad("weight is null".into())),
                Some(w) => w.as_primitive::<Float64Type>().value(r),
                None => 1.0,
            };
            if !(wv.is_finite() && wv >= 0.0) {
                return Err(bad(format!("weight {wv} is not a finite number >= 0")));
            }
            triples.push(Triple {
                user: users.intern(u.value(r)),
                item: items.intern(i.value(r)),
                weight: wv as f32,
            });
            if let Some(t) = &t {
                times.push(if t.is_null(r) { i64::MIN } else { t.value(r) });
            }
        }
        row0 += b.num_rows();
    }
    Ok(Loaded {
        data: Interactions {
            users,
            items,
            triples,
            times: time.as_ref().map(|_| times),
        },
        user_type,
        item_type,
        columns: [Some(user), Some(item), weight, time],
    })
}

/// A time column as epoch seconds: integers and floats are taken as seconds already,
/// timestamps are converted from their unit.
fn seconds(a: &ArrayRef) -> Result<arrow::array::Int64Array, String> {
    let divide = match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => 1,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000_000,
        t if t.is_numeric() => 1,
        t => {
            return Err(format!(
                "type {t} is not a time (expected a timestamp or epoch seconds)"
            ));
        }
    };
    let raw = cast(a, &DataType::Int64).map_err(|e| e.to_string())?;
    Ok(raw
        .as_primitive::<Int64Type>()
        .unary::<_, Int64Type>(|v| v.div_euclid(divide)))
}

fn ids_as(ids: Vec<&str>, to: &DataType) -> Result<ArrayRef, AlsError> {
    let text: ArrayRef = Arc::new(StringArray::from(ids));
    cast(&text, to).map_err(|e| AlsError::Param {
        name: "id type",
        reason: e.to_string(),
    })
}

/// `(user_id, item_id, rank, score)` for the ranked lists of every user.
pub fn recommendations_batch(
    users: &IdMap,
    items: &IdMap,
    lists: &[Vec<Scored>],
    user_type: &DataType,
    item_type: &DataType,
    names: (&str, &str),
) -> Result<RecordBatch, AlsError> {
    let (mut u, mut i, mut rank, mut score) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (user, list) in lists.iter().enumerate() {
        for (r, s) in list.iter().enumerate() {
            u.push(users.id(user as u32));
            i.push(items.id(s.item));
            rank.push(r as u32 + 1);
            score.push(s.score);
        }
    }
    let schema = Schema::new(vec![
        Field::new(names.0, user_type.clone(), false),
        Field::new(names.1, item_type.clone(), false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("score", DataType::Float32, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ids_as(u, user_type)?,
            ids_as(i, item_type)?,
            Arc::new(UInt32Array::from(rank)),
            Arc::new(Float32Array::from(score)),
        ],
    )
    .map_err(|e| AlsError::Param {
        name: "output",
        reason: e.to_string(),
    })
}

/// `(id, factors)` with the factors as a fixed-size list of `f32`.
pub fn factors_batch(
    ids: &IdMap,
    id_type: &DataType,
    id_name: &str,
    factors: &[f32],
    f: usize,
) -> Result<RecordBatch, AlsError> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = FixedSizeListArray::try_new(
        item.clone(),
        f as i32,
        Arc::new(Float32Array::from(factors.to_vec())),
        None,
    )
    .map_err(|e| AlsError::Param {
        name: "factors",
        reason: e.to_string(),
    })?;
    let schema = Schema::new(vec![
        Field::new(id_name, id_type.clone(), false),
        Field::new("factors", DataType::FixedSizeList(item, f as i32), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ids_as(ids.ids().iter().map(String::as_str).collect(), id_type)?,
            Arc::new(list),
        ],
    )
    .map_err(|e| AlsError::Param {
        name: "factors",
        reason: e.to_string(),
    })
}

/// Reads a factors table as [`factors_batch`] writes it (an id column, then `factors` as a
/// fixed-size list of f32) from Parquet bytes: the ids as text, the factors row-major, and
/// the number of factors. `what` names the source in errors.
pub fn read_factors(
    what: &str,
    bytes: bytes::Bytes,
) -> Result<(Vec<String>, Vec<f32>, usize), AlsError> {
    let bad = |reason: String| AlsError::File {
        path: what.to_string(),
        reason,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    let (mut ids, mut factors, mut f) = (Vec::new(), Vec::new(), None);
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        if batch.num_rows() == 0 {
            continue;
        }
        if batch.num_columns() != 2 {
            return Err(bad(format!(
                "{} columns, not (id, factors)",
                batch.num_columns()
            )));
        }
        let id = cast(batch.column(0), &DataType::Utf8).map_err(|e| bad(e.to_string()))?;
        let id = id.as_string::<i32>();
        let list = batch
            .column(1)
            .as_fixed_size_list_opt()
            .ok_or_else(|| bad("factors is not a fixed-size list".into()))?;
        let width = list.value_length() as usize;
        if *f.get_or_insert(width) != width {
            return Err(bad("the factor width changes between batches".into()));
        }
        let values = list
            .values()
            .as_primitive_opt::<arrow::datatypes::Float32Type>()
            .ok_or_else(|| bad("factors are not f32".into()))?;
        if id.null_count() > 0 || list.null_count() > 0 || values.null_count() > 0 {
            return Err(bad("null ids or factors".into()));
        }
        let start = list.value_offset(0) as usize;
        ids.extend((0..batch.num_rows()).map(|r| id.value(r).to_string()));
        factors.extend_from_slice(&values.values()[start..start + batch.num_rows() * width]);
    }
    Ok((ids, factors, f.unwrap_or(0)))
}

/// Writes one batch as a Parquet file (the lake's writer settings: zstd, page statistics).
pub fn write_parquet_file(path: &Path, batch: &RecordBatch) -> Result<(), AlsError> {
    let bytes = crate::lake::write_parquet(batch).map_err(|e| file_err(path, e))?;
    std::fs::write(path, bytes).map_err(|e| file_err(path, e))
}

/// What `bookrec als fit` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FitReport {
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    /// the parameters that trained (`[als.tune]`'s choice when it ran)
    pub params: super::Params,
    /// how the regularisation was chosen (`[als.tune]`), its candidates' validation scores
    pub tuning: super::eval::Tuning,
    pub loss: Vec<f64>,
    /// wall time of each iteration (both half-steps and the loss)
    pub iteration_seconds: Vec<f64>,
    pub seconds: f64,
    pub files: Vec<String>,
}

/// Trains on a file (with `[als.tune]`'s choice of regularisation when tuning is on) and
/// writes `recommendations.parquet` (`user_id, item_id, rank, score`, seen items excluded),
/// `similar_items.parquet` (`item_id, similar_item_id, rank, score`), the factors
/// (`user_factors.parquet`, `item_factors.parquet`) and `model.json` into `out`.
pub fn fit_to_dir(
    input: &Path,
    columns: &Columns,
    params: &super::Params,
    k: usize,
    similar_k: usize,
    out: &Path,
    progress: &mut dyn FnMut(super::Progress),
) -> Result<FitReport, AlsError> {
    let started = std::time::Instant::now();
    let loaded = read_interactions(input, columns)?;
    let data = &loaded.data;
    let (params, tuning) = super::eval::tuned(data, params)?;
    let params = &params;
    let matrix = data.matrix();
    let mut iteration_seconds = Vec::new();
    let model = super::fit(&matrix, params, &mut |p| {
        iteration_seconds.push(p.seconds);
        progress(p)
    })?;
    let recs = super::recommend::recommend_all(&model, &matrix, k);
    let all_items: Vec<u32> = (0..data.items.len() as u32).collect();
    let similar = super::recommend::similar_items(&model, &all_items, similar_k);
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let (ut, it) = (&loaded.user_type, &loaded.item_type);
    let outputs = [
        (
            "recommendations.parquet",
            recommendations_batch(
                &data.users,
                &data.items,
                &recs,
                ut,
                it,
                ("user_id", "item_id"),
            )?,
        ),
        (
            "similar_items.parquet",
            recommendations_batch(
                &data.items,
                &data.items,
                &similar,
                it,
                it,
                ("item_id", "similar_item_id"),
            )?,
        ),
        (
            "user_factors.parquet",
            factors_batch(
                &data.users,
                ut,
                "user_id",
                &model.user_factors,
                model.factors,
            )?,
        ),
        (
            "item_factors.parquet",
            factors_batch(
                &data.items,
                it,
                "item_id",
                &model.item_factors,
                model.factors,
            )?,
        ),
    ];
    let mut files = Vec::new();
    for (name, batch) in &outputs {
        write_parquet_file(&out.join(name), batch)?;
        files.push(name.to_string());
    }
    let report = FitReport {
        users: data.users.len(),
        items: data.items.len(),
        interactions: matrix.nnz(),
        params: params.clone(),
        tuning,
        loss: model.loss.clone(),
        iteration_seconds,
        seconds: started.elapsed().as_secs_f64(),
        files,
    };
    let meta = serde_json::to_vec_pretty(&report).map_err(|e| file_err(out, e))?;
    std::fs::write(out.join("model.json"), meta).map_err(|e| file_err(out, e))?;
    Ok(report)
}

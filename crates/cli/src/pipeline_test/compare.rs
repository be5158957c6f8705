//! Compares the rows a test run produced with what its test file expects, and words every
//! mismatch so that a reader sees what to fix: rows missing, rows unexpected, and for a row that
//! is nearly right, the first column that differs.

use std::collections::HashMap;

use chatlake_core::config::did_you_mean_note;
use serde_json::{Map, Value};

use super::spec::{ExpectedRows, Output};

/// A row as the JSON Lines capture sink wrote it.
pub type Row = Map<String, Value>;

/// At most this many rows of each kind (missing, unexpected, differing) are shown.
const SHOWN: usize = 10;

/// Every way `rows` (the output of `output.extract_from`) misses `output`; empty when it passes.
pub fn check(output: &Output, rows: &[Row]) -> Vec<String> {
    let mut failures = Vec::new();
    let target = &output.extract_from;
    if let Some(unknown) = unknown_columns(output, rows) {
        // Comparing on a column the output does not have would only repeat this for every row.
        failures.push(format!("`{target}`: {unknown}"));
        return failures;
    }
    if let Some(count) = output.count
        && rows.len() as u64 != count
    {
        failures.push(format!(
            "`{target}`: count: expected {count} rows, got {}",
            rows.len()
        ));
    }
    if let Some(expected) = &output.expected {
        failures.extend(diff_rows(target, expected, rows));
    }
    if let Some(every) = &output.every_row {
        let wrong: Vec<(&Row, &str)> = rows
            .iter()
            .filter_map(|row| {
                every
                    .iter()
                    .find(|(c, v)| !same(row.get(c.as_str()), v))
                    .map(|(c, _)| (row, c.as_str()))
            })
            .collect();
        if !wrong.is_empty() {
            let mut text = format!(
                "`{target}`: every_row {}: {} of {} rows do not",
                table(every),
                wrong.len(),
                rows.len()
            );
            for (row, column) in wrong.iter().take(SHOWN) {
                text.push_str(&format!(
                    "\n    `{column}` is {}: {}",
                    show(row.get(*column)),
                    compact(row)
                ));
            }
            more(&mut text, wrong.len());
            failures.push(text);
        }
    }
    if let Some(none) = &output.no_row {
        let matching: Vec<&Row> = rows
            .iter()
            .filter(|row| none.iter().all(|(c, v)| same(row.get(c.as_str()), v)))
            .collect();
        if !matching.is_empty() {
            let mut text = format!(
                "`{target}`: no_row {}: {} of {} rows do",
                table(none),
                matching.len(),
                rows.len()
            );
            for row in matching.iter().take(SHOWN) {
                text.push_str(&format!("\n    {}", compact(row)));
            }
            more(&mut text, matching.len());
            failures.push(text);
        }
    }
    failures
}

/// A column the test names that no row has (a typo, or the wrong component).
fn unknown_columns(output: &Output, rows: &[Row]) -> Option<String> {
    let first = rows.first()?;
    let named = output
        .expected
        .iter()
        .flat_map(|e| e.columns.iter())
        .chain(output.every_row.iter().flat_map(|m| m.keys()))
        .chain(output.no_row.iter().flat_map(|m| m.keys()));
    let mut missing = named.filter(|c| !rows.iter().any(|r| r.contains_key(c.as_str())));
    let column = missing.next()?;
    let known: Vec<&str> = first.keys().map(String::as_str).collect();
    Some(format!(
        "no column `{column}` in its rows; its columns are: {}{}",
        known.join(", "),
        did_you_mean_note(column, known.iter().copied())
    ))
}

/// Missing and unexpected rows, compared as multisets on the expected rows' columns.
fn diff_rows(target: &str, expected: &ExpectedRows, rows: &[Row]) -> Vec<String> {
    let columns = &expected.columns;
    let mut pool: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, row) in rows.iter().enumerate().rev() {
        pool.entry(key(row, columns)).or_default().push(i);
    }
    let mut missing: Vec<usize> = Vec::new();
    for (i, row) in expected.rows.iter().enumerate() {
        match pool.get_mut(&key(row, columns)).and_then(Vec::pop) {
            Some(_) => {}
            None => missing.push(i),
        }
    }
    let mut unexpected: Vec<usize> = pool.into_values().flatten().collect();
    unexpected.sort_unstable();
    if missing.is_empty() && unexpected.is_empty() {
        return Vec::new();
    }

    // A missing row and an unexpected row that agree on most columns are one row that differs:
    // say where, instead of printing both.
    let mut differing: Vec<(usize, usize)> = Vec::new();
    missing.retain(|&m| {
        let want = &expected.rows[m];
        let best = unexpected
            .iter()
            .enumerate()
            .map(|(k, &u)| (k, agreeing(want, &rows[u], columns)))
            .max_by_key(|&(k, agree)| (agree, std::cmp::Reverse(k)));
        match best {
            Some((k, agree)) if agree * 2 >= columns.len() && agree > 0 => {
                differing.push((m, unexpected.remove(k)));
                false
            }
            _ => true,
        }
    });

    let found = expected.rows.len() - missing.len() - differing.len();
    let mut text = format!(
        "`{target}`: rows of {}: {found} of {} expected rows found",
        expected.name,
        expected.rows.len()
    );
    let mut counts = Vec::new();
    for (n, what) in [
        (differing.len(), "differ"),
        (missing.len(), "missing"),
        (unexpected.len(), "unexpected"),
    ] {
        if n > 0 {
            counts.push(format!("{n} {what}"));
        }
    }
    text.push_str(&format!(
        " ({}; compared on {})",
        counts.join(", "),
        if columns.is_empty() {
            "no column".to_string()
        } else {
            columns.join(", ")
        }
    ));
    for &(m, u) in differing.iter().take(SHOWN) {
        let want = &expected.rows[m];
        let got = &rows[u];
        let unequal: Vec<&String> = columns
            .iter()
            .filter(|c| {
                !same(
                    got.get(c.as_str()),
                    want.get(c.as_str()).unwrap_or(&Value::Null),
                )
            })
            .collect();
        let first = unequal[0];
        text.push_str(&format!(
            "\n    differs: expected row {} ({}): `{first}`: expected {}, got {}",
            expected.lines[m],
            identify(want, columns, first),
            show(want.get(first.as_str())),
            show(got.get(first.as_str()))
        ));
        if unequal.len() > 1 {
            let rest: Vec<&str> = unequal[1..].iter().map(|c| c.as_str()).collect();
            text.push_str(&format!("; also {}", rest.join(", ")));
        }
    }
    more(&mut text, differing.len());
    for &m in missing.iter().take(SHOWN) {
        text.push_str(&format!(
            "\n    missing: expected row {}: {}",
            expected.lines[m],
            compact(&as_written(&expected.rows[m], columns))
        ));
    }
    more(&mut text, missing.len());
    for &u in unexpected.iter().take(SHOWN) {
        let shown = if columns.is_empty() {
            rows[u].clone()
        } else {
            project(&rows[u], columns)
        };
        text.push_str(&format!("\n    unexpected: {}", compact(&shown)));
    }
    more(&mut text, unexpected.len());
    vec![text]
}

/// `message_id = "…"` (or the first column that agrees) to say which row differs.
fn identify(row: &Row, columns: &[String], differing: &str) -> String {
    let column = ["message_id", "id", "messageId"]
        .into_iter()
        .find(|c| columns.iter().any(|k| k == c) && *c != differing)
        .or_else(|| columns.iter().map(String::as_str).find(|c| *c != differing));
    match column {
        Some(c) => format!("{c} = {}", show(row.get(c))),
        None => "its only column".into(),
    }
}

fn more(text: &mut String, n: usize) {
    if n > SHOWN {
        text.push_str(&format!("\n    … and {} more", n - SHOWN));
    }
}

/// How many of `columns` two rows agree on.
fn agreeing(a: &Row, b: &Row, columns: &[String]) -> usize {
    columns
        .iter()
        .filter(|c| same(b.get(c.as_str()), a.get(c.as_str()).unwrap_or(&Value::Null)))
        .count()
}

/// A missing column reads as null (the JSON Lines sink writes nulls, hand-written rows may not).
fn same(got: Option<&Value>, want: &Value) -> bool {
    got.unwrap_or(&Value::Null) == want
}

/// The row's values of `columns`, in that order, as a comparable string: objects with their keys
/// sorted, so two equal rows give the same key whatever order their fields were written in.
fn key(row: &Row, columns: &[String]) -> String {
    let values: Vec<Value> = columns
        .iter()
        .map(|c| sorted(row.get(c.as_str()).unwrap_or(&Value::Null)))
        .collect();
    Value::Array(values).to_string()
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The compared columns the expected row sets, in the order of `columns`.
fn as_written(row: &Row, columns: &[String]) -> Row {
    columns
        .iter()
        .filter_map(|c| row.get(c.as_str()).map(|v| (c.clone(), v.clone())))
        .collect()
}

fn project(row: &Row, columns: &[String]) -> Row {
    columns
        .iter()
        .map(|c| {
            (
                c.clone(),
                row.get(c.as_str()).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(v) => v.to_string(),
    }
}

fn compact(row: &Row) -> String {
    Value::Object(row.clone()).to_string()
}

/// `{ is_bot = true, provider = "zoom" }`, as the test file wrote it.
fn table(map: &Map<String, Value>) -> String {
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn rows(values: Value) -> Vec<Row> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    fn output(expected: Option<Value>, columns: Option<&[&str]>) -> Output {
        Output {
            extract_from: "out".into(),
            expected: expected.map(|e| {
                let rows = rows(e);
                let columns = columns
                    .map(|c| c.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_else(|| rows[0].keys().cloned().collect());
                ExpectedRows {
                    name: "want.jsonl".into(),
                    columns,
                    lines: (1..=rows.len()).collect(),
                    rows,
                }
            }),
            count: None,
            every_row: None,
            no_row: None,
        }
    }

    #[test]
    fn equal_rows_in_any_order_and_with_extra_columns_pass() {
        let want =
            json!([{"id": "a", "n": 1, "o": {"x": 1, "y": 2}}, {"id": "b", "n": 2, "o": null}]);
        let got = rows(json!([
            {"id": "b", "n": 2, "o": null, "run_id": "r"},
            {"run_id": "r", "o": {"y": 2, "x": 1}, "n": 1, "id": "a"}
        ]));
        assert!(check(&output(Some(want), None), &got).is_empty());
    }

    #[test]
    fn a_row_that_nearly_matches_names_the_first_differing_column() {
        let want = json!([
            {"id": "a", "text": "hello", "n": 1},
            {"id": "b", "text": "bye", "n": 2},
            {"id": "c", "text": "x", "n": 3}
        ]);
        let got = rows(json!([
            {"id": "a", "text": "hello", "n": 1},
            {"id": "b", "text": "bye!", "n": 2},
            {"id": "z", "text": "other", "n": 9}
        ]));
        let failures = check(&output(Some(want), None), &got);
        assert_eq!(failures.len(), 1, "{failures:?}");
        let text = &failures[0];
        assert!(
            text.contains("1 of 3 expected rows found (1 differ, 1 missing, 1 unexpected"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"differs: expected row 2 (id = "b"): `text`: expected "bye", got "bye!""#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"missing: expected row 3: {"id":"c","text":"x","n":3}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"unexpected: {"id":"z","text":"other","n":9}"#),
            "{text}"
        );
    }

    #[test]
    fn duplicates_count() {
        let want = json!([{"id": "a"}, {"id": "a"}]);
        let got = rows(json!([{"id": "a"}]));
        let failures = check(&output(Some(want), None), &got);
        assert!(
            failures[0].contains("1 of 2 expected rows found (1 missing"),
            "{failures:?}"
        );
    }

    #[test]
    fn assertions_count_every_row_and_no_row() {
        let got = rows(json!([
            {"id": "a", "is_bot": false, "provider": "zoom"},
            {"id": "b", "is_bot": true, "provider": "zoom"}
        ]));
        let mut out = output(None, None);
        out.count = Some(2);
        out.every_row = Some(json!({"provider": "zoom"}).as_object().unwrap().clone());
        out.no_row = Some(json!({"is_bot": true}).as_object().unwrap().clone());
        let failures = check(&out, &got);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("`out`: no_row { is_bot = true }: 1 of 2 rows do"),
            "{failures:?}"
        );

        out.count = Some(3);
        out.no_row = None;
        out.every_row = Some(json!({"is_bot": false}).as_object().unwrap().clone());
        let failures = check(&out, &got);
        assert_eq!(failures[0], "`out`: count: expected 3 rows, got 2");
        assert!(
            failures[1].starts_with(
                "`out`: every_row { is_bot = false }: 1 of 2 rows do not\n    `is_bot` is true: "
            ),
            "{failures:?}"
        );
    }

    #[test]
    fn a_misspelt_column_is_named_with_the_real_ones() {
        let got = rows(json!([{"message_id": "a", "is_bot": false}]));
        let mut out = output(None, None);
        out.every_row = Some(json!({"is_bott": false}).as_object().unwrap().clone());
        let failures = check(&out, &got);
        assert_eq!(
            failures,
            vec![
                "`out`: no column `is_bott` in its rows; its columns are: message_id, is_bot; did you mean `is_bot`?"
            ]
        );
    }
}

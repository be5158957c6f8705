//! Taking rows out of a JSON Lines file ([`chatlake_lake::FileFormat::filter_file`]): lines are
//! copied byte for byte, so the rows kept are exactly as the sink wrote them.
//!
//! Only the key fields of each line are decoded: a string is its text, a number its decimal
//! text, a boolean `true`/`false`; `null` and an absent field are null. The sink writes every
//! column on every line, so a key column that no line has is not a column of the file.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, Write};

use chatlake_core::removal::encode_cell;
use chatlake_lake::text::{FileInput, FileOutput, TextCompression};
use chatlake_lake::{Filtered, FormatError, MissingKeyColumn};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Copies the lines of `input` whose key `goes` does not pick to `output` (when given).
pub(crate) fn filter_lines(
    input: File,
    compression: TextCompression,
    key_columns: &[&str],
    goes: &dyn Fn(&[u8]) -> bool,
    output: Option<File>,
) -> Result<Filtered, FormatError> {
    let mut reader = FileInput::new(input, compression);
    let mut out = output.map(|f| FileOutput::new(f, compression));
    let (mut kept, mut dropped) = (0, 0);
    let mut seen = vec![false; key_columns.len()];
    let mut first_keys: Option<Vec<String>> = None;
    let mut cells: Vec<Option<String>> = vec![None; key_columns.len()];
    let (mut line, mut key) = (Vec::new(), Vec::new());
    for number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        // Blank lines are no rows; the sink writes none, but they are kept as they are.
        let drop_line = if line.trim_ascii().is_empty() {
            false
        } else {
            if first_keys.is_none() {
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&line).map_err(|e| format!("line {number}: {e}"))?;
                first_keys = Some(object.keys().cloned().collect());
            }
            cells.iter_mut().for_each(|c| *c = None);
            let mut parser = serde_json::Deserializer::from_slice(&line);
            KeyCells {
                columns: key_columns,
                cells: &mut cells,
                seen: &mut seen,
            }
            .deserialize(&mut parser)
            .and_then(|()| parser.end())
            .map_err(|e| format!("line {number}: {e}"))?;
            key.clear();
            for cell in &cells {
                encode_cell(&mut key, cell.as_deref().map(str::as_bytes));
            }
            let goes = goes(&key);
            if goes {
                dropped += 1;
            } else {
                kept += 1;
            }
            goes
        };
        if !drop_line && let Some(out) = &mut out {
            out.write_all(&line)?;
        }
    }
    if let Some(keys) = &first_keys
        && let Some(i) = seen.iter().position(|s| !s)
    {
        return Err(MissingKeyColumn {
            column: key_columns[i].to_string(),
            available: keys.join(", "),
        }
        .into());
    }
    Ok(Filtered {
        kept,
        dropped,
        output: out.map(FileOutput::finish).transpose()?,
    })
}

/// Decodes one JSON object, keeping the text of the fields named `columns`.
struct KeyCells<'a> {
    columns: &'a [&'a str],
    cells: &'a mut [Option<String>],
    seen: &'a mut [bool],
}

impl<'de> DeserializeSeed<'de> for KeyCells<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyCells<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(field) = map.next_key_seed(FieldIndex(self.columns))? {
            match field {
                Some(i) => {
                    self.cells[i] = map.next_value::<KeyText>()?.0;
                    self.seen[i] = true;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Which key column a field name is, without allocating the name.
struct FieldIndex<'a>(&'a [&'a str]);

impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|c| *c == name))
    }
}

/// A key field's value as text; `None` for null.
struct KeyText(Option<String>);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyTextVisitor)
    }
}

struct KeyTextVisitor;

impl Visitor<'_> for KeyTextVisitor {
    type Value = KeyText;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number, boolean or null key value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
        Ok(KeyText(Some(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
        Ok(KeyText(Some(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
        Ok(KeyText(Some(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
        Ok(KeyText(Some(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
        Ok(KeyText(Some(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
        // Key columns are never floats (they cannot be compared across formats); a float
        // matches no key.
        Ok(KeyText(Some(v.to_string())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
        Ok(KeyText(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<KeyText, E> {
        Ok(KeyText(None))
    }
}

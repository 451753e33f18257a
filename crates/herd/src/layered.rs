//! Config-file layer: built-in defaults < config file < `HERD_*` env < flags.
//!
//! The file (`--config FILE` or `HERD_CONFIG`) is TOML whose keys are flag names with `_` or
//! `-` (top level, or inside any table such as `[serve]`). Each key becomes the `HERD_<KEY>`
//! variable unless that variable is already set, so the environment and flags still win.

use anyhow::{bail, Context};

pub fn apply_config_file() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--config=") {
            Some(v.to_string())
        } else if a == "--config" {
            args.get(i + 1).cloned()
        } else {
            None
        }
    });
    let Some(path) = from_args.or_else(|| std::env::var("HERD_CONFIG").ok()) else {
        return Ok(());
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {path}"))?;
    let mut pairs = Vec::new();
    collect(&table, &mut pairs, &path)?;
    for (k, v) in pairs {
        let var = format!("HERD_{}", k.replace('-', "_").to_ascii_uppercase());
        if std::env::var_os(&var).is_none() {
            std::env::set_var(var, v);
        }
    }
    Ok(())
}

fn collect(t: &toml::Table, out: &mut Vec<(String, String)>, path: &str) -> anyhow::Result<()> {
    for (k, v) in t {
        let s = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(inner) => {
                collect(inner, out, path)?;
                continue;
            }
            other => bail!(
                "config file {path}: key '{k}' has a {} value; use a string, number or boolean",
                other.type_str()
            ),
        };
        out.push((k.clone(), s));
    }
    Ok(())
}

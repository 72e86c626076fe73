//! Turns the records of a benchmark run (JSON lines: measurements, footprint
//! figures and one `meta` line) into a Markdown table and a JSON summary with
//! each figure for both systems and the ratio Meridian / etcd.

use anyhow::Context;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn ratio(meridian: Option<f64>, etcd: Option<f64>) -> Option<f64> {
    match (meridian, etcd) {
        (Some(m), Some(e)) if e != 0.0 => Some(m / e),
        _ => None,
    }
}

fn cell(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    }
}

/// Reads the records and writes (markdown, json).
pub fn report(records: &str) -> anyhow::Result<(String, Value)> {
    let mut meta = Value::Null;
    // (workload, clients, rate) -> system -> field -> samples
    type Samples = BTreeMap<String, BTreeMap<String, Vec<f64>>>;
    let mut runs: BTreeMap<(String, u64, String), Samples> = BTreeMap::new();
    let mut footprint: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (n, line) in records.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("record {}", n + 1))?;
        if v.get("meta").is_some() {
            meta = v["meta"].clone();
            continue;
        }
        let system = v["system"]
            .as_str()
            .context("record without system")?
            .to_string();
        if let Some(metric) = v["metric"].as_str() {
            let value = v["value"].as_f64().context("footprint without value")?;
            footprint
                .entry(metric.to_string())
                .or_default()
                .entry(system)
                .or_default()
                .push(value);
            continue;
        }
        let key = (
            v["workload"].as_str().unwrap_or("?").to_string(),
            v["clients"].as_u64().unwrap_or(0),
            v["rate"]
                .as_f64()
                .map(|r| format!("{r}/s"))
                .unwrap_or_else(|| "closed".into()),
        );
        let fields = runs.entry(key).or_default().entry(system).or_default();
        for f in [
            "throughput",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "cas_success_rate",
            "server_cpu_us_per_op",
            "client_cpu_us_per_op",
            "errors",
        ] {
            if let Some(x) = v[f].as_f64() {
                fields.entry(f.to_string()).or_default().push(x);
            }
        }
    }

    let mut md = String::new();
    let mut out_runs = Vec::new();
    writeln!(md, "# Meridian vs etcd\n")?;
    if let Some(m) = meta.as_object() {
        for (k, v) in m {
            writeln!(
                md,
                "- {k}: {}",
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            )?;
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "Ratios are Meridian / etcd: above 1 is better for throughput, below 1 is better for latency, CPU and footprint. \
         Each figure is the mean of the rounds (systems alternate A B A B). \
         CPU µs/op is the three servers' user + system time over the measured period divided by its operations; \
         client CPU µs/op is the same for the load generator, which shares the cores with the servers.\n"
    )?;
    writeln!(
        md,
        "| workload | clients | load | etcd ops/s | Meridian ops/s | ratio | etcd p50 ms | Meridian p50 ms | ratio | etcd p99 ms | Meridian p99 ms | ratio | etcd p99.9 ms | Meridian p99.9 ms | ratio | etcd CPU µs/op | Meridian CPU µs/op | ratio | client CPU µs/op (etcd/Meridian) | errors (etcd/Meridian) |"
    )?;
    writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for ((workload, clients, load), systems) in &runs {
        let get = |system: &str, field: &str| {
            systems
                .get(system)
                .and_then(|f| f.get(field))
                .and_then(|xs| mean(xs))
        };
        let mut row = Map::new();
        row.insert("workload".into(), json!(workload));
        row.insert("clients".into(), json!(clients));
        row.insert("load".into(), json!(load));
        let mut cells = vec![workload.clone(), clients.to_string(), load.clone()];
        for field in [
            "throughput",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "server_cpu_us_per_op",
            "cas_success_rate",
        ] {
            let (e, m) = (get("etcd", field), get("meridian", field));
            if field == "cas_success_rate" && e.is_none() && m.is_none() {
                continue;
            }
            row.insert(
                field.into(),
                json!({"etcd": e, "meridian": m, "ratio": ratio(m, e)}),
            );
            if field != "cas_success_rate" {
                cells.extend([cell(e), cell(m), cell(ratio(m, e))]);
            }
        }
        let (e, m) = (
            get("etcd", "client_cpu_us_per_op"),
            get("meridian", "client_cpu_us_per_op"),
        );
        row.insert(
            "client_cpu_us_per_op".into(),
            json!({"etcd": e, "meridian": m}),
        );
        cells.push(format!("{}/{}", cell(e), cell(m)));
        cells.push(format!(
            "{}/{}",
            cell(get("etcd", "errors")),
            cell(get("meridian", "errors"))
        ));
        writeln!(md, "| {} |", cells.join(" | "))?;
        out_runs.push(Value::Object(row));
    }
    let cas: Vec<&Value> = out_runs
        .iter()
        .filter(|r| r.get("cas_success_rate").is_some())
        .collect();
    if !cas.is_empty() {
        writeln!(
            md,
            "\n| CAS workload | clients | etcd success rate | Meridian success rate |"
        )?;
        writeln!(md, "|---|---|---|---|")?;
        for r in cas {
            let c = &r["cas_success_rate"];
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                r["workload"].as_str().unwrap_or("?"),
                r["clients"],
                cell(c["etcd"].as_f64()),
                cell(c["meridian"].as_f64())
            )?;
        }
    }
    let mut out_footprint = Vec::new();
    if !footprint.is_empty() {
        writeln!(md, "\n| footprint | etcd | Meridian | ratio |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (metric, systems) in &footprint {
            let e = systems.get("etcd").and_then(|x| mean(x));
            let m = systems.get("meridian").and_then(|x| mean(x));
            writeln!(
                md,
                "| {metric} | {} | {} | {} |",
                cell(e),
                cell(m),
                cell(ratio(m, e))
            )?;
            out_footprint
                .push(json!({"metric": metric, "etcd": e, "meridian": m, "ratio": ratio(m, e)}));
        }
    }
    let json = json!({"meta": meta, "runs": out_runs, "footprint": out_footprint});
    Ok((md, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_averaged_and_ratios_are_meridian_over_etcd() {
        let records = r#"{"meta":{"machine":"test"}}
{"system":"etcd","workload":"put","clients":64,"rate":null,"throughput":1000.0,"p50_ms":10.0,"p99_ms":40.0,"p999_ms":50.0,"server_cpu_us_per_op":300.0,"client_cpu_us_per_op":40.0,"errors":0}
{"system":"meridian","workload":"put","clients":64,"rate":null,"throughput":3000.0,"p50_ms":5.0,"p99_ms":20.0,"p999_ms":30.0,"server_cpu_us_per_op":100.0,"client_cpu_us_per_op":30.0,"errors":0}
{"system":"etcd","workload":"put","clients":64,"rate":null,"throughput":3000.0,"p50_ms":10.0,"p99_ms":40.0,"p999_ms":50.0,"server_cpu_us_per_op":200.0,"client_cpu_us_per_op":60.0,"errors":0}
{"system":"meridian","workload":"put","clients":64,"rate":null,"throughput":5000.0,"p50_ms":5.0,"p99_ms":20.0,"p999_ms":30.0,"server_cpu_us_per_op":150.0,"client_cpu_us_per_op":50.0,"errors":0}
{"system":"etcd","metric":"rss_idle_mib","value":40.0}
{"system":"meridian","metric":"rss_idle_mib","value":10.0}
"#;
        let (md, json) = report(records).unwrap();
        let put = &json["runs"][0];
        assert_eq!(put["throughput"]["etcd"], json!(2000.0));
        assert_eq!(put["throughput"]["meridian"], json!(4000.0));
        assert_eq!(put["throughput"]["ratio"], json!(2.0));
        assert_eq!(put["p99_ms"]["ratio"], json!(0.5));
        assert_eq!(put["server_cpu_us_per_op"]["etcd"], json!(250.0));
        assert_eq!(put["server_cpu_us_per_op"]["ratio"], json!(0.5));
        assert_eq!(put["client_cpu_us_per_op"]["etcd"], json!(50.0));
        assert_eq!(put["client_cpu_us_per_op"]["meridian"], json!(40.0));
        assert_eq!(json["footprint"][0]["ratio"], json!(0.25));
        assert!(
            md.contains("| 250 | 125 | 0.50 | 50.00/40.00 | 0.00/0.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| put | 64 | closed | 2000 | 4000 | 2.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| rss_idle_mib | 40.00 | 10.00 | 0.25 |"),
            "{md}"
        );
    }

    #[test]
    fn a_bad_record_is_named() {
        let err = report("{\"meta\":{}}\nnot json\n").unwrap_err();
        assert!(format!("{err:#}").contains("record 2"), "{err:#}");
    }
}

//! Joins the text expositions of several Prometheus recorders into one scrape.
//!
//! The daemon keeps each pool's series in a recorder of its own so that removing a pool
//! removes its series (the exporter has no call that deletes one series). Two recorders
//! can hold the same family (every pool has a `dujiang_ttft_seconds`), and the text
//! format allows one `# HELP`/`# TYPE` header per family with all its samples together,
//! so the renders are merged family by family rather than concatenated.

use std::collections::BTreeMap;

/// One family: its header lines (from the first render that had it) and every sample.
#[derive(Default)]
struct Family {
    header: String,
    samples: String,
}

/// Merges Prometheus text renders (each a sequence of families, one `# TYPE` line per
/// family, as the exporter writes them). Families come out sorted by name.
pub fn merge<'a>(renders: impl IntoIterator<Item = &'a str>) -> String {
    let mut families: BTreeMap<&'a str, Family> = BTreeMap::new();
    for text in renders {
        let mut current: Option<&'a str> = None;
        // A family whose header this render repeats: its header is kept from the first.
        let mut repeated = false;
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest.split(' ').next().unwrap_or(rest);
                if current != Some(name) {
                    current = Some(name);
                    repeated = families.contains_key(name);
                }
                if !repeated {
                    let f = families.entry(name).or_default();
                    f.header.push_str(line);
                    f.header.push('\n');
                }
                continue;
            }
            // The exporter always writes a TYPE line first; a sample before any header
            // would be a new exporter behaviour, kept under its own name.
            let name = current.unwrap_or_else(|| line.split(['{', ' ']).next().unwrap_or(line));
            let f = families.entry(name).or_default();
            f.samples.push_str(line);
            f.samples.push('\n');
        }
    }
    let mut out = String::new();
    for f in families.values() {
        out.push_str(&f.header);
        out.push_str(&f.samples);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_two_renders_share_one_header() {
        let a = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{pool=\"a\"} 1\n\n\
                 # TYPE g gauge\ng 2\n\n";
        let b = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{pool=\"b\"} 3\n\n";
        let m = merge([a, b]);
        assert_eq!(
            m,
            "# TYPE g gauge\ng 2\n\n\
             # HELP x_total Things.\n# TYPE x_total counter\nx_total{pool=\"a\"} 1\nx_total{pool=\"b\"} 3\n\n"
        );
        assert_eq!(m.matches("# TYPE x_total").count(), 1);
    }
}

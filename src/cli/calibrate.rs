//! `dujiang calibrate`: fits the engine catalogue's coefficients to measured points and
//! prints the report (every point's error and leave-one-out error, every coefficient with
//! the points that pin it). `--out` writes the fitted coefficients as an engine-catalogue
//! overlay that every command takes with `--engines FILE`; `--markdown` writes the report
//! as the Markdown tables `docs/calibration.md` embeds.

use crate::calibrate::{
    calibrate, load_points, overlay, render_markdown, render_text, CatalogueBackend, FitOptions,
};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Points files (TOML `[[point]]` tables, or CSV with a header row; `.csv` by name).
    /// None given: the shipped ones, `config/measured/*.toml` under the current directory.
    #[arg(value_name = "POINTS")]
    pub points: Vec<PathBuf>,
    /// Extra points files fitted alongside the others, e.g. what a router observed
    /// (`curl http://ROUTER:METRICS_PORT/observed > observed.toml`). Repeatable.
    #[arg(long = "points", value_name = "FILE")]
    pub extra: Vec<PathBuf>,
    /// The fit starts from the hand-set priors (config/engine-priors.toml) of the entries
    /// the embedded catalogue holds fitted; engine overlays given here are applied on top
    /// of those before fitting: their values are the priors.
    #[command(flatten)]
    pub catalogue: super::CatalogueArgs,
    /// Write the fitted coefficients here as an engine-catalogue overlay.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the report as Markdown tables here; a file that already holds
    /// `<!-- calibrate:begin -->` … `<!-- calibrate:end -->` has only that part replaced.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Skip the leave-one-out refits (faster; the report shows `-`).
    #[arg(long)]
    pub no_loo: bool,
    /// Pull of each coefficient towards its prior, relative to one point's log residual.
    #[arg(long, default_value_t = FitOptions::default().prior_weight)]
    pub prior_weight: f64,
}

pub fn run(args: Args) -> Result<()> {
    let mut cat = crate::profile::Catalogue::load(
        args.catalogue.chips.as_deref(),
        args.catalogue.models.as_deref(),
    )?
    .with_engine_priors()?;
    for path in &args.catalogue.engines {
        let src = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        cat = cat.with_engine_overlay(&src, &path.display().to_string())?;
    }
    let mut files = args.points.clone();
    if files.is_empty() {
        files = shipped_points()?;
    }
    files.extend(args.extra.iter().cloned());
    // A file read twice would make each of its points a duplicate of itself ("`a` already
    // names the point at" its own place), which hides that the file was named twice.
    let same = |a: &PathBuf, b: &PathBuf| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    for (i, f) in files.iter().enumerate() {
        if files[..i].iter().any(|g| same(g, f)) {
            let why = if args.points.is_empty() {
                " (with no POINTS named, the shipped config/measured/*.toml are fitted and --points adds to them)"
            } else {
                ""
            };
            anyhow::bail!("{}: given twice{why}", f.display());
        }
    }
    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let points = load_points(&paths)?;
    if !(args.prior_weight.is_finite() && args.prior_weight >= 0.0) {
        anyhow::bail!(
            "--prior-weight must be a number ≥ 0, got {}",
            args.prior_weight
        );
    }
    let opts = FitOptions {
        prior_weight: args.prior_weight,
        ..FitOptions::default()
    };
    let backend = CatalogueBackend::new(cat);
    let cal = calibrate(points, &backend, opts, !args.no_loo)?;
    out!("{}", render_text(&cal))?;
    let origin = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(path) = &args.out {
        std::fs::write(path, overlay(&backend, &cal, &origin))
            .with_context(|| format!("cannot write {}", path.display()))?;
        outln!(
            "wrote the fitted coefficients to {} (use --engines {0})",
            path.display()
        )?;
    }
    if let Some(path) = &args.markdown {
        let tables = render_markdown(&cal);
        // An existing document with the markers keeps everything outside them.
        let body = match std::fs::read_to_string(path) {
            Ok(doc) => splice(&doc, &tables).unwrap_or(tables),
            Err(_) => tables,
        };
        std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The shipped measured points: `config/measured/*.toml`, sorted by name.
fn shipped_points() -> Result<Vec<PathBuf>> {
    let dir = std::path::Path::new("config/measured");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "no points files given and cannot read {} (run from the repository, or name the files)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

const BEGIN: &str = "<!-- calibrate:begin -->";
const END: &str = "<!-- calibrate:end -->";

/// `doc` with the text between its calibrate markers replaced by `tables`, or `None` if
/// it has no (well-ordered) markers.
fn splice(doc: &str, tables: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = doc[start..].find(END)? + start;
    Some(format!("{}\n{}{}", &doc[..start], tables, &doc[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_keeps_the_prose_around_the_markers() {
        let doc = format!("intro\n{BEGIN}\nold table\n{END}\noutro\n");
        assert_eq!(
            splice(&doc, "new\n").unwrap(),
            format!("intro\n{BEGIN}\nnew\n{END}\noutro\n")
        );
        assert_eq!(splice("no markers", "x"), None);
    }
}

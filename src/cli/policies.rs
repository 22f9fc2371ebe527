//! `dujiang policies`: the routing policies this build knows, one line each, with their
//! parameters and defaults (the keys a fleet file's `[policy.params]` accepts).

use crate::policy::POLICIES;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also print each policy's parameters and their defaults.
    #[arg(long)]
    pub params: bool,
}

/// The listing as text (kept apart from printing so it can be tested).
pub fn render(args: &Args) -> String {
    let width = POLICIES.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for p in POLICIES {
        out.push_str(&format!("{:width$}  {}\n", p.name, p.summary));
        if args.params && !p.params.is_empty() {
            out.push_str(&format!("{:width$}    params: {}\n", "", p.params));
        }
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    out!("{}", render(&args))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_policy() {
        let text = render(&Args { params: false });
        assert_eq!(text.lines().count(), POLICIES.len());
        assert!(text.lines().any(|l| l.starts_with("domestic-share ")));
        let with = render(&Args { params: true });
        assert!(with.contains("params: choices = 2"));
    }
}

//! The chip and model catalogues: `config/chips.toml` and `config/models.toml`, embedded
//! in the binary as defaults and replaceable by files.

use super::spec::{ChipSpec, ModelSpec};
use crate::config::{parse_toml, ConfigError};
use std::collections::BTreeMap;

pub const EMBEDDED_CHIPS: &str = include_str!("../../config/chips.toml");
pub const EMBEDDED_MODELS: &str = include_str!("../../config/models.toml");

/// Every chip and model dujiang knows, keyed by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    pub chips: BTreeMap<String, ChipSpec>,
    pub models: BTreeMap<String, ModelSpec>,
}

impl Catalogue {
    /// The catalogue built into the binary. Its files are checked by the tests, so this
    /// cannot fail in a released build.
    pub fn embedded() -> Catalogue {
        Catalogue::parse(
            EMBEDDED_CHIPS,
            "<embedded config/chips.toml>",
            EMBEDDED_MODELS,
            "<embedded config/models.toml>",
        )
        .expect("embedded catalogue is valid (checked by tests)")
    }

    /// Parses both catalogue files; `*_file` names them in errors.
    pub fn parse(
        chips_src: &str,
        chips_file: &str,
        models_src: &str,
        models_file: &str,
    ) -> Result<Catalogue, ConfigError> {
        let mut chips: BTreeMap<String, ChipSpec> = parse_toml(chips_src, chips_file)?;
        for (id, chip) in &mut chips {
            chip.id = id.clone();
        }
        let mut models: BTreeMap<String, ModelSpec> = parse_toml(models_src, models_file)?;
        for (id, model) in &mut models {
            model.id = id.clone();
        }
        Ok(Catalogue { chips, models })
    }

    pub fn chip(&self, id: &str) -> Option<&ChipSpec> {
        self.chips.get(id)
    }

    pub fn model(&self, id: &str) -> Option<&ModelSpec> {
        self.models.get(id)
    }
}

//! What the run examples share: which flags the user gave (for `--resume`, where a flag that
//! would change the run is an error and the number of epochs may change).

use clap::parser::ValueSource;
use clap::ArgMatches;

/// The ids (field names) of the flags given on the command line, with `renames` applied
/// (flag id → configuration field, for flags stored under another name).
pub fn given(m: &ArgMatches, renames: &[(&str, &str)]) -> Vec<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| {
            let id = id.as_str();
            renames
                .iter()
                .find(|(from, _)| *from == id)
                .map_or(id, |(_, to)| to)
                .to_string()
        })
        .collect()
}

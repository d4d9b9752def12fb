//! `gru-serve export`: a model version of the repository as a PyTorch state dict.

use crate::config::ExportArgs;
use crate::engine::registry::export_pytorch;

/// Writes the state dict to `args.out` and prints the model's config as JSON.
pub fn export(args: &ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = export_pytorch(
        &args.model_dir,
        &args.model,
        args.version,
        &args.out,
        &args.gru_prefix,
        &args.head_prefix,
    )?;
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

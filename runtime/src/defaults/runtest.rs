//! Native default runtest (placeholder: being implemented).

use std::sync::Arc;

use crate::context::StageContext;
use crate::error::StageError;

/// Runs the default runtest.
pub async fn run(_cx: &Arc<StageContext>) -> Result<u8, StageError> {
    Err(StageError::failed(
        "NotImplemented",
        "runtest default is not implemented yet",
    ))
}

//! Native default reserve (placeholder: being implemented).

use std::sync::Arc;

use crate::context::StageContext;
use crate::error::StageError;

/// Runs the default reserve.
pub async fn run(_cx: &Arc<StageContext>) -> Result<u8, StageError> {
    Err(StageError::failed(
        "NotImplemented",
        "reserve default is not implemented yet",
    ))
}

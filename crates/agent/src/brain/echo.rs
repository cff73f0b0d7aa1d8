//! The `echo` brain: answers with the prompt, at once. For tests and benchmarks, where the
//! thing measured is clawfleet itself, not a model.

use async_trait::async_trait;
use clawfleet_proto::event::Usage;

use super::{Brain, BrainError, BrainHealth, Progress, ProgressSender, TurnRequest, TurnResult};

pub(super) struct EchoBrain;

#[async_trait]
impl Brain for EchoBrain {
    async fn turn(&self, request: TurnRequest, progress: ProgressSender) -> Result<TurnResult, BrainError> {
        let _ = progress.send(Progress::Delta(request.prompt.clone())).await;
        let words = request.prompt.split_whitespace().count() as u64;
        Ok(TurnResult { content: request.prompt, usage: Some(Usage { input_tokens: words, output_tokens: words, ..Usage::default() }) })
    }

    async fn health(&self) -> BrainHealth {
        BrainHealth::ok()
    }
}

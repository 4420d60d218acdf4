//! Server-Sent Events: the choices' pieces merged as they come, each rendered to JSON chunks
//! by the endpoint, then an optional usage chunk and `data: [DONE]`.
//!
//! The stream owns the choices' engine handles: when the client goes away, axum drops the
//! stream, the handles drop, and the engine cancels the requests and frees their blocks.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::Value;

use super::choice::{ChoiceStream, Piece};
use super::protocol::UsageInfo;

/// The response type of streaming endpoints.
pub type SseBody = Sse<KeepAliveStream<BoxStream<'static, Result<SseEvent, Infallible>>>>;

fn data(value: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(value.to_string()))
}

/// Streams `choices`: `first` chunks, then each piece through `render(choice index, piece)`,
/// then `usage_chunk(total usage)` when it returns one, then `[DONE]`. `n` is the number of
/// choices per prompt (prompt tokens are counted once per prompt).
pub fn sse_response(
    choices: Vec<ChoiceStream>,
    first: Vec<Value>,
    n: usize,
    render: impl Fn(usize, Piece) -> Vec<Value> + Send + Sync + 'static,
    usage_chunk: impl FnOnce(UsageInfo) -> Option<Value> + Send + 'static,
) -> SseBody {
    let per_choice = choices.into_iter().map(|choice| {
        stream::unfold(choice, |mut choice| async move {
            let pieces = choice.next().await?;
            Some(((choice.index, pieces), choice))
        })
        .boxed()
    });
    let usage = Arc::new(Mutex::new((UsageInfo::default(), HashSet::new())));
    let counted = usage.clone();
    let body = stream::select_all(per_choice).flat_map(move |(index, pieces)| {
        let mut chunks = Vec::new();
        for piece in pieces {
            if let Piece::Finish { usage, .. } = &piece
                && let Ok(mut guard) = counted.lock()
            {
                let (total, prompts) = &mut *guard;
                let first_of_prompt = prompts.insert(index / n.max(1));
                total.add(usage, first_of_prompt);
            }
            chunks.extend(render(index, piece));
        }
        stream::iter(chunks.iter().map(data).collect::<Vec<_>>())
    });
    let end = stream::once(async move {
        let total = usage.lock().map(|g| g.0).unwrap_or_default();
        let mut events: Vec<Result<SseEvent, Infallible>> = Vec::new();
        if let Some(chunk) = usage_chunk(total) {
            events.push(data(&chunk));
        }
        events.push(Ok(SseEvent::default().data("[DONE]")));
        stream::iter(events)
    })
    .flatten();
    let all = stream::iter(first.iter().map(data).collect::<Vec<_>>())
        .chain(body)
        .chain(end)
        .boxed();
    Sse::new(all).keep_alive(KeepAlive::default())
}

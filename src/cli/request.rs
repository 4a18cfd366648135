//! `seatrush enroll`, `drop` and `watch`: a student's request with its two answers, and the
//! stream of final events, with their one-line rendering.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::common::Common;
use super::worker::cancel_on_signal;
use seatrush_core::client::{Client, EventFilter};
use seatrush_core::domain::{Action, CourseId, Request, RequestId, StudentId};
use seatrush_core::protocol::Answer;

#[derive(Args)]
pub struct RequestArgs {
    course: String,
    student: String,
    /// The request id (default: random); reuse one to retry safely.
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the final answer.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Ask for the answers in batches (`x-seatrush-batch`), as a web back end would.
    #[arg(long)]
    batch: bool,
    /// Publish on this named lane (one of the workers' `--lanes`) instead of the default one.
    #[arg(long, value_parser = seatrush_core::amqp::lane_name)]
    lane: Option<String>,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Only this course's events.
    #[arg(long)]
    course: Option<String>,
    /// Only this student's events.
    #[arg(long)]
    student: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Publishes one request and prints its provisional and final answers.
pub async fn request(
    common: &Common,
    action: Action,
    args: RequestArgs,
) -> anyhow::Result<ExitCode> {
    let request = Request {
        request_id: RequestId::parse(
            args.request_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        )?,
        action,
        course_id: CourseId::parse(args.course)?,
        student_id: StudentId::parse(args.student)?,
    };
    let client = Client::connect(&common.amqp_url()?, common.topology())
        .await?
        .on_lane(args.lane);
    let answers = client
        .request(&request, args.batch, Duration::from_secs(args.timeout_secs))
        .await;
    client.close().await;
    let answers = answers?;
    if args.json {
        if let Some(p) = &answers.provisional {
            println!("{}", serde_json::to_string(p)?);
        }
        println!("{}", serde_json::to_string(&answers.final_answer)?);
    } else {
        if let Some(p) = &answers.provisional {
            println!("provisional: {}", describe(p));
        }
        println!("final:       {}", describe(&answers.final_answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints final events as they happen, until SIGINT or SIGTERM.
pub async fn watch(common: &Common, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let filter = EventFilter {
        course: args.course.map(CourseId::parse).transpose()?,
        student: args.student.map(StudentId::parse).transpose()?,
    };
    let client = Client::connect(&common.amqp_url()?, common.topology()).await?;
    let mut events = client.watch(filter).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(&shutdown)?;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        let event = event?;
        if args.json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            println!("{}", describe(&event));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One answer on one line, as a person reads it.
pub fn describe(a: &Answer) -> String {
    let mut line = format!(
        "{} {} {} -> {}",
        a.action, a.course_id, a.student_id, a.outcome
    );
    if let Some(reason) = &a.reason {
        line.push_str(&format!(" ({reason})"));
    }
    if let Some(position) = a.waitlist_position {
        line.push_str(&format!(" at position {position}"));
    }
    if let Some(at) = a.opens_at.as_ref().or(a.closes_at.as_ref()) {
        line.push_str(&format!(" ({at})"));
    }
    if let Some(at) = &a.entries_open_at {
        line.push_str(&format!(", entries open {at}"));
    }
    if let Some(at) = &a.draw_at {
        line.push_str(&format!(", drawn at {at}"));
    }
    if let Some(rank) = a.draw_position {
        line.push_str(&format!(", rank {rank} in the draw"));
    }
    if let Some(commitment) = &a.draw_commitment {
        line.push_str(&format!(", draw commitment {commitment}"));
    }
    line.push_str(&format!(
        ", {} seats left, request {}",
        a.seats_left, a.request_id
    ));
    if a.replayed {
        line.push_str(", replayed");
    }
    if a.revised {
        line.push_str(", revised from the provisional answer");
    }
    if let Some(detail) = &a.detail {
        line.push_str(&format!(": {detail}"));
    }
    line
}
